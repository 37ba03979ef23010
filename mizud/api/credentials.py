"""Who is calling: one credential checker per front end, in the spirit of twisted.cred.

A request's L{Origin} says which front end vouched for it, and so which
checker weighs its credentials:

 - L{ApiCredentials}: the API (v2) itself: C{authkey}, then C{authid} with
   C{authpwd}, C{authmd5} (both forms, with or without a nonce) or the
   portal's md5, or a trusted source address;
 - L{LegacyCredentials}: the old HTTP interface: its address lists and key,
   C{usr}/C{userid}/C{pin} with C{pwd} or C{md5auth};
 - L{ConsoleCredentials}: the telnet console's logged-in user, as
   C{apitrustfromconsole} says;
 - L{SipCredentials}: the user a SIP request's digest proved;
 - L{InnerCredentials}: an inner request running as the caller of the
   function that made it (the console's command lines, SMS commands).

Each returns a L{Caller} or raises L{AuthFailure} (counted by the lockout,
answered C{wrong authentication}), L{Refused} (answered with its reason) or
L{NewNonce} (answered with a fresh nonce).  What they share (finding a user
the way C{authid} is resolved, privilege levels, C{targetuser}) is
L{Accounts}.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Awaitable

from twisted.logger import Logger

from ..config import Config, Settings
from ..security.lockout import Lockout, loggable
from ..store.billing import USER_ADMIN, USER_OWNER, USER_RESELLER, USER_SUPPORT, BillingStore, User
from ..text import canonical_id
from . import answer, legacy
from .auth import authmd5_full, authmd5_simple, md5hex, portal_md5, same, secret_equal
from .registry import REQ_ADMINS, REQ_ALL, REQ_OWNERS, REQ_PUBLIC, REQ_SRVADMIN, REQ_SUPPORT, Access, ApiFunction
from .request import ApiRequest, RequestError
from .state import Nonces

log = Logger()

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


def claimed(request: ApiRequest) -> str:
    """The account a request names before it is resolved (for counting a failure)."""
    return request.get("authid", "usr", "userid", "pin")[:64]


def check_key(request: ApiRequest, rule: Access, trusted: bool, key: str, *names: str) -> None:
    """C{req_key}: the API key, unless the source is trusted or no key is configured."""
    if rule.req_key and key and not trusted and not secret_equal(request.get(*names), key):
        raise AuthFailure("wrong or missing key", claimed(request))


def needs_nonce(rule: Access, config: Config, trusted: bool) -> bool:
    """Whether this function demands nonce login from this source (req_user_login / apidefneedlogin)."""
    login = rule.req_user_login if rule.req_user_login is not None else config.apidefneedlogin
    return login in (2, 3) or (login == 1 and not trusted)


def login_ip_check(rule: Access, config: Any) -> bool:
    """Whether nonces are bound to the address they were issued to (login mode 3)."""
    login = rule.req_user_login if rule.req_user_login is not None else config.apidefneedlogin
    return bool(login == 3)


def check_enabled(user: User, account: str) -> None:
    """Raise L{AuthFailure} for a disabled account."""
    if not user.enabled or user.temporarydisabled:
        raise AuthFailure("user disabled", account)


class Accounts:
    """What every checker shares: users found as C{authid} is resolved, privilege levels, C{targetuser}."""

    def __init__(self, settings: Settings, store: BillingStore) -> None:
        self.settings = settings
        self.store = store

    async def find(self, authid: str) -> User | None:
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

    def level(self, user: User, trusted: bool) -> int:
        """The user's privilege level; admins are admins only as C{apideftrustadmin} allows."""
        config = self.settings.current
        level = LEVEL_BY_TYPE.get(user.type, REQ_ALL)
        if level <= REQ_ADMINS:
            mode = config.apideftrustadmin
            if (mode == 2 and not trusted) or (mode == 4 and not trusted):
                return REQ_ALL
        return level

    async def impersonate(self, request: ApiRequest, caller: Caller) -> Caller:
        """C{targetuser}: an admin acts as another user."""
        target = request.get("targetuser")
        if not target:
            return caller
        if caller.level > REQ_ADMINS:
            raise AuthFailure("targetuser needs an admin", caller.user.username if caller.user else "")
        user = await self.find(target)
        if user is None:
            raise RequestError(f"no such user: {target[:64]}", answer.NOT_FOUND)
        return Caller(user, caller.level, caller.trusted, f"{caller.how}, as {user.username}", caller.proven)

    async def by_address(self, request: ApiRequest, trusted: bool) -> Caller:
        """A request naming no user: admin from a trusted address where C{apideftrustadmin} allows, else
        anonymous."""
        if trusted and self.settings.current.apideftrustadmin in (1, 2):
            return await self.impersonate(request, Caller(None, REQ_SRVADMIN, True, "trusted address"))
        return Caller(None, REQ_PUBLIC, trusted, "anonymous")

    async def without_proof(self, request: ApiRequest, rule: Access, user: User, trusted: bool) -> Caller:
        """A user named without a password: acted for by a trusted address, or public functions only."""
        config = self.settings.current
        check_enabled(user, user.username)
        if trusted and config.apideftrustadmin != 4:
            return await self.impersonate(request, Caller(user, self.level(user, trusted), trusted, "trusted address"))
        mode = rule.req_user_mode or config.apiv2auth
        if mode == 4 or rule.req_user >= REQ_PUBLIC:
            return Caller(user, max(self.level(user, trusted), REQ_ALL), trusted, "username")
        raise AuthFailure("no password or authmd5", user.username)


