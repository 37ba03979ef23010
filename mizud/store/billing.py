"""The billing store: users, balances and every operation that moves money.

Invariants, on both engines:

  - money is an exact L{Decimal} with six places, never a float;
  - every change of C{tb_users.credit} writes exactly one row to the ledger
    C{tb_credits} in the same transaction, carrying the signed amount and the
    balance after it, so a user's ledger always sums to the balance;
  - a debit is one conditional UPDATE (never below zero for prepaid users,
    never below C{-creditlimit} for postpaid ones), so concurrent debits can
    never overspend;
  - a transfer locks both accounts in id order, then debits and credits in
    one transaction;
  - a recharge PIN is claimed with a conditional UPDATE, so it succeeds
    exactly once;
  - an optional client transaction id (C{txid}) makes an operation
    idempotent per user: the first successful operation with that id is
    remembered in C{tb_moneyops} in the same transaction, and a repeat
    returns its result without moving money again.  A refused operation
    rolls back entirely and consumes no id, so a retry after a refusal is
    judged afresh.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Awaitable, Callable, Sequence


from ..ratelimit import Clock, utcnow
from .authstate import BanRows
from .cache import RowCache
from .calls import CallRows
from .database import Database, Result, Txn
from .introspect import Columns
from .money import (
    MAX_AMOUNT,
    BadPin,
    BalanceLimit,
    CurrencyMismatch,
    HoldClosed,
    InsufficientCredit,
    InvalidAmount,
    MoneyError,
    TxIdConflict,
    UnknownUser,
    parse_amount,
)
from .messages import MessageRows
from .numbers import Names
from .presence import Presence
from .registrations import Bindings
from .routes import RouteRows
from .sms import SmsRows
from .upkeep import Upkeep

# tb_users.type values, after the Mizu admin guide where it names them.
USER_ENDUSER = 0
USER_SUBENDUSER = 1
USER_OPERATOR = 2
USER_CALLINGCARD = 3
USER_RESELLER = 4
USER_TRAFFICSENDER = 5
USER_OWNER = 6
USER_SIPSERVER = 9
USER_ISDNGW = 11
USER_MSGGATEWAY = 12
USER_SUPPORT = 14
USER_ADMIN = 15
USER_OTHER = 17

HOLD_OPEN = 0
HOLD_SETTLED = 1
HOLD_RELEASED = 2

#: Columns of tb_users a caller may give to L{BillingStore.create_user}.
USER_FIELDS = frozenset(
    {
        "name", "email", "phone", "address", "country", "tariffid", "enabled",
        "temporarydisabled", "pin", "parentid", "deviceid", "forgotquestion", "forgotanswer",
        # SIP servers and traffic senders (addserver, delta 08)
        "domain", "ip", "port", "proxy", "transport", "needauth", "serverrole",
    }
)


@dataclass(frozen=True, slots=True)
class User:
    """The account fields the billing and auth code needs."""

    id: int
    type: int
    username: str
    password: str
    currency: str
    credit: Decimal
    postpaid: bool
    creditlimit: Decimal
    tariffid: int
    enabled: bool
    temporarydisabled: bool
    pin: str | None


@dataclass(frozen=True)
class MoneyResult:
    """The outcome of a money operation.

    C{balance} is the balance of C{userid} after the operation; C{ledgerid}
    the ledger row written (None when nothing changed, e.g. a zero refund);
    C{replayed} is true when a repeated transaction id returned the first
    result.  C{extra} carries operation-specific values (the other balance
    of a transfer, the hold id, the PIN value).
    """

    userid: int
    balance: Decimal
    ledgerid: int | None
    replayed: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        """An operation-specific value, by name."""
        return dict(self.extra).get(key)


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the credit ledger."""

    id: int
    userid: int
    amount: Decimal
    balance: Decimal
    kind: str
    reference: str
    txid: str | None
    comment: str
    created: datetime


_USER_COLUMNS = (
    "id, type, username, password, currency, credit, postpaid, creditlimit, "
    "tariffid, enabled, temporarydisabled, pin"
)


