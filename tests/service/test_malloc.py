"""glibc's mmap threshold, pinned in a serving process (service/http/malloc.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from service.http import app as app_module
from service.http.malloc import pin_mmap_threshold
from service.http.settings import Settings

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

# A 16 MiB array is freed (glibc's threshold rises to its size, under the 32 MiB cap), then sixteen 4 MiB arrays
# are made, each followed by a 64 KiB one that stays (a request's longer-lived objects, between them on the heap),
# and freed. Prints how much the process's RSS grew, in MiB.
RETAINED = """
import sys
import numpy as np, psutil
from service.http.malloc import pin_mmap_threshold
if sys.argv[1] == "pinned":
    assert pin_mmap_threshold()
before = psutil.Process().memory_info().rss
big = np.ones(16 << 17)
del big
blocks, kept = [], []
for _ in range(16):
    blocks.append(np.ones(4 << 17))
    kept.append(np.ones(8 << 10))
del blocks
print((psutil.Process().memory_info().rss - before) / 2**20)
"""


def retained_mib(mode: str) -> float:
    """In a fresh process, without any malloc setting of the environment's (which would stop glibc's threshold from
    rising, so the unpinned case would look pinned)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    run = subprocess.run([sys.executable, "-c", RETAINED, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(run.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only: elsewhere pin_mmap_threshold changes nothing")
def test_with_the_threshold_pinned_freed_arrays_leave_the_process():
    """Unpinned, the freed 16 MiB array raises glibc's threshold, so the 64 MiB of 4 MiB arrays come from the heap
    and stay, held in by the small arrays between them; pinned, each is its own mapping, unmapped when freed."""
    assert retained_mib("unpinned") > 48
    assert retained_mib("pinned") < 16


def test_an_operators_own_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert pin_mmap_threshold() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert pin_mmap_threshold() is False


def test_the_service_pins_the_threshold_as_it_starts(digits_model_dir, monkeypatch):
    from fastapi.testclient import TestClient

    calls = []
    monkeypatch.setattr(app_module, "pin_mmap_threshold", lambda: calls.append("pinned") or True)
    with TestClient(app_module.create_app(Settings(model_dir=digits_model_dir))) as client:
        assert client.get("/readyz").status_code == 200
    assert calls == ["pinned"]
