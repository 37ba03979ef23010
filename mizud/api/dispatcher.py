"""The one dispatcher every front end calls: access checks, then the handler.

For each request, in this order (each refusal is one C{ERROR: ...} answer
with the status strict mode uses):

 1. the function exists (406) and is enabled (406), or is not supported (406);
 2. rate limits: global, per source address, per function and address (429);
 3. bans of the source address (403);
 4. C{apitrustediponly}: untrusted sources refused (403);
 5. C{req_ip}: the source is in C{apiv2ipauth} or trusted (403);
 6. C{req_key}: C{authkey} equals C{apiv2key} unless the source is trusted
    or no key is configured (403, counted as a failed authentication);
 7. the caller: see L{Api.identify} (403 on failure, counted), or for the
    old interface L{Api.identify_legacy};
 8. nonce login when C{req_user_login}/C{apidefneedlogin} demand it
    (C{ERROR: new nonce is:NONCEEOF});
 9. privilege: the caller's level is at or below C{req_user} (403);
10. C{req_user_register} / C{apidefneedregister} and C{req_user_credit};
11. the per-user rate limit (429), then the handler.

A source address earns trust (C{trustediplist}, LAN, loopback) only when
it is vouched for (L{Api.address_vouched}): not a UDP datagram, whose
source anyone can forge (unless C{apiudptrusted}), and not a browser's
request made for a page of another site (L{ApiRequest.cross_site}).

A wrong key, an unknown user and a wrong password all answer
C{ERROR: wrong authentication}; each failure is logged on one line
(C{authentication failure from ADDRESS user=ACCOUNT function=NAME reason=...})
and counted by the one lockout (L{mizud.security.lockout}): per account, and
per address only across several accounts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from ..billing.rating import Rater
from ..config import Settings
from ..store.billing import USER_ADMIN, USER_OWNER, USER_RESELLER, USER_SUPPORT, BillingStore, User
from ..store.database import Database, DatabaseError
from ..store.money import MoneyError
from ..text import ascii_int, canonical_id
from . import answer, custom, legacy
from .maintenance import Maintenance
from .answer import ApiAnswer, error
from .auth import (
    Trust,
    authmd5_full,
    authmd5_simple,
    md5hex,
    portal_md5,
    same,
    secret_equal,
)
from ..security.bans import Bans
from ..security.lockout import Lockout, loggable
from ..ratelimit import Clock, LeakyBucket
from ..store.authstate import StoredFailures
from .registry import (
    REQ_ADMINS,
    REQ_ALL,
    REQ_DISABLED,
    REQ_OWNERS,
    REQ_PUBLIC,
    REQ_SRVADMIN,
    REQ_SUPPORT,
    Access,
    ApiFunction,
    Category,
    Registry,
)
from .request import ApiRequest, RequestError
from .state import Nonces

log = Logger()

WRONG_AUTH = "wrong authentication"
_MONEY_STATUS = {"bad_pin": answer.BAD_PIN, "unknown_user": answer.NOT_FOUND}
BANNED = "banned: too many failed authentications"

#: The privilege level of each user type (lower is more privileged).
LEVEL_BY_TYPE = {USER_ADMIN: REQ_SRVADMIN, USER_SUPPORT: REQ_SUPPORT, USER_RESELLER: REQ_OWNERS, USER_OWNER: REQ_OWNERS}


@dataclass
class Caller:
    """Who is calling: a user (or none), a privilege level, and how it was proven."""

    user: User | None
    level: int
    trusted: bool
    how: str
    #: Whether the caller proved who they are (a password, a hash, a PIN, SIP digest, the console login).
    proven: bool = False


@dataclass
class Call:
    """One call of a handler: the request, the function, the caller, the API."""

    api: Api
    request: ApiRequest
    function: ApiFunction
    caller: Caller
    extra: dict[str, Any] = field(default_factory=dict)

    def arg(self, name: str, default: str = "") -> str:
        """A parameter by name, or by position (C{paramN}) in the documented order."""
        value = self.request.params.get(name)
        if value:
            return value
        if name in self.function.params:
            value = self.request.params.get(f"param{self.function.params.index(name) + 1}")
            if value:
                return value
        return default

    def user(self) -> User:
        """The user the call acts for; raises L{RequestError} (421) when there is none."""
        if self.caller.user is None:
            raise RequestError("this function needs authid (the user)", answer.MISSING_PARAMETER)
        return self.caller.user

    def require(self, name: str) -> str:
        """A parameter that must be present; raises L{RequestError} (421) if not."""
        value = self.arg(name)
        if not value:
            raise RequestError(f"missing parameter: {name}", answer.MISSING_PARAMETER)
        return value

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int:
        """A whole number from C{low} to C{high} in ASCII digits; 412 naming the parameter otherwise.

        Missing: C{default}, or 421 when there is none.
        """
        text = self.arg(name).strip()
        if not text:
            if default is None:
                raise RequestError(f"missing parameter: {name}", answer.MISSING_PARAMETER)
            return default
        value = ascii_int(text, low, high)
        if value is None:
            raise RequestError(f"{name} must be a whole number from {low} to {high}", answer.FAILED)
        return value


class AuthFailure(Exception):
    """Authentication failed; C{reason} goes to the log, never to the client.

    C{account} is what the failure counts against: the resolved user's
    username, or the spelling given when it names no user.
    """

    def __init__(self, reason: str, account: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.account = account


class Refused(Exception):
    """The request is refused for a reason the client may know (not a failed login)."""


class NewNonce(Exception):
    """The request needs a (new) nonce; the answer carries one."""


class Api:
    """The API application: registry, access rules, limits, and the dispatcher."""

    def __init__(
        self, settings: Settings, registry: Registry, store: BillingStore, clock: Clock, rater: Rater | None = None
    ) -> None:
        self.settings = settings
        #: The rating engine (an empty table until the service loads tb_tariffs).
        self.rater = rater or Rater(settings.current.database, clock)
        self.registry = registry
        self.store = store
        self.db: Database = store.db
        self.clock = clock
        #: The reactor for outgoing connections (SMTP); the clock in production, replaced in tests.
        self.reactor: Any = clock
        self.nonces = Nonces(self.db, clock)
        self.actions = custom.Actions(self, clock)
        self.maintenance = Maintenance(self)
        self.bans = Bans(self.db, clock)
        shared = StoredFailures(self.db, store.now) if self.db.engine.name == "postgresql" else None
        #: The one lockout every credential check reports to (API, old interface, console, SIP).
        self.lockout = Lockout(settings, self.bans, clock, shared)
        self.overrides: dict[str, Access] = {}
        #: The SIP element (L{mizud.sip.core.SipCore}) once the SIP service links it; None without SIP.
        self.sip: Any = None
        #: The latest log events (L{mizud.console.logbuffer.LogBuffer}) when the daemon keeps them.
        self.logbuffer: Any = None
        #: This node's name, and how to tell the other nodes of changes (L{mizud.store.notify.Notifications}).
        self.node = ""
        self.notifications: Any = None
        #: Prometheus figures (L{mizud.metrics.Metrics}) when the daemon keeps them.
        self.metrics: Any = None
        #: What admin functions may do to the service tree (L{mizud.api.service.ServiceOperations}), if any.
        self.operations: Any = None
        #: Why requests are refused right now (a database restore), or empty.
        self.paused = ""
        self.started = clock.seconds()
        self.requests = 0
        self._limits_from(settings)

    async def publish(self, topic: str) -> None:
        """Tell the other nodes that C{topic} (tariffs, access, bans) changed, when there are any."""
        if self.notifications is not None:
            await self.notifications.publish(topic)

    def _limits_from(self, settings: Settings) -> None:
        config = settings.current
        ip, user, total = (float(config.ratelimitip), float(config.ratelimituser), float(config.ratelimitglobal))
        self.limit_ip = LeakyBucket(self.clock, ip, ip * 2)
        self.limit_user = LeakyBucket(self.clock, user, user * 2)
        self.limit_global = LeakyBucket(self.clock, total, total * 2)
        self.limit_function: dict[str, LeakyBucket] = {}

    def _function_allows(self, function: ApiFunction, source: str) -> bool:
        """The function's own per-address limit, if it has one."""
        if not function.rate:
            return True
        bucket = self.limit_function.get(function.name)
        if bucket is None:
            bucket = self.limit_function[function.name] = LeakyBucket(
                self.clock, function.rate, max(1.0, function.rate * 2)
            )
        return bucket.allow(source)

    def reload(self) -> tuple[list[str], list[str]]:
        """Re-read the config (see L{Settings.reload}) and rebuild the limiters."""
        applied, pending = self.settings.reload()
        self._limits_from(self.settings)
        if self.sip is not None:
            self.sip.reconfigure()
        return applied, pending

    async def reload_access(self) -> int:
        """Load the C{tb_api} overrides; returns how many rows were read."""
        result = await self.db.run_query(
            "load_tb_api",
            "SELECT fname, req_key, req_ip, req_user, req_user_mode, req_user_credit, req_user_register, "
            "req_user_login, customsql, custom_action, custom_action_body, enabled FROM tb_api",
        )
        overrides = {}
        for row in result.rows:
            name = str(row[0]).strip().lower()
            overrides[name] = self._with_default_level(name, Access(
                req_key=int(row[1]), req_ip=int(row[2]), req_user=int(row[3]), req_user_mode=int(row[4]),
                req_user_credit=self.db.engine.money(row[5]),
                req_user_register=None if row[6] is None else int(row[6]),
                req_user_login=None if row[7] is None else int(row[7]),
                customsql=row[8] or "", custom_action=int(row[9]), custom_action_body=row[10] or "",
                enabled=bool(row[11]),
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
        self.requests += 1
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
        """Every check in the module doc's order, then the handler; the caller goes into C{callers}."""
        config = self.settings.current
        if not rule.enabled or rule.req_user == REQ_DISABLED:
            return error(f"function disabled: {function.name}", answer.BAD_FUNCTION)
        if function.handler is None:
            return error(f"not supported: {function.unsupported}", answer.BAD_FUNCTION)
        source = request.source
        if not (self.limit_global.allow("*") and self.limit_ip.allow(source) and self._function_allows(function, source)):
            return error("rate limited", answer.RATE_LIMITED)
        if self.lockout.address_banned(source, self._forgeable(request)):
            return error(BANNED, answer.AUTH_FAILED)
        legacy_request = bool(request.context.get("legacy"))
        trust = Trust(config)
        vouched = self.address_vouched(request)
        extra = config.httpapiallowedip2 if legacy_request else ()
        trusted = vouched and trust.trusted(source, extra)
        if config.apitrustediponly and not trusted:
            return error("access only from trusted addresses", answer.AUTH_FAILED)
        if rule.req_ip and not (vouched and trust.ip_allowed(source, extra)):
            return error("access not allowed from this address", answer.AUTH_FAILED)
        try:
            sip_user = request.context.get("sip_user")
            console = request.context.get("console")
            inner = request.context.get("caller")
            if inner is not None:
                # Only a function that runs another for its own caller sets this (oop): the caller is proven.
                caller = await self._impersonate(request, inner)
            elif console is not None:
                # Only the console sets this, for the admin or support user logged in on it.
                caller = await self._console_caller(request, rule, console, trusted)
            elif legacy_request:
                caller = await self.identify_legacy(request, function, rule, trusted)
            elif sip_user is not None:
                # Only the SIP front end sets this, after digest authentication
                # of the SIP request that carried the API request.
                self._check_enabled(sip_user, sip_user.username)
                caller = Caller(sip_user, self._level(sip_user, trusted), trusted, "sip digest", proven=True)
            else:
                self._check_key(request, rule, trusted, config.apiv2key, "authkey")
                caller = await self.identify(request, rule, trusted)
        except Refused as refused:
            return error(str(refused), answer.AUTH_FAILED)
        except AuthFailure as failure:
            await self._failed(request, failure)
            return error(WRONG_AUTH, answer.AUTH_FAILED)
        except NewNonce:
            nonce = await self.nonces.issue(source)
            return error(f"new nonce is:{nonce}EOF", answer.AUTH_FAILED)
        callers.append(caller)
        if caller.level > rule.req_user:
            return error("access denied", answer.AUTH_FAILED)
        user = caller.user
        if user is not None:
            if self.lockout.account_banned(user.username):
                return error(BANNED, answer.AUTH_FAILED)
            if not self.limit_user.allow(user.id):
                return error("rate limited", answer.RATE_LIMITED)
            refusal = await self._user_conditions(request, user, rule, caller)
            if refusal is not None:
                return refusal
            if caller.proven:
                await self.lockout.succeeded(user.username, source)
        assert function.handler is not None
        return await function.handler(Call(self, request, function, caller))

    def address_vouched(self, request: ApiRequest) -> bool:
        """Whether the request's source address may earn trust: it came from there (not a datagram whose
        source anyone can forge, unless C{apiudptrusted}), for itself (not a browser acting for another site)."""
        return not request.cross_site and not self._forgeable(request)

    def _forgeable(self, request: ApiRequest) -> bool:
        """Whether the request's source address may be forged (UDP, unless the operator trusts that network)."""
        return request.forgeable_source and not self.settings.current.apiudptrusted

    def _check_key(self, request: ApiRequest, rule: Access, trusted: bool, key: str, *names: str) -> None:
        """C{req_key}: the API key, unless the source is trusted or no key is configured."""
        if rule.req_key and key and not trusted and not secret_equal(request.get(*names), key):
            raise AuthFailure("wrong or missing key", self._claimed(request))

    @staticmethod
    def _claimed(request: ApiRequest) -> str:
        """The account a request names before it is resolved (for counting a failure)."""
        return request.get("authid", "usr", "userid", "pin")[:64]

    async def _values(self, params: dict[str, str], user: User | None, text: str) -> custom.Values:
        """Placeholder values for custom SQL or an action body."""
        fields = None
        if user is not None and custom.needs_user_fields(text):
            result = await self.db.run_query("user_fields", "SELECT * FROM tb_users WHERE id = ?", (user.id,))
            if result.rows:
                fields = dict(zip(result.columns, result.rows[0]))
        return custom.Values(user, params, fields)

    async def _custom_sql(self, call: Call) -> ApiAnswer:
        rule = call.function.access
        values = await self._values(call.request.params, call.caller.user, rule.customsql)
        return await custom.run_custom_sql(self, rule, values, self.clock)

    async def _user_conditions(
        self, request: ApiRequest, user: User, rule: Access, caller: Caller
    ) -> ApiAnswer | None:
        config = self.settings.current
        if caller.level <= REQ_ADMINS:
            return None
        register = rule.req_user_register if rule.req_user_register is not None else config.apidefneedregister
        if register:
            hosts = await self.store.registered_addresses(user.id)
            if not hosts or (register == 2 and request.source not in hosts):
                return error("the user is not registered" + (" from this address" if hosts else ""),
                             answer.AUTH_FAILED)
        threshold = rule.req_user_credit
        if threshold == 2:
            threshold = config.mincreditonroute
        elif threshold in (0, 1):
            threshold = None
        if threshold is not None:
            available = user.credit + (user.creditlimit if user.postpaid else 0)
            if available < threshold:
                return error("not enough credit", answer.FAILED)
        return None

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
        await self.lockout.failed(account or "-", request.source, self._forgeable(request))

    # -- who is calling -----------------------------------------------------------------

    async def _console_caller(self, request: ApiRequest, rule: Access, console: tuple[User, int],
                              trusted: bool) -> Caller:
        """Who a console command runs as (C{apitrustfromconsole}): 2 the logged-in user; 1 a request
        from a trusted address (authid names a user, none means admin); 0 its own credentials."""
        user, mode = console
        if mode == 2:
            self._check_enabled(user, user.username)
            caller = Caller(user, self._level(user, trusted), trusted, "console", proven=True)
            return await self._impersonate(request, caller)
        caller = await self.identify(request, rule, True if mode == 1 else trusted)
        if mode == 1:
            # Trusted, but never above the logged-in user: a support user does not become an admin.
            caller = replace(caller, level=max(caller.level, self._level(user, trusted)))
        return caller

    def _needs_nonce(self, rule: Access, trusted: bool) -> bool:
        """Whether this function demands nonce login from this source (req_user_login / apidefneedlogin)."""
        login = rule.req_user_login if rule.req_user_login is not None else self.settings.current.apidefneedlogin
        return login in (2, 3) or (login == 1 and not trusted)

    async def identify(self, request: ApiRequest, rule: Access, trusted: bool) -> Caller:
        """Establish the caller from the request's credentials and source.

        - Trusted source, no authid: admin when C{apideftrustadmin} is 1 or 2,
          else anonymous.
        - Trusted source, authid without proof: that user (a trusted web
          server acting for its users), except with C{apideftrustadmin} 4.
        - authid with authpwd (clear password, or PIN where allowed) or
          authmd5 (either form): that user, if the proof is right.
        - authid alone where C{req_user_mode} is 4 ("user or pwd or pin"),
          or for public functions: that user, with no privilege beyond public.
        - Admin users are admins only as C{apideftrustadmin} allows (3: by
          credentials; 4: credentials from a trusted address; 2: the
          address only).
        - C{targetuser}: an admin acts as another user.

        The authid is resolved first (L{find_user}); while the account it
        names (or, naming none, that spelling) is locked out, the answer
        is C{banned} whatever the proof.
        """
        authid = request.get("authid")
        needs_nonce = self._needs_nonce(rule, trusted)
        if not authid:
            if needs_nonce and not trusted:
                raise NewNonce()
            return await self._by_address(request, trusted)
        user = await self._find(authid)
        account = user.username if user is not None else authid[:64]
        if self.lockout.account_banned(account):
            # Before any password check: a locked account must not learn whether a guess was right.
            raise Refused(BANNED)
        proof = request.get("authpwd") or request.get("authmd5") or request.get("portalmd5")
        if not proof:
            if needs_nonce:
                raise NewNonce()
            if user is None:
                if rule.req_user >= REQ_PUBLIC:
                    return Caller(None, REQ_PUBLIC, trusted, "anonymous")
                raise AuthFailure("unknown user", account)
            return await self._without_proof(request, rule, user, trusted)
        if user is None:
            # Spend what checking a password would, so timing does not tell
            # whether the user exists.
            authmd5_full(authid, "x" * 12, request.get("authsalt1"), request.get("authsalt2"), "", "")
            raise AuthFailure("unknown user", account)
        self._check_enabled(user, account)
        how = await self._verify(request, user, authid, rule, needs_nonce)
        caller = Caller(user, self._level(user, trusted), trusted, how, proven=True)
        return await self._impersonate(request, caller)

    async def _by_address(self, request: ApiRequest, trusted: bool) -> Caller:
        """A request naming no user: admin from a trusted address where C{apideftrustadmin} allows, else anonymous."""
        if trusted and self.settings.current.apideftrustadmin in (1, 2):
            return await self._impersonate(request, Caller(None, REQ_SRVADMIN, True, "trusted address"))
        return Caller(None, REQ_PUBLIC, trusted, "anonymous")

    async def _without_proof(self, request: ApiRequest, rule: Access, user: User, trusted: bool) -> Caller:
        """A user named without a password: acted for by a trusted address, or public functions only."""
        config = self.settings.current
        self._check_enabled(user, user.username)
        if trusted and config.apideftrustadmin != 4:
            return await self._impersonate(request, Caller(user, self._level(user, trusted), trusted, "trusted address"))
        mode = rule.req_user_mode or config.apiv2auth
        if mode == 4 or rule.req_user >= REQ_PUBLIC:
            return Caller(user, max(self._level(user, trusted), REQ_ALL), trusted, "username")
        raise AuthFailure("no password or authmd5", user.username)

    async def identify_legacy(self, request: ApiRequest, function: ApiFunction, rule: Access, trusted: bool) -> Caller:
        """The old HTTP interface's authentication (see L{mizud.api.legacy}), under the API's own rules.

        Its address lists (C{httpapiallowedip}, C{httpsmscallbackip}) and key
        (C{httpapikey}, else C{apiv2key}) come first.  The sensitive commands
        (addcredit, adduser) name their target in C{usr}: they run for a
        trusted address (C{httpapiallowedip2} counting as one) as
        C{apideftrustadmin} allows, like an API request naming no user.
        Other commands name the user by C{usr}, C{userid} or C{pin}; its
        lockout applies; C{pwd} or C{md5auth} prove it.  Where the API
        demands nonces, the old interface's static proofs are refused
        unless C{legacystaticauth} keeps them.
        """
        config = self.settings.current
        source = request.source
        if not legacy.address_allowed(source, config.httpapiallowedip):
            raise Refused("access not allowed from this address")
        if function.name in legacy.SMS and not legacy.address_allowed(source, config.httpsmscallbackip):
            raise Refused("SMS commands are not allowed from this address")
        self._check_key(request, rule, trusted, config.httpapikey or config.apiv2key, "key", "authkey")
        if function.name in legacy.SENSITIVE:
            return await self._by_address(request, trusted)
        user, how = await self._find_legacy(request)
        account = user.username if user is not None else self._claimed(request)
        if self.lockout.account_banned(account):
            raise Refused(BANNED)
        if user is None:
            raise AuthFailure("unknown user", account)
        pwd, md5auth = request.get("pwd"), request.get("md5auth")
        if how != "pin" and not (pwd or md5auth):
            return await self._without_proof(request, rule, user, trusted)
        if self._needs_nonce(rule, trusted) and not config.legacystaticauth:
            raise Refused("this server requires nonce authentication: use /mvapireq with preauth")
        self._check_enabled(user, account)
        if how != "pin":
            if not legacy.password_matches(pwd, md5auth, user.username, user.password, config.httpapimd5salt):
                raise AuthFailure("wrong password or md5auth", account)
            how = "md5auth" if md5auth and not pwd else "password"
        return Caller(user, self._level(user, trusted), trusted, how, proven=True)

    async def _find_legacy(self, request: ApiRequest) -> tuple[User | None, str]:
        """The user of an old-interface request: usr, userid, or pin (per callingcardauth)."""
        config = self.settings.current
        usr, userid, pin = request.get("usr"), request.get("userid"), request.get("pin")
        if usr:
            return await self.store.find_user(usr), "user"
        number = canonical_id(userid)
        if number is not None:
            return await self.store.get_user(number), "user"
        if pin and config.callingcardauth != 2:
            user = await self.store.find_user_by_pin(pin)
            if user is None and config.callingcardauth == 1:
                user = await self.store.find_user_by_login(pin)
            return user, "pin"
        return None, "user"

    def _level(self, user: User, trusted: bool) -> int:
        config = self.settings.current
        level = LEVEL_BY_TYPE.get(user.type, REQ_ALL)
        if level <= REQ_ADMINS:
            mode = config.apideftrustadmin
            if (mode == 2 and not trusted) or (mode == 4 and not trusted):
                return REQ_ALL
        return level

    @staticmethod
    def _check_enabled(user: User, account: str) -> None:
        if not user.enabled or user.temporarydisabled:
            raise AuthFailure("user disabled", account)

    async def find_user(self, name: str) -> User | None:
        """A user by username, id, PIN or DID (as authid is resolved)."""
        return await self._find(name)

    async def _find(self, authid: str) -> User | None:
        """The user an authid names: username, else numeric id (ASCII digits, no leading zero), else PIN,
        else DID."""
        user = await self.store.find_user(authid)
        if user is None:
            userid = canonical_id(authid)
            if userid is not None:
                user = await self.store.get_user(userid)
        if user is None and self.settings.current.apiauth != 0:
            user = await self.store.find_user_by_pin(authid)
        if user is None:
            user = await self.store.find_user_by_number(authid)
        return user

    async def _verify(self, request: ApiRequest, user: User, authid: str, rule: Access, needs_nonce: bool) -> str:
        config = self.settings.current
        mode = rule.req_user_mode or config.apiv2auth
        account = user.username
        authpwd = request.get("authpwd")
        if authpwd:
            if needs_nonce:
                raise NewNonce()
            if secret_equal(authpwd, user.password):
                return "password"
            if mode != 6 and config.apiauth != 0 and user.pin and secret_equal(authpwd, user.pin):
                return "pin"
            raise AuthFailure("wrong password", account)
        portal = request.get("portalmd5").strip()
        given = portal or request.get("authmd5").strip()
        salt1, salt2 = request.get("authsalt1"), request.get("authsalt2")
        serversalt = config.apiv2md5salt
        link = portal_md5(user.username, user.password, request.get("portalsalt")) if portal else ""
        nonce_param = request.get("nonce")
        if nonce_param:
            bound = request.source if login_ip_check(rule, config) else None
            nonce = await self.nonces.find(nonce_param, config.apinoncettl, bound)
            if nonce is None:
                # Unknown or expired: the client gets a fresh nonce; nothing was guessed, nothing is counted.
                raise NewNonce()
            if portal:
                # The auto-login link's md5 as the inner secret: MD5(md5 + authsalt2 + serversalt + nonce).
                expected = md5hex(link + salt2 + serversalt + nonce)
            else:
                expected = authmd5_full(authid, user.password, salt1, salt2, serversalt, nonce)
            if same(given, expected) or same("authv3_" + given, expected):
                if not await self.nonces.use(nonce, expected, config.apinoncettl):
                    # A replay, or a client repeating itself (the same salts): no password was guessed, so
                    # nothing is counted; a fresh nonce lets an honest client go on.
                    log.info("replayed authmd5 for {user} from {source}", user=loggable(account), source=request.source)
                    raise NewNonce()
                return "portal md5 with nonce" if portal else "authmd5 with nonce"
            raise AuthFailure("wrong portal md5" if portal else "wrong authmd5", account)
        if portal:
            # The web portal's auto-login link: MD5("C8y5:" username ":" password ":" salt).
            if needs_nonce:
                raise NewNonce()
            if same(portal, link):
                return "portal md5"
            raise AuthFailure("wrong portal md5", account)
        if needs_nonce:
            raise NewNonce()
        if not given.lower().startswith("authv3_") and same(given, authmd5_simple(authid, user.password, serversalt, salt1)):
            return "authmd5"
        full = authmd5_full(authid, user.password, salt1, salt2, serversalt, "")
        if same(given, full) or same("authv3_" + given, full):
            return "authmd5"
        raise AuthFailure("wrong authmd5", account)

    async def _impersonate(self, request: ApiRequest, caller: Caller) -> Caller:
        target = request.get("targetuser")
        if not target:
            return caller
        if caller.level > REQ_ADMINS:
            raise AuthFailure("targetuser needs an admin", caller.user.username if caller.user else "")
        user = await self._find(target)
        if user is None:
            raise RequestError(f"no such user: {target[:64]}", answer.NOT_FOUND)
        return Caller(user, caller.level, caller.trusted, f"{caller.how}, as {user.username}", caller.proven)


def login_ip_check(rule: Access, config: Any) -> bool:
    """Whether nonces are bound to the address they were issued to (login mode 3)."""
    login = rule.req_user_login if rule.req_user_login is not None else config.apidefneedlogin
    return bool(login == 3)



