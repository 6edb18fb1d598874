"""`vae serve --workers N`'s supervisor: uvicorn's process manager, in a process that imports nothing else.

The command checks the model directory and its settings with the service's own code (numpy, pydantic, the
manifest), then execs `python -m service.http.supervise OPTIONS` in the same process, so the supervisor,
which only starts, watches and stops the workers, does not hold those libraries: 31 MB resident instead of
56 (measured with the digits model), of the 300 MB that two workers and their supervisor are allowed. The
exec keeps the process id, so signals and `kill` reach it as before. Each worker imports service.http.main,
which builds its app from the VAE_* environment the command set before the exec. The workers' shared metrics
directory, which the command made, is removed here when the workers have stopped: the command's own cleanup
does not run after an exec.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

APP = "service.http.main:app"


def exec_supervisor(options: dict[str, Any], remove_after: str | None = None) -> None:
    """Replace this process with the supervisor, given uvicorn's options (JSON-serialisable: the HTTP protocol is
    added there) and a directory to remove once uvicorn has stopped. Does not return."""
    argv = [sys.executable, "-m", __name__, json.dumps({"uvicorn": options, "remove_after": remove_after})]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


def main(argv: list[str]) -> None:
    import uvicorn

    from service.http.protocol import HttpProtocol

    given = json.loads(argv[0])
    try:
        uvicorn.run(APP, http=HttpProtocol, **given["uvicorn"])  # each answer's head and body in one write
    finally:
        if given["remove_after"] is not None:
            shutil.rmtree(given["remove_after"], ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