@dataclass
class Attempt:
    """One request on its way through the dispatcher's checks (L{mizud.api.checks})."""

    request: ApiRequest
    function: ApiFunction
    rule: Access
    config: Config
    #: The source address may earn trust (L{mizud.api.checks.AddressAccess}).
    vouched: bool = False
    #: The source address is trusted (trustediplist, LAN, loopback; the old interface's httpapiallowedip2).
    trusted: bool = False
    #: Who is calling, once the credentials are weighed.
    caller: Caller | None = None


class ApiCredentials:
    """The API's own credentials (see L{identify})."""

    def __init__(self, settings: Settings, accounts: Accounts, nonces: Nonces, lockout: Lockout) -> None:
        self.settings = settings
        self.accounts = accounts
        self.nonces = nonces
        self.lockout = lockout

    def caller(self, attempt: Attempt) -> Awaitable[Caller]:
        """The key (C{req_key}: raises at once), then L{identify}."""
        check_key(attempt.request, attempt.rule, attempt.trusted, attempt.config.apiv2key, "authkey")
        return self.identify(attempt.request, attempt.rule, attempt.trusted)

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

        The authid is resolved first (L{Accounts.find}); while the account it
        names (or, naming none, that spelling) is locked out, the answer
        is C{banned} whatever the proof.
        """
        accounts = self.accounts
        authid = request.get("authid")
        nonce_needed = needs_nonce(rule, self.settings.current, trusted)
        if not authid:
            if nonce_needed and not trusted:
                raise NewNonce()
            return await accounts.by_address(request, trusted)
        user = await accounts.find(authid)
        account = user.username if user is not None else authid[:64]
        if self.lockout.account_banned(account):
            # Before any password check: a locked account must not learn whether a guess was right.
            raise Refused(BANNED)
        proof = request.get("authpwd") or request.get("authmd5") or request.get("portalmd5")
        if not proof:
            if nonce_needed:
                raise NewNonce()
            if user is None:
                if rule.req_user >= REQ_PUBLIC:
                    return Caller(None, REQ_PUBLIC, trusted, "anonymous")
                raise AuthFailure("unknown user", account)
            return await accounts.without_proof(request, rule, user, trusted)
        if user is None:
            # Spend what checking a password would, so timing does not tell
            # whether the user exists.
            authmd5_full(authid, "x" * 12, request.get("authsalt1"), request.get("authsalt2"), "", "")
            raise AuthFailure("unknown user", account)
        check_enabled(user, account)
        how = await self._verify(request, user, authid, rule, nonce_needed)
        caller = Caller(user, accounts.level(user, trusted), trusted, how, proven=True)
        return await accounts.impersonate(request, caller)

    async def _verify(self, request: ApiRequest, user: User, authid: str, rule: Access, nonce_needed: bool) -> str:
        """How the request proves C{user}: a password or PIN, or one of the md5 forms; raises otherwise."""
        config = self.settings.current
        mode = rule.req_user_mode or config.apiv2auth
        authpwd = request.get("authpwd")
        if authpwd:
            if nonce_needed:
                raise NewNonce()
            if secret_equal(authpwd, user.password):
                return "password"
            if mode != 6 and config.apiauth != 0 and user.pin and secret_equal(authpwd, user.pin):
                return "pin"
            raise AuthFailure("wrong password", user.username)
        portal = request.get("portalmd5").strip()
        given = portal or request.get("authmd5").strip()
        if request.get("nonce"):
            return await self._with_nonce(request, user, authid, rule, portal, given)
        if portal:
            # The web portal's auto-login link: MD5("C8y5:" username ":" password ":" salt).
            if nonce_needed:
                raise NewNonce()
            if same(portal, portal_md5(user.username, user.password, request.get("portalsalt"))):
                return "portal md5"
            raise AuthFailure("wrong portal md5", user.username)
        if nonce_needed:
            raise NewNonce()
        salt1, salt2, serversalt = request.get("authsalt1"), request.get("authsalt2"), config.apiv2md5salt
        if not given.lower().startswith("authv3_") and same(given, authmd5_simple(authid, user.password, serversalt,
                                                                                  salt1)):
            return "authmd5"
        full = authmd5_full(authid, user.password, salt1, salt2, serversalt, "")
        if same(given, full) or same("authv3_" + given, full):
            return "authmd5"
        raise AuthFailure("wrong authmd5", user.username)

    async def _with_nonce(self, request: ApiRequest, user: User, authid: str, rule: Access, portal: str,
                          given: str) -> str:
        """An md5 proof over a nonce of ours (used once): authmd5, or the portal link's md5 as inner secret."""
        config = self.settings.current
        salt1, salt2, serversalt = request.get("authsalt1"), request.get("authsalt2"), config.apiv2md5salt
        bound = request.source if login_ip_check(rule, config) else None
        nonce = await self.nonces.find(request.get("nonce"), config.apinoncettl, bound)
        if nonce is None:
            # Unknown or expired: the client gets a fresh nonce; nothing was guessed, nothing is counted.
            raise NewNonce()
        if portal:
            # The auto-login link's md5 as the inner secret: MD5(md5 + authsalt2 + serversalt + nonce).
            link = portal_md5(user.username, user.password, request.get("portalsalt"))
            expected = md5hex(link + salt2 + serversalt + nonce)
        else:
            expected = authmd5_full(authid, user.password, salt1, salt2, serversalt, nonce)
        if same(given, expected) or same("authv3_" + given, expected):
            if not await self.nonces.use(nonce, expected, config.apinoncettl):
                # A replay, or a client repeating itself (the same salts): no password was guessed, so
                # nothing is counted; a fresh nonce lets an honest client go on.
                log.info("replayed authmd5 for {user} from {source}", user=loggable(user.username),
                         source=request.source)
                raise NewNonce()
            return "portal md5 with nonce" if portal else "authmd5 with nonce"
        raise AuthFailure("wrong portal md5" if portal else "wrong authmd5", user.username)


