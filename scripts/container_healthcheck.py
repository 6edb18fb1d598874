"""Container health probe: exit 0 when this container's `vae serve` answers GET /readyz with 200.

The serve image has no curl, so its HEALTHCHECK (and the compose healthcheck) run this file with the
image's own Python. Standard library only; proxies from the environment are ignored, since the
probe only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("VAE_PORT", "8000")
    url = f"http://127.0.0.1:{port}/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=float(os.environ.get("VAE_HEALTHCHECK_TIMEOUT_S", "3"))) as response:
            ok = response.status == 200
    except Exception as exc:  # connection refused, 503 while loading or draining, timeout
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
