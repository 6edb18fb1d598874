"""The ASGI app configured from VAE_* environment variables: `uvicorn service.http.main:app`.

A bad setting or model directory exits at import with a one-line reason.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.core.errors import ArtifactError
from service.http.app import create_app
from service.http.settings import Settings, describe_settings_error

try:
    app = create_app(Settings())
except ValidationError as exc:
    sys.exit(f"vae serve: {describe_settings_error(exc)}")
except ArtifactError as exc:
    sys.exit(f"vae serve: {exc}")