class LegacyCredentials:
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

    def __init__(self, settings: Settings, accounts: Accounts, lockout: Lockout) -> None:
        self.settings = settings
        self.accounts = accounts
        self.lockout = lockout

    async def caller(self, attempt: Attempt) -> Caller:
        """The caller of an old-interface request (see the class doc)."""
        request, function, rule, trusted = attempt.request, attempt.function, attempt.rule, attempt.trusted
        config = self.settings.current
        source = request.source
        if not legacy.address_allowed(source, config.httpapiallowedip):
            raise Refused("access not allowed from this address")
        if function.name in legacy.SMS and not legacy.address_allowed(source, config.httpsmscallbackip):
            raise Refused("SMS commands are not allowed from this address")
        check_key(request, rule, trusted, config.httpapikey or config.apiv2key, "key", "authkey")
        if function.name in legacy.SENSITIVE:
            return await self.accounts.by_address(request, trusted)
        user, how = await self._find(request)
        account = user.username if user is not None else claimed(request)
        if self.lockout.account_banned(account):
            raise Refused(BANNED)
        if user is None:
            raise AuthFailure("unknown user", account)
        pwd, md5auth = request.get("pwd"), request.get("md5auth")
        if how != "pin" and not (pwd or md5auth):
            return await self.accounts.without_proof(request, rule, user, trusted)
        if needs_nonce(rule, config, trusted) and not config.legacystaticauth:
            raise Refused("this server requires nonce authentication: use /mvapireq with preauth")
        check_enabled(user, account)
        if how != "pin":
            if not legacy.password_matches(pwd, md5auth, user.username, user.password, config.httpapimd5salt):
                raise AuthFailure("wrong password or md5auth", account)
            how = "md5auth" if md5auth and not pwd else "password"
        return Caller(user, self.accounts.level(user, trusted), trusted, how, proven=True)

    async def _find(self, request: ApiRequest) -> tuple[User | None, str]:
        """The user of an old-interface request: usr, userid, or pin (per callingcardauth)."""
        config = self.settings.current
        store = self.accounts.store
        usr, userid, pin = request.get("usr"), request.get("userid"), request.get("pin")
        if usr:
            return await store.find_user(usr), "user"
        number = canonical_id(userid)
        if number is not None:
            return await store.get_user(number), "user"
        if pin and config.callingcardauth != 2:
            user = await store.find_user_by_pin(pin)
            if user is None and config.callingcardauth == 1:
                user = await store.find_user_by_login(pin)
            return user, "pin"
        return None, "user"


