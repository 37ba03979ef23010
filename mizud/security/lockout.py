"""The one lockout every credential check reports to: the API, the old interface, the console, SIP.

Failures are counted per B{account}: the user a credential named once its
name was resolved (username, id, PIN or DID all lead to the same
account), or, for a name that resolves to no user, that exact spelling.
C{authfailmax} failures within C{authfailwindow} ban the account for
C{authbantime}; while it is banned every answer about it is the same,
right password or wrong.  A successful login clears only the failures
that came from its own address: an attacker's guesses from elsewhere keep
counting however often the owner logs in.

An B{address} is banned only for failures across several accounts:
C{authfailmax} failures within the window that name at least
C{authfailaccounts} different accounts.  One phone with a wrong password
behind a NAT thus locks out its own account, never the address that the
other phones, the portal and the office use; a password sprayer trying
name after name from one address is banned.  A failure whose source
address can be forged (a UDP datagram, unless C{apiudptrusted}) never
bans the address: C{authfailmax} of them from one source stop only UDP
logins from it (a ban of kind C{udp}), so a forger costs a victim at most
its UDP API.

Every failure is counted at once, in this process, before anything waits
(L{MemoryFailures}), and the check reads that count too: guesses sent in
parallel cannot all slip in before the ban is written.  On PostgreSQL the
failures also go to C{tb_authfailures}, so failures on every node add up
(L{mizud.store.authstate.StoredFailures}).  Both are bounded: entries and
rows older than the window are dropped by L{Lockout.chore}, and there is
a cap on their number.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from ..config import Settings
from ..store.authstate import StoredFailures
from ..ratelimit import Clock
from .bans import Bans

log = Logger()

#: Accounts and addresses whose failures L{MemoryFailures} remembers at once (least recent go first).
MAX_KEYS = 50_000
#: Failures kept per key (authfailmax is at most this).
MAX_PER_KEY = 1000
#: Distinct accounts remembered per address (authfailaccounts is at most this).
MAX_ACCOUNTS_PER_ADDRESS = 64


class MemoryFailures:
    """Failures in this process, bounded: at most L{MAX_KEYS} accounts and addresses each."""

    def __init__(self, clock: Clock, max_keys: int = MAX_KEYS) -> None:
        self.clock = clock
        self.max_keys = max_keys
        #: account -> [(time, address it came from, "" when it cannot be vouched for)]
        self._accounts: OrderedDict[str, list[tuple[float, str]]] = OrderedDict()
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

    def record(self, account: str, source: str, address: str | None, window: float) -> tuple[int, int, int]:
        """Count one failure now (C{source}: where it came from; C{address}: the address key to count it
        under, if any); returns (the account's failures, the address's, its distinct accounts) in the window."""
        now = self.clock.seconds()
        since = now - window
        failures = self._entry(self._accounts, account, list)
        failures[:] = [f for f in failures[-(MAX_PER_KEY - 1):] if f[0] > since] + [(now, source)]
        if address is None:
            return len(failures), 0, 0
        seen, accounts = self._entry(self._addresses, address, lambda: ([], {}))
        seen[:] = [t for t in seen[-(MAX_PER_KEY - 1):] if t > since] + [now]
        accounts.pop(account, None)
        accounts[account] = now
        for name in [n for n, t in accounts.items() if t <= since]:
            del accounts[name]
        while len(accounts) > MAX_ACCOUNTS_PER_ADDRESS:
            del accounts[next(iter(accounts))]
        return len(failures), len(seen), len(accounts)

    def count(self, account: str, window: float) -> int:
        """The account's failures inside the window."""
        since = self.clock.seconds() - window
        return sum(1 for when, _ in self._accounts.get(account, ()) if when > since)

    def clear(self, account: str, source: str | None = None) -> None:
        """Forget the account's failures (only those from C{source}, when given)."""
        if source is None:
            self._accounts.pop(account, None)
            return
        failures = self._accounts.get(account)
        if failures is not None:
            failures[:] = [f for f in failures if f[1] != source]

    def clear_address(self, address: str) -> None:
        """Forget an address's failures."""
        self._addresses.pop(address, None)

    def failing(self, account: str) -> bool:
        """Whether the account has any failure remembered."""
        return bool(self._accounts.get(account))

    def expire(self, window: float) -> int:
        """Drop keys whose latest failure is older than the window."""
        since = self.clock.seconds() - window
        gone = [k for k, failures in self._accounts.items() if not failures or failures[-1][0] <= since]
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

    def __init__(self, settings: Settings, bans: Bans, clock: Clock, shared: StoredFailures | None = None) -> None:
        self.settings = settings
        self.bans = bans
        self.local = MemoryFailures(clock)
        #: Every node's failures (PostgreSQL), or None on a single node.
        self.shared = shared
        #: Accounts any node had failures for at the last chore (so a success costs nothing otherwise).
        self._failing_elsewhere: set[str] = set()

    def address_banned(self, address: str, forgeable: bool = False) -> bool:
        """Whether requests from C{address} are refused for now (C{forgeable}: a request over UDP)."""
        return self.bans.is_banned("ip", address) or (forgeable and self.bans.is_banned("udp", address))

    def account_banned(self, account: str) -> bool:
        """Whether the account (a username, or an unresolved spelling) is locked for now: banned, or this
        node has counted its share of failures already (the ban being on its way to the database)."""
        config = self.settings.current
        return self.bans.is_banned("user", account) or self.local.count(account, config.authfailwindow) >= (
            config.authfailmax)

    async def failed(self, account: str, source: str, forgeable: bool) -> None:
        """Count one failed login for C{account} from C{source} (C{forgeable}: its address may be forged)."""
        config = self.settings.current
        account = account[:64]
        window, most = config.authfailwindow, config.authfailmax
        kind, address = ("udp", "udp " + source) if forgeable else ("ip", source)
        # Counted here first, before anything waits: parallel guesses meet the ban at once.
        mine, from_address, accounts = self.local.record(account, "" if forgeable else source, address, window)
        if self.shared is not None:
            self._failing_elsewhere.add(account)
            counts = await self.shared.record(account, "" if forgeable else source, kind, source, window)
            mine, from_address, accounts = (max(mine, counts[0]), max(from_address, counts[1]),
                                            max(accounts, counts[2]))
        if mine >= most and not self.bans.is_banned("user", account):
            await self._ban("user", account, "", f"banned user {loggable(account)} for {{seconds}}s after failed "
                            "authentications")
        if from_address < most:
            return
        if forgeable and not self.bans.is_banned("udp", source):
            # A forged source must not ban an address: only UDP logins from it stop.
            await self._ban("udp", source, address, f"refusing UDP logins from {source} for {{seconds}}s after "
                            "failed authentications")
        elif not forgeable and accounts >= config.authfailaccounts and not self.bans.is_banned("ip", source):
            await self._ban("ip", source, address, f"banned {source} for {{seconds}}s after failed authentications "
                            f"for {accounts} accounts")

    async def _ban(self, kind: str, value: str, address: str, line: str) -> None:
        seconds = self.settings.current.authbantime
        if kind == "user":
            self.local.clear(value)
        else:
            self.local.clear_address(address)
        # Started at once: the ban is in force here before its row is written.
        ban = defer.ensureDeferred(self.bans.ban(kind, value, seconds, "failed authentications"))
        log.warn(line, seconds=seconds)
        if self.shared is not None:
            await self.shared.clear(kind, value)
        await ban

    async def succeeded(self, account: str, source: str) -> None:
        """A login for C{account} from C{source} succeeded: the failures that came from there are forgotten."""
        if self.local.failing(account):
            self.local.clear(account, source)
        if self.shared is not None and account in self._failing_elsewhere:
            await self.shared.clear_from(account, source)

    async def chore(self) -> None:
        """Periodic upkeep: expire old failures, relearn which accounts have some (other nodes' too)."""
        window = self.settings.current.authfailwindow
        self.local.expire(window)
        if self.shared is not None:
            await self.shared.expire(window)
            self._failing_elsewhere = await self.shared.failing_accounts(window)


def loggable(text: str) -> str:
    """A client-supplied word safe for a one-line log record: no spaces or control characters."""
    cleaned = "".join(c if c.isprintable() and not c.isspace() else "?" for c in text[:64])
    return cleaned or "-"
