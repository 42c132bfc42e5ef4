"""What browsers load: the tracking script ``GET /mallard.js`` and the dashboard.

The dashboard is a static HTML shell at ``GET /`` and its ES modules, style sheet and
icon at ``GET /assets/<name>``. It holds no data: every number comes from the stats
API, which checks access. All files are read once at import, sent gzipped to browsers
that accept it, and revalidated by a strong ETag (the content hash).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

from quart import Blueprint, Response, request
from werkzeug.exceptions import NotFound

blueprint = Blueprint("web", __name__)

CACHE_CONTROL = "public, max-age=86400"
REVALIDATE = "no-cache"  # the dashboard's files keep their names: always ask, 304 while unchanged
DASHBOARD = "dashboard"
CONTENT_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "html": "text/html; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """A static file's bytes, as is and gzipped, its ETag (the content hash) and type."""

    plain: bytes
    gzipped: bytes
    etag: str  # unquoted; the gzipped bytes are a representation of their own: etag + "-gzip"
    content_type: str

    @classmethod
    def load(cls, name: str) -> Asset:
        """``name`` relative to ``static/``, e.g. ``mallard.js`` or ``dashboard/app.js``."""
        plain = (resources.files(__package__) / "static" / name).read_bytes()
        digest = hashlib.sha256(plain).hexdigest()[:32]
        content_type = CONTENT_TYPES[name.rpartition(".")[2]]
        return cls(plain, gzip.compress(plain, compresslevel=9, mtime=0), digest, content_type)

    def representation(self, gzipped: bool) -> tuple[bytes, str]:
        """The bytes to send and their ETag."""
        return (self.gzipped, f"{self.etag}-gzip") if gzipped else (self.plain, self.etag)


def _dashboard_assets() -> dict[str, Asset]:
    folder = resources.files(__package__) / "static" / DASHBOARD
    return {
        entry.name: Asset.load(f"{DASHBOARD}/{entry.name}")
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.rpartition(".")[2] in CONTENT_TYPES
    }


TRACKER = Asset.load("mallard.js")
DASHBOARD_ASSETS = _dashboard_assets()
INDEX = DASHBOARD_ASSETS.pop("index.html")


def _send(
    asset: Asset, cache_control: str, extra_headers: dict[str, str] | None = None
) -> Response:
    """The asset, gzipped if the browser accepts it, or 304 when its ETag still matches."""
    gzipped = "gzip" in request.accept_encodings
    body, etag = asset.representation(gzipped)
    headers = {
        "ETag": f'"{etag}"',
        "Cache-Control": cache_control,
        "Vary": "Accept-Encoding",
        **(extra_headers or {}),
    }
    if request.if_none_match.contains_weak(etag):
        return Response(b"", 304, headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return Response(body, 200, headers, content_type=asset.content_type)


@blueprint.get("/mallard.js")
async def tracker() -> Response:
    """The tracking script: cached for a day, then revalidated (304 while unchanged)."""
    return _send(
        TRACKER,
        CACHE_CONTROL,
        {
            "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin",  # pages of any origin embed it
        },
    )


@blueprint.get("/")
async def dashboard() -> Response:
    """The dashboard's HTML shell; its script asks ``/api/auth/status`` what to show."""
    return _send(INDEX, REVALIDATE)


@blueprint.get("/assets/<name>")
async def dashboard_asset(name: str) -> Response:
    asset = DASHBOARD_ASSETS.get(name)
    if asset is None:
        raise NotFound(f"no dashboard asset {name!r}")
    return _send(asset, REVALIDATE)
