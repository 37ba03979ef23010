"""API function handlers, one module per area; each registers into REGISTRY."""

from __future__ import annotations

from .. import catalogue
from ..registry import Registry


def build_registry() -> Registry:
    """A registry with every spec function and every implemented handler."""
    from . import (accounts, admin, calls, cdrs, console, core, fields, money, numbers, operations, outbound, rating,
                   servers, sipstate, webphone)

    registry = Registry()
    catalogue.load(registry)
    core.register(registry)
    rating.register(registry)
    money.register(registry)
    accounts.register(registry)
    fields.register(registry)
    cdrs.register(registry)
    numbers.register(registry)
    admin.register(registry)
    admin.register_rebill(registry)
    operations.register(registry)
    sipstate.register(registry)
    servers.register(registry)
    outbound.register(registry)
    outbound.register_sms(registry)
    calls.register(registry)
    console.register(registry)
    webphone.register(registry)
    return registry
