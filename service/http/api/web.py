"""GET /: a small web page over the API, and the training pictures of DIR/report/ that it shows.

The page is static HTML, CSS and JavaScript shipped with the package (service/http/web/); it holds nothing
secret, so it is public. Everything it shows comes from the API, which keeps its API key: the page sends
`Authorization: Bearer <key>` when the user types one in.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.core.errors import ServiceError

# The page's files: name -> media type. Nothing else under /ui is served.
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Same-origin scripts and styles only; pictures may also be blob: URLs (fetched with the API key).
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
REPORT_DIR = "report"  # written by `vae train` and `vae report` (training/report.py)
# Pictures only: a plain file name (no separators, no leading dot) with one of these extensions.
REPORT_PICTURE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(png|jpg|jpeg)")
PICTURE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg"}

router = APIRouter(include_in_schema=False)  # public (service/http/api/access.py): the page and its own files
protected = APIRouter(tags=["model"])  # behind the API key when one is set, like GET /v1/model


class NotFound(ServiceError):
    """No such page file or report picture."""

    status_code = 404
    code = "not_found"


@cache
def _static(name: str) -> bytes:
    return resources.files("service.http").joinpath("web", name).read_bytes()


def _page_file(name: str) -> Response:
    return Response(
        _static(name),
        media_type=STATIC[name],
        headers={
            "content-security-policy": PAGE_POLICY,
            "x-content-type-options": "nosniff",
            "cache-control": "no-cache",
        },
    )


@router.get("/")
async def index() -> Response:
    """The web page: the model card, the training pictures, and scoring of uploaded images or typed rows."""
    return _page_file("index.html")


@router.get("/ui/{name}")
async def page_file(name: str) -> Response:
    """The page's script and style sheet."""
    if name not in STATIC:
        raise NotFound(f"/ui/{name}: no such file; the page's files are {', '.join(sorted(STATIC))}")
    return _page_file(name)


# The report routes are plain `def`: FastAPI runs them in the thread pool, so their file reads never
# block the event loop.
def _report_dir(request: Request) -> Path:
    return Path(request.app.state.settings.model_dir) / REPORT_DIR


def _picture(report: Path, name: str) -> Path | None:
    """report/name when name is an allowed picture name and a file that lives in report/, else None.

    A link in report/ that points elsewhere is refused too.
    """
    if not REPORT_PICTURE.fullmatch(name):
        return None
    path = report / name
    return path if path.is_file() and path.resolve().parent == report.resolve() else None


def _pictures(report: Path) -> list[str]:
    if not report.is_dir():
        return []
    return sorted(p.name for p in report.iterdir() if _picture(report, p.name))


@protected.get("/v1/model/report")
def report_pictures(request: Request) -> dict:
    """The training pictures in the model directory's report/ folder, by name."""
    names = _pictures(_report_dir(request))
    return {"pictures": [{"name": n, "url": f"/v1/model/report/{n}"} for n in names]}


@protected.get(
    "/v1/model/report/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, 404: {"description": "no such picture"}},
)
def report_picture(name: str, request: Request) -> Response:
    """One training picture from the model directory's report/ folder (curves.png, samples.png, ...)."""
    path = _picture(_report_dir(request), name)
    if path is None:
        raise NotFound(f"{name!r}: no such picture in the model's report/ (see GET /v1/model/report)")
    return Response(
        path.read_bytes(),
        media_type=PICTURE_TYPES[name.rsplit(".", 1)[1]],
        headers={"x-content-type-options": "nosniff", "cache-control": "no-cache"},
    )
