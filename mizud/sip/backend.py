"""What the SIP element needs from the rest of the daemon: a narrow, typed interface.

The SIP core never sees the API.  Once the store is open, the composition
root (L{mizud.app}) hands it a L{Backend}: the store, the rating table, the
one lockout, this node's name, whether requests are refused for now, how
to count a failed login, and the X-MizuAPI bridge, which is an API front
end living in the API (L{mizud.api.sipbridge}) and reaches SIP only as a
function from a query to an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from ..billing.rating import Rater
from ..security.lockout import Lockout
from ..store.billing import BillingStore, User
from ..store.database import Database

#: The X-MizuAPI bridge: (the header's query, the user the request's digest proved, its source address)
#: -> the API's answer as text.
ApiBridge = Callable[[str, User, str], Awaitable[str]]
#: Count one failed login: (source address, what was asked (C{sip REGISTER}), why it failed, the account named).
FailedLogin = Callable[[str, str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class Backend:
    """The services SIP uses, available once the store is open."""

    store: BillingStore
    rater: Rater
    lockout: Lockout
    #: This node's name (written into tb_calls, so other nodes can tell whose calls are live).
    node: str
    failed_login: FailedLogin
    api: ApiBridge
    #: Why requests are refused right now (a database restore), or empty.
    paused: Callable[[], str]

    @property
    def db(self) -> Database:
        """The store's database."""
        return self.store.db
