"""/docs and /redoc without a CDN: Swagger UI and ReDoc from the fastapi-offline package, served by the app.

FastAPI's own pages load their scripts from jsDelivr, so offline they are blank. The page HTML is still
FastAPI's (get_swagger_ui_html, get_redoc_html); only the asset URLs point here.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = Path(str(files("fastapi_offline") / "static"))
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
STATIC = "/docs/static"
TITLE = "VAE anomaly-scoring service"

router = APIRouter(include_in_schema=False)  # behind the API key when one is set, as /openapi.json is


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{TITLE} - Swagger UI",
        swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC}/favicon.png",
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title=f"{TITLE} - ReDoc",
        redoc_js_url=f"{STATIC}/redoc.standalone.js",
        redoc_favicon_url=f"{STATIC}/favicon.png",
        with_google_fonts=False,
    )


@router.get(STATIC + "/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSET_TYPES:  # a fixed set of names: no path from the request reaches the file system
        raise HTTPException(404, f"no asset {name!r}")
    return FileResponse(ASSETS / name, media_type=ASSET_TYPES[name], headers={"cache-control": "max-age=86400"})
