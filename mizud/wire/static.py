"""Static files and plain not-found answers for the HTTP site."""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.static import Data, File

log = Logger()


class NotFound(Resource):
    """A 404 with a plain ERROR line."""

    isLeaf = True

    def __init__(self, message: bytes = b"ERROR: not found") -> None:
        super().__init__()
        self.message = message

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.message


NOT_FOUND = NotFound()


class StaticFiles(File):
    """Static files under /mvweb: no directory listings, nothing outside the directory.

    A symbolic link is followed only when its target lies inside the served
    directory (compared after resolving every link), and a path with a NUL
    byte is not found rather than an error.
    """

    def __init__(self, path: str, *args: Any, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(path, *args, **kwargs)
        #: The served directory with every symbolic link resolved.
        self.root = root or os.path.realpath(path)

    def directoryListing(self) -> Resource:
        """Directories are not listed."""
        return NOT_FOUND

    def getChild(self, path: bytes, request: Request) -> Resource:
        """The file or directory C{path}, if it really lies inside the served directory."""
        if b"\x00" in path:
            return NOT_FOUND
        child: Resource = super().getChild(path, request)
        if isinstance(child, File) and not _inside(child.path, self.root):
            log.info("/mvweb: refused {path!r}, which leads outside {root}", path=path[:80], root=self.root)
            return NOT_FOUND
        return child

    def createSimilarFile(self, path: str) -> File:
        """A child of the same kind, confined to the same directory."""
        similar = type(self)(path, self.defaultType, self.ignoredExts, self.registry, root=self.root)
        similar.processors = self.processors
        return similar


def _inside(path: str, root: str) -> bool:
    """Whether C{path}, every link resolved, is C{root} or lies below it."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class Generated(Data):
    """A document made by C{make} on its first request and kept (the OpenAPI document, say); otherwise
    twisted.web's L{Data}: content type and length, HEAD without a body, no children."""

    def __init__(self, make: Callable[[], bytes], content_type: str) -> None:
        super().__init__(b"", content_type)
        self.make: Callable[[], bytes] | None = make

    def render_GET(self, request: Request) -> bytes:
        """The document (made now, the first time)."""
        if self.make is not None:
            self.data, self.make = self.make(), None
        body: bytes = super().render_GET(request)
        return body

    render_HEAD = render_GET
