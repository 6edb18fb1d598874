"""A Python client for the service: numpy arrays in, numpy arrays and frozen dataclasses out.

`VaeClient` (sync) and `AsyncVaeClient` (async) share one implementation. Each call is a *plan*: a generator
that yields the HTTP requests (and back-off pauses) it needs, receives their responses, and returns the
result. The two clients only run plans, one with an `httpx.Client`, the other with an `httpx.AsyncClient`,
so request building, batching, retries and parsing exist once.

- **Images.** For a model of images (GET /v1/model says `image`), `Images` stands in for an array batch in
  encode, sample, elbo and heatmap: PNG or JPEG files, uploaded as the server's image routes take them (a
  multipart form, the files in the field `files`, the options as form fields), split like rows.
- **Batching.** A batch is sent in requests no larger than the server's limits (`GET /v1/model`:
  `max_instances`, and `max_draws` over the draws per row) nor than `max_body_bytes`, and whose answers stay
  within `max_response_bytes` (bounded with the server's own arithmetic, service/http/json_writer.py), and the
  answers are concatenated in order. Each request's instances travel as one `.npy` body (`application/x-npy`,
  options in the query string): 8 bytes a number against ~20 in JSON, and no JSON parsing on the server.
- **Seeds.** /sample and /elbo always send a seed; the client draws one when the call gives none. Request i
  of a split call carries `seed + i`, as `vae score` scores chunk i. A split call therefore equals the
  chunked native calls exactly, but not one request holding every row (that would draw other noise). The
  returned `seed` is the first request's: pass it back, with the same batch size, to repeat the numbers.
- **Retries.** Every request is a pure function of its body (the server keeps no state, and seeds are
  fixed by the client), so every call is idempotent: 503s and connection errors are retried with
  exponential back-off and jitter, waiting as long as a `Retry-After` header says when there is one.
  Connection failures include timeouts: the default timeout (60 s) outlasts the server's own (30 s),
  which answers 503. Retries end at `max_retries`, or when the next one would start more than
  `retry_deadline_s` after the first attempt, whichever comes first: one slow call cannot run on for minutes.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import math
import random
import secrets
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import numpy as np
import orjson
from numpy.typing import ArrayLike

T = TypeVar("T")

NPY = "application/x-npy"
FILES_FIELD = "files"  # the multipart field of image uploads (the server's service/http/api/body.py)
IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}  # by their first bytes
MULTIPART_PART_BYTES = 512  # room for one file's part headers and boundary in a body budget
DEFAULT_MAX_BATCH = 1024  # rows per request when GET /v1/model does not state max_instances
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # the server's default VAE_MAX_BODY_BYTES, when /v1/model does not say it
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # the server's default VAE_MAX_RESPONSE_BYTES
# The server's bound of a JSON answer (service/http/json_writer.py; a test pins the two together): 25 bytes per
# number with its comma, 3 per list, and 1024 for the keys and scalars.
ANSWER_NUMBER_BYTES = 25
ANSWER_OVERHEAD_BYTES = 1024
NPY_HEADER_BYTES = 256  # room for the .npy header in a body budget (np.save writes 128)
JSON_NUMBER_BYTES = 32  # the most one float64 takes in a JSON body, with its separator
RETRY_STATUSES = frozenset({503})  # model_not_ready while loading or draining, timeout under load
RETRY_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


# --- results ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    """POST /encode: the posterior q(z|x) = N(mu, diag sigma^2) of each instance."""

    mu: np.ndarray  # (B, d)
    sigma: np.ndarray  # (B, d)
    logvar: np.ndarray  # (B, d)


@dataclass(frozen=True)
class Sampled:
    """POST /sample: reparameterized draws, and their decoded means when asked for."""

    z: np.ndarray  # (B, n, d)
    x: np.ndarray | None  # (B, n, *input_shape) in raw units, with decode=True
    seed: int  # the first request's seed; request i of a split call used seed + i


@dataclass(frozen=True)
class ElboResult:
    """POST /elbo: per-input scores in nats and the anomaly decisions, field for field."""

    elbo: np.ndarray  # (B,) reconstruction - kl
    reconstruction: np.ndarray  # (B,)
    kl: np.ndarray  # (B,)
    log_likelihood: np.ndarray  # (B,) L_K
    anomaly_score: np.ndarray  # (B,) -log_likelihood, or -elbo for a model scored by the ELBO
    threshold: float
    is_anomaly: np.ndarray  # (B,) bool
    p_value: np.ndarray  # (B,)
    n_samples: int
    iw_samples: int
    seed: int  # the first request's seed; request i of a split call used seed + i
    feature_scores: np.ndarray | None  # (B, *input_shape), with feature_scores=True


@dataclass(frozen=True)
class Heatmap:
    """Per-pixel anomaly scores: each pixel's share of -reconstruction in nats, channels added up, as
    POST /heatmap draws them (iw_samples 1, n_samples draws averaged). One scale for all: compare any two."""

    scores: np.ndarray  # (B, H, W) nats; each image's scores sum to its -reconstruction
    seed: int


@dataclass(frozen=True)
class Images:
    """PNG or JPEG files to send in place of an array batch, each as (file name, bytes).

    `Images.read(paths)` reads files; `Images([("scan.png", data), ...])` takes bytes you already hold. The
    server decodes them (and resizes them when training did) and answers as for the same rows in JSON.
    """

    files: Sequence[tuple[str, bytes]]

    def __post_init__(self) -> None:
        for name, data in self.files:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise VaeInputError(f"{name}: expected the file's bytes, got {type(data).__name__}")
            if _image_type(bytes(data[:8])) is None:
                raise VaeInputError(f"{name}: not a PNG or JPEG file (it starts with {bytes(data[:8])!r})")

    @classmethod
    def read(cls, paths: Sequence[str | Path]) -> Images:
        files = []
        for path in paths:
            try:
                files.append((Path(path).name, Path(path).read_bytes()))
            except OSError as exc:
                raise VaeInputError(f"{path}: cannot read it ({exc.strerror})") from None
        return cls(files)

    def __len__(self) -> int:
        return len(self.files)

    def part(self, rows: slice) -> list[tuple[str, tuple[str, bytes, str]]]:
        """The files of `rows` as httpx multipart parts of the field `files`."""
        return [
            (FILES_FIELD, (name, bytes(data), _image_type(bytes(data[:8])) or "application/octet-stream"))
            for name, data in self.files[rows]
        ]


def _image_type(head: bytes) -> str | None:
    return next((media for magic, media in IMAGE_TYPES.items() if head.startswith(magic)), None)


Batch = ArrayLike | Images  # what encode, sample, elbo and heatmap take: rows, or image files


# --- errors -----------------------------------------------------------------------------------------------
class VaeClientError(Exception):
    """Base of every error the client raises."""


class VaeHTTPError(VaeClientError):
    """The server answered with an error status.

    `message` is the server's `error` text and `code` its `code` (None when the body was not the service's
    error JSON, e.g. from a proxy); `request_id` is the X-Request-ID to find the request in the server's log.
    """

    def __init__(self, status_code: int, code: str | None, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{status_code} {code or 'error'}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.request_id = request_id


class VaeConnectionError(VaeClientError):
    """The server could not be reached, or the connection failed, after every retry."""


class VaeInputError(VaeClientError, ValueError):
    """Arguments refused before anything is sent."""


class VaeModelChanged(VaeClientError):
    """The server's model was replaced (POST /v1/model/reload, SIGHUP) in the middle of a split call, twice."""


