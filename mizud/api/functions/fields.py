"""setfield and getfield: users change their own allowed fields; admins any field of any table.

Identifiers (tables and columns) are checked against the live schema and
never come from the request unchecked; values are always bound.  The
balance (tb_users.credit) and the money tables (tb_credits, tb_moneyops,
tb_holds) cannot be written here: money moves only through the ledgered
functions (addcredit, charge, transfercredit).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, REQ_ADMINS, Category
from ..request import RequestError
from ...text import ascii_digits, canonical_id
from ...store.money import MAX_AMOUNT
from ...store.introspect import get_field, set_field
from ...store.schema import money_columns

if TYPE_CHECKING:  # pragma: no cover
    from ...store.billing import BillingStore
    from ...store.database import Database

#: Money columns per table (set as exact decimals whatever fieldtype says).
MONEY = money_columns()

#: Fields a user may always set on its own account (spec, setfield).
USER_FIELDS = frozenset(
    "forwardonbusy forwardonnoanswer forwardalways voicemail musiconhold displayname noanswertimeout "
    "forwardearlystart changesptoring convertdtmf playadvice playdisc sendsmsalert sendemailalert sendsmsreport "
    "senddailyemail sendlowcreditemail sendmonthlyemail sendotheremail notifymissedsms notifymissedemail "
    "choosecodecs needcodeconversion discvoice connectvoice voicemailonbusy voicemailonnoansw voicemailalways".split()
)
#: Fields a user may set only while they are still empty.
USER_FIELDS_ONCE = frozenset(
    "contactname name email email2 phone fax address billaddress postaddress country regnumber euregnumber "
    "birthday gender language utc".split()
)
#: Never written by setfield: money moves only through the ledger.
PROTECTED = {"tb_users": {"credit", "id"}, "tb_credits": None, "tb_moneyops": None, "tb_holds": None,
             "tb_schema_version": None}
MAX_VALUE = 4096


def convert(fieldtype: str, value: str) -> Any:
    """The value as the type the spec names (string, int, float), or guessed when empty."""
    kind = fieldtype.strip().lower()
    if len(value) > MAX_VALUE:
        raise RequestError(f"fieldvalue longer than {MAX_VALUE} characters", 412)
    if kind in ("", "auto"):
        kind = "int" if ascii_digits(value.removeprefix("-")) and len(value) < 19 else "string"
    if kind in ("string", "str", "text"):
        return value
    if kind == "int":
        if not ascii_digits(value.strip().removeprefix("-")) or len(value) > 19:
            raise RequestError(f"fieldvalue is not an integer: {value[:40]}", 412)
        integer = int(value, 10)
        if abs(integer) >= 2**63:
            raise RequestError("fieldvalue is outside the 64-bit integer range", 412)
        return integer
    if kind in ("float", "decimal", "money"):
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise RequestError(f"fieldvalue is not a number: {value[:40]}", 412) from None
        if not number.is_finite() or number != number.quantize(Decimal("0.000001")):
            raise RequestError("fieldvalue must be finite with at most six decimals", 412)
        if abs(number) > MAX_AMOUNT:
            raise RequestError(f"fieldvalue must be at most {MAX_AMOUNT} either way (money's limit)", 412)
        return number
    raise RequestError("fieldtype must be string, int or float", 412)


#: This module's API functions (registered by build_registry).
fn = Functions()


@dataclass(frozen=True, kw_only=True, eq=False)
class FieldFunctions:
    """setfield and getfield: one column of one row, users on their own row, admins on any table."""

    db: Database
    store: BillingStore

    @fn("setfield", Category.USER, params=("fieldtype", "fieldname", "fieldvalue", "rowid", "sync"))
    async def setfield(self, invocation: Invocation) -> ApiAnswer:
        """update a field (users: their own allowed fields; admins: any table= field)"""
        name = invocation.require("fieldname").strip().lower()
        value = convert(invocation.arg("fieldtype"), invocation.arg("fieldvalue"))
        admin = invocation.caller.level <= REQ_ADMINS
        table = invocation.arg("table", "tb_users").strip().lower()
        if not admin:
            user = invocation.caller.user
            if user is None:
                return error("setfield needs authid (the user)", 421)
            if table != "tb_users":
                return error("users may only set fields of their own account", 403)
            if name not in USER_FIELDS and name not in USER_FIELDS_ONCE:
                return error(f"field not allowed: {name[:64]}", 403)
            changed = await set_field(self.db, "tb_users", name, value, user.id,
                                      only_if_empty=name in USER_FIELDS_ONCE)
            if changed == 0:
                return error(f"{name} is set already; ask support to change it", 412)
            return ok(f"{name} set")
        tables = await self.store.columns.tables()
        if table not in tables or name not in tables[table]:
            return error(f"no such field: {table[:64]}.{name[:64]}", 404)
        protected = PROTECTED.get(table, set())
        if protected is None or name in protected:
            return error(f"{table}.{name} is not set this way (money moves through addcredit)", 403)
        own = str(invocation.caller.user.id) if invocation.caller.user and table == "tb_users" else ""
        rowid = invocation.arg("rowid") or own
        row = canonical_id(rowid)
        if row is None:
            return error("rowid must be the row's id", 421)
        if name in MONEY.get(table, ()):
            # Money whatever fieldtype says: exact, bounded, and stored as the engine keeps money.
            value = convert("money", invocation.arg("fieldvalue"))
        if table == "tb_users" and name == "username":
            from .accounts import USERNAME, check_username

            value = str(value)  # "1111" is a username here, whatever fieldtype guessed
            if not USERNAME.match(value):
                return error("fieldvalue: a username holds letters, digits and _ . @ + - (1 to 64)", 412)
            existing = await self.store.find_user(value)
            if existing is not None and existing.id != row:
                return error(f"username already exists: {value}", 412)
            await check_username(self.store, value, signup=False, userid=row, param="fieldvalue")
        if await set_field(self.db, table, name, value, row) == 0:
            return error(f"no row {rowid} in {table}", 404)
        return ok(f"{table}.{name} set for row {rowid}")

    @fn("getfield",
        Category.ADMIN,
        params=("table", "retfieldname", "filterfieldtype", "filterfieldname", "filterfieldvalue"))
    async def getfield(self, invocation: Invocation) -> ApiAnswer:
        """read a field of the first row matching a filter"""
        table = invocation.arg("table", "tb_users").strip().lower()
        wanted = invocation.arg("retfieldname", "id").strip().lower()
        value = invocation.require("filterfieldvalue")
        tables = await self.store.columns.tables()
        if table not in tables:
            return error(f"no such table: {table[:64]}", 404)
        columns = tables[table]
        column = invocation.arg("filterfieldname").strip().lower()
        if not column:
            column = next((c for c in ("username", "callerid", "userid") if c in columns), "id")
        for name in (wanted, column):
            if name not in columns:
                return error(f"no such field: {table[:64]}.{name[:64]}", 404)
        if table == "tb_users" and wanted == "password":
            return error("passwords are not read this way", 403)
        filter_value = convert(invocation.arg("filterfieldtype"), value)
        exists, found = await get_field(self.db, table, wanted, column, filter_value)
        if not exists:
            return error("not found", 404)
        if wanted in ("credit", "creditlimit", "price", "connectfee", "cost", "amount", "balance"):
            found = self.db.engine.money(found)
        return ok("" if found is None else str(found))
