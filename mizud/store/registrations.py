"""Registrations (bindings) in tb_registrations, and tb_users.status kept current.

Every node reads and writes the same rows, so a user registered through
one node is online for all of them.  tb_users.status is 0 while a user has
no live binding and 2 (online) while it has one (3 and 4, calling and
speaking, belong to calls); statusdate is the last change or refresh, so
the spec's SQL "status > 0 and statusdate > now - 0.1 day" finds the
registered users.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from .changes import Change as ChangeOfRow
from .database import Database, Txn

ONLINE = 2
#: While a user stays registered, its statusdate is rewritten at most this often.
STATUS_REFRESH = timedelta(minutes=10)
#: An unchanged refresh is written once its stored expiry is this near (seconds; see L{Bindings.flush}).
REFRESH_HORIZON = 30.0
#: The most refreshes one flush transaction writes.
FLUSH_CHUNK = 500
#: The most stored bindings kept in memory (L{Bindings._stored}; the least recently used users' go first).
STORED_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact of a user."""

    userid: int
    username: str
    contact: str
    address: str
    transport: str
    useragent: str
    q: Decimal
    expires: datetime
    created: datetime
    #: The domain the phone registered under (the host of its REGISTER's To).
    domain: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """One contact of a REGISTER: its URI and seconds to live (0 removes it)."""

    contact: str
    expires: int
    q: Decimal = Decimal(1)


@dataclass(slots=True)
class _Refresh:
    """An unchanged binding's refresh not yet written: its Call-ID and CSeq, the expiry it was granted, and
    the expiry stored in the row."""

    callid: str
    cseq: int
    expires: datetime
    stored: datetime
    #: The row refreshed (tb_registrations.id).
    rowid: int = 0


class OutOfOrder(Exception):
    """A REGISTER older than the binding it would change (RFC 3261 10.3 step 7)."""


class TooManyContacts(Exception):
    """A REGISTER that would leave a user with more contacts than allowed."""


def _host(address: str) -> str:
    """The host of a host:port address (IPv6 without its brackets)."""
    return address.rpartition(":")[0].strip("[]") if ":" in address else address


def _expiring(binding: Binding, expires: datetime) -> Binding:
    """The binding with another expiry (dataclasses.replace, without its per-call field introspection)."""
    return Binding(binding.userid, binding.username, binding.contact, binding.address, binding.transport,
                   binding.useragent, binding.q, expires, binding.created, binding.domain)


_COLUMNS = "userid, username, contact, address, transport, useragent, q, expires, created, domain"
#: A refresh's read: the user's stored bindings, each with its Call-ID, CSeq, the user's status and
#: statusdate, and its row id (made once, not per REGISTER).
_REFRESH_SQL = (
    f"SELECT {', '.join('r.' + c.strip() for c in _COLUMNS.split(','))}, r.callid, r.cseq, u.status, "
    "u.statusdate, r.id FROM tb_registrations r JOIN tb_users u ON u.id = r.userid WHERE r.userid = ?")


