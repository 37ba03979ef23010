"""Numbers: cli, addcallbacknumber, callbackaccessnumber, callforward, getphonenumbers, lockphonenumbers, search."""

from __future__ import annotations

from dataclasses import dataclass
import secrets
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ...billing.rating import normalise
from ...sip.sms import SmsError
from ...store.numbers import MAX_ATTEMPTS, MAX_CODES_A_DAY, NumberClaims
from ...store.pool import first_free, first_free_of, free_numbers, lock_number
from ...store.users import search_users, set_forwards, users_named
from ..answer import ApiAnswer, error, ok
from ..auth import secret_equal
from ..invocation import Invocation
from ..registry import Functions, REQ_ADMINS, Category
from ..request import RequestError

if TYPE_CHECKING:  # pragma: no cover
    from ...config import Settings
    from ...store.billing import BillingStore
    from ...store.database import Database
    from ..request import ApiRequest

FORWARDS = (("anum", "forwardalways"), ("bnum", "forwardonbusy"), ("cnum", "forwardonnoanswer"))
LOCK_SECONDS = 3600


def _number(invocation: Invocation, name: str) -> str:
    raw = invocation.require(name)
    digits = normalise(raw)
    if digits is None:
        raise RequestError(f"{name} is not a phone number: {raw[:40]}", 412)
    return digits


#: How long a code sent to a number stays valid, how soon another may be sent for it, and its length.
CODE_TTL = 15 * 60
CODE_AGAIN = 60
CODE_DIGITS = 6


#: This module's API functions (registered by build_registry).
fn = Functions()


def _seconds(count: int) -> Any:
    from datetime import timedelta

    return timedelta(seconds=count)


