"""``GET /ui`` and ``GET /ui/<file>``: the web page, plain files from ``taskrunner/web/ui/``.

The page needs no token to load: it is the same for everyone and holds no data; every API
call it makes carries the token its reader typed. The files are read once per process and
answered from memory, each with an ETag (a hash of its content, so the same on every
instance behind nginx; Tornado answers a matching ``If-None-Match`` with 304). The page
itself is revalidated on every load (``no-cache``), so an upgrade shows at once; it names
its scripts and style sheet with their hash (``ui/app.js?v=<hash>``), and those are cached
for a year and never asked for again until they change.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files

from taskrunner.errors import NotFound
from taskrunner.web.base import JSONHandler

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_PAGE = "index.html"
# The page runs only its own files, shows nothing from elsewhere and cannot be framed: the
# output of commands is rendered as text by app.js, and this makes sure nothing else runs.
_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_YEAR = 365 * 24 * 3600


@dataclass(frozen=True)
class Asset:
    """One file of the page, as answered."""

    body: bytes
    content_type: str
    version: str
    """The first 16 hex digits of the content's SHA-256."""


def _asset(name: str, body: bytes) -> Asset:
    suffix = name[name.rfind("."):]
    return Asset(body, _TYPES[suffix], hashlib.sha256(body).hexdigest()[:16])


@functools.cache
def assets() -> dict[str, Asset]:
    """The page's files by name; the page's references to the others carry their version."""
    folder = files("taskrunner.web").joinpath("ui")
    found = {entry.name: _asset(entry.name, entry.read_bytes()) for entry in folder.iterdir()
             if entry.is_file() and entry.name[entry.name.rfind("."):] in _TYPES}

    def versioned(match: re.Match[bytes]) -> bytes:
        name = match.group(2).decode()
        version = found[name].version if name in found else ""
        return match.group(1) + (f'?v={version}"' if version else '"').encode()

    page = re.sub(rb'((?:src|href)="ui/([\w.-]+))"', versioned, found[_PAGE].body)
    found[_PAGE] = _asset(_PAGE, page)
    return found


class PageHandler(JSONHandler):
    """The page at ``/ui``, its other files at ``/ui/<name>``. Public: it holds no data."""

    public_methods = ("GET",)
    _version = ""

    def get(self, name: str = _PAGE) -> None:
        asset = assets().get(name)
        if asset is None or (name == _PAGE and self.path_args):
            # The page is only /ui: its relative references would not resolve elsewhere.
            raise NotFound(f"no file {name!r} in the page")
        self._version = asset.version
        self.set_header("Content-Type", asset.content_type)
        if name != _PAGE and self.get_query_argument("v", None) == asset.version:
            self.set_header("Cache-Control", f"public, max-age={_YEAR}, immutable")
        else:
            self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        if name == _PAGE:
            self.set_header("Content-Security-Policy", _POLICY)
        self.finish(asset.body)

    def compute_etag(self) -> str | None:
        return f'"{self._version}"' if self._version else None