class Bindings:
    """tb_registrations on one L{Database}.

    A REGISTER that changes something (a new contact, another address or
    Call-ID, a removal) is one transaction, durable before it is answered.
    A refresh that changes nothing but the expiry (the common REGISTER;
    its Call-ID may be new, as sipp's are)
    costs one indexed read and no write: the new expiry is kept in memory
    and written by L{flush} only once the stored expiry is within
    L{REFRESH_HORIZON} seconds, many in one transaction.  A crash loses
    only such extensions: every acknowledged binding stays stored, live
    until at least its stored expiry (which a refresh never moved closer).
    """

    def __init__(self, db: Database, now: Any) -> None:
        self.db = db
        self.engine = db.engine
        self.now = now
        #: Unwritten refreshes: user id -> contact -> refresh.
        self._refreshes: dict[int, dict[str, _Refresh]] = {}
        #: The refreshes due from each second (epoch seconds): (user id, contact); stale entries are skipped.
        self._due: dict[int, set[tuple[int, str]]] = {}
        #: Bumped when a write of a user's bindings begins and ends (see L{_refresh}).
        self._versions: dict[int, int] = {}
        #: How many REGISTERs were answered without a write.
        self.unwritten = 0
        #: Each user's stored bindings (with the user's status) as last read, where the change feed tells
        #: every change of them (SQLite: the registrations' and the status's triggers), so that a refresh
        #: of unchanged bindings costs no statement at all; a read that raced a change is not kept.
        self._stored: OrderedDict[int, list[tuple[Any, ...]]] = OrderedDict()
        self._stored_generation = 0
        self._stored_rows_kept = 0
        self._feed = db.changes
        if self._feed.tells("tb_registrations"):
            self._feed.watch("tb_registrations", self._stored_changed)
        #: How many refreshes read the stored bindings from the database (the others, from memory).
        self.reads = 0

    def _binding(self, row: tuple[Any, ...]) -> Binding:
        engine = self.engine
        return Binding(int(row[0]), row[1], row[2], row[3], row[4], row[5], engine.money(row[6]),
                       engine.time(row[7]) or datetime.min, engine.time(row[8]) or datetime.min, row[9] or "")

    async def register(
        self,
        userid: int,
        username: str,
        changes: list[Change],
        *,
        wildcard: bool,
        callid: str,
        cseq: int,
        address: str,
        transport: str,
        useragent: str,
        most: int = 10,
        domain: str = "",
    ) -> list[Binding]:
        """Apply one REGISTER in one transaction; return the user's bindings after it.

        Raises L{OutOfOrder} or L{TooManyContacts} (then nothing is changed).
        """
        agent = useragent[:200]
        if not wildcard and changes and all(change.expires > 0 for change in changes):
            refreshed = await self._refresh(userid, changes, callid, cseq, (address, transport, agent, domain))
            if refreshed is not None:
                return refreshed
        # This user's unwritten refreshes go first, in the same transaction (so the CSeq check sees them);
        # a fast path whose read is in flight now must not trust that read (the version changes).
        refreshes = self._refreshes.pop(userid, {})
        self._bump(userid)

        try:
            return await self.db.run_interaction("register", self._register_txn, userid, username, changes, wildcard,
                                                 callid, cseq, (address, transport, agent, domain), most, refreshes)
        except BaseException:
            self._keep(userid, refreshes)  # not written: they stay to be written (each was acknowledged)
            raise
        finally:
            self._bump(userid)

    async def _register_txn(self, txn: Txn, userid: int, username: str, changes: list[Change], wildcard: bool,
                            callid: str, cseq: int, origin: tuple[str, str, str, str], most: int,
                            refreshes: dict[str, "_Refresh"]) -> list[Binding]:
        """One REGISTER's transaction (see L{register}); C{origin}: address, transport, user agent, domain."""
        address, transport, agent, domain = origin
        now = self.now()
        engine = self.engine
        # Locks the user's row on PostgreSQL, so one user's REGISTERs are serialised
        # (SQLite has one writer anyway); then its bindings, as every other writer does.
        user = (await txn.execute(
            "SELECT status, statusdate FROM tb_users WHERE id = ?" + engine.for_update, (userid,))).one()
        if refreshes:
            await self._write_refreshes(txn, [(userid, contact, r) for contact, r in refreshes.items()], now)
        rows = (await txn.execute(
            f"SELECT {_COLUMNS}, callid, cseq FROM tb_registrations WHERE userid = ?", (userid,))).rows
        current: dict[str, Binding] = {}
        order: dict[str, tuple[str, int]] = {}
        lapsed = False
        for row in rows:
            binding = self._binding(row)
            if binding.expires <= now:
                lapsed = True
                continue
            current[binding.contact] = binding
            order[binding.contact] = (row[10], int(row[11]))
        if lapsed:
            await txn.execute("DELETE FROM tb_registrations WHERE userid = ? AND expires <= ?", (userid, now))
        if wildcard:
            for contact, (old_callid, old_cseq) in order.items():
                if old_callid == callid and cseq <= old_cseq:
                    raise OutOfOrder(contact)
            await txn.execute("DELETE FROM tb_registrations WHERE userid = ?", (userid,))
            current.clear()
        for change in changes:
            known = current.get(change.contact)
            previous = order.get(change.contact)
            if previous is not None and previous[0] == callid and cseq <= previous[1]:
                raise OutOfOrder(change.contact)
            if change.expires <= 0:
                if known is not None:
                    await txn.execute("DELETE FROM tb_registrations WHERE userid = ? AND contact = ?",
                                      (userid, change.contact))
                    del current[change.contact]
                continue
            if known is None and len(current) >= most:
                raise TooManyContacts()
            expires = now + timedelta(seconds=change.expires)
            values = (address, transport, agent, change.q, expires, callid, cseq, now, domain)
            if known is not None:
                await txn.execute(
                    "UPDATE tb_registrations SET address = ?, transport = ?, useragent = ?, q = ?, expires = ?, "
                    "callid = ?, cseq = ?, updated = ?, domain = ? WHERE userid = ? AND contact = ?",
                    (*values, userid, change.contact))
                created = known.created
            else:
                await txn.execute(
                    "INSERT INTO tb_registrations (userid, username, contact, address, transport, useragent, q, "
                    "expires, callid, cseq, updated, domain, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (userid, username, change.contact, *values, now))
                created = now
            current[change.contact] = Binding(userid, username, change.contact, address, transport, agent,
                                              change.q, expires, created, domain)
        bindings = sorted(current.values(), key=lambda b: (-b.q, b.created, b.contact))
        status, when = (int(user[0] or 0), engine.time(user[1])) if user else (0, None)
        online = bool(bindings)
        # statusdate is refreshed at most every STATUS_REFRESH while nothing else changes.
        if online != (status >= ONLINE) or when is None or now - when >= STATUS_REFRESH:
            await self._set_status(txn, userid, online, now)
        return bindings

    async def _refresh(self, userid: int, changes: list[Change], callid: str, cseq: int,
                       origin: tuple[str, str, str, str]) -> list[Binding] | None:
        """Answer a REGISTER that only refreshes the user's stored bindings, from one read and without a
        write; None when it changes anything else (the transaction then decides)."""
        now = self.now()
        version = self._versions.get(userid, 0)
        rows = await self._stored_rows(userid)
        if not rows or self._versions.get(userid, 0) != version:
            return None  # nothing stored, or a write of this user's bindings began since the read did
        status, when = int(rows[0][12] or 0), self.engine.time(rows[0][13])
        if status < ONLINE or when is None or now - when >= STATUS_REFRESH:
            return None  # the status must be written (it would be by the transaction)
        known = self._refreshes.get(userid, {})
        current: dict[str, tuple[Binding, str, int]] = {}
        stored: dict[str, tuple[int, datetime]] = {}
        for row in rows:
            binding = self._binding(row)
            if binding.expires <= now:
                return None  # a lapsed binding to clear away
            stored[binding.contact] = (int(row[14]), binding.expires)
            order = (str(row[10]), int(row[11]))
            pending = known.get(binding.contact)
            if pending is not None and pending.stored == binding.expires:  # the row is as it was refreshed from
                order = (pending.callid, pending.cseq)
                binding = _expiring(binding, pending.expires)
            current[binding.contact] = (binding, *order)
        for change in changes:
            entry = current.get(change.contact)
            if entry is None:
                return None
            binding, old_callid, old_cseq = entry
            if (binding.address, binding.transport, binding.useragent, binding.domain) != origin \
                    or binding.q != change.q:
                return None
            if old_callid == callid and cseq <= old_cseq:
                raise OutOfOrder(change.contact)
        granted: dict[str, _Refresh] = {}
        for change in changes:
            expires = now + timedelta(seconds=change.expires)
            rowid, kept = stored[change.contact]
            # Only an extension, and only while the stored expiry still covers half the new grant: a
            # shorter grant is written at once (routing must not outlive it), and so is a refresh that
            # comes late in the interval (were it lost, the binding would lapse long before the next).
            if expires < current[change.contact][0].expires or (kept - now) * 2 < expires - now:
                return None
            granted[change.contact] = _Refresh(callid, cseq, expires, kept, rowid)
        refreshes = self._refreshes.setdefault(userid, {})
        for contact, refresh in granted.items():
            refreshes[contact] = refresh
            self._due.setdefault(self._due_second(refresh), set()).add((userid, contact))
            current[contact] = (_expiring(current[contact][0], refresh.expires), callid, cseq)
        self.unwritten += 1
        return sorted((entry[0] for entry in current.values()), key=lambda b: (-b.q, b.created, b.contact))

    async def _stored_rows(self, userid: int) -> list[tuple[Any, ...]]:
        """The user's stored bindings, each with the user's status and statusdate: from memory where the
        change feed allows (L{_stored}), else one indexed read."""
        stored = self._stored
        feed = self._feed
        if userid in stored and feed.trusted():
            stored.move_to_end(userid)
            return stored[userid]
        generation = self._stored_generation
        self.reads += 1
        result = await self.db.run_query("register_refresh", _REFRESH_SQL, (userid,))
        if generation == self._stored_generation and feed.tells("tb_registrations") and feed.trusted():
            self._stored_rows_kept += len(result.rows) - len(stored.pop(userid, ()))
            stored[userid] = result.rows
            while self._stored_rows_kept > STORED_ROWS:
                _, dropped = stored.popitem(last=False)
                self._stored_rows_kept -= len(dropped)
        return result.rows

    def _stored_changed(self, change: ChangeOfRow) -> None:
        """A user's bindings or status changed (C{change.id}: the user; None: anyone's): forget them, and
        any read of them in flight."""
        self._stored_generation += 1
        if change.id is None:
            self._stored.clear()
            self._stored_rows_kept = 0
        else:
            self._stored_rows_kept -= len(self._stored.pop(change.id, ()))

    async def flush(self, everything: bool = False) -> int:
        """Write the refreshes whose stored expiry is within L{REFRESH_HORIZON} (C{everything}: all of
        them, when stopping), at most L{FLUSH_CHUNK} per transaction; how many rows were written."""
        now = self.now()
        current = int((now - datetime(1970, 1, 1)).total_seconds())
        seconds = sorted(self._due) if everything else sorted(second for second in self._due if second <= current)
        due: list[tuple[int, str, _Refresh]] = []
        for second in seconds:
            for userid, contact in self._due.pop(second):
                refresh = self._refreshes.get(userid, {}).pop(contact, None)
                if refresh is not None:
                    due.append((userid, contact, refresh))
                    if not self._refreshes[userid]:
                        del self._refreshes[userid]
        due.sort(key=lambda entry: (entry[0], entry[1]))  # one lock order for every node
        written = 0
        for start in range(0, len(due), FLUSH_CHUNK):
            chunk = due[start:start + FLUSH_CHUNK]
            users = {userid for userid, _, _ in chunk}
            for userid in users:
                self._bump(userid)

            async def refreshes_txn(txn: Txn, chunk: list[tuple[int, str, _Refresh]] = chunk) -> int:
                return await self._write_refreshes(txn, chunk, now)

            try:
                written += await self.db.run_interaction("register_refreshes", refreshes_txn)
            except BaseException:
                for userid, contact, refresh in due[start:]:  # tried again at the next flush
                    self._keep(userid, {contact: refresh})
                raise
            finally:
                for userid in users:
                    self._bump(userid)
        return written

    def _keep(self, userid: int, refreshes: dict[str, "_Refresh"]) -> None:
        """Put refreshes that could not be written back, unless a newer one for the contact came meanwhile."""
        kept = self._refreshes.setdefault(userid, {})
        for contact, refresh in refreshes.items():
            if contact not in kept:
                kept[contact] = refresh
                self._due.setdefault(self._due_second(refresh), set()).add((userid, contact))
        if not kept:
            del self._refreshes[userid]

    def _bump(self, userid: int) -> None:
        """A write of this user's bindings begins or ends: a fast-path read in flight is no longer trusted."""
        self._versions[userid] = self._versions.get(userid, 0) + 1

    @staticmethod
    def _due_second(refresh: "_Refresh") -> int:
        """The second from which a refresh is due (its stored expiry, less the horizon)."""
        return int((refresh.stored - datetime(1970, 1, 1)).total_seconds() - REFRESH_HORIZON)

    async def _write_refreshes(self, txn: Txn, due: list[tuple[int, str, "_Refresh"]], now: datetime) -> int:
        """Store refreshed expiries (with their Call-ID and CSeq) where the row is still the one refreshed
        (the same expiry, compared as times, not text), or the same Call-ID's older state; never shortening
        an expiry or lowering a CSeq; a row removed or rewritten by a newer REGISTER meanwhile is left.
        How many rows were written."""
        written = 0
        for userid, contact, refresh in due:
            row = (await txn.execute(
                "SELECT id, expires, callid, cseq FROM tb_registrations WHERE id = ? AND userid = ? AND contact = ?"
                + self.engine.for_update, (refresh.rowid, userid, contact))).one()
            if row is None:
                continue
            expires = self.engine.time(row[1])
            same = expires == refresh.stored
            older = str(row[2]) == refresh.callid and int(row[3]) < refresh.cseq
            if not (same or older) or expires is None or expires >= refresh.expires:
                continue
            await txn.execute("UPDATE tb_registrations SET expires = ?, callid = ?, cseq = ?, updated = ? WHERE id = ?",
                              (refresh.expires, refresh.callid, refresh.cseq, now, refresh.rowid))
            written += 1
        return written

    @staticmethod
    async def _set_status(txn: Txn, userid: int, online: bool, now: datetime) -> None:
        if online:
            await txn.execute(
                "UPDATE tb_users SET status = CASE WHEN status > ? THEN status ELSE ? END, statusdate = ? WHERE id = ?",
                (ONLINE, ONLINE, now, userid))
        else:
            await txn.execute("UPDATE tb_users SET status = 0, statusdate = ? WHERE id = ?", (now, userid))

    async def of_user(self, userid: int) -> list[Binding]:
        """A user's live bindings, best q first."""
        result = await self.db.run_query(
            "bindings", f"SELECT {_COLUMNS} FROM tb_registrations WHERE userid = ? AND expires > ? ORDER BY q DESC, id",
            (userid, self.now()))
        return [self._binding(row) for row in result.rows]

    async def all(self, username: str = "", transport: str = "", live: bool = True) -> list[Binding]:
        """Bindings, optionally of one username or transport; live ones or expired ones."""
        sql = f"SELECT {_COLUMNS} FROM tb_registrations WHERE expires {'>' if live else '<='} ?"
        params: list[Any] = [self.now()]
        if username:
            sql += " AND username = ?"
            params.append(username)
        if transport:
            sql += " AND transport = ?"
            params.append(transport)
        result = await self.db.run_query("bindings", sql + " ORDER BY username, id", params)
        return [self._binding(row) for row in result.rows]

    async def remove(self, username: str = "", address: str = "") -> list[str]:
        """End bindings (of a username, or all; optionally only from one host); return the usernames."""

        async def remove_txn(txn: Txn) -> list[str]:
            now = self.now()
            sql = "SELECT id, userid, username, address FROM tb_registrations"
            params: list[Any] = []
            if username:
                sql += " WHERE username = ?"
                params.append(username)
            rows = [row for row in (await txn.execute(sql, params)).rows
                    if not address or _host(row[3]) == address]
            users = sorted({(int(row[1]), row[2]) for row in rows})
            # Users first, then their bindings: the order REGISTER locks them in.
            for userid, _ in users:
                await txn.execute("SELECT id FROM tb_users WHERE id = ?" + self.engine.for_update, (userid,))
            for row in rows:
                await txn.execute("DELETE FROM tb_registrations WHERE id = ?", (row[0],))
            for userid, _ in users:
                left = (await txn.execute("SELECT count(*) FROM tb_registrations WHERE userid = ? AND expires > ?",
                                          (userid, now))).rows[0][0]
                await self._set_status(txn, userid, bool(left), now)
            return sorted({name for _, name in users})

        return await self.db.run_interaction("unregister", remove_txn)

    async def expire(self) -> int:
        """Remove expired bindings; users left with none go offline. Returns how many were removed."""

        async def expire_txn(txn: Txn) -> int:
            now = self.now()
            await txn.execute(
                "UPDATE tb_users SET status = 0, statusdate = ? WHERE status > 0 AND id IN "
                "(SELECT userid FROM tb_registrations WHERE expires <= ?) AND NOT EXISTS "
                "(SELECT 1 FROM tb_registrations r WHERE r.userid = tb_users.id AND r.expires > ?)",
                (now, now, now))
            return (await txn.execute("DELETE FROM tb_registrations WHERE expires <= ?", (now,))).rowcount

        return await self.db.run_interaction("expire_bindings", expire_txn)

    async def status(self, username: str) -> int:
        """The spec's status: 0 no such user, 1 offline, 2 online, 3 calling, 4 speaking.

        Calling and speaking come from the live calls of every node (tb_calls): a call one of whose legs
        is the user (its username as anum or bnum, or as the callee of a call from a phone, cnum of a
        C{sip} call: a DID names its user there), connected (4) or still being set up (3).
        """
        result = await self.db.run_query(
            "user_status",
            "SELECT u.id, (SELECT count(*) FROM tb_registrations r WHERE r.userid = u.id AND r.expires > ?), "
            "(SELECT max(CASE WHEN c.state = 'connected' THEN 4 ELSE 3 END) FROM tb_calls c "
            "WHERE c.anum = u.username OR c.bnum = u.username OR (c.kind = 'sip' AND c.cnum = u.username)) "
            "FROM tb_users u WHERE u.username = ?", (self.now(), username))
        row = result.one()
        if row is None:
            return 0
        live, calling = int(row[1]), int(row[2] or 0)
        if calling:
            return calling
        return ONLINE if live else 1

    async def count(self) -> int:
        """How many bindings are stored (live or not yet swept)."""
        result = await self.db.run_query("count_registrations", "SELECT count(*) FROM tb_registrations")
        return int(result.rows[0][0])
