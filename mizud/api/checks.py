"""The dispatcher's checks: an explicit, ordered list of small objects, each answering a refusal or None.

L{checks} builds the list the dispatcher runs for every request, in the
order of L{mizud.api.dispatcher}'s module doc: the function is usable, the
rate limits, the address's bans, the address rules (C{apitrustediponly},
C{req_ip}), the credentials (by the checker of the request's front end,
L{mizud.api.credentials}), the privilege, the account's lockout and the
per-user limit, the registration and credit conditions, and finally the
lockout is told of a proven login.  Each check reads and fills the
L{Attempt}; the first refusal is the answer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from decimal import Decimal
from typing import Awaitable, Callable, Optional, Union

from ..config import Settings
from ..ratelimit import Clock, LeakyBucket
from ..security.lockout import Lockout
from ..store.billing import BillingStore, User
from . import answer
from .answer import ApiAnswer, error
from .auth import Trust
from .credentials import (
    BANNED,
    Accounts,
    ApiCredentials,
    Attempt,
    AuthFailure,
    ConsoleCredentials,
    InnerCredentials,
    LegacyCredentials,
    NewNonce,
    Refused,
    SipCredentials,
)
from .registry import REQ_ADMINS, REQ_DISABLED, ApiFunction
from .request import ApiRequest
from .state import Nonces

WRONG_AUTH = "wrong authentication"


def forgeable(request: ApiRequest, settings: Settings) -> bool:
    """Whether the request's source address may be forged (UDP, unless the operator trusts that network)."""
    return request.forgeable_source and not settings.current.apiudptrusted


def address_vouched(request: ApiRequest, settings: Settings) -> bool:
    """Whether the request's source address may earn trust: it came from there (not a datagram whose source
    anyone can forge, unless C{apiudptrusted}), for itself (not a browser acting for another site)."""
    return not request.cross_site and not forgeable(request, settings)


class Limits:
    """The request-rate buckets: global, per address, per user, and each function's own per address."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.clock = clock
        self.rebuild(settings)

    def rebuild(self, settings: Settings) -> None:
        """New buckets at the configured rates (after a reload)."""
        config = settings.current
        ip, user, total = (float(config.ratelimitip), float(config.ratelimituser), float(config.ratelimitglobal))
        self.ip = LeakyBucket(self.clock, ip, ip * 2)
        self.user = LeakyBucket(self.clock, user, user * 2)
        self.total = LeakyBucket(self.clock, total, total * 2)
        self.function: dict[str, LeakyBucket] = {}

    def function_allows(self, function: ApiFunction, source: str) -> bool:
        """The function's own per-address limit, if it has one."""
        if not function.rate:
            return True
        bucket = self.function.get(function.name)
        if bucket is None:
            bucket = self.function[function.name] = LeakyBucket(self.clock, function.rate,
                                                                max(1.0, function.rate * 2))
        return bucket.allow(source)


#: What a check answers: a refusal, None to go on, or (only when it must wait) an awaitable of either.
Verdict = Union[ApiAnswer, None, Awaitable[Optional[ApiAnswer]]]


class Check(ABC):
    """One step of the dispatcher's checks.  Most decide at once from memory; those that must wait (the
    credentials, the registration condition, telling the lockout) return an awaitable, and only then, so the
    common request creates no coroutine for the checks that need none."""

    @abstractmethod
    def __call__(self, attempt: Attempt) -> Verdict:
        """The refusal, or None to go on (or an awaitable of either)."""


class FunctionUsable(Check):
    """The function is enabled (tb_api) and served (else C{not supported: REASON})."""

    def __call__(self, attempt: Attempt) -> ApiAnswer | None:
        """406 for a disabled or unsupported function."""
        rule, function = attempt.rule, attempt.function
        if not rule.enabled or rule.req_user == REQ_DISABLED:
            return error(f"function disabled: {function.name}", answer.BAD_FUNCTION)
        if function.handler is None:
            return error(f"not supported: {function.unsupported}", answer.BAD_FUNCTION)
        return None


class RateLimits(Check):
    """The global, per-address and per-function-and-address limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def __call__(self, attempt: Attempt) -> ApiAnswer | None:
        """429 when a bucket is empty."""
        limits, source = self.limits, attempt.request.source
        if not (limits.total.allow("*") and limits.ip.allow(source)
                and limits.function_allows(attempt.function, source)):
            return error("rate limited", answer.RATE_LIMITED)
        return None


class AddressBan(Check):
    """A banned source address (or, for a forgeable one, its UDP logins) gets nothing."""

    def __init__(self, settings: Settings, lockout: Lockout) -> None:
        self.settings = settings
        self.lockout = lockout

    def __call__(self, attempt: Attempt) -> ApiAnswer | None:
        """403 while the address is banned."""
        request = attempt.request
        if self.lockout.address_banned(request.source, forgeable(request, self.settings)):
            return error(BANNED, answer.AUTH_FAILED)
        return None


class AddressAccess(Check):
    """Whether the address is vouched for and trusted; then C{apitrustediponly} and C{req_ip}."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, attempt: Attempt) -> ApiAnswer | None:
        """403 for an untrusted address where trust is required."""
        request, config = attempt.request, attempt.config
        trust = Trust(config)
        attempt.vouched = address_vouched(request, self.settings)
        extra = config.httpapiallowedip2 if request.origin.legacy else ()
        attempt.trusted = attempt.vouched and trust.trusted(request.source, extra)
        if config.apitrustediponly and not attempt.trusted:
            return error("access only from trusted addresses", answer.AUTH_FAILED)
        if attempt.rule.req_ip and not (attempt.vouched and trust.ip_allowed(request.source, extra)):
            return error("access not allowed from this address", answer.AUTH_FAILED)
        return None


