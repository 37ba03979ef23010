"""Diagnostics and session functions: apitest, version, info, help, preauth, ..."""

from __future__ import annotations

import platform

from ... import __version__
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import REQ_PUBLIC, Access, Category, Registry

NO_AUTH = Access(req_key=0, req_user=REQ_PUBLIC, req_user_login=0)


def register(registry: Registry) -> None:
    """Register this module's handlers."""
    fn = registry.function

    @fn("apitest", Category.PUBLIC, "API test: checks the key and credentials if given")
    async def apitest(call: Call) -> ApiAnswer:
        who = call.caller.user.username if call.caller.user else "anonymous"
        return ok(f"API test passed ({who}, {call.caller.how})")

    @fn("apitest1", Category.PUBLIC, "API test without any authentication", access=NO_AUTH)
    async def apitest1(call: Call) -> ApiAnswer:
        return ok("API test passed")

    @fn("version", Category.ADMIN, "software version")
    async def version(call: Call) -> ApiAnswer:
        return ok(f"mizud {__version__}")

    @fn("heartbeat", Category.ADMIN, "server heartbeat; mode=full also checks the database", ("mode",))
    async def heartbeat(call: Call) -> ApiAnswer:
        if call.arg("mode").lower() == "full":
            await call.api.db.run_statement("heartbeat", "SELECT 1")
            return ok("alive, database ok")
        return ok("alive")

    @fn("info", Category.ADMIN, "server status and important parameters")
    async def info(call: Call) -> ApiAnswer:
        api = call.api
        config = api.settings.current
        uptime = int(api.clock.seconds() - api.started)
        record = {
            "version": __version__,
            "python": platform.python_version(),
            "engine": config.engine,
            "uptime": uptime,
            "requests": api.requests,
            "mainaport": config.mainaport,
            "httpserver": config.httpserver,
            "functions": sum(1 for f in api.registry if f.handler),
        }
        return ok(f"mizud {__version__} up {uptime}s", [record])

    @fn("help", Category.PUBLIC, "list the functions, or one function's parameters", ("name",), access=NO_AUTH)
    async def help_(call: Call) -> ApiAnswer:
        name = call.arg("name").lower()
        if name:
            function = call.api.registry.get(name)
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
            for f in call.api.registry
        ]
        return ok(f"{len(records)} functions", records)

    @fn("preauth", Category.PUBLIC, "start a nonce login: returns a new nonce", access=NO_AUTH, rate=5)
    async def preauth(call: Call) -> ApiAnswer:
        nonce = await call.api.nonces.issue(call.request.source)
        return ok(f"new nonce is:{nonce}EOF")

    @fn("login", Category.USER, "log in: checks the credentials and returns the user id")
    async def login(call: Call) -> ApiAnswer:
        user = call.caller.user
        if user is None:
            return error("login needs authid and a password or authmd5", 421)
        return ok(str(user.id), [{"id": user.id, "username": user.username, "type": user.type}])

    @fn("keepalive", Category.PUBLIC, "keep the connection alive", access=NO_AUTH)
    async def keepalive(call: Call) -> ApiAnswer:
        return ok("keepalive")

    @fn("reload", Category.ADMIN, "re-read the configuration (live options only)")
    async def reload(call: Call) -> ApiAnswer:
        applied, pending = call.api.reload()
        await call.api.rater.rebuild()
        message = f"reloaded; changed: {', '.join(applied) or 'nothing'}"
        if pending:
            message += f"; need a restart: {', '.join(pending)}"
        return ok(message)

    @fn("apireload", Category.ADMIN, "reload the tb_api access rules")
    async def apireload(call: Call) -> ApiAnswer:
        count = await call.api.reload_access()
        await call.api.publish("access")
        return ok(f"{count} tb_api rules loaded")

    @fn("bannedlist", Category.ADMIN, "banned addresses and users")
    async def bannedlist(call: Call) -> ApiAnswer:
        bans = await call.api.bans.active()
        records = [{"kind": b.kind, "value": b.value, "until": b.until.isoformat(sep=" "), "reason": b.reason} for b in bans]
        return ok(f"{len(records)} banned", records)

    @fn("delbanned", Category.ADMIN, "lift the ban of an address or user, or all", ("ip",))
    async def delbanned(call: Call) -> ApiAnswer:
        target = call.require("ip")
        count = await call.api.bans.lift(None if target.lower() == "all" else target)
        return ok(f"{count} bans lifted")
