"""The one dispatcher every front end calls: the checks, then the handler.

For each request the function is looked up (a tb_api row with customsql
defines or replaces one), then the checks of L{mizud.api.checks} run in
this order; each refusal is one C{ERROR: ...} answer with the status strict
mode uses:

 1. the function is enabled, and served (406; C{not supported: REASON});
 2. rate limits: global, per source address, per function and address (429);
 3. bans of the source address (403);
 4. C{apitrustediponly}: untrusted sources refused; C{req_ip}: the source is
    in C{apiv2ipauth} or trusted (403);
 5. the caller, by the credential checker of the request's front end
    (L{mizud.api.credentials}: the API's C{req_key} and authid proofs, the
    old interface, the console, SIP digest, an inner request): 403 on
    failure (counted), or C{ERROR: new nonce is:NONCEEOF} where
    C{req_user_login}/C{apidefneedlogin} demand a nonce;
 6. privilege: the caller's level is at or below C{req_user} (403);
 7. the account's lockout (403) and the per-user rate limit (429);
 8. C{req_user_register} / C{apidefneedregister} and C{req_user_credit};
 9. a proven login tells the lockout; then the handler.

A source address earns trust (C{trustediplist}, LAN, loopback) only when
it is vouched for (L{mizud.api.checks.address_vouched}): not a UDP datagram,
whose source anyone can forge (unless C{apiudptrusted}), and not a browser's
request made for a page of another site (L{ApiRequest.cross_site}).

A wrong key, an unknown user and a wrong password all answer
C{ERROR: wrong authentication}; each failure is logged on one line
(C{authentication failure from ADDRESS user=ACCOUNT function=NAME reason=...})
and counted by the one lockout (L{mizud.security.lockout}): per account, and
per address only across several accounts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from ..billing.rating import Rater
from ..config import Settings
from ..store.billing import BillingStore, User
from ..store.database import Database, DatabaseError
from ..store.money import MoneyError
from . import answer, custom
from .maintenance import Maintenance
from .answer import ApiAnswer, error
from ..security.bans import Bans
from ..security.lockout import Lockout, loggable
from ..ratelimit import Clock
from ..store.apirules import load_rules
from ..store.authstate import StoredFailures
from .checks import Limits, checks, forgeable
from .credentials import Accounts, Attempt, AuthFailure, Caller
from .functions import build_areas
from .invocation import Invocation
from .registry import (
    REQ_ADMINS,
    REQ_ALL,
    Access,
    ApiFunction,
    Category,
    Registry,
)
from .request import ApiRequest, RequestError
from .state import Nonces, Traffic

log = Logger()

_MONEY_STATUS = {"bad_pin": answer.BAD_PIN, "unknown_user": answer.NOT_FOUND}


class Dispatcher:
    """The one dispatcher every front end calls: the registry, the tb_api rules, the checks every request
    passes (L{mizud.api.checks}), then the handler with an L{Invocation}."""

    def __init__(
        self, settings: Settings, registry: Registry, store: BillingStore, clock: Clock, rater: Rater | None = None,
        *, node: str = "", sip: Any = None, logbuffer: Any = None, metrics: Any = None, notifications: Any = None,
        operations: Any = None, reactor: Any = None,
    ) -> None:
        """The dispatcher on C{store}, serving the functions C{registry} declares (bound here to what they
        use, by L{mizud.api.functions.build_areas}); the composition root (L{mizud.app}) also gives it what
        the daemon around it has (this node's name, the SIP element, the log buffer, metrics, the other
        nodes' notifications, the service tree's operations, the reactor for outgoing connections), each
        None where there is none (a test, a node without SIP)."""
        self._settings = settings
        #: The rating engine (an empty table until the service loads tb_tariffs).
        self.rater = rater or Rater(settings.current.database, clock)
        self.store = store
        self.db: Database = store.db
        self.clock = clock
        #: The reactor for outgoing connections (SMTP, the JSONP forwarder, pg_dump); the clock by default.
        self.reactor: Any = reactor if reactor is not None else clock
        self.nonces = Nonces(self.db, clock)
        self.actions = custom.Actions(settings, self.db, self.reactor)
        self.bans = Bans(store.bans, clock)
        shared = StoredFailures(self.db, store.now) if self.db.engine.name == "postgresql" else None
        #: The one lockout every credential check reports to (API, old interface, console, SIP).
        self.lockout = Lockout(settings, self.bans, clock, shared)
        self.maintenance = Maintenance(store, settings, self.nonces, self.lockout, self.reactor, node)
        self.overrides: dict[str, Access] = {}
        #: The SIP element (L{mizud.sip.core.SipCore}); None without SIP.
        self.sip: Any = sip
        #: The latest log events (L{mizud.console.logbuffer.LogBuffer}) when the daemon keeps them.
        self.logbuffer: Any = logbuffer
        #: This node's name, and how to tell the other nodes of changes (L{mizud.store.notify.Notifications}).
        self.node = node
        self.notifications: Any = notifications
        #: Prometheus figures (L{mizud.metrics.Metrics}) when the daemon keeps them.
        self.metrics: Any = metrics
        #: What admin functions may do to the service tree (L{mizud.app.ServiceOperations}), if any.
        self.operations: Any = operations
        #: Why requests are refused right now (a database restore), or empty.
        self.paused = ""
        #: What this dispatcher has served (info, quickstat).
        self.traffic = Traffic(clock.seconds())
        # The rate limits, the accounts and the checks every request passes, in order (L{mizud.api.checks}).
        self.limits = Limits(settings, clock)
        self.accounts = Accounts(settings, store)
        self.checks = checks(settings, self.accounts, self.lockout, self.nonces, self.limits, self._failed)
        #: The functions, each bound to the few dependencies its area uses.
        self.registry = registry.bound(build_areas(self, registry))

    @property
    def settings(self) -> Settings:
        """The configuration every check and handler reads: reloaded in place (L{reload}), never replaced
        (the checks and the handlers' areas hold it; a test that wants other settings builds another
        dispatcher)."""
        return self._settings

    def pause(self, reason: str) -> None:
        """Refuse every request with C{reason} from now on (a database restore); empty: serve again."""
        self.paused = reason

    async def publish(self, topic: str) -> None:
        """Tell the other nodes that C{topic} (tariffs, access, bans) changed, when there are any."""
        if self.notifications is not None:
            await self.notifications.publish(topic)

    def reload(self) -> tuple[list[str], list[str]]:
        """Re-read the config (see L{Settings.reload}) and rebuild the limiters."""
        applied, pending = self.settings.reload()
        self.limits.rebuild(self.settings)
        if self.sip is not None:
            self.sip.reconfigure()
        return applied, pending

    async def reload_access(self) -> int:
        """Load the C{tb_api} overrides; returns how many rows were read."""
        rows = await load_rules(self.db)
        overrides = {}
        for row in rows:
            name = row.fname.strip().lower()
            overrides[name] = self._with_default_level(name, Access(
                req_key=row.req_key, req_ip=row.req_ip, req_user=row.req_user, req_user_mode=row.req_user_mode,
                req_user_credit=row.req_user_credit, req_user_register=row.req_user_register,
                req_user_login=row.req_user_login, customsql=row.customsql, custom_action=row.custom_action,
                custom_action_body=row.custom_action_body, enabled=row.enabled,
            ))
        self.overrides = overrides
        return len(overrides)

    def _with_default_level(self, name: str, rule: Access) -> Access:
        """A tb_api rule with req_user 0 ("default") made concrete, once, at load time."""
        if rule.req_user:
            return rule
        function = self.registry.get(name)
        if function is not None and function.access.req_user:
            default = function.access.req_user
        elif function is not None and function.category in (Category.ADMIN, Category.SENSITIVE):
            default = REQ_ADMINS
        else:
            default = REQ_ALL
        return replace(rule, req_user=default)

    def access(self, function: ApiFunction) -> Access:
        """The function's access rule: its tb_api row, else its default."""
        return self.overrides.get(function.name, function.access)

    # -- dispatch --------------------------------------------------------------------

    async def dispatch(self, request: ApiRequest) -> ApiAnswer:
        """Answer one request.  Never raises; never puts a traceback in an answer."""
        self.traffic.requests += 1
        answered = await self._answer(request)
        if self.metrics is not None:
            self.metrics.request(request.function, request.transport, answered.ok)
        return answered

    async def _answer(self, request: ApiRequest) -> ApiAnswer:
        try:
            return await self._dispatch(request)
        except RequestError as problem:
            return error(problem.message, problem.status)
        except MoneyError as problem:
            return error(str(problem), _MONEY_STATUS.get(problem.code, answer.FAILED))
        except DatabaseError as problem:
            # Almost always nothing was committed; a money request repeated with the same txid is safe either way.
            log.warn("API {function}: database unavailable: {problem}", function=request.function, problem=problem)
            return error("the database is unavailable: try again later (money requests with the same txid)",
                         answer.OTHER)
        except Exception:
            log.failure("API {function} from {source} failed", function=request.function, source=request.source)
            return error("internal error", answer.OTHER)

    async def _dispatch(self, request: ApiRequest) -> ApiAnswer:
        if self.paused:
            return error(f"{self.paused}: try again in a minute", answer.OTHER)
        if not request.function:
            return error("missing apientry (the function name)", answer.BAD_FUNCTION)
        function = self.registry.get(request.function)
        override = self.overrides.get(function.name if function else request.function)
        if override is not None and override.customsql:
            # A tb_api row with customsql defines a function, or replaces a predefined one.
            function = ApiFunction(
                name=function.name if function else request.function,
                category=function.category if function else Category.USER,
                params=function.params if function else (),
                summary="custom SQL function (tb_api)",
                access=override,
                handler=self._custom_sql,
            )
        if function is None:
            return error(f"unknown function: {request.function[:64]}", answer.BAD_FUNCTION)
        rule = self.access(function)
        callers: list[Caller] = []
        answered = await self._checked_call(request, function, rule, callers)
        if rule.custom_action and self.actions.action_for(rule, answered):
            user = callers[0].user if callers else None
            values = await self._values(request.params, user, rule.custom_action_body)
            defer.ensureDeferred(self.actions.run(rule, answered, values))
        return answered

    async def _checked_call(
        self, request: ApiRequest, function: ApiFunction, rule: Access, callers: list[Caller]
    ) -> ApiAnswer:
        """Every check in the module doc's order (L{mizud.api.checks}), then the handler; the caller goes
        into C{callers}."""
        attempt = Attempt(request, function, rule, self.settings.current)
        for check in self.checks:
            verdict = check(attempt)
            refusal = verdict if verdict is None or isinstance(verdict, ApiAnswer) else await verdict
            if refusal is not None:
                if attempt.caller is not None:
                    callers.append(attempt.caller)
                return refusal
        assert function.handler is not None and attempt.caller is not None
        callers.append(attempt.caller)
        return await function.handler(Invocation(request, function, attempt.caller))

    async def _values(self, params: dict[str, str], user: User | None, text: str) -> custom.Values:
        """Placeholder values for custom SQL or an action body."""
        fields = None
        if user is not None and custom.needs_user_fields(text):
            fields = await self.store.user_row(user.id)
        return custom.Values(user, params, fields)

    async def _custom_sql(self, invocation: Invocation) -> ApiAnswer:
        rule = invocation.function.access
        values = await self._values(invocation.request.params, invocation.caller.user, rule.customsql)
        return await custom.run_custom_sql(self.db, rule, values, self.clock)

    async def failed_login(self, request: ApiRequest, reason: str, account: str) -> None:
        """Count a failed proof made inside a function (same log line, same lockout)."""
        await self._failed(request, AuthFailure(reason, account))

    async def _failed(self, request: ApiRequest, failure: AuthFailure) -> None:
        account = failure.account[:64]
        if self.metrics is not None:
            self.metrics.auth_failures.inc()
        log.warn(
            "authentication failure from {source} user={user} function={function} reason={reason}",
            source=request.source, user=loggable(account), function=loggable(request.function),
            reason=failure.reason,
        )
        # A forged datagram must not make mizud ban the address it names.
        await self.lockout.failed(account or "-", request.source, forgeable(request, self.settings))

    async def find_user(self, name: str) -> User | None:
        """A user by username, id, PIN or DID (as authid is resolved)."""
        return await self.accounts.find(name)