@dataclass(frozen=True, kw_only=True, eq=False)
class NumberFunctions:
    """Numbers: caller ids and callback numbers proved by a code, forwarding, the number pool, search."""

    db: Database
    failed_login: Callable[[ApiRequest, str, str], Awaitable[None]]
    settings: Settings
    sip: Any
    store: BillingStore

    async def _attach(self, invocation: Invocation, kind: str, number: str) -> ApiAnswer:
        """Add a number to the caller's account: at once for an admin, else after the code sent to it.

        Without C{code}: a code is sent to the number by SMS (the user pays it
        like any SMS) and the claim waits.  With C{code}: the claim is proven.
        A number is used (as a caller number, an SMS sender, the first leg of
        p2p and callback) only once proven, so nobody can claim another
        person's number and lock its owner out of it.
        """
        user = invocation.user()
        claims = NumberClaims(self.db, self.store.now, kind)
        owner = await claims.owner(number)
        if owner == user.id:
            return ok(f"{number} already added")
        if owner is not None or await self.store.names.other_user_named(number, user.id):
            return error(f"{number} belongs to another user", 412)
        if invocation.caller.level <= REQ_ADMINS:
            # An admin adds it for the user (targetuser) or for their own account: approved.
            admin = invocation.caller.how
            if not await claims.prove(user.id, number, f"admin {admin}"[:64]):
                return error(f"{number} belongs to another user", 412)
            return ok(f"{number} added (approved by an admin)")
        given = invocation.arg("code").strip()
        claim = await claims.claim(user.id, number)
        if given:
            expected = await claims.attempt(user.id, number)
            if expected is None:
                if claim is not None and claim.code and claim.attempts >= MAX_ATTEMPTS:
                    return error(f"too many wrong codes for {number}: ask for a new one", 412)
                return error(f"no code is waiting for {number}: ask for one (without code=)", 412)
            if not secret_equal(given, expected):
                # A wrong code is a failed proof: it counts towards the account's lockout as well.
                await self.failed_login(invocation.request, "wrong code for a number", user.username)
                return error("wrong code", 403)
            if not await claims.prove(user.id, number, "sms"):
                return error(f"{number} belongs to another user", 412)
            return ok(f"{number} added")
        if claim is not None and claim.code and claim.expires is not None and (
                claim.expires - self.store.now()).total_seconds() > CODE_TTL - CODE_AGAIN:
            return error(f"a code was sent to {number} less than {CODE_AGAIN} s ago: use it, or ask again later", 412)
        sip = self.sip
        if sip is None:
            return error(f"{number} must be proven by a code sent to it, and SMS is not running here: "
                         "ask an admin", 412)
        code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
        text = f"Your code to add {number} to your account: {code}"
        # The claim first (it may be over its codes for today), then the SMS that carries its code.
        if not await claims.open(user.id, number, code, CODE_TTL):
            return error(f"{MAX_CODES_A_DAY} codes were sent for {number} today: try again tomorrow, "
                         "or ask an admin", 412)
        try:
            outcome = await sip.sms.send(user, "", number, text, wait=True)
        except SmsError as problem:
            return error(f"cannot send a code to {number} ({problem}): ask an admin to approve it", 412)
        if outcome.status == "failed":
            return error(f"the code to {number} was not delivered ({outcome.reason}): ask an admin to approve it", 412)
        return ok(f"a code was sent to {number} by SMS: add it with code=CODE within {CODE_TTL // 60} minutes")

    @fn("cli", Category.USER, params=("anum", "code"))
    async def cli(self, invocation: Invocation) -> ApiAnswer:
        """add a PIN-less caller number (ANI) to the caller's account once proven: a code is sent to it by SMS, then
        code= adds it (admins approve at once)"""
        return await self._attach(invocation, "cli", _number(invocation, "anum"))

    @fn("addcallbacknumber", Category.USER, params=("anum", "code"))
    async def addcallbacknumber(self, invocation: Invocation) -> ApiAnswer:
        """add a number callbacks may go to, proven as for cli"""
        return await self._attach(invocation, "callback", _number(invocation, "anum"))

    @fn("callbackaccessnumber", Category.USER)
    async def callbackaccessnumber(self, invocation: Invocation) -> ApiAnswer:
        """the access number for callbacks"""
        number = self.settings.current.callbackaccessnumber
        return ok(number) if number else error("no callback access number is configured", 404)

    @fn("callforward", Category.USER, params=("anum", "bnum", "cnum"))
    async def callforward(self, invocation: Invocation) -> ApiAnswer:
        """forwarding: anum always, bnum on busy, cnum on no answer (empty clears)"""
        user = invocation.user()
        changes: dict[str, str] = {}
        for param, column in FORWARDS:
            position = f"param{invocation.function.params.index(param) + 1}"
            for name in (param, position):
                if name in invocation.request.params:
                    raw = invocation.request.params[name].strip()
                    digits = normalise(raw) if raw else ""
                    if digits is None:
                        return error(f"{param} is not a phone number: {raw[:40]}", 412)
                    changes[column] = digits
                    break
        if not changes:
            return error("give anum, bnum or cnum (an empty value clears it)", 421)
        await set_forwards(self.db, user.id, changes)
        return ok(", ".join(f"{column}={value or '-'}" for column, value in changes.items()))

    @fn("getphonenumbers", Category.USER, params=("count",), aliases=("getphonenumber",))
    async def getphonenumbers(self, invocation: Invocation) -> ApiAnswer:
        """phone numbers from the free pool (count of them, default 1; not reserved: lockphonenumbers reserves one)"""
        count = invocation.integer("count", 1, 100, 1)
        numbers = await free_numbers(self.db, count)
        if not numbers:
            return error("no free phone number", 404)
        return ok(",".join(numbers), [{"number": number} for number in numbers])

    @fn("lockphonenumbers", Category.USER, params=("num",), aliases=("lockphonenumber",))
    async def lockphonenumbers(self, invocation: Invocation) -> ApiAnswer:
        """reserve a number of the free pool for the caller for an hour: num= that one, else the first free"""
        user = invocation.user()
        store = self.store
        wanted = invocation.arg("num").strip()
        normalised = normalise(wanted) if wanted else None
        if wanted and normalised is None:
            return error(f"num is not a phone number: {wanted[:40]}", 412)
        for _ in range(5):  # another caller may take the same number first
            if normalised is not None:  # num= given (and a number)
                free = await first_free_of(self.db, wanted, normalised)
                if free is None:
                    return error(f"{wanted[:40]} is not a free number of the pool", 404)
            else:
                free = await first_free(self.db)
                if free is None:
                    return error("no free phone number", 404)
            numberid, number = free
            if await lock_number(self.db, numberid, user.id,
                                 store.now().replace(microsecond=0) + _seconds(LOCK_SECONDS)):
                return ok(number)
        return error("the pool is busy, try again", 412)

    @fn("search", Category.USER, params=("txt",))
    async def search(self, invocation: Invocation) -> ApiAnswer:
        """find users: admins by any part of username, name, e-mail or phone; users by exact username or phone"""
        text = invocation.require("txt").strip()
        if len(text) < 2 or len(text) > 64:
            return error("txt must be 2 to 64 characters", 412)
        db = self.db
        records: list[dict[str, Any]]
        if invocation.caller.level <= REQ_ADMINS:
            records = [{"id": m.id, "username": m.username, "name": m.name, "email": m.email, "phone": m.phone}
                       for m in await search_users(db, text)]
        else:
            records = [{"username": username, "name": name} for username, name in await users_named(db, text)]
        return ok(f"{len(records)} users", records)
