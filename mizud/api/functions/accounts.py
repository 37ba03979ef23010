"""Account functions: newuseri (newuser, adduser), newuseru, deluser, listusers, getdetails, changepwd."""

from __future__ import annotations

from dataclasses import dataclass
import re
import secrets
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ...billing.rating import normalise
from ...sip.routing import Router
from ...store.billing import USER_ENDUSER, User
from ...store.money import MoneyError, format_money, parse_amount
from ..answer import ApiAnswer, error, ok
from ..auth import secret_equal
from ..custom import CustomError
from ..invocation import Invocation
from ..registry import Functions, REQ_PUBLIC, Access, Category
from ..request import RequestError
from ...text import canonical_id

if TYPE_CHECKING:  # pragma: no cover
    from ...config import Settings
    from ...security.lockout import Lockout
    from ...store.billing import BillingStore
    from ..custom import Actions
    from ..request import ApiRequest

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


def _text(invocation: Invocation, name: str) -> str:
    value = invocation.arg(name).strip()
    if len(value) > TEXT_LIMIT or not value.isprintable():
        raise RequestError(f"{name} must be at most {TEXT_LIMIT} printable characters", 412)
    return value


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


reminder = Access(req_key=1, req_user=REQ_PUBLIC, req_user_login=0)


async def check_username(store: BillingStore, username: str, *, signup: bool, numbers_allowed: bool = False,
                         userid: int | None = None, param: str = "u_username") -> None:
    """Refuse (412) a username that would take over something already reachable by that name.

    Names are resolved username first (an authid, an SMS or call target),
    so a username that is another user's id, a PIN, a DID or a number
    another user proved would shadow it; every way of naming a user checks
    this.  A public signup may not pick a phone number at all unless
    C{signupnumericusernames}, and never one that routes to a gateway.
    """
    number = normalise(username)
    if number is not None and signup:
        if not numbers_allowed:
            raise RequestError(f"{param} must not be a phone number: numbers are assigned by the operator", 412)
        routes = await Router(store).routes(number)
        if any(route.kind == "gateway" for route in routes):
            raise RequestError(f"{param} {username} is a number that is routed elsewhere", 412)
    conflict = await store.names.conflict(username, number, userid)
    if conflict is not None:
        raise RequestError(f"{param} {username} is {conflict}", 412)