# --- plans: everything but the transport ------------------------------------------------------------------
@dataclass(frozen=True)
class _Pause:
    seconds: float


@dataclass(frozen=True)
class _Done(Generic[T]):
    value: T


Step = httpx.Request | _Pause
Outcome = httpx.Response | httpx.TransportError | None  # what a step gave: a response, a failure, or a pause's None
Plan = Generator[Step, Outcome, T]


def _advance(plan: Plan[T], outcome: Outcome) -> Step | _Done[T]:
    """Hand the plan what its last step gave; its next step, or its result."""
    try:
        return plan.throw(outcome) if isinstance(outcome, Exception) else plan.send(outcome)
    except StopIteration as done:
        return _Done(done.value)


def _batch(x: Batch, name: str) -> np.ndarray | Images:
    if isinstance(x, Images):
        return x
    try:
        array = np.asarray(x)
    except ValueError as exc:
        raise VaeInputError(f"{name}: not an array ({exc})") from None
    if array.ndim < 2:
        raise VaeInputError(
            f"{name}: expected a batch shaped (B, ...), got shape {list(array.shape)}; "
            f"send one instance as {name}[None]"
        )
    return array


def _chunks(n: int, size: int) -> list[slice]:
    """Row ranges of at most `size`; an empty batch still makes one request, so the server says what is wrong."""
    return [slice(start, start + size) for start in range(0, max(n, 1), size)]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _query(options: dict[str, Any]) -> dict[str, str]:
    """Options as query parameters; the server reads each as the JSON value it spells ('8' -> 8, 'true' -> True)."""
    return {k: orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode() for k, v in options.items() if v is not None}


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise VaeClientError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} "
            f"with a body that is not JSON: {response.text[:200]!r}"
        ) from None


