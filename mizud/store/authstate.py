"""What authentication keeps in the database: shared keys, nonce uses, failed logins.

Every node sharing a database must agree on these: the key API nonces are
signed with (so a nonce from one node is good on another), which nonce and
authmd5 pairs were used (replays), and the failed logins that add up to
a lockout (on PostgreSQL; a single SQLite node counts in memory).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from .database import Database, Txn

#: The most failed-login rows kept at once (the oldest go first beyond it).
MAX_FAILURE_ROWS = 200_000


async def server_key(db: Database, name: str, now: datetime) -> bytes:
    """The shared secret called C{name}, created at random by the first node that asks."""

    async def server_key_txn(txn: Txn) -> str:
        await txn.execute(
            "INSERT INTO tb_serverkeys (name, value, created) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (name, secrets.token_hex(32), now),
        )
        row = (await txn.execute("SELECT value FROM tb_serverkeys WHERE name = ?", (name,))).one()
        assert row is not None
        return str(row[0])

    return bytes.fromhex(await db.run_interaction("server_key", server_key_txn))


class NonceUses:
    """The (nonce, authmd5) pairs already accepted, until their nonce expires."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now

    async def use(self, nonce: str, authmd5: str, ttl: float) -> bool:
        """Record a use; False when this pair was used before (a replay)."""
        result = await self.db.run_statement(
            "use_nonce",
            "INSERT INTO tb_nonceuse (nonce, authmd5, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (nonce, authmd5) DO NOTHING RETURNING id",
            (nonce, authmd5.lower(), self.now() + timedelta(seconds=ttl)),
        )
        return bool(result.rows)

    async def expire(self) -> int:
        """Forget the uses of expired nonces; returns how many went."""
        result = await self.db.run_statement("expire_nonce_uses", "DELETE FROM tb_nonceuse WHERE expires <= ?",
                                             (self.now(),))
        return result.rowcount


class StoredFailures:
    """Failed logins in C{tb_authfailures}, so that failures on every node add up.

    One row per failure and key: C{kind} C{user} (C{value} the account,
    C{address} where it came from, empty when that can be forged), and C{ip}
    or C{udp} (C{value} the address, C{account} the account the failure was
    for).  Rows older than the window are deleted by L{expire}, which also
    keeps at most L{MAX_FAILURE_ROWS}.
    """

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now

    async def record(self, account: str, source: str, kind: str, address: str, window: float) -> tuple[int, int, int]:
        """Count one failure; returns (the account's failures, the address's under C{kind}, its distinct accounts)
        within the window."""
        now = self.now()
        since = now - timedelta(seconds=window)

        async def record_failure_txn(txn: Txn) -> tuple[int, int, int]:
            await txn.execute(
                "INSERT INTO tb_authfailures (kind, value, account, address, at) VALUES ('user', ?, ?, ?, ?)",
                (account, account, source, now))
            row = (await txn.execute(
                "SELECT count(*) FROM tb_authfailures WHERE kind = 'user' AND value = ? AND at > ?",
                (account, since))).one()
            for_account = int(row[0]) if row else 0
            await txn.execute(
                "INSERT INTO tb_authfailures (kind, value, account, address, at) VALUES (?, ?, ?, ?, ?)",
                (kind, address, account, address, now))
            row = (await txn.execute(
                "SELECT count(*), count(DISTINCT account) FROM tb_authfailures "
                "WHERE kind = ? AND value = ? AND at > ?", (kind, address, since))).one()
            return for_account, int(row[0]) if row else 0, int(row[1]) if row else 0

        return await self.db.run_interaction("auth_failure", record_failure_txn)

    async def clear(self, kind: str, value: str) -> None:
        """Forget the failures of one key (after a ban)."""
        await self.db.run_statement("clear_auth_failures",
                                    "DELETE FROM tb_authfailures WHERE kind = ? AND value = ?", (kind, value))

    async def clear_from(self, account: str, source: str) -> None:
        """Forget the account's failures that came from C{source} (its owner logged in from there)."""
        await self.db.run_statement(
            "clear_own_failures", "DELETE FROM tb_authfailures WHERE kind = 'user' AND value = ? AND address = ?",
            (account, source))

    async def failing_accounts(self, window: float) -> set[str]:
        """The accounts with failures inside the window (at most L{MAX_FAILURE_ROWS})."""
        result = await self.db.run_query(
            "failing_accounts",
            f"SELECT DISTINCT value FROM tb_authfailures WHERE kind = 'user' AND at > ? LIMIT {MAX_FAILURE_ROWS}",
            (self.now() - timedelta(seconds=window),))
        return {str(row[0]) for row in result.rows}

    async def expire(self, window: float) -> int:
        """Delete failures older than the window, and the oldest beyond L{MAX_FAILURE_ROWS}."""

        async def expire_failures_txn(txn: Txn) -> int:
            old = await txn.execute("DELETE FROM tb_authfailures WHERE at <= ?",
                                    (self.now() - timedelta(seconds=window),))
            cut = (await txn.execute(
                f"SELECT id FROM tb_authfailures ORDER BY id DESC LIMIT 1 OFFSET {MAX_FAILURE_ROWS}")).one()
            extra = 0
            if cut is not None:
                extra = (await txn.execute("DELETE FROM tb_authfailures WHERE id <= ?", (cut[0],))).rowcount
            return max(old.rowcount, 0) + max(extra, 0)

        return await self.db.run_interaction("expire_auth_failures", expire_failures_txn)


@dataclass(frozen=True)
class Ban:
    """One active ban."""

    id: int
    kind: str
    value: str
    reason: str
    until: datetime


class BanRows:
    """The bans of addresses and users in C{tb_banned} (the policy is L{mizud.security.bans.Bans})."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, kind: str, value: str, reason: str, now: datetime, until: datetime) -> None:
        """Store one ban, in force from C{now} until C{until}."""
        await self.db.run_statement(
            "ban",
            "INSERT INTO tb_banned (kind, value, reason, created, until) VALUES (?, ?, ?, ?, ?)",
            (kind, value, reason, now, until),
        )

    async def active(self, now: datetime) -> list[Ban]:
        """Every ban in force at C{now}, soonest ending first."""
        result = await self.db.run_query(
            "active_bans", "SELECT id, kind, value, reason, until FROM tb_banned WHERE until > ? ORDER BY until",
            (now,))
        time = self.db.engine.time
        return [Ban(int(r[0]), r[1], r[2], r[3], time(r[4])) for r in result.rows]  # type: ignore[arg-type]

    async def lift(self, value: str | None, now: datetime) -> int:
        """End the bans in force of an address or user (None: all) at C{now}; how many."""
        if value is None:
            result = await self.db.run_statement("lift_bans", "UPDATE tb_banned SET until = ? WHERE until > ?",
                                                 (now, now))
        else:
            result = await self.db.run_statement(
                "lift_ban", "UPDATE tb_banned SET until = ? WHERE value = ? AND until > ?", (now, value, now))
        return result.rowcount
