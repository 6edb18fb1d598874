"""service/http/protocol.py: a response's head and body leave in one write, and nothing written is lost or late."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx

from service.http.protocol import HeadWithBody
from tests.helpers import start_server, stop


class Recording:
    """The transport under HeadWithBody: what reached it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | None]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def is_closing(self) -> bool:
        return any(kind in ("close", "abort") for kind, _ in self.calls)

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default=None):
        return f"extra {name}"


def _run(scenario) -> list[tuple[str, bytes | None]]:
    async def main():
        real = Recording()
        await scenario(HeadWithBody(real, asyncio.get_running_loop()))
        await asyncio.sleep(0)  # one more turn of the loop: whatever is held by now should have gone
        return real.calls

    return asyncio.run(main())


def test_a_head_and_its_body_go_out_in_one_write():
    async def scenario(transport):
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(memoryview(b"{}"))

    assert _run(scenario) == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]


def test_a_write_nothing_joins_goes_out_at_the_end_of_the_turn():
    seen_before_the_turn_ended = []

    async def scenario(transport):
        transport.write(b"head")
        seen_before_the_turn_ended.extend(transport._transport.calls)
        await asyncio.sleep(0)
        transport.write(b"chunk 1")
        transport.write(b"chunk 2")
        transport.write(b"last")

    assert seen_before_the_turn_ended == []
    assert _run(scenario) == [("write", b"head"), ("write", b"chunk 1chunk 2"), ("write", b"last")]


def test_close_sends_what_is_held_first_and_abort_drops_it():
    async def closing(transport):
        transport.write(b"answer")
        transport.close()

    async def aborting(transport):
        transport.write(b"answer")
        transport.abort()

    assert _run(closing) == [("write", b"answer"), ("close", None)]
    assert _run(aborting) == [("abort", None)]


def test_write_eof_sends_what_is_held_first_and_the_rest_is_the_transports():
    async def scenario(transport):
        transport.write(b"12345")
        assert transport.get_write_buffer_size() == 7 + 5  # held bytes count as buffered, for flow control
        assert transport.get_extra_info("peername") == "extra peername"
        transport.write_eof()

    assert _run(scenario) == [("write", b"12345"), ("write_eof", None)]


def test_vae_serve_answers_whole_on_keep_alive_close_and_streamed_connections(digits_model_dir):
    server, base = start_server(digits_model_dir)
    port = int(base.rsplit(":", 1)[1])
    body = json.dumps({"instances": [[0.0] * 64], "n_samples": 1, "iw_samples": 1, "seed": 1}).encode()
    request = (
        b"POST /elbo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
    )
    try:
        expected = httpx.post(f"{base}/elbo", content=body, headers={"content-type": "application/json"}).content
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Two requests in one packet, the second asking to close: both answers arrive whole, then the close.
            sock.sendall(request + b"\r\n" + body + request + b"Connection: close\r\n\r\n" + body)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        answers = received.split(b"HTTP/1.1 ")[1:]
        assert len(answers) == 2
        for answer in answers:
            assert answer.startswith(b"200 OK\r\n")
            assert answer.partition(b"\r\n\r\n")[2] == expected
        # An answer too large to build at once goes out in chunks (service/http/api/answers.py): still whole.
        sampled = httpx.post(f"{base}/sample", json={"n_samples": 1000, "decode": True, "seed": 3}, timeout=30)
        assert sampled.headers["transfer-encoding"] == "chunked"
        assert len(sampled.content) > 1 << 20
        assert len(sampled.json()["x"][0]) == 1000
    finally:
        stop(server)