def _http_error(response: httpx.Response) -> VaeHTTPError:
    try:
        body = orjson.loads(response.content)
        message, code = str(body["error"]), str(body["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message, code = response.text[:500] or response.reason_phrase, None
    return VaeHTTPError(response.status_code, code, message, response.headers.get("x-request-id"))


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None without a usable one."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def answer_bytes(rows: int, row_shapes: list[tuple[int, ...]]) -> int:
    """The server's bound of a JSON answer holding, per row of the request, arrays shaped row_shapes."""
    total = ANSWER_OVERHEAD_BYTES
    for shape in row_shapes:
        lists = 1 + rows * sum(math.prod(shape[:k]) for k in range(len(shape)))
        total += ANSWER_NUMBER_BYTES * rows * math.prod(shape) + 3 * lists
    return total


def _concat(answers: list[dict], key: str, dtype: type = np.float64) -> np.ndarray:
    return np.concatenate([np.asarray(answer[key], dtype=dtype) for answer in answers])


class _Client:
    """Settings, request building, batching, retries and parsing, as plans; subclasses run them."""

    _http_class: type[httpx.Client] | type[httpx.AsyncClient]
    _default_sleep: Callable[[float], Any]

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_batch: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_retries: int = 4,
        retry_deadline_s: float = 120.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        http_client: httpx.Client | httpx.AsyncClient | None = None,
        sleep: Callable[[float], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise VaeInputError(f"max_batch: expected at least 1 row per request, got {max_batch}")
        if max_retries < 0:
            raise VaeInputError(f"max_retries: expected 0 or more, got {max_retries}")
        if transport is not None and http_client is not None:
            raise VaeInputError("transport: give it to your http_client, or pass transport alone")
        self.base_url = base_url.rstrip("/")
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        self.max_retries = max_retries
        self.retry_deadline_s = retry_deadline_s
        self._clock = clock
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else self._http_class(transport=transport, timeout=timeout)
        self._sleep = sleep or type(self)._default_sleep
        self._card: dict | None = None  # GET /v1/model, fetched once for the limits

    def _request(self, method: str, path: str, json: Any = None, **kwargs: Any) -> httpx.Request:
        headers = self._headers | kwargs.pop("headers", {})
        if json is not None:  # orjson: numpy scalars such as a seed of type np.int64 are welcome
            kwargs["content"] = orjson.dumps(json, option=orjson.OPT_SERIALIZE_NUMPY)
            headers["content-type"] = "application/json"
        return self._http.build_request(method, self.base_url + path, headers=headers, **kwargs)

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with equal jitter: between half and all of backoff_s * 2^attempt (capped)."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _exchange(self, request: httpx.Request, retries: int | None = None) -> Plan[httpx.Response]:
        """Send a request, retrying 503s and connection failures; the last response, whatever its status."""
        retries = self.max_retries if retries is None else retries
        deadline = self._clock() + self.retry_deadline_s
        for attempt in range(retries + 1):
            try:
                response = yield request
            except RETRY_ERRORS as exc:
                delay = self._backoff(attempt)
                if attempt == retries or self._clock() + delay > deadline:
                    raise VaeConnectionError(
                        f"{request.method} {request.url}: {type(exc).__name__}: {exc} (after {attempt + 1} attempts)"
                    ) from exc
            except httpx.TransportError as exc:  # a bad URL or protocol: no retry can help
                raise VaeConnectionError(f"{request.method} {request.url}: {type(exc).__name__}: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt == retries:
                    return response
                delay = _retry_after(response)
                delay = self._backoff(attempt) if delay is None else delay
                if self._clock() + delay > deadline:  # the next attempt would start past the deadline
                    return response
            yield _Pause(delay)
        raise AssertionError("unreachable")

    def _answer(self, request: httpx.Request) -> Plan[Any]:
        """The JSON answer to a request, or VaeHTTPError with the server's message."""
        return _json((yield from self._successful(request)))

    def _successful(self, request: httpx.Request) -> Plan[httpx.Response]:
        """The response to a request if it succeeded, else VaeHTTPError with the server's message."""
        response = yield from self._exchange(request)
        if not response.is_success:
            raise _http_error(response)
        return response

    def _model(self, fresh: bool = True) -> Plan[dict]:
        if fresh or self._card is None:
            self._card = yield from self._answer(self._request("GET", "/v1/model"))
        return self._card

    def _ready(self) -> Plan[bool]:
        response = yield from self._exchange(self._request("GET", "/readyz"), retries=0)  # a probe: ask once
        if response.status_code in (200, 503):
            return response.status_code == 200
        raise _http_error(response)

    def _rows_per_request(
        self, card: dict, draws_per_row: int, bytes_per_row: int, answer_rows: list[tuple[int, ...]]
    ) -> int:
        limits = card.get("limits") or {}
        budget = min(self.max_body_bytes, limits.get("max_body_bytes", math.inf)) - NPY_HEADER_BYTES
        answer_budget = min(self.max_response_bytes, limits.get("max_response_bytes", math.inf))
        per_answer_row = answer_bytes(1, answer_rows) - answer_bytes(0, answer_rows)
        caps = [
            self.max_batch or math.inf,
            limits.get("max_instances", DEFAULT_MAX_BATCH),
            budget // max(bytes_per_row, 1),
            (answer_budget - answer_bytes(0, answer_rows)) // max(per_answer_row, 1),
        ]
        if draws_per_row > 0 and "max_draws" in limits:
            caps.append(limits["max_draws"] // draws_per_row)
        return max(1, int(min(caps)))

    def _post_rows(
        self,
        path: str,
        rows: np.ndarray | Images,
        options: dict[str, Any],
        draws_per_row: int = 0,
        seed: int | None = None,
        json_field: str | None = None,
        answer_rows: Callable[[dict], list[tuple[int, ...]]] = lambda card: [],
    ) -> Plan[list[dict]]:
        """POST rows in requests within the limits, request i with seed + i; the answers in order.

        Rows go as a .npy body with the options in the query string, or, for a JSON-only endpoint, as the
        body's `json_field`; images as a multipart form with the options as form fields. answer_rows(card):
        the shapes of the arrays the answer holds per row.
        """
        if isinstance(rows, Images):  # a budget per row that the largest file fits
            row_bytes = max((len(data) for _, data in rows.files), default=0) + MULTIPART_PART_BYTES
        else:
            row_bytes = (JSON_NUMBER_BYTES if json_field else rows.itemsize) * math.prod(rows.shape[1:])
        # Each answer names the model version that gave it (X-Model-Version). A call split over several
        # requests must come from one version: if the model was reloaded in between, ask again, once.
        for attempt in range(2):
            card = yield from self._model(fresh=attempt > 0)  # a new model may come with new limits
            size = self._rows_per_request(card, draws_per_row, row_bytes, answer_rows(card))
            answers, versions = [], set()
            for i, chunk in enumerate(_chunks(len(rows), size)):
                chunk_options = options if seed is None else options | {"seed": seed + i}
                if isinstance(rows, Images):
                    request = self._request("POST", path, files=rows.part(chunk), data=_query(chunk_options))
                elif json_field:
                    request = self._request("POST", path, json={json_field: rows[chunk].tolist(), **chunk_options})
                else:
                    request = self._request(
                        "POST",
                        path,
                        content=_npy(rows[chunk]),
                        params=_query(chunk_options),
                        headers={"content-type": NPY},
                    )
                response = yield from self._successful(request)
                versions.add(response.headers.get("x-model-version"))
                answers.append(_json(response))
            if len(versions) == 1:
                return answers
        raise VaeModelChanged(
            f"POST {path}: the server's model changed during the call, twice (versions {sorted(map(str, versions))}); "
            "its answers would mix models"
        )

    def _encode(self, x: Batch) -> Plan[Encoded]:
        answers = yield from self._post_rows(
            "/encode", _batch(x, "x"), {}, answer_rows=lambda card: [(card.get("latent_dim", 0),)] * 3
        )
        return Encoded(_concat(answers, "mu"), _concat(answers, "sigma"), _concat(answers, "logvar"))

    def _sample(self, x: Batch | None, n_samples: int, seed: int | None, decode: bool) -> Plan[Sampled]:
        seed = secrets.randbelow(2**62) if seed is None else seed  # < 2^62: seed + i stays a valid seed
        options = {"n_samples": n_samples, "decode": decode}
        if x is None:
            answers = [(yield from self._answer(self._request("POST", "/sample", json=options | {"seed": seed})))]
        else:
            answers = yield from self._post_rows(
                "/sample",
                _batch(x, "x"),
                options,
                n_samples,
                seed,
                answer_rows=lambda card: (
                    [(n_samples, card.get("latent_dim", 0))]
                    + ([(n_samples, *card.get("input_shape", []))] if decode else [])
                ),
            )
        return Sampled(_concat(answers, "z"), _concat(answers, "x") if decode else None, answers[0]["seed"])

    def _decode(self, z: ArrayLike) -> Plan[np.ndarray]:
        answers = yield from self._post_rows(
            "/decode", _batch(z, "z"), {}, json_field="z", answer_rows=lambda card: [tuple(card.get("input_shape", []))]
        )
        return _concat(answers, "x")

    def _elbo(
        self,
        x: Batch,
        n_samples: int | None,
        iw_samples: int | None,
        seed: int | None,
        feature_scores: bool,
        threshold: float | None,
        fpr: float | None,
    ) -> Plan[ElboResult]:
        rows = _batch(x, "x")
        seed = secrets.randbelow(2**62) if seed is None else seed
        card = yield from self._model(fresh=False)
        scoring = card.get("scoring") or {}
        k = iw_samples if iw_samples is not None else scoring.get("iw_samples", 1)
        draws = n_samples if n_samples is not None else scoring.get("n_samples", 1)
        options = {
            "n_samples": n_samples,
            "iw_samples": iw_samples,
            "feature_scores": feature_scores,
            "threshold": threshold,
            "fpr": fpr,
        }
        answers = yield from self._post_rows(
            "/elbo",
            rows,
            options,
            draws + k,
            seed,
            answer_rows=lambda card: [()] * 7 + ([tuple(card.get("input_shape", []))] if feature_scores else []),
        )
        first = answers[0]
        return ElboResult(
            elbo=_concat(answers, "elbo"),
            reconstruction=_concat(answers, "reconstruction"),
            kl=_concat(answers, "kl"),
            log_likelihood=_concat(answers, "log_likelihood"),
            anomaly_score=_concat(answers, "anomaly_score"),
            threshold=first["threshold"],
            is_anomaly=_concat(answers, "is_anomaly", bool),
            p_value=_concat(answers, "p_value"),
            feature_scores=_concat(answers, "feature_scores") if feature_scores else None,
            n_samples=first["n_samples"],
            iw_samples=first["iw_samples"],
            seed=first["seed"],
        )

    def _heatmap(self, x: Batch, n_samples: int, seed: int | None) -> Plan[Heatmap]:
        """/heatmap's numbers: /elbo's feature_scores at iw_samples 1, channels added up (B, H, W)."""
        card = yield from self._model(fresh=False)
        image = card.get("image")
        if not image:
            raise VaeInputError("heatmap: this model's inputs are not images (GET /v1/model has no image); use elbo")
        scored = yield from self._elbo(x, n_samples, 1, seed, True, None, None)
        assert scored.feature_scores is not None  # asked for
        shape = (-1, image["channels"], image["height"], image["width"])
        return Heatmap(scored.feature_scores.reshape(shape).sum(axis=1), scored.seed)

    def _heatmap_png(self, x: Batch, n_samples: int, seed: int | None) -> Plan[bytes]:
        """POST /heatmap in one request (one picture): more inputs than one request may hold is refused."""
        rows = _batch(x, "x")
        card = yield from self._model(fresh=False)
        most = (card.get("limits") or {}).get("max_instances", DEFAULT_MAX_BATCH)
        if len(rows) > most:
            raise VaeInputError(f"heatmap_png: {len(rows)} inputs; one picture takes at most {most} (max_instances)")
        options = {"n_samples": n_samples, "seed": secrets.randbelow(2**62) if seed is None else seed}
        if isinstance(rows, Images):
            request = self._request("POST", "/heatmap", files=rows.part(slice(None)), data=_query(options))
        else:
            request = self._request("POST", "/heatmap", json={"instances": rows.tolist(), **options})
        request.headers["accept"] = "image/png"  # the one answer /heatmap has; said, for proxies that vary on it
        response = yield from self._successful(request)
        return response.content


# --- the two clients: only the transport differs ----------------------------------------------------------
class VaeClient(_Client):
    """A synchronous client for the VAE service.

    Args:
        base_url: the service, e.g. "http://localhost:8000".
        api_key: sent as `Authorization: Bearer <key>` when given.
        timeout: seconds per HTTP request.
        max_batch: at most this many rows per request; the server's `max_instances` and `max_draws`
            (GET /v1/model) and `max_body_bytes` cap it further. Without any of them: 1024.
        max_body_bytes: the server's VAE_MAX_BODY_BYTES (or a proxy's body limit), when not the default 64 MiB.
        max_response_bytes: the server's VAE_MAX_RESPONSE_BYTES when GET /v1/model does not say it and it is not
            the default 64 MiB; the larger of the two is never used.
        max_retries: retries of a 503 or a connection failure; 0 turns retries off.
        retry_deadline_s: no retry starts later than this many seconds after a request's first attempt.
        backoff_s, max_backoff_s: retry k waits between half and all of min(max_backoff_s, backoff_s * 2^k)
            seconds, or what the response's Retry-After says.
        transport: an httpx transport for the client's own httpx.Client (tests: httpx.MockTransport).
        http_client: an httpx.Client to use instead (not closed by close()).
        sleep: how to wait between retries (tests inject a recorder).
        clock: the monotonic clock retry_deadline_s is measured on (tests inject a fake).

    Raises VaeHTTPError for an error answer, VaeConnectionError when the server cannot be reached, and
    VaeInputError for arguments refused before sending.
    """

    _http_class = httpx.Client
    _default_sleep = staticmethod(time.sleep)

    def _run(self, plan: Plan[T]) -> T:
        step = _advance(plan, None)
        while not isinstance(step, _Done):
            step = _advance(plan, self._perform(step))
        return step.value

    def _perform(self, step: Step) -> Outcome:
        if isinstance(step, _Pause):
            self._sleep(step.seconds)
            return None
        try:
            return self._http.send(step)
        except httpx.TransportError as exc:
            return exc

    def encode(self, x: Batch) -> Encoded:
        """POST /encode: the posterior of each instance of x, a batch shaped (B, D) or (B, *input_shape), or
        Images."""
        return self._run(self._encode(x))

    def sample(
        self, x: Batch | None = None, *, n_samples: int = 1, seed: int | None = None, decode: bool = False
    ) -> Sampled:
        """POST /sample: n_samples draws z per instance, or from the prior N(0, I) without x; with decode, x too."""
        return self._run(self._sample(x, n_samples, seed, decode))

    def decode(self, z: ArrayLike) -> np.ndarray:
        """POST /decode: the mean of p(x|z) in raw units for each latent vector, (B, *input_shape)."""
        return self._run(self._decode(z))

    def elbo(
        self,
        x: Batch,
        *,
        n_samples: int | None = None,
        iw_samples: int | None = None,
        seed: int | None = None,
        feature_scores: bool = False,
        threshold: float | None = None,
        fpr: float | None = None,
    ) -> ElboResult:
        """POST /elbo: per-input ELBO, L_K and anomaly decisions. n_samples and iw_samples default to the
        calibration's L and K; threshold or fpr replace the default decision threshold."""
        return self._run(self._elbo(x, n_samples, iw_samples, seed, feature_scores, threshold, fpr))

    def heatmap(self, x: Batch, *, n_samples: int = 8, seed: int | None = None) -> Heatmap:
        """The per-pixel anomaly scores of an image model's inputs in nats (B, H, W): the numbers POST /heatmap
        draws, from /elbo's feature_scores, on one scale for the whole batch."""
        return self._run(self._heatmap(x, n_samples, seed))

    def heatmap_png(self, x: Batch, *, n_samples: int = 8, seed: int | None = None) -> bytes:
        """POST /heatmap: one PNG of the inputs side by side, each with its per-pixel scores overlaid."""
        return self._run(self._heatmap_png(x, n_samples, seed))

    def model(self) -> dict:
        """GET /v1/model: the manifest's public fields, the runtime and the request limits."""
        return self._run(self._model())

    def ready(self) -> bool:
        """GET /readyz, asked once: True when the model is loaded and warmed up, False while it is not (503)."""
        return self._run(self._ready())

    def close(self) -> None:
        """Close the HTTP connections, unless the httpx.Client was passed in."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncVaeClient(_Client):
    """The asyncio twin of VaeClient: the same arguments (transport: an httpx.AsyncBaseTransport, such as
    httpx.ASGITransport; http_client: an httpx.AsyncClient; sleep: a coroutine function), the same methods,
    awaited."""

    _http_class = httpx.AsyncClient
    _default_sleep = staticmethod(asyncio.sleep)

    async def _run(self, plan: Plan[T]) -> T:
        step = _advance(plan, None)
        while not isinstance(step, _Done):
            step = _advance(plan, await self._perform(step))
        return step.value

    async def _perform(self, step: Step) -> Outcome:
        if isinstance(step, _Pause):
            await self._sleep(step.seconds)
            return None
        try:
            return await self._http.send(step)
        except httpx.TransportError as exc:
            return exc

    async def encode(self, x: Batch) -> Encoded:
        """POST /encode; see VaeClient.encode."""
        return await self._run(self._encode(x))

    async def sample(
        self, x: Batch | None = None, *, n_samples: int = 1, seed: int | None = None, decode: bool = False
    ) -> Sampled:
        """POST /sample; see VaeClient.sample."""
        return await self._run(self._sample(x, n_samples, seed, decode))

    async def decode(self, z: ArrayLike) -> np.ndarray:
        """POST /decode; see VaeClient.decode."""
        return await self._run(self._decode(z))

    async def elbo(
        self,
        x: Batch,
        *,
        n_samples: int | None = None,
        iw_samples: int | None = None,
        seed: int | None = None,
        feature_scores: bool = False,
        threshold: float | None = None,
        fpr: float | None = None,
    ) -> ElboResult:
        """POST /elbo; see VaeClient.elbo."""
        return await self._run(self._elbo(x, n_samples, iw_samples, seed, feature_scores, threshold, fpr))

    async def heatmap(self, x: Batch, *, n_samples: int = 8, seed: int | None = None) -> Heatmap:
        """Per-pixel scores in nats; see VaeClient.heatmap."""
        return await self._run(self._heatmap(x, n_samples, seed))

    async def heatmap_png(self, x: Batch, *, n_samples: int = 8, seed: int | None = None) -> bytes:
        """POST /heatmap; see VaeClient.heatmap_png."""
        return await self._run(self._heatmap_png(x, n_samples, seed))

    async def model(self) -> dict:
        """GET /v1/model; see VaeClient.model."""
        return await self._run(self._model())

    async def ready(self) -> bool:
        """GET /readyz; see VaeClient.ready."""
        return await self._run(self._ready())

    async def aclose(self) -> None:
        """Close the HTTP connections, unless the httpx.AsyncClient was passed in."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncVaeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
