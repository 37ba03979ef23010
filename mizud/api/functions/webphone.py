"""What the Mizu webphone asks besides the common functions: wsuser and wsload.

The webphone (Mizutech's browser softphone) calls C{wsuser} when it
starts and every few minutes: it proves the user like any request and
tells the server which client it is (brand, company, version, its
session); mizud records that session, so C{reguser} and C{endpoints}
list the web clients beside the SIP devices.  C{wsload} asks how loaded
this node is, to pick the least loaded of several servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..answer import ApiAnswer, error, ok
from ..invocation import Invocation
from ..registry import Functions, Category

if TYPE_CHECKING:  # pragma: no cover
    from ...store.billing import BillingStore

#: The longest value kept of each field a client tells about itself.
MAX_FIELD = 100
WSUSER_PARAMS = ("brandname", "companyname", "upperserver", "upperserverdomain", "sessionid", "version")


def _field(invocation: Invocation, *names: str) -> str:
    """The first of C{names} given, cut to L{MAX_FIELD} printable characters."""
    for name in names:
        value = invocation.arg(name).strip()
        if value:
            return "".join(c for c in value if c.isprintable())[:MAX_FIELD]
    return ""


#: This module's API functions (registered by build_registry).
fn = Functions()


@dataclass(frozen=True, kw_only=True, eq=False)
class WebphoneFunctions:
    """What the Mizu webphone asks: wsuser and wsload."""

    node: str
    sip: Any
    store: BillingStore

    @fn("wsuser", Category.USER, params=WSUSER_PARAMS)
    async def wsuser(self, invocation: Invocation) -> ApiAnswer:
        """a web client (the Mizu webphone) announces itself: its session, brand and version are recorded for
        reguser and endpoints"""
        user = invocation.user()
        session = _field(invocation, "sessionid", "sid") or invocation.request.source
        await self.store.presence.session(
            user.id, session, brandname=_field(invocation, "brandname"),
            companyname=_field(invocation, "companyname", "companyame"),
            version=_field(invocation, "version", "ver", "clientversion"), address=invocation.request.source,
            transport=invocation.request.transport, node=self.node)
        return ok(f"wsuser {user.username} session {session}")

    @fn("wsload", Category.PUBLIC)
    async def wsload(self, invocation: Invocation) -> ApiAnswer:
        """this node's load for web clients choosing a server: ws load: N type: T (N the calls this node carries
        now, T the kind of server)"""
        sip = self.sip
        if sip is None:
            return error("SIP is not running on this node", 412)
        return ok(f"ws load: {len(sip.calls.live)} type: sip")
