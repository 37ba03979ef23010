"""The SIP-header API bridge: one more API front end.

A phone puts an API query in the C{X-MizuAPI} header of an OPTIONS or
MESSAGE (C{sipapi}); the SIP element proves who sent it by digest and hands
the header here, with that user and the source address.  The query is
decoded like any other (aliases, C{oenc1_} values, the parameter cap), the
request runs as the proven user, and the answer goes back as text: it
travels in a SIP body and header, so C{format=} is ignored.
"""

from __future__ import annotations


from ..sip.backend import Backend
from ..store.billing import User
from .answer import error
from .dispatcher import Dispatcher
from .request import ApiRequest, Origin, RequestError, decode


class SipBridge:
    """Answers X-MizuAPI headers through the dispatcher (see the module doc); an L{mizud.sip.backend.ApiBridge}."""

    def __init__(self, api: Dispatcher) -> None:
        self.api = api

    async def __call__(self, query: str, user: User, source: str) -> str:
        """The text answer to C{query}, asked by C{user} (proven by SIP digest) from C{source}."""
        query = query.strip().lstrip("/?")
        if query[:8].lower() == "mvapireq":
            query = query[8:].lstrip("/?")
        try:
            request = decode(query=query, source=source, transport="sip",
                             encrypt_key=self.api.settings.current.httpapiencryptkey)
        except RequestError as problem:
            return error(problem.message, problem.status).text
        request.params.pop("format", None)
        request.origin = Origin(sip_user=user)
        return (await self.api.dispatch(request)).text


def backend_for(api: Dispatcher) -> Backend:
    """What the SIP element gets of this dispatcher: its store, rater and lockout, failed logins counted
    like the API's own, and this bridge."""

    async def failed_login(address: str, what: str, reason: str, account: str) -> None:
        await api.failed_login(ApiRequest(what, {}, address, transport="sip"), reason, account)

    return Backend(store=api.store, rater=api.rater, lockout=api.lockout, node=api.node, failed_login=failed_login,
                   api=SipBridge(api), paused=lambda: api.paused)