class ConsoleCredentials:
    """Who a console command runs as (C{apitrustfromconsole}): 2 the logged-in user; 1 a request from a
    trusted address (authid names a user, none means admin); 0 its own credentials."""

    def __init__(self, accounts: Accounts, api: ApiCredentials) -> None:
        self.accounts = accounts
        self.api = api

    async def caller(self, attempt: Attempt) -> Caller:
        """The caller of a console command line."""
        assert attempt.request.origin.console is not None
        request, rule, trusted = attempt.request, attempt.rule, attempt.trusted
        user, mode = attempt.request.origin.console
        if mode == 2:
            check_enabled(user, user.username)
            caller = Caller(user, self.accounts.level(user, trusted), trusted, "console", proven=True)
            return await self.accounts.impersonate(request, caller)
        caller = await self.api.identify(request, rule, True if mode == 1 else trusted)
        if mode == 1:
            # Trusted, but never above the logged-in user: a support user does not become an admin.
            caller = replace(caller, level=max(caller.level, self.accounts.level(user, trusted)))
        return caller


class SipCredentials:
    """The user a SIP request's digest proved (only the SIP bridge sets it, after digest authentication of
    the SIP request that carried the API request)."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    async def caller(self, attempt: Attempt) -> Caller:
        """That user, while enabled."""
        user = attempt.request.origin.sip_user
        assert user is not None
        check_enabled(user, user.username)
        return Caller(user, self.accounts.level(user, attempt.trusted), attempt.trusted, "sip digest", proven=True)


class InnerCredentials:
    """An inner request runs as the caller of the function that made it (only such a function sets it:
    C{oop}, SMS commands): that caller is proven already."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    async def caller(self, attempt: Attempt) -> Caller:
        """The outer caller (C{targetuser} still applies)."""
        inner = attempt.request.origin.caller
        assert inner is not None
        return await self.accounts.impersonate(attempt.request, inner)
