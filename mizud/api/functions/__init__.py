"""API function handlers, one module per area: each module declares its handlers on its C{fn} (a
L{mizud.api.registry.Functions}) as the methods of one area class, whose constructor takes only what its
handlers use.

This package is the one place that builds the registry (L{build_registry}: the declarations, which
docs/api.md, the OpenAPI document and C{help} list) and the area objects (L{build_areas}: what each area
is given of the dispatcher and the daemon around it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import catalogue
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..dispatcher import Dispatcher


def build_registry() -> Registry:
    """Every API function: the spec's catalogue (with the reasons of what is not supported), then every
    module's declared handlers, which replace their catalogue entries."""
    from . import (accounts, admin, calls, cdrs, console, core, fields, money, numbers, operations, outbound, rating,
                   servers, sipstate, webphone)

    registry = Registry()
    catalogue.load(registry)
    for module in (core, rating, money, accounts, fields, cdrs, numbers, admin, operations, sipstate, servers,
                   outbound, calls, console, webphone):
        registry.take(module.fn)
    return registry


def build_areas(api: Dispatcher, registry: Registry) -> list[object]:
    """One object per area, each given only the dependencies its handlers use: the store and the
    configuration, the rating engine, the lockout, the SIP element and so on, and of the dispatcher itself
    only narrow operations (dispatch an inner request, count a failed proof, reload, publish a change,
    pause).  C{registry} is the declarations (what C{help}, C{info} and C{oop} look functions up in)."""
    from . import (accounts, admin, calls, cdrs, console, core, fields, money, numbers, operations, outbound, rating,
                   servers, sipstate, webphone)

    store, settings, db, sip = api.store, api.settings, api.db, api.sip
    return [
        core.CoreFunctions(
            bans=api.bans, clock=api.clock, nonces=api.nonces, publish=api.publish, rater=api.rater, registry=registry,
            reload=api.reload, reload_access=api.reload_access, settings=settings, store=store, traffic=api.traffic),
        rating.RatingFunctions(db=db, publish=api.publish, rater=api.rater, settings=settings),
        money.MoneyFunctions(find_user=api.find_user, store=store),
        accounts.AccountFunctions(actions=api.actions, failed_login=api.failed_login, lockout=api.lockout,
                                  settings=settings, store=store),
        fields.FieldFunctions(db=db, store=store),
        cdrs.CdrFunctions(db=db, rater=api.rater, settings=settings, store=store),
        numbers.NumberFunctions(db=db, failed_login=api.failed_login, settings=settings, sip=sip, store=store),
        admin.AdminFunctions(db=db, rater=api.rater, settings=settings, store=store, traffic=api.traffic),
        operations.OperationFunctions(
            bans=api.bans, db=db, maintenance=api.maintenance, operations=api.operations, pause=api.pause,
            publish=api.publish, rater=api.rater, reactor=api.reactor, reload=api.reload,
            reload_access=api.reload_access, settings=settings, sip=sip, store=store),
        sipstate.SipStateFunctions(sip=sip, store=store),
        servers.ServerFunctions(db=db, settings=settings, store=store),
        outbound.OutboundFunctions(db=db, dispatch=api.dispatch, reactor=api.reactor, settings=settings, sip=sip,
                                   store=store),
        calls.CallFunctions(settings=settings, sip=sip, store=store),
        console.ConsoleFunctions(clock=api.clock, db=db, dispatch=api.dispatch, logbuffer=api.logbuffer,
                                 registry=registry, settings=settings),
        webphone.WebphoneFunctions(node=api.node, sip=sip, store=store),
    ]
