"""The old HTTP interface (spec/mizu-http-interface-legacy.md) on the same functions.

C{/xmapi/COMMAND?key=..&usr=..&pwd=..} (served on C{httpserver}, default
8084, and on the shared port) maps onto the registry's functions:

    p2p -> p2p, sms -> sms, cb -> callback, balance -> balance,
    rating -> rating, addcredit -> addcredit, adduser -> newuseri,
    charge -> charge, cli -> cli, db -> db, oop -> oop;
    no command: two numbers make a p2p call, one number a callback.

Only these commands: any other path under C{/xmapi/} is an unknown
command (406), so the old interface is no way around the API's rules.
Requests pass the same dispatcher, limits, access rules (C{tb_api},
C{apitrustediponly}, C{req_ip}), trust options and lockout as
C{/mvapireq}, with the old interface's own pieces on top
(L{mizud.api.credentials.LegacyCredentials}): C{key} against
C{httpapikey} (or, when that is empty, C{apiv2key}); the user by C{usr}
(username) or C{userid}, or by C{pin} (the PIN field, or with
C{callingcardauth=1} also username+password concatenated); proof by C{pwd}
or C{md5auth} = MD5("rd58s:" + username + ":" + password + ":" +
httpapimd5salt) ("rD58s" accepted too), refused where the API demands
nonce login unless C{legacystaticauth}.  C{httpapiallowedip} limits every
command to its addresses; C{httpapiallowedip2} addresses count as trusted
(so they may run addcredit and adduser, and act for a user without a
password, as C{apideftrustadmin} allows); C{httpsmscallbackip} limits SMS
commands.
"""

from __future__ import annotations

from . import answer
from .auth import in_networks, is_loopback, legacy_md5, same, secret_equal
from .request import ApiRequest, Origin, RequestError

COMMANDS = {
    "p2p": "p2p",
    "sms": "sms",
    "cb": "callback",
    "balance": "balance",
    "rating": "rating",
    "addcredit": "addcredit",
    "adduser": "newuseri",
    "charge": "charge",
    "cli": "cli",
    "db": "db",
    "oop": "oop",
}

#: Commands the old interface allows without a password only from httpapiallowedip2.
SENSITIVE = frozenset({"addcredit", "newuseri"})
SMS = frozenset({"sms"})


def command_for(command: str, params: dict[str, str]) -> str:
    """The registry function an old command (or, when empty, its numbers) names.

    Raises L{RequestError} (406) for anything that is not one of the old interface's commands.
    """
    command = command.strip().lower()
    if command:
        function = COMMANDS.get(command)
        if function is None:
            raise RequestError(f"unknown command of the old interface: {command[:40]}", answer.BAD_FUNCTION)
        return function
    if params.get("anum") and params.get("bnum"):
        return "p2p"
    return "callback"


def map_parameters(function: str, params: dict[str, str]) -> None:
    """Rename the old interface's parameters to the functions' own, in place."""
    anum = params.get("anum", "")
    if function == "callback" and anum:
        params.setdefault("num", anum)
    elif function == "rating" and anum and not params.get("bnum"):
        params["bnum"] = anum
    elif function == "charge" and anum and not params.get("pin"):
        params["pin"] = anum
    elif function == "addcredit" and params.get("usr") and not params.get("pin"):
        params["pin"] = params["usr"]
    elif function in ("db", "oop") and params.get("txt"):
        params.setdefault("param1", params["txt"])


def to_request(command: str, request: ApiRequest) -> ApiRequest:
    """Turn a decoded old-interface request into a registry call."""
    function = command_for(command or request.function, request.params)
    map_parameters(function, request.params)
    request.function = function
    request.origin = Origin(legacy=True)
    return request


def address_allowed(source: str, allowed: tuple[object, ...]) -> bool:
    """An address list that is empty allows everyone; loopback is always allowed."""
    return not allowed or is_loopback(source) or in_networks(source, allowed)  # type: ignore[arg-type]


def password_matches(given_pwd: str, given_md5: str, username: str, password: str, salt: str) -> bool:
    """The old interface's proof: clear pwd, or md5auth with either spelling of its prefix."""
    if given_pwd:
        return secret_equal(given_pwd, password)
    if given_md5:
        return same(given_md5, legacy_md5(username, password, salt)) or same(
            given_md5, legacy_md5(username, password, salt, "rD58s")
        )
    return False
