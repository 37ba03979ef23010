"""Diagnostics and session functions: apitest, version, info, help, preauth, ..."""

from __future__ import annotations

from dataclasses import dataclass
import platform
from typing import TYPE_CHECKING, Awaitable, Callable

from ... import __version__
from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, REQ_PUBLIC, Access, Category

if TYPE_CHECKING:  # pragma: no cover
    from ...billing.rating import Rater
    from ...config import Settings
    from ...ratelimit import Clock
    from ...security.bans import Bans
    from ...store.billing import BillingStore
    from ..registry import Registry
    from ..state import Nonces, Traffic

NO_AUTH = Access(req_key=0, req_user=REQ_PUBLIC, req_user_login=0)


#: This module's API functions (registered by build_registry).
fn = Functions()


@dataclass(frozen=True, kw_only=True, eq=False)
class CoreFunctions:
    """The core functions: tests, version, status, help, nonces, login, reloads and bans."""

    bans: Bans
    clock: Clock
    nonces: Nonces
    publish: Callable[[str], Awaitable[None]]
    rater: Rater
    registry: Registry
    reload: Callable[[], tuple[list[str], list[str]]]
    reload_access: Callable[[], Awaitable[int]]
    settings: Settings
    store: BillingStore
    traffic: Traffic

    @fn("apitest", Category.PUBLIC)
    async def apitest(self, invocation: Invocation) -> ApiAnswer:
        """API test: checks the key and credentials if given"""
        who = invocation.caller.user.username if invocation.caller.user else "anonymous"
        return ok(f"API test passed ({who}, {invocation.caller.how})")

    @fn("apitest1", Category.PUBLIC, access=NO_AUTH)
    async def apitest1(self, invocation: Invocation) -> ApiAnswer:
        """API test without any authentication"""
        return ok("API test passed")

    @fn("version", Category.ADMIN)
    async def version(self, invocation: Invocation) -> ApiAnswer:
        """software version"""
        return ok(f"mizud {__version__}")

    @fn("heartbeat", Category.ADMIN, params=("mode",))
    async def heartbeat(self, invocation: Invocation) -> ApiAnswer:
        """server heartbeat; mode=full also checks the database"""
        if invocation.arg("mode").lower() == "full":
            await self.store.upkeep.ping()
            return ok("alive, database ok")
        return ok("alive")

    @fn("info", Category.ADMIN)
    async def info(self, invocation: Invocation) -> ApiAnswer:
        """server status and important parameters"""
        config = self.settings.current
        uptime = int(self.clock.seconds() - self.traffic.started)
        record = {
            "version": __version__,
            "python": platform.python_version(),
            "engine": config.engine,
            "uptime": uptime,
            "requests": self.traffic.requests,
            "mainaport": config.mainaport,
            "httpserver": config.httpserver,
            "functions": sum(1 for f in self.registry if f.implemented),
        }
        return ok(f"mizud {__version__} up {uptime}s", [record])

    @fn("help", Category.PUBLIC, params=("name",), access=NO_AUTH)
    async def help_(self, invocation: Invocation) -> ApiAnswer:
        """list the functions, or one function's parameters"""
        name = invocation.arg("name").lower()
        if name:
            function = self.registry.get(name)
            if function is None:
                return error(f"unknown function: {name[:64]}", 406)
            record = {
                "name": function.name,
                "category": function.category.value,
                "parameters": ",".join(function.params),
                "aliases": ",".join(function.aliases),
                "status": function.status,
                "summary": function.summary,
            }
            return ok(f"{function.name}: {function.summary}", [record])
        records = [
            {"name": f.name, "category": f.category.value, "parameters": ",".join(f.params), "status": f.status}
            for f in self.registry
        ]
        return ok(f"{len(records)} functions", records)

    @fn("preauth", Category.PUBLIC, access=NO_AUTH, rate=5)
    async def preauth(self, invocation: Invocation) -> ApiAnswer:
        """start a nonce login: returns a new nonce"""
        nonce = await self.nonces.issue(invocation.request.source)
        return ok(f"new nonce is:{nonce}EOF")

    @fn("login", Category.USER)
    async def login(self, invocation: Invocation) -> ApiAnswer:
        """log in: checks the credentials and returns the user id"""
        user = invocation.caller.user
        if user is None:
            return error("login needs authid and a password or authmd5", 421)
        return ok(str(user.id), [{"id": user.id, "username": user.username, "type": user.type}])

    @fn("keepalive", Category.PUBLIC, access=NO_AUTH)
    async def keepalive(self, invocation: Invocation) -> ApiAnswer:
        """keep the connection alive"""
        return ok("keepalive")

    @fn("reload", Category.ADMIN)
    async def reload_config(self, invocation: Invocation) -> ApiAnswer:
        """re-read the configuration (live options only)"""
        applied, pending = self.reload()
        await self.rater.rebuild()
        message = f"reloaded; changed: {', '.join(applied) or 'nothing'}"
        if pending:
            message += f"; need a restart: {', '.join(pending)}"
        return ok(message)

    @fn("apireload", Category.ADMIN)
    async def apireload(self, invocation: Invocation) -> ApiAnswer:
        """reload the tb_api access rules"""
        count = await self.reload_access()
        await self.publish("access")
        return ok(f"{count} tb_api rules loaded")

    @fn("bannedlist", Category.ADMIN)
    async def bannedlist(self, invocation: Invocation) -> ApiAnswer:
        """banned addresses and users"""
        bans = await self.bans.active()
        records = [{"kind": b.kind, "value": b.value, "until": b.until.isoformat(sep=" "), "reason": b.reason}
                   for b in bans]
        return ok(f"{len(records)} banned", records)

    @fn("delbanned", Category.ADMIN, params=("ip",))
    async def delbanned(self, invocation: Invocation) -> ApiAnswer:
        """lift the ban of an address or user, or all"""
        target = invocation.require("ip")
        count = await self.bans.lift(None if target.lower() == "all" else target)
        return ok(f"{count} bans lifted")
