"""Numbers and names: who a number belongs to, the claims users make on numbers, and names that collide.

An C{authid}, an SMS or call target and a sender id are resolved as a
username first, then a user id, a PIN and a number of the pool (DID).  So
a username that equals another account's id, PIN or DID, or a number
another user proved, would take it over: L{Names.conflict} says what a
new username would shadow.

Numbers users add to their account (C{cli}, C{addcallbacknumber}) are
claims until proven (a code sent to the number) or approved by an admin:
L{NumberClaims} keeps one claim per user and number, and a number has at
most one proven owner per kind (a unique index), so a race is decided by
the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from ..text import canonical_id
from .database import Database, DatabaseError, Txn

#: Wrong codes one claim may be given before its code stops working.
MAX_ATTEMPTS = 5
#: Codes that may be sent for one claim within a day.
MAX_CODES_A_DAY = 5


class Names:
    """What a username would collide with."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def conflict(self, name: str, number: str | None, userid: int | None = None) -> str | None:
        """What C{name} (and, if it is a phone number, C{number}: its digits) would shadow, or None.

        C{userid}: the user being renamed (its own id, PIN and numbers are no conflict).
        """
        other = -1 if userid is None else userid
        digits = [name] if number is None or number == name else [name, number]
        marks = ", ".join("?" * len(digits))
        ids = [found for found in (canonical_id(d) for d in digits) if found is not None]
        if ids and (await self.db.run_query(
                "name_conflict", f"SELECT id FROM tb_users WHERE id IN ({', '.join('?' * len(ids))}) AND id <> ?",
                (*ids, other))).rows:
            return "the id of another user"
        checks = (
            ("the PIN of another user", f"SELECT id FROM tb_users WHERE pin IN ({marks}) AND id <> ?"),
            ("a number of the pool (DID)",
             f"SELECT id FROM tb_phonenumbers WHERE number IN ({marks}) AND (userid = 0 OR userid <> ?)"),
            ("a number another user proved",
             f"SELECT id FROM tb_usernumbers WHERE number IN ({marks}) AND verified IS NOT NULL AND userid <> ?"),
        )
        for what, sql in checks:
            if (await self.db.run_query("name_conflict", sql + " LIMIT 1", (*digits, other))).rows:
                return what
        return None

    async def other_user_named(self, name: str, userid: int) -> bool:
        """Whether a user other than C{userid} has C{name} as username, or as an assigned DID."""
        found = await self.db.run_query(
            "named_elsewhere",
            "SELECT id FROM tb_users WHERE username = ? AND id <> ? "
            "UNION SELECT id FROM tb_phonenumbers WHERE number = ? AND userid > 0 AND userid <> ? LIMIT 1",
            (name, userid, name, userid))
        return bool(found.rows)


@dataclass(frozen=True)
class Claim:
    """One user's claim on a number."""

    userid: int
    number: str
    verified: bool
    code: str
    expires: datetime | None
    attempts: int


class NumberClaims:
    """Claims on numbers (tb_usernumbers) of one kind: C{cli} or C{callback}."""

    def __init__(self, db: Database, now: Callable[[], datetime], kind: str) -> None:
        self.db = db
        self.now = now
        self.kind = kind

    async def owner(self, number: str) -> int | None:
        """The user who proved C{number}, if any."""
        row = (await self.db.run_query(
            "number_owner", "SELECT userid FROM tb_usernumbers WHERE kind = ? AND number = ? AND verified IS NOT NULL",
            (self.kind, number))).one()
        return int(row[0]) if row else None

    async def claim(self, userid: int, number: str) -> Claim | None:
        """This user's claim on C{number}, if there is one."""
        row = (await self.db.run_query(
            "number_claim",
            "SELECT verified, code, codeexpires, attempts FROM tb_usernumbers WHERE userid = ? AND kind = ? AND number = ?",
            (userid, self.kind, number))).one()
        if row is None:
            return None
        time = self.db.engine.time
        return Claim(userid, number, row[0] is not None, str(row[1]), time(row[2]), int(row[3]))

    async def open(self, userid: int, number: str, code: str, ttl: float) -> bool:
        """Open (or renew) the user's claim with a new code valid for C{ttl} seconds; False (nothing changed)
        when L{MAX_CODES_A_DAY} codes were sent for it in the last day."""
        now = self.now()
        day = now - timedelta(days=1)

        async def open_claim_txn(txn: Txn) -> bool:
            await txn.execute(
                "INSERT INTO tb_usernumbers (userid, kind, number, created, codessince) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (userid, kind, number) DO NOTHING", (userid, self.kind, number, now, now))
            changed = await txn.execute(
                "UPDATE tb_usernumbers SET code = ?, codeexpires = ?, attempts = 0, "
                "codes = CASE WHEN codessince > ? THEN codes + 1 ELSE 1 END, "
                "codessince = CASE WHEN codessince > ? THEN codessince ELSE ? END "
                "WHERE userid = ? AND kind = ? AND number = ? AND verified IS NULL "
                "AND (codessince <= ? OR codes < ?)",
                (code, now + timedelta(seconds=ttl), day, day, now, userid, self.kind, number, day, MAX_CODES_A_DAY))
            return changed.rowcount > 0

        return await self.db.run_interaction("open_number_claim", open_claim_txn)

    async def attempt(self, userid: int, number: str) -> str | None:
        """Use up one attempt of the claim's code and return the code; None when there is no live code or
        its attempts are used up.  One statement: parallel guesses each use an attempt."""
        result = await self.db.run_statement(
            "number_claim_attempt",
            "UPDATE tb_usernumbers SET attempts = attempts + 1 WHERE userid = ? AND kind = ? AND number = ? "
            "AND verified IS NULL AND code <> '' AND codeexpires > ? AND attempts < ? RETURNING code",
            (userid, self.kind, number, self.now(), MAX_ATTEMPTS))
        row = result.one()
        return str(row[0]) if row else None

    async def prove(self, userid: int, number: str, proof: str) -> bool:
        """Mark the user's claim proven (creating it for an admin's approval); False if another user has
        proven the number first."""
        now = self.now()

        async def prove_txn(txn: Txn) -> bool:
            await txn.execute(
                "INSERT INTO tb_usernumbers (userid, kind, number, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (userid, kind, number) DO NOTHING", (userid, self.kind, number, now))
            await txn.execute(
                "UPDATE tb_usernumbers SET verified = ?, proof = ?, code = '', codeexpires = NULL "
                "WHERE userid = ? AND kind = ? AND number = ? AND verified IS NULL",
                (now, proof, userid, self.kind, number))
            return True

        try:
            return await self.db.run_interaction("prove_number", prove_txn)
        except DatabaseError:
            raise
        except Exception:
            # The unique index on proven numbers: another user proved it in the meantime.
            if await self.owner(number) not in (None, userid):
                return False
            raise
