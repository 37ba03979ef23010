"""The enduser web portal at /webvoip (and /webvoipportal): static files that talk only to /mvapireq.

The page, its script and its style come from this package (no build step,
nothing fetched at install time).  C{/webvoip/config.js} tells the script
what it needs to authenticate like any other API client: the API key
(C{apiv2key}), the server salt of authmd5 (C{apiv2md5salt}), the nonce
lifetime, and whether public tariffs are shown.  A browser client cannot
keep these secret, so serving the portal makes them public; passwords,
nonces and the lockout protect the accounts.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request
from ..config import Settings
from ..wire.static import StaticFiles

STATIC = Path(str(resources.files("mizud.portal") / "static"))


class _Assets(StaticFiles):
    """The portal's files: no directory listings, a short cache lifetime."""

    def render_GET(self, request: Request) -> Any:
        """A file, cacheable for ten minutes."""
        request.setHeader(b"cache-control", b"max-age=600")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return super().render_GET(request)


class PortalResource(Resource):
    """/webvoip and /webvoipportal: the page, its assets and its configuration."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.assets = _Assets(str(STATIC))

    def getChild(self, path: bytes, request: Request) -> Resource:
        """config.js, an asset, or the page itself (any other path: the single page routes it)."""
        if path == b"config.js":
            return _Config(self.settings)
        if path in (b"app.js", b"md5.js", b"style.css"):
            return self.assets.getChild(path, request)
        return _Page()

    def render_GET(self, request: Request) -> bytes:
        """/webvoip itself: the page."""
        return _Page().render_GET(request)


class _Page(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")  # deep links carry credentials
        request.setHeader(b"content-security-policy",
                          b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                          b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
        return (STATIC / "index.html").read_bytes()


class _Config(Resource):
    isLeaf = True

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def render_GET(self, request: Request) -> bytes:
        config = self.settings.current
        values = {
            "authkey": config.apiv2key, "serversalt": config.apiv2md5salt,
            "noncettl": int(config.apinoncettl), "publictariffs": config.publictariffs > 0,
            "currency": config.defaultcurrency,
        }
        request.setHeader(b"content-type", b"application/javascript; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"window.MIZUD = {json.dumps(values)};\n".encode()
