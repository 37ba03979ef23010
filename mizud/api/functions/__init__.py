"""API function handlers, one module per area, each declaring its handlers on its C{fn}
(a L{mizud.api.registry.Functions})."""

from __future__ import annotations

from .. import catalogue
from ..registry import Registry


def build_registry() -> Registry:
    """The one place that registers every API function: the spec's catalogue (with the reasons of what is
    not supported), then every module's handlers, which replace their catalogue entries."""
    from . import (accounts, admin, calls, cdrs, console, core, fields, money, numbers, operations, outbound, rating,
                   servers, sipstate, webphone)

    registry = Registry()
    catalogue.load(registry)
    for module in (core, rating, money, accounts, fields, cdrs, numbers, admin, operations, sipstate, servers,
                   outbound, calls, console, webphone):
        registry.take(module.fn)
    return registry