# A debit never takes the balance below zero (prepaid) or -creditlimit (postpaid).
_CAN_PAY = "credit + ? >= CASE WHEN postpaid <> 0 THEN 0 - creditlimit ELSE 0 END"
# New money never takes the balance, with what is held for calls (which will come back), past
# MAX_AMOUNT: so no engine can overflow (SQLite keeps micro-units in a 64-bit integer).
_CAN_HOLD = ("credit + ? + (SELECT coalesce(sum(h.amount), 0) FROM tb_holds h "
             "WHERE h.userid = tb_users.id AND h.status = 0) <= ?")
_LEDGER_COLUMNS = "userid, amount, balance, kind, reference, txid, comment, created"

# The balance update and its ledger row.  Where the engine can feed an
# UPDATE's RETURNING into an INSERT (PostgreSQL), that is one statement: one
# round trip inside a transaction, or a whole autocommit transaction by
# itself.  SQLite cannot, so there it is two statements in one transaction.
_UPDATE_BALANCE = "UPDATE tb_users SET credit = credit + ? WHERE id = ? {check}RETURNING id, credit"
_INSERT_LEDGER = f"INSERT INTO tb_credits ({_LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING balance, id"
_UPDATE_BALANCE_AND_LEDGER = (
    f"WITH changed AS ({_UPDATE_BALANCE}) INSERT INTO tb_credits ({_LEDGER_COLUMNS}) "
    "SELECT id, ?, credit, ?, ?, ?, ?, ? FROM changed RETURNING balance, id"
)


def _check_txid(txid: str | None) -> str | None:
    if txid is None:
        return None
    if not isinstance(txid, str) or not 1 <= len(txid) <= 128 or not txid.isprintable():
        raise MoneyError("transaction id must be 1 to 128 printable characters")
    return txid


