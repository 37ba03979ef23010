"""twistd plugin options and the service tree they build."""

from __future__ import annotations

import textwrap
from typing import Any

from twisted.python import usage

from .app import make_service
from .config import OPTIONS, ConfigError, Settings
from .service import MizudService


def _describe_options() -> str:
    lines = ["Global options (in the [global] section of --config, or with --set key=value):", ""]
    for opt in OPTIONS:
        names = ", ".join((opt.name, *opt.aliases))
        live = " (live)" if opt.live else ""
        lines.append(f"  {names} = {opt.default!s}{live}")
        lines.extend(textwrap.wrap(opt.doc, 74, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


class Options(usage.Options):
    """Command line of C{twistd mizud}."""

    synopsis = "[--config FILE] [--set key=value ...]"
    optParameters = [["config", "c", None, "ini file whose [global] section sets options"]]

    def __init__(self) -> None:
        super().__init__()
        self["set"] = []
        self["settings"] = None

    def opt_set(self, assignment: str) -> None:
        """Set one global option, key=value (repeatable; wins over --config)."""
        self["set"].append(assignment)

    opt_s = opt_set

    def getUsage(self, width: int | None = None) -> str:
        """twistd's usage text followed by every global option, unwrapped."""
        return super().getUsage(width) + "\n" + _describe_options() + "\n"

    def postOptions(self) -> None:
        """Read and validate the configuration; a bad one ends the start here."""
        try:
            self["settings"] = Settings(self["config"], tuple(self["set"]))
        except ConfigError as error:
            raise SystemExit(f"mizud: config error: {error}") from None


def makeService(options: Options, reactor: Any = None) -> MizudService:
    """The service tree for the options (see L{mizud.app.make_service}); binds and opens nothing."""
    return make_service(options["settings"], reactor)
