"""Account functions: newuseri (newuser, adduser), newuseru, deluser, listusers, getdetails, changepwd."""

from __future__ import annotations

import re
import secrets
from typing import Any

from ...billing.rating import normalise
from ...sip.routing import Router
from ...store.billing import USER_ENDUSER, User
from ...store.money import MoneyError, format_money, parse_amount
from ..answer import ApiAnswer, error, ok
from ..auth import secret_equal
from ..custom import CustomError
from ..dispatcher import Call
from ..registry import Functions, REQ_PUBLIC, Access, Category
from ..request import RequestError
from ...text import canonical_id

USERNAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")
EMAIL = re.compile(r"^[^@\s<>\"']{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
NEW_USER_PARAMS = ("u_username", "u_password", "u_name", "u_email", "u_phone", "u_currency", "u_country", "u_address")
TEXT_LIMIT = 200

#: Columns getdetails shows per mode (max: every column but the password).
DETAILS = {
    "min": ("id", "username", "credit", "currency"),
    "normal": ("id", "username", "name", "email", "phone", "address", "country", "currency", "credit", "postpaid",
               "creditlimit", "tariffid", "status", "statusdate", "forwardalways", "forwardonbusy",
               "forwardonnoanswer"),
}
LIST_ORDER = {"id": "id", "username": "username", "name": "name", "credit": "credit", "created": "created"}


def _text(call: Call, name: str) -> str:
    value = call.arg(name).strip()
    if len(value) > TEXT_LIMIT or not value.isprintable():
        raise RequestError(f"{name} must be at most {TEXT_LIMIT} printable characters", 412)
    return value


def _new_user_fields(call: Call, strict: bool) -> dict[str, Any]:
    """Validated fields of a new user from u_* parameters."""
    username = call.require("u_username")
    if not USERNAME.match(username):
        raise RequestError("u_username may hold letters, digits and _ . @ + - (1 to 64)", 412)
    password = call.require("u_password")
    if len(password) > 128 or not password.isprintable():
        raise RequestError("u_password must be at most 128 printable characters", 412)
    if strict:
        if len(password) < 8 or not re.search(r"[A-Za-z]", password) or not re.search(r"\d", password):
            raise RequestError("u_password needs at least 8 characters with letters and digits", 412)
        if username.lower() in password.lower():
            raise RequestError("u_password must not contain the username", 412)
    email = _text(call, "u_email")
    if (email or strict) and not EMAIL.match(email):
        raise RequestError("u_email is not an e-mail address", 412)
    currency = (call.arg("u_currency") or call.api.settings.current.defaultcurrency).upper()
    if not CURRENCY.match(currency):
        raise RequestError("u_currency must be a three-letter code", 412)
    return {
        "username": username, "password": password, "currency": currency, "email": email,
        "name": _text(call, "u_name"), "phone": _text(call, "u_phone"), "country": _text(call, "u_country"),
        "address": _text(call, "u_address"), "forgotquestion": _text(call, "forgotquestion"),
        "forgotanswer": _text(call, "forgotanswer"),
    }


async def check_username(call: Call, username: str, *, signup: bool, userid: int | None = None,
                         param: str = "u_username") -> None:
    """Refuse (412) a username that would take over something already reachable by that name.

    Names are resolved username first (an authid, an SMS or call target),
    so a username that is another user's id, a PIN, a DID or a number
    another user proved would shadow it; every way of naming a user checks
    this.  A public signup may not pick a phone number at all unless
    C{signupnumericusernames}, and never one that routes to a gateway.
    """
    number = normalise(username)
    if number is not None and signup:
        if not call.api.settings.current.signupnumericusernames:
            raise RequestError(f"{param} must not be a phone number: numbers are assigned by the operator", 412)
        routes = await Router(call.api.store).routes(number)
        if any(route.kind == "gateway" for route in routes):
            raise RequestError(f"{param} {username} is a number that is routed elsewhere", 412)
    conflict = await call.api.store.names.conflict(username, number, userid)
    if conflict is not None:
        raise RequestError(f"{param} {username} is {conflict}", 412)


async def _create(call: Call, fields: dict[str, Any], credit: Any, signup: bool = False, **extra: Any) -> ApiAnswer:
    store = call.api.store
    if await store.find_user(fields["username"]) is not None:
        return error(f"username already exists: {fields['username']}", 412)
    await check_username(call, fields["username"], signup=signup)
    username, password, currency = fields.pop("username"), fields.pop("password"), fields.pop("currency")
    try:
        userid = await store.create_user(username, password, currency=currency, credit=credit, **fields, **extra)
    except MoneyError:
        raise
    except Exception:
        # Two signups racing for one name: the database's unique index decides.
        if await store.find_user(username) is not None:
            return error(f"username already exists: {username}", 412)
        raise
    return ok(str(userid), [{"id": userid, "username": username}])


def _details(user_row: dict[str, Any], mode: str, money: Any) -> dict[str, Any]:
    columns = DETAILS.get(mode) or tuple(c for c in user_row if c not in ("password",))
    record = {}
    for column in columns:
        value = user_row.get(column)
        if column in ("credit", "creditlimit"):
            value = format_money(money(value))
        record[column] = value
    return record


#: This module's API functions (registered by build_registry).
fn = Functions()


@fn("newuseri", Category.SENSITIVE, params=(*NEW_USER_PARAMS, "credit"))
async def newuseri(call: Call) -> ApiAnswer:
    """add a user (admins, trusted sources); credit= sets opening credit"""
    fields = _new_user_fields(call, strict=False)
    credit = parse_amount(call.arg("credit") or "0", allow_zero=True)
    return await _create(call, fields, credit)


@fn("newuseru",
    Category.PUBLIC,
    params=(*NEW_USER_PARAMS, "deviceid"),
    access=Access(req_key=1, req_user=REQ_PUBLIC, req_user_login=0),
    rate=0.05)
async def newuseru(call: Call) -> ApiAnswer:
    """public signup (validated, rate limited to one per 20 s per address)"""
    fields = _new_user_fields(call, strict=True)
    deviceid = _text(call, "deviceid")
    return await _create(call, fields, 0, signup=True, deviceid=deviceid, type=USER_ENDUSER)


@fn("deluser", Category.ADMIN, params=("u_id", "u_username"))
async def deluser(call: Call) -> ApiAnswer:
    """delete a user (balance must be zero)"""
    target = await _named_user(call, call.arg("u_id"), call.arg("u_username"))
    if call.caller.user is not None and call.caller.user.id == target.id:
        return error("an admin cannot delete the account it is logged in with", 412)
    name = await call.api.store.delete_user(target.id)
    return ok(f"deleted {name}")


@fn("listusers", Category.ADMIN, params=("u_type", "u_maxcount", "u_extended", "u_order"))
async def listusers(call: Call) -> ApiAnswer:
    """list users"""
    kind = call.integer("u_type", 0, 99) if call.arg("u_type") else None
    count = call.integer("u_maxcount", 1, 10000, 100)
    order = LIST_ORDER.get(call.arg("u_order", "id").lower())
    if order is None:
        return error(f"u_order must be one of {', '.join(LIST_ORDER)}", 412)
    extended = call.arg("u_extended") in ("1", "true", "yes")
    records = [{k: (format_money(v) if k == "credit" else v) for k, v in row.items()}
               for row in await call.api.store.list_users(kind, count, order, extended)]
    return ok(f"{len(records)} users", records)


@fn("getdetails", Category.USER, params=("mode",))
async def getdetails(call: Call) -> ApiAnswer:
    """the caller's account details (mode min, normal or max)"""
    user = call.user()
    mode = call.arg("mode", "normal").lower()
    if mode not in ("min", "normal", "max"):
        return error("mode must be min, normal or max", 412)
    row = await call.api.store.user_row(user.id, "getdetails")
    if row is None:
        raise RequestError(f"unknown user: {user.username}", 404)
    return ok(user.username, [_details(row, mode, call.api.db.engine.money)])


reminder = Access(req_key=1, req_user=REQ_PUBLIC, req_user_login=0)


@fn("forgotpasswordquestion", Category.PUBLIC, params=("email",), access=reminder, rate=0.2)
async def forgotpasswordquestion(call: Call) -> ApiAnswer:
    """the password reminder question of an account, by e-mail"""
    found = await _by_email(call)
    if found is None or not found["forgotquestion"]:
        return error("no question for this e-mail", 404)
    return ok(found["forgotquestion"])


@fn("forgotpasswordanswer", Category.PUBLIC, params=("email", "forgotpasswordanswer"), access=reminder, rate=0.2)
async def forgotpasswordanswer(call: Call) -> ApiAnswer:
    """answer the reminder question: a new password is e-mailed"""
    config = call.api.settings.current
    if not config.smtpserver:
        return error("e-mail is not configured; ask support", 412)
    found = await _by_email(call)
    # The account the answer is for (the e-mail, as it was looked up, when it names nobody).
    account = str(found["username"]) if found else call.arg("email").strip().lower()[:64]
    if call.api.lockout.account_banned(account):
        return error("banned: too many failed authentications", 403)
    given = " ".join(call.require("forgotpasswordanswer").split()).lower()
    expected = " ".join(str(found["forgotanswer"]).split()).lower() if found else ""
    if found is None or not expected or not secret_equal(given, expected):
        await call.api.failed_login(call.request, "wrong reminder answer", account)
        return error("wrong answer", 403)
    password = secrets.token_urlsafe(9)
    body = f"The password of {found['username']} is now: {password}\nChange it after you log in."
    try:
        await call.api.actions.email(str(found["email"]), "your new password", body)
    except CustomError as problem:
        return error(f"the new password could not be sent ({problem}); the password is unchanged", 412)
    await call.api.store.set_password(int(found["id"]), password)
    return ok("a new password was sent by e-mail")


@fn("changepwd", Category.USER, params=("newpassword", "oldpassword"))
async def changepwd(call: Call) -> ApiAnswer:
    """change the caller's password"""
    user = call.user()
    new = call.require("newpassword")
    if len(new) < 6 or len(new) > 128 or not new.isprintable() or " " in new:
        return error("newpassword must be 6 to 128 printable characters without spaces", 412)
    admin_for_other = call.caller.level <= 6 and call.request.get("targetuser")
    if not admin_for_other and not secret_equal(call.arg("oldpassword"), user.password):
        return error("oldpassword is wrong", 403)
    await call.api.store.set_password(user.id, new)
    return ok("password changed")


async def _by_email(call: Call) -> dict[str, Any] | None:
    email = call.require("email").strip()
    if not EMAIL.match(email):
        raise RequestError("email is not an e-mail address", 412)
    return await call.api.store.find_by_email(email)


async def _named_user(call: Call, userid: str, username: str) -> User:
    store = call.api.store
    user = None
    if userid:
        number = canonical_id(userid)
        if number is None:
            raise RequestError("u_id must be a user id", 412)
        user = await store.get_user(number)
    elif username:
        user = await store.find_user(username)
    else:
        raise RequestError("missing parameter: u_id or u_username", 421)
    if user is None:
        raise RequestError(f"no such user: {(userid or username)[:64]}", 404)
    return user

