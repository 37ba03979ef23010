"""Numbers: cli, addcallbacknumber, callbackaccessnumber, callforward, getphonenumbers, lockphonenumbers, search."""

from __future__ import annotations

from typing import Any

from ...billing.rating import normalise
from ..answer import ApiAnswer, error, ok
from ..dispatcher import Call
from ..registry import REQ_ADMINS, Category, Registry
from ..request import RequestError

FORWARDS = (("anum", "forwardalways"), ("bnum", "forwardonbusy"), ("cnum", "forwardonnoanswer"))
LOCK_SECONDS = 3600


def _number(call: Call, name: str) -> str:
    raw = call.require(name)
    digits = normalise(raw)
    if digits is None:
        raise RequestError(f"{name} is not a phone number: {raw[:40]}", 412)
    return digits



async def _attach(call: Call, kind: str, number: str) -> ApiAnswer:
    user = call.user()
    db = call.api.db
    owner = (await db.run_query("usernumber", "SELECT userid FROM tb_usernumbers WHERE kind = ? AND number = ?",
                                (kind, number))).rows
    if owner:
        return ok(f"{number} already added") if owner[0][0] == user.id else error(f"{number} belongs to another user", 412)
    try:
        await db.run_statement(
            "add_usernumber", "INSERT INTO tb_usernumbers (userid, kind, number, created) VALUES (?, ?, ?, ?)",
            (user.id, kind, number, call.api.store.now()),
        )
    except Exception:
        return error(f"{number} belongs to another user", 412)  # lost a race for the same number
    return ok(f"{number} added")


def register(registry: Registry) -> None:
    """Register this module's handlers."""
    fn = registry.function

    @fn("cli", Category.USER, "add a PIN-less caller number (ANI) to the caller's account", ("anum",))
    async def cli(call: Call) -> ApiAnswer:
        return await _attach(call, "cli", _number(call, "anum"))

    @fn("addcallbacknumber", Category.USER, "add a number callbacks may go to", ("anum",))
    async def addcallbacknumber(call: Call) -> ApiAnswer:
        return await _attach(call, "callback", _number(call, "anum"))

    @fn("callbackaccessnumber", Category.USER, "the access number for callbacks")
    async def callbackaccessnumber(call: Call) -> ApiAnswer:
        number = call.api.settings.current.callbackaccessnumber
        return ok(number) if number else error("no callback access number is configured", 404)

    @fn("callforward", Category.USER, "forwarding: anum always, bnum on busy, cnum on no answer (empty clears)",
        ("anum", "bnum", "cnum"))
    async def callforward(call: Call) -> ApiAnswer:
        user = call.user()
        changes: dict[str, str] = {}
        for param, column in FORWARDS:
            position = f"param{call.function.params.index(param) + 1}"
            for name in (param, position):
                if name in call.request.params:
                    raw = call.request.params[name].strip()
                    digits = normalise(raw) if raw else ""
                    if digits is None:
                        return error(f"{param} is not a phone number: {raw[:40]}", 412)
                    changes[column] = digits
                    break
        if not changes:
            return error("give anum, bnum or cnum (an empty value clears it)", 421)
        assignments = ", ".join(f"{column} = ?" for column in changes)
        await call.api.db.run_statement(
            "callforward", f"UPDATE tb_users SET {assignments} WHERE id = ?", (*changes.values(), user.id)
        )
        return ok(", ".join(f"{column}={value or '-'}" for column, value in changes.items()))

    @fn("getphonenumbers", Category.USER, "how many numbers the free pool holds", aliases=("getphonenumber",))
    async def getphonenumbers(call: Call) -> ApiAnswer:
        result = await call.api.db.run_query(
            "free_numbers", "SELECT count(*) FROM tb_phonenumbers WHERE status = 0 AND userid = 0"
        )
        return ok(str(result.rows[0][0]))

    @fn("lockphonenumbers", Category.USER, "reserve a number from the free pool for the caller",
        aliases=("lockphonenumber",))
    async def lockphonenumbers(call: Call) -> ApiAnswer:
        user = call.user()
        store = call.api.store
        for _ in range(5):  # another caller may take the same number first
            free = (await call.api.db.run_query(
                "free_number", "SELECT id, number FROM tb_phonenumbers WHERE status = 0 AND userid = 0 ORDER BY id LIMIT 1"
            )).rows
            if not free:
                return error("no free phone number", 404)
            taken = await call.api.db.run_statement(
                "lock_number",
                "UPDATE tb_phonenumbers SET userid = ?, status = 1, lockeduntil = ? WHERE id = ? AND status = 0 AND userid = 0",
                (user.id, store.now().replace(microsecond=0) + _seconds(LOCK_SECONDS), free[0][0]),
            )
            if taken.rowcount == 1:
                return ok(free[0][1])
        return error("the pool is busy, try again", 412)

    @fn("search", Category.USER, "find users: admins by any part of username, name, e-mail or phone; "
        "users by exact username or phone", ("txt",))
    async def search(call: Call) -> ApiAnswer:
        text = call.require("txt").strip()
        if len(text) < 2 or len(text) > 64:
            return error("txt must be 2 to 64 characters", 412)
        db = call.api.db
        if call.caller.level <= REQ_ADMINS:
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            condition = " OR ".join(f"lower({c}) LIKE lower(?) ESCAPE '\\'" for c in ("username", "name", "email", "phone"))
            result = await db.run_statement(
                "search", f"SELECT id, username, name, email, phone FROM tb_users WHERE {condition} ORDER BY id LIMIT 100",
                (pattern,) * 4,
            )
        else:
            result = await db.run_query(
                "search", "SELECT username, name FROM tb_users WHERE username = ? OR phone = ? ORDER BY id LIMIT 10",
                (text, text),
            )
        records = [dict(zip(result.columns, row)) for row in result.rows]
        return ok(f"{len(records)} users", records)


def _seconds(count: int) -> Any:
    from datetime import timedelta

    return timedelta(seconds=count)
