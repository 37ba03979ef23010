"""The old HTTP interface (spec/mizu-http-interface-legacy.md) on the same functions.

C{/xmapi/COMMAND?key=..&usr=..&pwd=..} (served on C{httpserver}, default
8084, and on the shared port) maps onto the registry's functions:

    p2p -> p2p, sms -> sms, cb -> callback, balance -> balance,
    rating -> rating, addcredit -> addcredit, adduser -> newuseri,
    charge -> charge, cli -> cli, db -> db, oop -> oop;
    no command: two numbers make a p2p call, one number a callback.

Its own authentication: C{key} against C{httpapikey} (none needed when
empty); the user by C{usr} (username) or C{userid}, or by C{pin} (the PIN
field, or with C{callingcardauth=1} also username+password concatenated);
proof by C{pwd} or C{md5auth} = MD5("rd58s:" + username + ":" + password +
":" + httpapimd5salt) ("rD58s" accepted too).  C{httpapiallowedip} limits
every command to its addresses; C{httpapiallowedip2} addresses may run the
sensitive commands (addcredit, adduser) and act for a user without a
password; C{httpsmscallbackip} limits SMS commands.
"""

from __future__ import annotations

from .auth import in_networks, is_loopback, legacy_md5, same, secret_equal
from .request import ApiRequest

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
    """The registry function an old command (or, when empty, its numbers) names."""
    command = command.strip().lower()
    if command:
        return COMMANDS.get(command, command)
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
    request.context["legacy"] = True
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
