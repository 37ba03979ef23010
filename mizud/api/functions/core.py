"""Diagnostics and session functions: apitest, version, info, help, preauth, ..."""

from __future__ import annotations

import platform

from ... import __version__
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import Functions, REQ_PUBLIC, Access, Category

NO_AUTH = Access(req_key=0, req_user=REQ_PUBLIC, req_user_login=0)


#: This module's API functions (registered by build_registry).
fn = Functions()


@fn("apitest", Category.PUBLIC)
async def apitest(call: Call) -> ApiAnswer:
    """API test: checks the key and credentials if given"""
    who = call.caller.user.username if call.caller.user else "anonymous"
    return ok(f"API test passed ({who}, {call.caller.how})")


@fn("apitest1", Category.PUBLIC, access=NO_AUTH)
async def apitest1(call: Call) -> ApiAnswer:
    """API test without any authentication"""
    return ok("API test passed")


@fn("version", Category.ADMIN)
async def version(call: Call) -> ApiAnswer:
    """software version"""
    return ok(f"mizud {__version__}")


@fn("heartbeat", Category.ADMIN, params=("mode",))
async def heartbeat(call: Call) -> ApiAnswer:
    """server heartbeat; mode=full also checks the database"""
    if call.arg("mode").lower() == "full":
        await call.api.store.upkeep.ping()
        return ok("alive, database ok")
    return ok("alive")


@fn("info", Category.ADMIN)
async def info(call: Call) -> ApiAnswer:
    """server status and important parameters"""
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


@fn("help", Category.PUBLIC, params=("name",), access=NO_AUTH)
async def help_(call: Call) -> ApiAnswer:
    """list the functions, or one function's parameters"""
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


@fn("preauth", Category.PUBLIC, access=NO_AUTH, rate=5)
async def preauth(call: Call) -> ApiAnswer:
    """start a nonce login: returns a new nonce"""
    nonce = await call.api.nonces.issue(call.request.source)
    return ok(f"new nonce is:{nonce}EOF")


@fn("login", Category.USER)
async def login(call: Call) -> ApiAnswer:
    """log in: checks the credentials and returns the user id"""
    user = call.caller.user
    if user is None:
        return error("login needs authid and a password or authmd5", 421)
    return ok(str(user.id), [{"id": user.id, "username": user.username, "type": user.type}])


@fn("keepalive", Category.PUBLIC, access=NO_AUTH)
async def keepalive(call: Call) -> ApiAnswer:
    """keep the connection alive"""
    return ok("keepalive")


@fn("reload", Category.ADMIN)
async def reload(call: Call) -> ApiAnswer:
    """re-read the configuration (live options only)"""
    applied, pending = call.api.reload()
    await call.api.rater.rebuild()
    message = f"reloaded; changed: {', '.join(applied) or 'nothing'}"
    if pending:
        message += f"; need a restart: {', '.join(pending)}"
    return ok(message)


@fn("apireload", Category.ADMIN)
async def apireload(call: Call) -> ApiAnswer:
    """reload the tb_api access rules"""
    count = await call.api.reload_access()
    await call.api.publish("access")
    return ok(f"{count} tb_api rules loaded")


@fn("bannedlist", Category.ADMIN)
async def bannedlist(call: Call) -> ApiAnswer:
    """banned addresses and users"""
    bans = await call.api.bans.active()
    records = [{"kind": b.kind, "value": b.value, "until": b.until.isoformat(sep=" "), "reason": b.reason} for b in bans]
    return ok(f"{len(records)} banned", records)


@fn("delbanned", Category.ADMIN, params=("ip",))
async def delbanned(call: Call) -> ApiAnswer:
    """lift the ban of an address or user, or all"""
    target = call.require("ip")
    count = await call.api.bans.lift(None if target.lower() == "all" else target)
    return ok(f"{count} bans lifted")