class Credentials(Check):
    """The caller, by the credential checker of the front end the request came through."""

    def __init__(self, api: ApiCredentials, legacy: LegacyCredentials, console: ConsoleCredentials,
                 sip: SipCredentials, inner: InnerCredentials, nonces: Nonces,
                 failed: Callable[[ApiRequest, AuthFailure], Awaitable[None]]) -> None:
        self.api, self.legacy, self.console, self.sip, self.inner = api, legacy, console, sip, inner
        self.nonces = nonces
        self.failed = failed

    def __call__(self, attempt: Attempt) -> Verdict:
        """403 (a failure counted by the lockout), a refusal, or a fresh nonce."""
        return self._weigh(attempt)

    async def _weigh(self, attempt: Attempt) -> ApiAnswer | None:
        origin = attempt.request.origin
        checker = (self.inner if origin.caller is not None else self.console if origin.console is not None
                   else self.legacy if origin.legacy else self.sip if origin.sip_user is not None else self.api)
        try:
            attempt.caller = await checker.caller(attempt)
        except Refused as refused:
            return error(str(refused), answer.AUTH_FAILED)
        except AuthFailure as failure:
            await self.failed(attempt.request, failure)
            return error(WRONG_AUTH, answer.AUTH_FAILED)
        except NewNonce:
            nonce = await self.nonces.issue(attempt.request.source)
            return error(f"new nonce is:{nonce}EOF", answer.AUTH_FAILED)
        return None


class Privilege(Check):
    """The caller's level is at or below the function's C{req_user}."""

    def __call__(self, attempt: Attempt) -> ApiAnswer | None:
        """403 access denied."""
        assert attempt.caller is not None
        if attempt.caller.level > attempt.rule.req_user:
            return error("access denied", answer.AUTH_FAILED)
        return None


class AccountState(Check):
    """A user's account: not locked out, within the per-user rate limit."""

    def __init__(self, lockout: Lockout, limits: Limits) -> None:
        self.lockout = lockout
        self.limits = limits

    def __call__(self, attempt: Attempt) -> ApiAnswer | None:
        """403 while locked out, 429 over the limit."""
        assert attempt.caller is not None
        user = attempt.caller.user
        if user is None:
            return None
        if self.lockout.account_banned(user.username):
            return error(BANNED, answer.AUTH_FAILED)
        if not self.limits.user.allow(user.id):
            return error("rate limited", answer.RATE_LIMITED)
        return None


class UserConditions(Check):
    """For callers below admin: C{req_user_register} / C{apidefneedregister} and C{req_user_credit}."""

    def __init__(self, store: BillingStore) -> None:
        self.store = store

    def __call__(self, attempt: Attempt) -> Verdict:
        """403 when the user is not registered as required, 412 without enough credit."""
        caller, rule, config = attempt.caller, attempt.rule, attempt.config
        assert caller is not None
        user = caller.user
        if user is None or caller.level <= REQ_ADMINS:
            return None
        register = rule.req_user_register if rule.req_user_register is not None else config.apidefneedregister
        if register:
            return self._registered_then_credit(attempt, user, register)
        return self._credit(attempt, user)

    async def _registered_then_credit(self, attempt: Attempt, user: User, register: int) -> ApiAnswer | None:
        hosts = await self.store.registered_addresses(user.id)
        if not hosts or (register == 2 and attempt.request.source not in hosts):
            return error("the user is not registered" + (" from this address" if hosts else ""),
                         answer.AUTH_FAILED)
        return await self._after(self._credit(attempt, user))

    @staticmethod
    async def _after(verdict: Verdict) -> ApiAnswer | None:
        """A verdict, awaited if it must wait."""
        if verdict is None or isinstance(verdict, ApiAnswer):
            return verdict
        return await verdict

    def _credit(self, attempt: Attempt, user: User) -> Verdict:
        """C{req_user_credit}: 2 means mincreditonroute, 0 and 1 no threshold."""
        rule, config = attempt.rule, attempt.config
        threshold = rule.req_user_credit
        if threshold == 2:
            threshold = config.mincreditonroute
        elif threshold in (0, 1):
            threshold = None
        if threshold is None:
            return None
        return self._enough(user, threshold)

    async def _enough(self, user: User, threshold: Decimal) -> ApiAnswer | None:
        """412 unless the balance now (never a stale cached one) reaches C{threshold}."""
        available = await self.store.current_credit(user) + (user.creditlimit if user.postpaid else 0)
        if available < threshold:
            return error("not enough credit", answer.FAILED)
        return None


class LoginSucceeded(Check):
    """A proven login clears the failures that came from its own address (the lockout's rule)."""

    def __init__(self, lockout: Lockout) -> None:
        self.lockout = lockout

    def __call__(self, attempt: Attempt) -> Verdict:
        """Never refuses."""
        caller = attempt.caller
        if caller is not None and caller.user is not None and caller.proven:
            return self.lockout.succeeded(caller.user.username, attempt.request.source)
        return None


def checks(settings: Settings, accounts: Accounts, lockout: Lockout, nonces: Nonces, limits: Limits,
           failed: Callable[[ApiRequest, AuthFailure], Awaitable[None]]) -> tuple[Check, ...]:
    """Every check, in the order the dispatcher runs them."""
    api = ApiCredentials(settings, accounts, nonces, lockout)
    return (
        FunctionUsable(),
        RateLimits(limits),
        AddressBan(settings, lockout),
        AddressAccess(settings),
        Credentials(api, LegacyCredentials(settings, accounts, lockout), ConsoleCredentials(accounts, api),
                    SipCredentials(accounts), InnerCredentials(accounts), nonces, failed),
        Privilege(),
        AccountState(lockout, limits),
        UserConditions(accounts.store),
        LoginSucceeded(lockout),
    )