class BillingStore:
    """Users and money on one L{Database} (SQLite or PostgreSQL)."""

    def __init__(self, db: Database, clock: Clock, default_currency: str = "USD", node: str = "",
                 cached_users: int = 100_000) -> None:
        self.db = db
        self.engine = db.engine
        self.clock = clock
        self.default_currency = default_currency
        #: This node's name: written on the holds it opens (a dead node's holds are released by others).
        self.node = node
        # The other components of the store, one per area, on the same database and clock (accounts, the
        # ledger, holds and PINs are this class's own).
        #: Registrations (tb_registrations) and the status they keep current.
        self.registrations = Bindings(db, self.now)
        #: Presence and web sessions.
        self.presence = Presence(db, self.now)
        #: What routing reads: gateways, the user a number names, traffic senders, numbers a user owns.
        self.routes = RouteRows(db)
        #: Live calls and their CDRs (the statements that run on their own; see L{mizud.store.calls}).
        self.calls = CallRows(db)
        #: Instant messages kept for their recipients.
        self.messages = MessageRows(db, self.now)
        #: The SMS log.
        self.sms = SmsRows(db, self.now)
        #: Bans of addresses and users (the policy is L{mizud.security.bans}).
        self.bans = BanRows(db)
        #: Retention, VACUUM, statistics, the daily figures.
        self.upkeep = Upkeep(db, self.now)
        #: Names and numbers that must not collide (usernames, DIDs, proved numbers).
        self.names = Names(db)
        #: The tables and their columns (setfield, getfield, addserver), read once.
        self.columns = Columns(db)
        #: Users by username and by id, exact (L{mizud.store.cache}); at most C{cached_users} keys.
        self.users: RowCache[tuple[str, Any], User] = RowCache(db.changes, "tb_users", cached_users,
                                                               lambda user: user.id)

    def now(self) -> datetime:
        """The current time from the injected clock, as naive UTC."""
        return utcnow(self.clock)

    # -- users ---------------------------------------------------------------

    def _user(self, row: tuple[Any, ...]) -> User:
        money = self.engine.money
        return User(
            id=int(row[0]), type=int(row[1]), username=row[2], password=row[3],
            currency=row[4], credit=money(row[5]), postpaid=bool(row[6]),
            creditlimit=money(row[7]), tariffid=int(row[8]), enabled=bool(row[9]),
            temporarydisabled=bool(row[10]), pin=row[11],
        )

    async def create_user(
        self,
        username: str,
        password: str,
        *,
        type: int = USER_ENDUSER,
        credit: Any = 0,
        postpaid: bool = False,
        creditlimit: Any = 0,
        currency: str | None = None,
        then: Callable[[Txn, int], Awaitable[Any]] | None = None,
        **fields: Any,
    ) -> int:
        """Insert a user and return its id; opening credit goes through the ledger.

        C{then(txn, userid)}, if given, runs in the same transaction (its
        failure undoes the user too).
        """
        unknown = set(fields) - USER_FIELDS
        if unknown:
            raise ValueError(f"unknown user fields: {', '.join(sorted(unknown))}")
        opening = parse_amount(credit, allow_zero=True)
        limit = parse_amount(creditlimit, allow_zero=True)
        names = sorted(fields)

        async def create_user_txn(txn: Txn) -> int:
            now = self.now()
            columns = ["type", "username", "password", "currency", "postpaid", "creditlimit", "created", *names]
            values = [type, username, password, currency or self.default_currency,
                      int(postpaid), limit, now, *(fields[n] for n in names)]
            marks = ", ".join("?" * len(columns))
            result = await txn.execute(
                f"INSERT INTO tb_users ({', '.join(columns)}) VALUES ({marks}) RETURNING id", values
            )
            userid = int(result.rows[0][0])
            if opening:
                await self._change_balance_txn(txn, userid, opening, "initial", now=now)
            if then is not None:
                await then(txn, userid)
            return userid

        return await self.db.run_interaction("create_user", create_user_txn)

    async def list_users(self, type: int | None, count: int, order: str, extended: bool) -> list[dict[str, Any]]:
        """Up to C{count} users (of one C{type}), ordered by the column C{order} then id: id, username and type,
        and with C{extended} also name, email, phone, credit (a Decimal), currency and enabled."""
        if order not in ("id", "username", "name", "credit", "created"):
            raise ValueError(f"cannot order users by {order[:40]!r}")
        where, params = ("", []) if type is None else (" WHERE type = ?", [type])
        columns = "id, username, type, name, email, phone, credit, currency, enabled" if extended else "id, username, type"
        result = await self.db.run_query(
            "listusers", f"SELECT {columns} FROM tb_users{where} ORDER BY {order}, id LIMIT ?", [*params, int(count)])
        money = self.db.engine.money
        return [{k: (money(v) if k == "credit" else v) for k, v in zip(result.columns, row)} for row in result.rows]

    async def email_of(self, userid: int) -> str:
        """The user's e-mail address (empty when none or no such user)."""
        row = (await self.db.run_query("user_email", "SELECT email FROM tb_users WHERE id = ?", (userid,))).one()
        return str(row[0] or "") if row is not None else ""

    async def find_by_email(self, email: str) -> dict[str, Any] | None:
        """id, username, email, forgotquestion and forgotanswer of the oldest user with this e-mail address
        (compared case-insensitively), or None."""
        result = await self.db.run_query(
            "by_email", "SELECT id, username, email, forgotquestion, forgotanswer FROM tb_users "
            "WHERE lower(email) = lower(?) ORDER BY id LIMIT 1", (email,))
        return dict(zip(result.columns, result.rows[0])) if result.rows else None

    async def user_row(self, userid: int, name: str = "user_fields") -> dict[str, Any] | None:
        """Every column of the user's tb_users row by name (custom SQL's user placeholders, getdetails), or
        None; C{name} names the statement."""
        result = await self.db.run_query(name, "SELECT * FROM tb_users WHERE id = ?", (userid,))
        return dict(zip(result.columns, result.rows[0])) if result.rows else None

    async def get_user(self, userid: int) -> User | None:
        """The user with this id, or None (from the exact cache when it may answer).

        Its C{credit} is current only where the feed tells credit changes
        (SQLite); show or check a balance through L{current_credit}.
        """
        return await self.users.get(("id", userid), lambda: self._read_user("get_user", "id", userid))

    async def find_user(self, username: str) -> User | None:
        """The user with this username, or None (from the exact cache, as L{get_user})."""
        return await self.users.get(("username", username),
                                    lambda: self._read_user("find_user", "username", username))

    async def _read_user(self, name: str, column: str, value: Any) -> User | None:
        sql = f"SELECT {_USER_COLUMNS} FROM tb_users WHERE {column} = ?"
        row = (await self.db.run_query(name, sql, (value,))).one()
        return self._user(row) if row else None

    async def current_credit(self, user: User) -> Decimal:
        """The user's balance now: the cached one where credit changes are told (SQLite), else read
        (PostgreSQL does not notify every debit); raises L{UnknownUser} if the user is gone."""
        if self.db.changes.credit and self.db.changes.trusted():
            return user.credit
        row = (await self.db.run_query("user_credit", "SELECT credit FROM tb_users WHERE id = ?", (user.id,))).one()
        if row is None:
            raise UnknownUser(f"no user with id {user.id}")
        return self.engine.money(row[0])

    async def find_user_by_pin(self, pin: str) -> User | None:
        """The user whose PIN this is, or None."""
        sql = f"SELECT {_USER_COLUMNS} FROM tb_users WHERE pin = ?"
        row = (await self.db.run_query("find_user_by_pin", sql, (pin,))).one()
        return self._user(row) if row else None

    async def find_user_by_number(self, number: str) -> User | None:
        """The user a phone number (DID) from tb_phonenumbers is assigned to, or None."""
        sql = (
            f"SELECT {', '.join('u.' + c.strip() for c in _USER_COLUMNS.split(','))} FROM tb_phonenumbers n "
            "JOIN tb_users u ON u.id = n.userid WHERE n.number = ? AND n.userid > 0"
        )
        row = (await self.db.run_query("find_user_by_number", sql, (number,))).one()
        return self._user(row) if row else None

    async def find_user_by_login(self, login: str) -> User | None:
        """The user whose username followed by password is C{login} (old PIN form), or None."""
        sql = f"SELECT {_USER_COLUMNS} FROM tb_users WHERE username || password = ?"
        for row in (await self.db.run_statement("find_user_by_login", sql, (login,))).rows:
            user = self._user(row)
            if hmac.compare_digest(user.username + user.password, login):
                return user
        return None

    async def registered_addresses(self, userid: int) -> list[str]:
        """The hosts the user's unexpired registrations came from (empty: not registered)."""
        result = await self.db.run_query(
            "registered", "SELECT address FROM tb_registrations WHERE userid = ? AND expires > ?", (userid, self.now())
        )
        return [_host(row[0]) for row in result.rows]

    async def delete_user(self, userid: int) -> str:
        """Delete a user whose balance is zero and who holds no open funds.

        The user's ledger, transaction ids and closed holds go with it, in
        the same transaction; a non-zero balance or an open hold refuses the
        deletion (move or settle the money first), so no money disappears.
        Returns the deleted username.
        """

        async def delete_user_txn(txn: Txn) -> str:
            row = (
                await txn.execute("SELECT username, credit FROM tb_users WHERE id = ?" + self.engine.for_update, (userid,))
            ).one()
            if row is None:
                raise UnknownUser(f"no user with id {userid}")
            if self.engine.money(row[1]) != 0:
                raise MoneyError(f"the balance of {row[0]} is not zero; move it first")
            if (await txn.execute("SELECT id FROM tb_holds WHERE userid = ? AND status = ?", (userid, HOLD_OPEN))).rows:
                raise MoneyError(f"{row[0]} has funds held for a call")
            for table in ("tb_holds", "tb_credits", "tb_moneyops", "tb_usernumbers"):
                await txn.execute(f"DELETE FROM {table} WHERE userid = ?", (userid,))
            await txn.execute("UPDATE tb_phonenumbers SET userid = 0, status = 0 WHERE userid = ?", (userid,))
            await txn.execute("DELETE FROM tb_users WHERE id = ?", (userid,))
            return str(row[0])

        return await self.db.run_interaction("delete_user", delete_user_txn)

    async def rebill(self, userid: int, costs: list[tuple[int, Decimal]], difference: Decimal) -> MoneyResult | None:
        """Set new costs on a user's CDRs and move the net difference through the ledger, in one transaction.

        A higher total is debited like any debit (refused if the account
        cannot pay it); a lower one is credited back.
        """

        async def rebill_txn(txn: Txn) -> MoneyResult | None:
            for cdrid, cost in costs:
                await txn.execute("UPDATE tb_cdrs SET cost = ? WHERE id = ? AND userid = ?", (cost, cdrid, userid))
            if difference == 0:
                return None
            balance, ledgerid = await self._change_balance_txn(
                txn, userid, -difference, "rebill", now=self.now(), comment=f"{len(costs)} CDRs repriced"
            )
            return MoneyResult(userid, balance, ledgerid)

        return await self.db.run_interaction("rebill", rebill_txn)

    async def set_password(self, userid: int, password: str) -> None:
        """Replace a user's password."""
        await self.db.run_statement("set_password", "UPDATE tb_users SET password = ? WHERE id = ?", (password, userid))

    async def balance(self, userid: int) -> Decimal:
        """The user's credit now; raises L{UnknownUser}."""
        user = await self.get_user(userid)
        if user is None:
            raise UnknownUser(f"no user with id {userid}")
        return await self.current_credit(user)

    # -- ledger primitives (run inside a transaction) --------------------------

    async def _change_balance_txn(
        self,
        txn: Txn,
        userid: int,
        amount: Decimal,
        kind: str,
        *,
        now: datetime,
        reference: str = "",
        txid: str | None = None,
        comment: str = "",
        refund: bool = False,
    ) -> tuple[Decimal, int]:
        """Add C{amount} (negative to debit) and write its ledger row; returns (balance, ledger id).

        A debit only happens if the balance stays at or above zero (prepaid)
        or C{-creditlimit} (postpaid); otherwise raises L{InsufficientCredit}
        (or L{UnknownUser}).  New money (not a C{refund} of held funds) only
        if the balance and the funds held stay within L{MAX_AMOUNT};
        otherwise raises L{BalanceLimit}.
        """
        params: tuple[Any, ...] = (amount, userid)
        check = ""
        if amount < 0:
            check, params = f"AND {_CAN_PAY} ", (amount, userid, amount)
        elif not refund:
            check, params = f"AND {_CAN_HOLD} ", (amount, userid, amount, MAX_AMOUNT)
        if self.engine.data_modifying_cte:
            row = (
                await txn.execute(
                    _UPDATE_BALANCE_AND_LEDGER.format(check=check),
                    (*params, amount, kind, reference, txid, comment, now),
                )
            ).one()
        else:
            changed = (await txn.execute(_UPDATE_BALANCE.format(check=check), params)).one()
            row = changed and (
                await txn.execute(
                    _INSERT_LEDGER, (userid, amount, changed[1], kind, reference, txid, comment, now)
                )
            ).one()
        if not row:
            if not (await txn.execute("SELECT id FROM tb_users WHERE id = ?", (userid,))).rows:
                raise UnknownUser(f"no user with id {userid}")
            if amount > 0:
                raise BalanceLimit(f"the balance (with funds held) would exceed {MAX_AMOUNT}")
            raise InsufficientCredit("insufficient credit")
        return self.engine.money(row[0]), int(row[1])

    async def _idempotent_txn(
        self,
        txn: Txn,
        userid: int,
        txid: str | None,
        op: str,
        body: Callable[[], Awaitable[MoneyResult]],
    ) -> MoneyResult:
        """Run C{body} once per (userid, txid); a repeat returns the first result."""
        if txid is None:
            return await body()
        claimed = await txn.execute(
            "INSERT INTO tb_moneyops (userid, txid, op, created) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (userid, txid) DO NOTHING RETURNING id",
            (userid, txid, op, self.now()),
        )
        if not claimed.rows:
            row = (
                await txn.execute(
                    "SELECT op, result FROM tb_moneyops WHERE userid = ? AND txid = ?", (userid, txid)
                )
            ).one()
            assert row is not None
            if row[0] != op:
                raise TxIdConflict(f"transaction id {txid!r} was used for a different operation")
            return _decode_result(row[1])
        result = await body()
        await txn.execute(
            "UPDATE tb_moneyops SET result = ? WHERE id = ?", (_encode_result(result), claimed.rows[0][0])
        )
        return result

    # -- operations ------------------------------------------------------------

    async def debit(self, userid: int, amount: Any, *, txid: str | None = None, comment: str = "") -> MoneyResult:
        """Take C{amount} from the user, within the limit its account allows."""
        return await self._adjust(userid, -parse_amount(amount), "debit", txid, comment)

    async def credit(self, userid: int, amount: Any, *, txid: str | None = None, comment: str = "") -> MoneyResult:
        """Add C{amount} to the user's balance."""
        return await self._adjust(userid, parse_amount(amount), "credit", txid, comment)

    async def _adjust(
        self, userid: int, amount: Decimal, kind: str, txid: str | None, comment: str
    ) -> MoneyResult:
        txid = _check_txid(txid)
        if txid is None and self.engine.data_modifying_cte:
            # Nothing to remember and one statement to run: a single
            # autocommit round trip is the whole transaction.
            balance, ledgerid = await self._change_balance_txn(
                _Autocommit(self.db, kind), userid, amount, kind, now=self.now(), comment=comment
            )
            return MoneyResult(userid, balance, ledgerid)

        async def adjust_txn(txn: Txn) -> MoneyResult:
            async def body() -> MoneyResult:
                balance, ledgerid = await self._change_balance_txn(
                    txn, userid, amount, kind, now=self.now(), txid=txid, comment=comment
                )
                return MoneyResult(userid, balance, ledgerid)

            return await self._idempotent_txn(txn, userid, txid, f"{kind}:{abs(amount)}", body)

        return await self.db.run_interaction(kind, adjust_txn)

    async def transfer(
        self, from_id: int, to_id: int, amount: Any, *, txid: str | None = None, comment: str = ""
    ) -> MoneyResult:
        """Move C{amount} from one user to another in one transaction.

        The result's balance is the payer's; C{extra} holds C{to_balance}.
        Both accounts must keep the same currency.
        """
        value = parse_amount(amount)
        txid = _check_txid(txid)
        if from_id == to_id:
            raise MoneyError("cannot transfer to the same account")

        async def transfer_txn(txn: Txn) -> MoneyResult:
            async def body() -> MoneyResult:
                # Lock both rows in id order so opposite transfers cannot deadlock.
                rows = (
                    await txn.execute(
                        "SELECT id, currency FROM tb_users WHERE id IN (?, ?) ORDER BY id" + self.engine.for_update,
                        (from_id, to_id),
                    )
                ).rows
                currencies = {int(r[0]): r[1] for r in rows}
                for needed in (from_id, to_id):
                    if needed not in currencies:
                        raise UnknownUser(f"no user with id {needed}")
                if currencies[from_id] != currencies[to_id]:
                    raise CurrencyMismatch("the two accounts keep different currencies")
                now = self.now()
                balance, ledgerid = await self._change_balance_txn(
                    txn, from_id, -value, "transfer_out", now=now, reference=str(to_id), txid=txid, comment=comment
                )
                to_balance, _ = await self._change_balance_txn(
                    txn, to_id, value, "transfer_in", now=now, reference=str(from_id), txid=txid, comment=comment
                )
                return MoneyResult(from_id, balance, ledgerid, extra=(("to_balance", str(to_balance)),))

            return await self._idempotent_txn(txn, from_id, txid, f"transfer:{to_id}:{value}", body)

        return await self.db.run_interaction("transfer", transfer_txn)

    async def create_pin(self, pin: str, credit: Any, currency: str | None = None) -> int:
        """Create a recharge PIN worth C{credit}; returns its id."""
        value = parse_amount(credit)
        if not pin or not pin.isprintable() or len(pin) > 64:
            raise BadPin("a PIN is 1 to 64 printable characters")

        async def create_pin_txn(txn: Txn) -> int:
            result = await txn.execute(
                "INSERT INTO tb_pins (pin, credit, currency, created) VALUES (?, ?, ?, ?) RETURNING id",
                (pin, value, currency or self.default_currency, self.now()),
            )
            return int(result.rows[0][0])

        return await self.db.run_interaction("create_pin", create_pin_txn)

    async def redeem_pin(self, userid: int, pin: str, *, txid: str | None = None) -> MoneyResult:
        """Claim an unused PIN for the user and credit its value, exactly once."""
        txid = _check_txid(txid)
        if not isinstance(pin, str) or not pin:
            raise BadPin("invalid PIN")

        async def redeem_pin_txn(txn: Txn) -> MoneyResult:
            async def body() -> MoneyResult:
                user = (await txn.execute("SELECT currency FROM tb_users WHERE id = ?", (userid,))).one()
                if user is None:
                    raise UnknownUser(f"no user with id {userid}")
                now = self.now()
                claimed = (
                    await txn.execute(
                        "UPDATE tb_pins SET used = 1, usedby = ?, useddate = ? "
                        "WHERE pin = ? AND used = 0 AND currency = ? RETURNING id, credit",
                        (userid, now, pin, user[0]),
                    )
                ).one()
                if claimed is None:
                    raise BadPin("invalid or used PIN")
                value = self.engine.money(claimed[1])
                balance, ledgerid = await self._change_balance_txn(
                    txn, userid, value, "pin", now=now, reference=f"pin:{claimed[0]}", txid=txid
                )
                return MoneyResult(userid, balance, ledgerid, extra=(("credit", str(value)),))

            return await self._idempotent_txn(txn, userid, txid, f"pin:{pin}", body)

        return await self.db.run_interaction("redeem_pin", redeem_pin_txn)

    async def hold(self, userid: int, amount: Any, *, reference: str = "", txid: str | None = None,
                   then: Callable[[Txn, int], Awaitable[Any]] | None = None) -> MoneyResult:
        """Reserve funds: debit them now (checked) and open a hold.

        The result's C{extra} holds C{holdid} (and C{then}: what C{then(txn,
        holdid)} returned, when given; it runs in the same transaction).
        Concurrent holds of one user can never reserve more than the account
        allows.
        """
        value = parse_amount(amount)
        txid = _check_txid(txid)

        async def hold_txn(txn: Txn) -> MoneyResult:
            async def body() -> MoneyResult:
                now = self.now()
                if not (await txn.execute("SELECT id FROM tb_users WHERE id = ?", (userid,))).rows:
                    raise UnknownUser(f"no user with id {userid}")
                hold = await txn.execute(
                    "INSERT INTO tb_holds (userid, amount, status, reference, created, node) "
                    "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (userid, value, HOLD_OPEN, reference, now, self.node),
                )
                holdid = int(hold.rows[0][0])
                balance, ledgerid = await self._change_balance_txn(
                    txn, userid, -value, "hold", now=now, reference=f"hold:{holdid}", txid=txid
                )
                extra: tuple[tuple[str, str], ...] = (("holdid", str(holdid)),)
                if then is not None:
                    extra += (("then", str(await then(txn, holdid))),)
                return MoneyResult(userid, balance, ledgerid, extra=extra)

            return await self._idempotent_txn(txn, userid, txid, f"hold:{value}", body)

        return await self.db.run_interaction("hold", hold_txn)

    async def settle(self, holdid: int, cost: Any,
                     then: Callable[[Txn, int], Awaitable[Any]] | None = None) -> MoneyResult:
        """Close a hold charging C{cost} (at most the held amount); refund the rest.

        C{then(txn, userid)}, if given, runs in the same transaction first (a
        call's CDRs, say): its failure leaves the hold open.
        """
        return (await self.settle_many([(holdid, cost)], then))[0]

    async def settle_many(self, charges: Sequence[tuple[int, Any]],
                          then: Callable[[Txn, int], Awaitable[Any]] | None = None) -> list[MoneyResult]:
        """Close several holds in one transaction, each charging its cost (at most its held amount) and
        refunding the rest (a call billed to two users: the caller, and a user who forwards it).

        C{then(txn, userid)}, with the first hold's user, runs in the same transaction after the holds are
        closed and before the refunds; any failure leaves every hold open.
        """
        values = [(holdid, parse_amount(cost, allow_zero=True)) for holdid, cost in charges]
        if not values:
            raise ValueError("no hold to settle")

        async def settle_txn(txn: Txn) -> list[MoneyResult]:
            closed = []
            for holdid, value in values:
                userid, held = await self._close_hold_txn(txn, holdid, HOLD_SETTLED, value)
                if value > held:
                    raise InvalidAmount(f"cost {value} exceeds the held {held}")
                closed.append((holdid, userid, held - value))
            if then is not None:
                await then(txn, closed[0][1])
            results = []
            for holdid, userid, back in closed:
                if back == 0:
                    balance = self.engine.money(
                        (await txn.execute("SELECT credit FROM tb_users WHERE id = ?", (userid,))).rows[0][0]
                    )
                    results.append(MoneyResult(userid, balance, None))
                    continue
                balance, ledgerid = await self._change_balance_txn(
                    txn, userid, back, "settle", now=self.now(), reference=f"hold:{holdid}", refund=True
                )
                results.append(MoneyResult(userid, balance, ledgerid))
            return results

        return await self.db.run_interaction("settle", settle_txn)

    async def release(self, holdid: int, then: Callable[[Txn, int], Awaitable[Any]] | None = None) -> MoneyResult:
        """Close a hold without charging: the whole amount returns (C{then(txn, userid)} in the same
        transaction)."""

        async def release_txn(txn: Txn) -> MoneyResult:
            userid, held = await self._close_hold_txn(txn, holdid, HOLD_RELEASED, None)
            if then is not None:
                await then(txn, userid)
            balance, ledgerid = await self._change_balance_txn(
                txn, userid, held, "release", now=self.now(), reference=f"hold:{holdid}", refund=True
            )
            return MoneyResult(userid, balance, ledgerid)

        return await self.db.run_interaction("release", release_txn)

    async def _close_hold_txn(
        self, txn: Txn, holdid: int, status: int, cost: Decimal | None
    ) -> tuple[int, Decimal]:
        row = (
            await txn.execute(
                "UPDATE tb_holds SET status = ?, cost = ?, closed = ? WHERE id = ? AND status = ? "
                "RETURNING userid, amount",
                (status, cost, self.now(), holdid, HOLD_OPEN),
            )
        ).one()
        if row is None:
            raise HoldClosed(f"hold {holdid} does not exist or is closed")
        return int(row[0]), self.engine.money(row[1])

    # -- reading the ledger -------------------------------------------------------

    async def ledger(self, userid: int) -> list[LedgerEntry]:
        """The user's ledger rows, oldest first."""

        result = await self.db.run_query(
            "ledger",
            f"SELECT id, {_LEDGER_COLUMNS} FROM tb_credits WHERE userid = ? ORDER BY id",
            (userid,),
        )
        money, time = self.engine.money, self.engine.time
        return [
            LedgerEntry(int(r[0]), int(r[1]), money(r[2]), money(r[3]), r[4], r[5], r[6], r[7], time(r[8]))  # type: ignore[arg-type]
            for r in result.rows
        ]

    async def audit(self) -> list[tuple[int, Decimal, Decimal]]:
        """Users whose ledger does not sum to their balance: (id, credit, ledger sum).

        An empty list means every balance is accounted for.
        """

        result = await self.db.run_statement(
            "audit",
            "SELECT u.id, u.credit, coalesce(sum(c.amount), 0) FROM tb_users u "
            "LEFT JOIN tb_credits c ON c.userid = u.id GROUP BY u.id, u.credit",
        )
        money = self.engine.money
        return [(int(r[0]), money(r[1]), money(r[2])) for r in result.rows if money(r[1]) != money(r[2])]


class _Autocommit:
    """A Txn whose every statement commits by itself (for one-statement changes)."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.engine = db.engine
        self.name = name

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Awaitable[Result]:
        return self.db.run_statement(self.name, sql, params)


def _host(address: str) -> str:
    """The host of C{host:port}, C{[v6]:port} or a bare host."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") == 1:
        return address.split(":", 1)[0]
    return address


def _encode_result(result: MoneyResult) -> str:
    return json.dumps(
        {"userid": result.userid, "balance": str(result.balance), "ledgerid": result.ledgerid,
         "extra": [list(pair) for pair in result.extra]}
    )


def _decode_result(text: str) -> MoneyResult:
    data = json.loads(text)
    return MoneyResult(
        int(data["userid"]), Decimal(data["balance"]), data["ledgerid"], True,
        tuple((k, v) for k, v in data["extra"]),
    )
