"""The one lockout every credential check reports to: the API, the old interface, the console, SIP.

Failures are counted per B{account}: the user a credential named once its
name was resolved (username, id, PIN or DID all lead to the same
account), or, for a name that resolves to no user, that exact spelling.
C{authfailmax} failures within C{authfailwindow} ban the account for
C{authbantime}; while it is banned every answer about it is the same,
right password or wrong.

An B{address} is banned only for failures across several accounts:
C{authfailmax} failures within the window that name at least
C{authfailaccounts} different accounts.  One phone with a wrong password
behind a NAT thus locks out its own account, never the address that the
other phones, the portal and the office use; a password sprayer trying
name after name from one address is banned.  A failure whose source
address cannot be vouched for (a UDP datagram, unless C{apiudptrusted})
counts for its account only.

A successful login clears its account's failures.  On PostgreSQL the
failures live in C{tb_authfailures}, so failures on every node add up
(L{mizud.store.authstate.StoredFailures}); on SQLite (one node) in memory
(L{MemoryFailures}).  Both are bounded: rows and entries older than the
window are dropped by L{Lockout.chore}, and there is a cap on their number.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from twisted.logger import Logger

from ..config import Settings
from .ratelimit import Clock
from .state import Bans

log = Logger()

#: Accounts and addresses whose failures L{MemoryFailures} remembers at once (least recent go first).
MAX_KEYS = 50_000
#: Failure times kept per key (authfailmax is at most this).
MAX_PER_KEY = 1000
#: Distinct accounts remembered per address (authfailaccounts is at most this).
MAX_ACCOUNTS_PER_ADDRESS = 64


class FailureBook(Protocol):
    """Where failures are counted: in memory (one node) or in the database (several)."""

    async def record(self, account: str, address: str | None, window: float) -> tuple[int, int, int]:
        """Count a failure; (the account's failures, the address's, its distinct accounts) in the window."""

    async def clear(self, kind: str, value: str) -> None:
        """Forget the failures of an account (C{user}) or an address (C{ip})."""

    async def failing_accounts(self, window: float) -> set[str]:
        """The accounts that have failures inside the window."""

    async def expire(self, window: float) -> int:
        """Forget failures older than the window; returns how many went."""


class MemoryFailures:
    """Failures in this process, bounded: at most L{MAX_KEYS} accounts and addresses each."""

    def __init__(self, clock: Clock, max_keys: int = MAX_KEYS) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._accounts: OrderedDict[str, list[float]] = OrderedDict()
        #: address -> (failure times, account -> time of its latest failure)
        self._addresses: OrderedDict[str, tuple[list[float], dict[str, float]]] = OrderedDict()

    def _entry(self, table: OrderedDict[str, Any], key: str, empty: Any) -> Any:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = empty()
            if len(table) > self.max_keys:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return entry

    async def record(self, account: str, address: str | None, window: float) -> tuple[int, int, int]:
        """Count one failure now."""
        now = self.clock.seconds()
        since = now - window
        times = self._entry(self._accounts, account, list)
        times[:] = [t for t in times[-(MAX_PER_KEY - 1):] if t > since] + [now]
        if address is None:
            return len(times), 0, 0
        seen, accounts = self._entry(self._addresses, address, lambda: ([], {}))
        seen[:] = [t for t in seen[-(MAX_PER_KEY - 1):] if t > since] + [now]
        accounts.pop(account, None)
        accounts[account] = now
        for name in [n for n, t in accounts.items() if t <= since]:
            del accounts[name]
        while len(accounts) > MAX_ACCOUNTS_PER_ADDRESS:
            del accounts[next(iter(accounts))]
        return len(times), len(seen), len(accounts)

    async def clear(self, kind: str, value: str) -> None:
        """Forget one key."""
        (self._accounts if kind == "user" else self._addresses).pop(value, None)

    async def failing_accounts(self, window: float) -> set[str]:
        """Accounts with a failure inside the window."""
        since = self.clock.seconds() - window
        return {name for name, times in self._accounts.items() if times and times[-1] > since}

    async def expire(self, window: float) -> int:
        """Drop keys whose latest failure is older than the window."""
        since = self.clock.seconds() - window
        gone = [k for k, times in self._accounts.items() if not times or times[-1] <= since]
        for key in gone:
            del self._accounts[key]
        old = [k for k, (times, _) in self._addresses.items() if not times or times[-1] <= since]
        for key in old:
            del self._addresses[key]
        return len(gone) + len(old)

    def __len__(self) -> int:
        return len(self._accounts) + len(self._addresses)


class Lockout:
    """Counts failed logins and bans accounts and addresses (see the module doc)."""

    def __init__(self, settings: Settings, bans: Bans, book: FailureBook) -> None:
        self.settings = settings
        self.bans = bans
        self.book = book
        #: Accounts known to have failures (so a success costs nothing unless it must clear some).
        self._failing: set[str] = set()

    def address_banned(self, address: str) -> bool:
        """Whether requests from C{address} are refused for now."""
        return self.bans.is_banned("ip", address)

    def account_banned(self, account: str) -> bool:
        """Whether the account (a username, or an unresolved spelling) is locked for now."""
        return self.bans.is_banned("user", account)

    async def failed(self, account: str, address: str | None) -> None:
        """Count one failed login for C{account}, from C{address} when it can be vouched for (else None)."""
        config = self.settings.current
        account = account[:64]
        self._failing.add(account)
        mine, from_address, accounts = await self.book.record(account, address, config.authfailwindow)
        if mine >= config.authfailmax:
            await self.book.clear("user", account)
            self._failing.discard(account)
            await self.bans.ban("user", account, config.authbantime, "failed authentications")
            log.warn("banned user {user} for {seconds}s after failed authentications",
                     user=loggable(account), seconds=config.authbantime)
        if address is not None and from_address >= config.authfailmax and accounts >= config.authfailaccounts:
            await self.book.clear("ip", address)
            await self.bans.ban("ip", address, config.authbantime, "failed authentications")
            log.warn("banned {source} for {seconds}s after failed authentications for {accounts} accounts",
                     source=address, seconds=config.authbantime, accounts=accounts)

    async def succeeded(self, account: str) -> None:
        """A login for C{account} succeeded: its failures are forgotten."""
        if account in self._failing:
            self._failing.discard(account)
            await self.book.clear("user", account)

    async def chore(self) -> None:
        """Periodic upkeep: expire old failures, relearn which accounts have some (other nodes' too)."""
        window = self.settings.current.authfailwindow
        await self.book.expire(window)
        self._failing = await self.book.failing_accounts(window)


def loggable(text: str) -> str:
    """A client-supplied word safe for a one-line log record: no spaces or control characters."""
    cleaned = "".join(c if c.isprintable() and not c.isspace() else "?" for c in text[:64])
    return cleaned or "-"