@dataclass(frozen=True, kw_only=True, eq=False)
class AccountFunctions:
    """The account functions: creating, listing, showing and deleting users, their passwords and the reminder."""

    actions: Actions
    failed_login: Callable[[ApiRequest, str, str], Awaitable[None]]
    lockout: Lockout
    settings: Settings
    store: BillingStore

    def _new_user_fields(self, invocation: Invocation, strict: bool) -> dict[str, Any]:
        """Validated fields of a new user from u_* parameters."""
        username = invocation.require("u_username")
        if not USERNAME.match(username):
            raise RequestError("u_username may hold letters, digits and _ . @ + - (1 to 64)", 412)
        password = invocation.require("u_password")
        if len(password) > 128 or not password.isprintable():
            raise RequestError("u_password must be at most 128 printable characters", 412)
        if strict:
            if len(password) < 8 or not re.search(r"[A-Za-z]", password) or not re.search(r"\d", password):
                raise RequestError("u_password needs at least 8 characters with letters and digits", 412)
            if username.lower() in password.lower():
                raise RequestError("u_password must not contain the username", 412)
        email = _text(invocation, "u_email")
        if (email or strict) and not EMAIL.match(email):
            raise RequestError("u_email is not an e-mail address", 412)
        currency = (invocation.arg("u_currency") or self.settings.current.defaultcurrency).upper()
        if not CURRENCY.match(currency):
            raise RequestError("u_currency must be a three-letter code", 412)
        return {
            "username": username, "password": password, "currency": currency, "email": email,
            "name": _text(invocation, "u_name"), "phone": _text(invocation, "u_phone"),
            "country": _text(invocation, "u_country"),
            "address": _text(invocation, "u_address"), "forgotquestion": _text(invocation, "forgotquestion"),
            "forgotanswer": _text(invocation, "forgotanswer"),
        }

    async def _create(self, invocation: Invocation, fields: dict[str, Any], credit: Any, signup: bool = False,
                      **extra: Any) -> ApiAnswer:
        store = self.store
        if await store.find_user(fields["username"]) is not None:
            return error(f"username already exists: {fields['username']}", 412)
        await check_username(store, fields["username"], signup=signup,
                             numbers_allowed=self.settings.current.signupnumericusernames)
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

    @fn("newuseri", Category.SENSITIVE, params=(*NEW_USER_PARAMS, "credit"))
    async def newuseri(self, invocation: Invocation) -> ApiAnswer:
        """add a user (admins, trusted sources); credit= sets opening credit"""
        fields = self._new_user_fields(invocation, strict=False)
        credit = parse_amount(invocation.arg("credit") or "0", allow_zero=True)
        return await self._create(invocation, fields, credit)

    @fn("newuseru",
        Category.PUBLIC,
        params=(*NEW_USER_PARAMS, "deviceid"),
        access=Access(req_key=1, req_user=REQ_PUBLIC, req_user_login=0),
        rate=0.05)
    async def newuseru(self, invocation: Invocation) -> ApiAnswer:
        """public signup (validated, rate limited to one per 20 s per address)"""
        fields = self._new_user_fields(invocation, strict=True)
        deviceid = _text(invocation, "deviceid")
        return await self._create(invocation, fields, 0, signup=True, deviceid=deviceid, type=USER_ENDUSER)

    @fn("deluser", Category.ADMIN, params=("u_id", "u_username"))
    async def deluser(self, invocation: Invocation) -> ApiAnswer:
        """delete a user (balance must be zero)"""
        target = await self._named_user(invocation, invocation.arg("u_id"), invocation.arg("u_username"))
        if invocation.caller.user is not None and invocation.caller.user.id == target.id:
            return error("an admin cannot delete the account it is logged in with", 412)
        name = await self.store.delete_user(target.id)
        return ok(f"deleted {name}")

    @fn("listusers", Category.ADMIN, params=("u_type", "u_maxcount", "u_extended", "u_order"))
    async def listusers(self, invocation: Invocation) -> ApiAnswer:
        """list users"""
        kind = invocation.integer("u_type", 0, 99) if invocation.arg("u_type") else None
        count = invocation.integer("u_maxcount", 1, 10000, 100)
        order = LIST_ORDER.get(invocation.arg("u_order", "id").lower())
        if order is None:
            return error(f"u_order must be one of {', '.join(LIST_ORDER)}", 412)
        extended = invocation.arg("u_extended") in ("1", "true", "yes")
        records = [{k: (format_money(v) if k == "credit" else v) for k, v in row.items()}
                   for row in await self.store.list_users(kind, count, order, extended)]
        return ok(f"{len(records)} users", records)

    @fn("getdetails", Category.USER, params=("mode",))
    async def getdetails(self, invocation: Invocation) -> ApiAnswer:
        """the caller's account details (mode min, normal or max)"""
        user = invocation.user()
        mode = invocation.arg("mode", "normal").lower()
        if mode not in ("min", "normal", "max"):
            return error("mode must be min, normal or max", 412)
        row = await self.store.user_row(user.id, "getdetails")
        if row is None:
            raise RequestError(f"unknown user: {user.username}", 404)
        return ok(user.username, [_details(row, mode, self.store.engine.money)])

    @fn("forgotpasswordquestion", Category.PUBLIC, params=("email",), access=reminder, rate=0.2)
    async def forgotpasswordquestion(self, invocation: Invocation) -> ApiAnswer:
        """the password reminder question of an account, by e-mail"""
        found = await self._by_email(invocation)
        if found is None or not found["forgotquestion"]:
            return error("no question for this e-mail", 404)
        return ok(found["forgotquestion"])

    @fn("forgotpasswordanswer", Category.PUBLIC, params=("email", "forgotpasswordanswer"), access=reminder, rate=0.2)
    async def forgotpasswordanswer(self, invocation: Invocation) -> ApiAnswer:
        """answer the reminder question: a new password is e-mailed"""
        config = self.settings.current
        if not config.smtpserver:
            return error("e-mail is not configured; ask support", 412)
        found = await self._by_email(invocation)
        # The account the answer is for (the e-mail, as it was looked up, when it names nobody).
        account = str(found["username"]) if found else invocation.arg("email").strip().lower()[:64]
        if self.lockout.account_banned(account):
            return error("banned: too many failed authentications", 403)
        given = " ".join(invocation.require("forgotpasswordanswer").split()).lower()
        expected = " ".join(str(found["forgotanswer"]).split()).lower() if found else ""
        if found is None or not expected or not secret_equal(given, expected):
            await self.failed_login(invocation.request, "wrong reminder answer", account)
            return error("wrong answer", 403)
        password = secrets.token_urlsafe(9)
        body = f"The password of {found['username']} is now: {password}\nChange it after you log in."
        try:
            await self.actions.email(str(found["email"]), "your new password", body)
        except CustomError as problem:
            return error(f"the new password could not be sent ({problem}); the password is unchanged", 412)
        await self.store.set_password(int(found["id"]), password)
        return ok("a new password was sent by e-mail")

    @fn("changepwd", Category.USER, params=("newpassword", "oldpassword"))
    async def changepwd(self, invocation: Invocation) -> ApiAnswer:
        """change the caller's password"""
        user = invocation.user()
        new = invocation.require("newpassword")
        if len(new) < 6 or len(new) > 128 or not new.isprintable() or " " in new:
            return error("newpassword must be 6 to 128 printable characters without spaces", 412)
        admin_for_other = invocation.caller.level <= 6 and invocation.request.get("targetuser")
        if not admin_for_other and not secret_equal(invocation.arg("oldpassword"), user.password):
            return error("oldpassword is wrong", 403)
        await self.store.set_password(user.id, new)
        return ok("password changed")

    async def _by_email(self, invocation: Invocation) -> dict[str, Any] | None:
        email = invocation.require("email").strip()
        if not EMAIL.match(email):
            raise RequestError("email is not an e-mail address", 412)
        return await self.store.find_by_email(email)

    async def _named_user(self, invocation: Invocation, userid: str, username: str) -> User:
        store = self.store
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
