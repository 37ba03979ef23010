"""Global configuration: typed, validated, reloadable.

Every option the Mizu specs name (and the few mizud adds) is declared once
in L{OPTIONS} with its type, default, whether it may change while the daemon
runs, and a one-line meaning.  Sources are an ini file (section
C{[global]}, keys case-insensitive) and C{--set key=value} overrides, later
sources winning.  Parsing produces a frozen L{Config}; every failure is one
L{ConfigError} naming the key and, for the file, the line.

L{Settings} holds the current L{Config} and re-reads the same sources on
L{Settings.reload}, applying only the options declared live.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration value, key or file is wrong; says which and where."""

    def __init__(self, key: str | None, message: str, where: str | None = None) -> None:
        self.key = key
        self.message = message
        self.where = where
        text = message if key is None else f"{key}: {message}"
        if where:
            text = f"{where}: {text}"
        super().__init__(text)


# -- value parsers -----------------------------------------------------------
# Each takes the raw string and returns the typed value or raises ValueError
# with a message fit for an operator.

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(raw: str) -> bool:
    """Parse a boolean written as 1/0, true/false, yes/no or on/off."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {raw!r}")


def int_range(low: int, high: int) -> Callable[[str], int]:
    """Return a parser for an integer in [low, high]."""

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {value}")
        return value

    parse.__doc__ = f"integer {low}..{high}"
    return parse


parse_port = int_range(0, 65535)
parse_port.__doc__ = "port 0..65535 (0 disables)"


def parse_optional_port(raw: str) -> int | None:
    """Parse a port, or an empty value meaning 'the same as the main port'."""
    if not raw.strip():
        return None
    return parse_port(raw)


def parse_choice(*choices: str) -> Callable[[str], str]:
    """Return a parser accepting one of C{choices} (case-insensitive)."""

    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    parse.__doc__ = "one of " + ", ".join(choices)
    return parse


def parse_str(raw: str) -> str:
    """Return the string with surrounding white space removed."""
    return raw.strip()


def parse_secret(raw: str) -> str:
    """A secret string; no constraint beyond being printable ASCII."""
    value = raw.strip()
    if any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise ValueError("must be printable ASCII")
    return value


def parse_ip_list(raw: str) -> tuple[IPNetwork, ...]:
    """Parse comma- or space-separated IP addresses or CIDR networks."""
    networks: list[IPNetwork] = []
    for item in re.split(r"[,\s]+", raw.strip()):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return tuple(networks)


def parse_listen_address(raw: str) -> str:
    """Parse the address listeners bind to (an IPv4 or IPv6 address)."""
    value = raw.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"not an IP address: {raw!r}") from None
    return value


_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(raw: str) -> float:
    """Parse a duration in seconds: C{30}, C{30s}, C{10m}, C{2h}, C{1d}, C{250ms}."""
    match = _DURATION.match(raw)
    if not match:
        raise ValueError(f"expected a duration such as 30s, 10m, 2h, got {raw!r}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(raw: str) -> int:
    """Parse a size in bytes: C{1490}, C{64k}, C{8MiB}, C{1g}."""
    match = _SIZE.match(raw)
    if not match:
        raise ValueError(f"expected a size such as 1490, 64k, 8MiB, got {raw!r}")
    unit = (match.group(2) or "").lower()[:1]
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parse_decimal(raw: str) -> Decimal:
    """Parse an exact decimal number (never a float)."""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise ValueError(f"expected a decimal number, got {raw!r}") from None
    if not value.is_finite():
        raise ValueError(f"expected a finite decimal number, got {raw!r}")
    return value


def parse_rate(raw: str) -> Decimal:
    """Parse a rate: a decimal number, zero or more."""
    value = parse_decimal(raw)
    if value < 0:
        raise ValueError(f"expected a rate of zero or more, got {raw!r}")
    return value


def parse_currency(raw: str) -> str:
    """Parse a three-letter ISO 4217 currency code."""
    value = raw.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", value):
        raise ValueError(f"expected a three-letter currency code, got {raw!r}")
    return value


def parse_database(raw: str) -> str:
    """Parse the database: a SQLite file path or a postgresql:// DSN."""
    value = raw.strip()
    if not value:
        raise ValueError("must name a SQLite file or a postgresql:// DSN")
    if "://" in value and not value.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"unsupported database URL scheme in {value.split('://')[0]!r}")
    return value


def parse_bootstrap_admin(raw: str) -> tuple[str, str] | None:
    """Parse C{username:password}, or empty for no bootstrap admin."""
    value = raw.strip()
    if not value:
        return None
    username, sep, password = value.partition(":")
    if not sep or not username or not password:
        raise ValueError("expected username:password")
    if not re.fullmatch(r"[A-Za-z0-9_.@+-]{1,64}", username):
        raise ValueError("username may hold letters, digits and _ . @ + - (1 to 64)")
    if len(password) < 8:
        raise ValueError("the bootstrap admin password needs at least 8 characters")
    return username, password


# -- option table --------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One global option: its name, parser, default (as written), meaning."""

    name: str
    parse: Callable[[str], Any]
    default: str
    doc: str
    live: bool = False
    aliases: tuple[str, ...] = ()
    group: str = "general"


def _opt(
    name: str,
    parse: Callable[[str], Any],
    default: str,
    doc: str,
    *,
    live: bool = False,
    aliases: Sequence[str] = (),
    group: str,
) -> Option:
    return Option(name, parse, default, doc, live, tuple(aliases), group)


OPTIONS: tuple[Option, ...] = (
    # Listeners.  Rebinding ports needs a restart.
    _opt("listenaddress", parse_listen_address, "0.0.0.0",
         "Address every listener binds to.", group="listeners"),
    _opt("mainaport", parse_port, "80",
         "Shared service port for the API, WebSocket, raw TCP/UDP, SIP and STUN.",
         group="listeners"),
    _opt("usemainaport", parse_bool, "true",
         "Serve the shared service port at all.", group="listeners"),
    _opt("mainaportudp", parse_optional_port, "",
         "UDP port for API datagrams, SIP and STUN; empty means the same as mainaport, 0 disables UDP.",
         group="listeners"),
    _opt("sslportmain", parse_port, "443",
         "TLS port serving the same services as mainaport.", group="listeners"),
    _opt("sslportweb", parse_port, "443",
         "TLS port of the web portal (the same listener as sslportmain when equal).",
         group="listeners"),
    _opt("httpserver", parse_port, "8084",
         "Port of the old HTTP interface (/xmapi/).", group="listeners"),
    _opt("sipport", parse_port, "5060",
         "Dedicated SIP port (UDP and TCP).", group="listeners"),
    _opt("localtsport", parse_port, "5061",
         "SIPS (SIP over TLS) port.", group="listeners"),
    _opt("adminport", parse_port, "0",
         "Telnet admin console port; 0 (default) keeps the clear-text console off. Who may connect: remoteadmin.",
         group="listeners"),
    _opt("consoleidletimeout", parse_duration, "15m",
         "Close an admin console connection (adminport) idle for this long.", live=True, group="listeners"),
    _opt("maxconnectionsperip", int_range(0, 1_000_000), "100",
         "Most TCP, TLS and WebSocket connections one address may hold at once, over all listeners (more are "
         "closed at once and logged); 0 for no cap. Raise it for a NAT with many phones on TCP.",
         live=True, group="listeners"),
    _opt("connectionidletimeout", parse_duration, "2m",
         "Close an HTTP or raw TCP API connection that sent nothing (and awaits no answer) for this long.",
         group="listeners"),
    _opt("requesttimeout", parse_duration, "30s",
         "A request that has begun (an HTTP request's line, headers and body; a raw TCP API line; a SIP "
         "message on a stream) must be complete within this, or the connection is closed.",
         live=True, group="listeners"),
    _opt("websocketidletimeout", parse_duration, "15m",
         "Close an API WebSocket (/mvstwebsock) that sent nothing for this long.", live=True, group="listeners"),
    _opt("webportal", parse_bool, "false",
         "Serve the enduser web portal at /webvoip and /webvoipportal on the shared port. Off by default: "
         "it makes apiv2key and apiv2md5salt public (the browser needs them).", group="listeners"),
    _opt("publictariffs", int_range(0, 999999999), "0",
         "Tariff plan that anyone may list (publictariffs function, portal page); 0 for none.",
         live=True, group="api"),
    _opt("mvwebdir", parse_str, "mvweb",
         "Directory whose files are served under /mvweb/ on the shared port (missing: nothing served).",
         group="listeners"),
    _opt("tlscert", parse_str, "",
         "PEM certificate for TLS; empty generates a self-signed one into var/.",
         group="listeners"),
    _opt("tlskey", parse_str, "",
         "PEM private key for tlscert.", group="listeners"),
    # API authentication and access (see spec: Authentication, Hardened access).
    _opt("apiv2key", parse_secret, "",
         "API key clients send as authkey; empty means no key is required.",
         live=True, group="api"),
    _opt("apiv2md5salt", parse_secret, "",
         "Server salt mixed into authmd5; set it to a random value.", live=True, group="api"),
    _opt("apiv2ipauth", parse_ip_list, "",
         "Addresses allowed for functions with req_ip=1 (empty: local addresses only).",
         live=True, aliases=("apiv2ipaauth",), group="api"),
    _opt("apiv2auth", int_range(0, 6), "2",
         "Default user authentication mode (req_user_mode): 2 user+pwd or pin, 4 user or pwd or pin, 6 user+pwd only.",
         live=True, group="api"),
    _opt("trustediplist", parse_ip_list, "",
         "Extra trusted source addresses (for example your web server).", live=True, group="api"),
    _opt("trustlanip", parse_bool, "true",
         "Trust private (LAN) source addresses.", live=True, group="api"),
    _opt("trustedproxies", parse_ip_list, "",
         "Reverse proxies whose X-Forwarded-For names the real client address.",
         live=True, group="api"),
    _opt("allowtrustedip", int_range(0, 4), "3",
         "Trusted-IP use: 0 no, 1 my IP only, 2 private IPs only, 3 yes, 4 everywhere including the console.",
         live=True, group="api"),
    _opt("apitrustediponly", int_range(0, 1), "0",
         "1 accepts API requests from trusted sources only.", live=True, group="api"),
    _opt("apideftrustadmin", int_range(0, 4), "1",
         "How admins are recognised: 0 no, 1 admin if trusted IP, 2 IP only, 3 auth only, 4 IP+auth.",
         live=True, group="api"),
    _opt("apiauth", int_range(-1, 1), "-1",
         "Alternative authentication: -1 auto, 0 strict username/password, 1 all modes (clear text, PIN).",
         live=True, group="api"),
    _opt("apitrustfromconsole", int_range(0, 2), "2",
         "Console requests: 0 authenticate each, 1 trusted, 2 run as the logged-in admin.",
         live=True, group="api"),
    _opt("apidefneedlogin", int_range(0, 3), "0",
         "Nonce login: 0 no, 1 from untrusted sources, 2 always, 3 always with IP check.",
         live=True, group="api"),
    _opt("apidefneedregister", int_range(0, 2), "0",
         "User API only for SIP-registered users: 0 no, 1 yes, 2 yes and same IP.",
         live=True, group="api"),
    _opt("remoteadmin", int_range(0, 5), "1",
         "Console access: 0 off, 1 localhost, 2 same machine, 3 trusted, 4 LAN, 5 everywhere (spec default 5; mizud 1).",
         live=True, group="api"),
    _opt("httpstrictrtspose", parse_bool, "false",
         "Put the answer's code in the HTTP status instead of always 200.",
         live=True, aliases=("httpstrictresponse",), group="api"),
    _opt("enablejsonp", int_range(0, 2), "1",
         "JSONP: 0 off, 1 format=jsonp answers, 2 also the remote jppget forwarder.",
         live=True, group="api"),
    _opt("jsonpforwardhosts", parse_str, "",
         "Host names the JSONP forwarder (/mvapireq/jppget, enablejsonp=2) may fetch from, comma-separated.",
         live=True, group="api"),
    _opt("httpapiencryptkey", parse_secret, "",
         "XOR key for mcrfs / oenc1_ encrypted requests; empty uses the key built into Mizu's clients "
         "(aJ6aqK4Nah3hnP7aht), so an unmodified webphone works. Either way it obfuscates; TLS protects.",
         live=True, group="api"),
    _opt("mincreditonroute", parse_decimal, "0",
         "Minimum credit for calls and for req_user_credit=2.", live=True, group="api"),
    _opt("ratelimitip", parse_decimal, "50",
         "API requests per second one source address may sustain (bursts of twice that); 0 for no limit.",
         live=True, group="api"),
    _opt("ratelimituser", parse_decimal, "20",
         "API requests per second one user may sustain (bursts of twice that); 0 for no limit.",
         live=True, group="api"),
    _opt("ratelimitglobal", parse_decimal, "5000",
         "API requests per second all clients together may sustain; 0 for no limit.",
         live=True, group="api"),
    _opt("authfailmax", int_range(1, 1000), "5",
         "Failed authentications for one account (or, across authfailaccounts accounts, from one address) "
         "that trigger a ban.", live=True, group="api"),
    _opt("authfailaccounts", int_range(1, 64), "3",
         "How many different accounts the failures from one address must name before the address is banned "
         "(one account's failures lock that account only, never an address others share).",
         live=True, group="api"),
    _opt("signupnumericusernames", parse_bool, "false",
         "Let the public signup (newuseru) choose a username that is a phone number. Off by default: a user "
         "named after a number would receive its calls and SMS. Even on, a number that routes to a gateway, "
         "or is a DID, a user id, a PIN or another user's proven number, is refused.", live=True, group="api"),
    _opt("apiudptrusted", parse_bool, "false",
         "Trust the source address of API requests over UDP (trusted-address rules, address bans). Off: "
         "anyone can forge a datagram's source, so UDP requests must carry credentials. Turn on only when "
         "the UDP network is yours and filtered.", live=True, group="api"),
    _opt("httphostnames", parse_str, "",
         "Host names this server is reached by in browsers (comma-separated). A browser's request for any "
         "other name (say a page's own name re-pointed at this address: DNS rebinding) earns no trust by "
         "address; IP addresses and localhost are always known.", live=True, group="api"),
    _opt("browseraddresstrust", parse_bool, "false",
         "Trust by address a browser request that shows no origin (no Origin, Referer or Sec-Fetch-Site): "
         "off by default, since a page of any site can make such a request from a browser on a trusted "
         "address. Requests showing another site's origin are never trusted by address.",
         live=True, group="api"),
    _opt("authfailwindow", parse_duration, "10m",
         "Window in which authfailmax failures trigger a ban.", live=True, group="api"),
    _opt("authbantime", parse_duration, "10m",
         "How long a ban for failed authentications lasts.", live=True, group="api"),
    _opt("apinoncettl", parse_duration, "30m",
         "How long a nonce from preauth stays valid.", live=True, group="api"),
    _opt("customactioncommands", parse_bool, "false",
         "Allow tb_api custom actions that restart, reboot or run a command line (4, 6, 7 and 54, 56, 57).",
         live=True, group="api"),
    _opt("smtpserver", parse_str, "",
         "host[:port] of the SMTP server for e-mail (custom actions, notifications); empty: no e-mail.",
         live=True, group="api"),
    _opt("smtpfrom", parse_str, "mizud@localhost",
         "Sender address of e-mail mizud sends.", live=True, group="api"),
    _opt("smtpuser", parse_str, "",
         "User name for SMTP authentication (empty: none).", live=True, group="api"),
    _opt("smtppassword", parse_secret, "",
         "Password for SMTP authentication.", live=True, group="api"),
    _opt("smtptls", parse_choice("auto", "require", "off"), "auto",
         "STARTTLS to the SMTP server: auto (when offered), require (never send without it), off.",
         live=True, group="api"),
    _opt("smtpcafile", parse_str, "",
         "PEM file of the CA that signs the SMTP server's certificate (empty: the system's trust store).",
         live=True, group="api"),
    _opt("adminemail", parse_str, "",
         "Where e-mail for the operator goes (custom actions without a ***TO line).", live=True, group="api"),
    # The old HTTP interface (spec/mizu-http-interface-legacy.md).
    _opt("httpapikey", parse_secret, "",
         "Key the old /xmapi/ interface requires; empty requires none.",
         live=True, group="legacy"),
    _opt("httpapimd5salt", parse_secret, "87159643",
         "Salt of the old interface's md5auth.", live=True, aliases=("httppimd5salt",),
         group="legacy"),
    _opt("httpapiallowedip", parse_ip_list, "",
         "Old interface: accept commands only from these addresses (empty: all).",
         live=True, aliases=("httppapiallowedip",), group="legacy"),
    _opt("httpapiallowedip2", parse_ip_list, "",
         "Old interface: addresses allowed sensitive operations without a password.",
         live=True, aliases=("httppapiallowedip2",), group="legacy"),
    _opt("httpsmscallbackip", parse_ip_list, "",
         "Old interface: accept SMS commands only from these addresses (empty: all).",
         live=True, group="legacy"),
    _opt("legacystaticauth", parse_bool, "false",
         "Accept the old interface's pwd and md5auth where the API demands nonce login (apidefneedlogin, "
         "req_user_login); off by default, since a static md5auth can be replayed for ever.",
         live=True, group="legacy"),
    _opt("callingcardauth", int_range(0, 2), "0",
         "PIN authentication: 0 pin field, 1 pin or username+password concatenated, 2 off.",
         live=True, group="legacy"),
    # SIP (registrar, presence, messages).
    _opt("siprealm", parse_str, "",
         "Digest realm of SIP challenges; empty uses the host of the Request-URI (the SIP domain).",
         live=True, group="sip"),
    _opt("sipnoncettl", parse_duration, "5m",
         "How long a SIP digest nonce stays fresh; an older one gets stale=true.", live=True, group="sip"),
    _opt("sipminexpires", int_range(1, 86400), "60",
         "Shortest registration accepted (shorter ones get 423 with Min-Expires).", live=True, group="sip"),
    _opt("sipmaxexpires", int_range(1, 604800), "7200",
         "Longest registration granted (longer requests are shortened).", live=True, group="sip"),
    _opt("sipdefexpires", int_range(1, 604800), "3600",
         "Registration time when a REGISTER names none.", live=True, group="sip"),
    _opt("sipmaxcontacts", int_range(1, 1000), "10",
         "Most contacts (devices) one user may have registered at once (more get 403).", live=True, group="sip"),
    _opt("sipratelimitip", parse_decimal, "200",
         "SIP requests per second one source address may sustain (bursts of twice that); "
         "0 for no limit. Requests over it are dropped.", live=True, group="sip"),
    _opt("sipmaxserving", int_range(0, 1_000_000), "2000",
         "Admission control: at most this many SIP requests being worked on at once (waiting for the "
         "database or a route); past it, new requests outside a dialog get 503 with Retry-After at once, so "
         "an overloaded node keeps answering at its best rate instead of drowning in retransmissions. "
         "0 for no limit.", live=True, group="sip"),
    _opt("sipoverloadlag", parse_duration, "250ms",
         "Admission control: while the event loop runs this late (it is out of CPU), new SIP requests "
         "outside a dialog get 503 with Retry-After. 0 for no limit.", live=True, group="sip"),
    _opt("sipidletimeout", parse_duration, "15m",
         "Close a SIP TCP, TLS or WebSocket connection that sent nothing for this long "
         "(phones keep theirs open with CRLF keep-alives or re-registrations).", group="sip"),
    _opt("sipapi", parse_bool, "false",
         "Execute API requests carried in the X-MizuAPI header of SIP MESSAGE and OPTIONS requests "
         "from SIP-authenticated users (answered in the response).", live=True, group="sip"),
    _opt("defcallbackivr", parse_str, "",
         "The number (or SIP username) a callback connects the called-back user to when the request names "
         "no bnum: an IVR or access number served elsewhere (mizud handles no media).", live=True, group="calls"),
    _opt("callringtimeout", int_range(5, 600), "60",
         "Seconds a leg of a p2p or callback call may ring before it is cancelled (no answer).",
         live=True, group="calls"),
    _opt("callsetuptimeout", int_range(1, 32), "8",
         "Seconds to wait for any answer (even 100 Trying) to a call's INVITE before the next route "
         "is tried (SIP timer B).", live=True, group="calls"),
    _opt("maxcallduration", int_range(60, 86400), "7200",
         "The longest a call (from a phone, p2p or callback) may last, whatever the credit (seconds).",
         live=True, group="calls"),
    _opt("sipinviterate", parse_rate, "5",
         "New INVITEs per second one source address may send (bursts of three times that, at least one; a "
         "phone's call is two INVITEs, the challenged one and the answered one); more get 503 with Retry-After "
         "before the caller is authenticated or the call routed. 0 for no limit. A trunk known by its address "
         "is not limited.", live=True,
         group="calls"),
    _opt("webrtcgateways", parse_str, "",
         "Gateways (addserver usernames, comma separated) that accept WebRTC media (ICE, DTLS-SRTP); a WebRTC "
         "phone's call to any other gateway is refused with 488, since mizud carries no media to convert it.",
         live=True, group="calls"),
    _opt("sipcallsperuser", int_range(1, 1000), "4",
         "The most calls one user may make or pay for at once on this node (phones' calls, forwarded legs, "
         "p2p and callback; calls in from trunks do not count); "
         "one more is refused with 486.", live=True, group="calls"),
    _opt("p2panyanum", parse_bool, "false",
         "Let users place p2p and callback calls whose first leg (anum/num) is any number; by default it must "
         "be their username, one of their DIDs or a number they added with cli/addcallbacknumber.",
         live=True, group="calls"),
    _opt("callbackaccessnumber", parse_str, "",
         "The access number the callbackaccessnumber function tells users (empty: none).", live=True, group="calls"),
    _opt("nodename", parse_str, "",
         "This node's name (empty: the host name), recorded in its start line, CDRs, live calls and holds; "
         "unique among the nodes sharing a database.", group="storage"),
    _opt("nodedeadafter", parse_duration, "2m",
         "A node whose heartbeat (every 10 s) is older than this is dead: another node releases its held "
         "funds and ends its calls' records.", live=True, group="storage"),
    # Billing and storage (mizud's own).
    _opt("database", parse_database, "var/mizud.sqlite",
         "SQLite file path, or a postgresql:// DSN.", group="storage"),
    _opt("dbpoolsize", int_range(1, 200), "8",
         "PostgreSQL connections in the pool.", group="storage"),
    _opt("sqlitebatch", int_range(1, 10000), "256",
         "Most SQLite transactions grouped into one commit.", group="storage"),
    _opt("usercache", int_range(0, 10_000_000), "100000",
         "Users kept in the exact cache (by username and by id; 0 reads every user from the database).",
         group="storage"),
    _opt("defaultcurrency", parse_currency, "USD",
         "Currency of users created without one.", live=True, group="storage"),
    _opt("defaulttariff", int_range(0, 2**31 - 1), "0",
         "Tariff plan for users whose tariffid is 0.", live=True, group="storage"),
    _opt("bootstrapadmin", parse_bootstrap_admin, "",
         "username:password of an admin created at start if missing.", group="storage"),
    _opt("smscommands", parse_bool, "false",
         "Run an inbound SMS from a user's proven number whose text is balance, rating, charge, cb/callback "
         "or p2p as that user, answering by SMS. Off by default: SMS sender numbers can be forged on many "
         "routes, and the SMS then speaks (and calls, and is billed) for the number's owner.",
         live=True, group="calls"),
    _opt("backupdir", parse_str, "",
         "Directory of database backups (dbbackup writes there, dbrestore reads only there); empty: the "
         "backup functions are refused.", live=True, group="storage"),
    _opt("retainmessages", parse_duration, "90d",
         "Monthly maintenance deletes stored instant messages older than this (0: keep them).",
         live=True, group="storage"),
    _opt("retainsms", parse_duration, "0",
         "Monthly maintenance deletes finished SMS records older than this (0: keep them; they hold prices).",
         live=True, group="storage"),
    _opt("dailyreport", parse_bool, "false",
         "Mail the daily report (dailyreport) to adminemail after each daily maintenance.",
         live=True, group="storage"),
    _opt("logfile", parse_str, "",
         "File to append the log to, beside twistd's own log; empty for none.", group="storage"),
)

_BY_NAME: dict[str, Option] = {}
for _option in OPTIONS:
    for _name in (_option.name, *_option.aliases):
        _BY_NAME[_name] = _option


def option(name: str) -> Option:
    """Return the option called C{name} (or one of its aliases), case-insensitive."""
    try:
        return _BY_NAME[name.strip().lower()]
    except KeyError:
        raise ConfigError(name, "unknown option") from None


# -- sources ---------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One raw value from a source, with where it came from."""

    key: str
    raw: str
    where: str


def read_ini(path: str) -> list[Setting]:
    """Read the C{[global]} section of an ini file, keeping line numbers.

    Comments start with C{;} or C{#}.  A key outside C{[global]}, in any other
    section, or given twice, is an error.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(None, f"cannot read config file: {error}", path) from None
    settings: list[Setting] = []
    seen: dict[str, str] = {}
    section: str | None = None
    for number, line in enumerate(lines, 1):
        where = f"{path}:{number}"
        text = line.strip()
        if not text or text[0] in ";#":
            continue
        if text.startswith("["):
            if not text.endswith("]"):
                raise ConfigError(None, f"malformed section header {text!r}", where)
            section = text[1:-1].strip().lower()
            if section != "global":
                raise ConfigError(None, f"unknown section [{section}] (only [global])", where)
            continue
        key, sep, raw = text.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise ConfigError(None, f"expected key = value, got {text!r}", where)
        if section is None:
            raise ConfigError(key, "outside the [global] section", where)
        canonical = option(key).name if key in _BY_NAME else key
        if canonical in seen:
            raise ConfigError(key, f"given twice (first at {seen[canonical]})", where)
        seen[canonical] = where
        settings.append(Setting(key, raw, where))
    return settings


def parse_set(assignment: str) -> Setting:
    """Parse one C{--set key=value} argument."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(None, f"--set expects key=value, got {assignment!r}")
    return Setting(key.strip().lower(), raw, "--set")


# -- the frozen config -------------------------------------------------------------


class Config(Mapping[str, Any]):
    """Immutable, typed global configuration; read values as attributes or items."""

    def __init__(self, values: Mapping[str, Any], origins: Mapping[str, str]) -> None:
        self._values = MappingProxyType(dict(values))
        self.origins = MappingProxyType(dict(origins))
        # Plain attributes too: options are read on every API request, and
        # an instance attribute is much cheaper than __getattr__.
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self._frozen = True

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError("Config is immutable")
        object.__setattr__(self, name, value)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Config({dict(self._values)!r})"

    @property
    def engine(self) -> str:
        """C{"postgresql"} or C{"sqlite"}, from the database option."""
        return "postgresql" if "://" in self.database else "sqlite"


def build(settings: Iterable[Setting] = ()) -> Config:
    """Turn raw settings (later ones win) into a validated L{Config}."""
    raw: dict[str, Setting] = {}
    for setting in settings:
        try:
            opt = option(setting.key)
        except ConfigError:
            raise ConfigError(setting.key, "unknown option", setting.where) from None
        raw[opt.name] = setting
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for opt in OPTIONS:
        given = raw.get(opt.name)
        text = opt.default if given is None else given.raw
        try:
            values[opt.name] = opt.parse(text)
        except ValueError as error:
            where = given.where if given else "default"
            raise ConfigError(opt.name if given is None else given.key, str(error), where) from None
        origins[opt.name] = given.where if given else "default"
    return Config(values, origins)


def load(path: str | None = None, sets: Sequence[str] = ()) -> Config:
    """Read the ini file (if any), apply C{--set} overrides, and validate."""
    settings: list[Setting] = []
    if path:
        settings.extend(read_ini(path))
    settings.extend(parse_set(item) for item in sets)
    return build(settings)


@dataclass
class Settings:
    """The current configuration and the sources it was read from.

    L{reload} re-reads the sources.  Options declared C{live} take their new
    value at once; any other changed option is reported and keeps its old
    value until the next restart.
    """

    path: str | None = None
    sets: tuple[str, ...] = ()
    current: Config = field(init=False)

    def __post_init__(self) -> None:
        self.current = load(self.path, self.sets)

    def reload(self) -> tuple[list[str], list[str]]:
        """Re-read the sources; return (applied, needing restart) option names.

        Raises L{ConfigError} and keeps the current config if the sources are
        now invalid.
        """
        fresh = load(self.path, self.sets)
        applied: list[str] = []
        pending: list[str] = []
        values = dict(self.current)
        origins = dict(self.current.origins)
        for opt in OPTIONS:
            if fresh[opt.name] == self.current[opt.name]:
                continue
            if opt.live:
                values[opt.name] = fresh[opt.name]
                origins[opt.name] = fresh.origins[opt.name]
                applied.append(opt.name)
            else:
                pending.append(opt.name)
        self.current = Config(values, origins)
        return applied, pending


def sample_ini() -> str:
    """Return the documented sample config (etc/mizud.ini) with every option."""
    lines = [
        "; mizud sample configuration: every option with its default and meaning.",
        "; Keys are case-insensitive; aliases from the Mizu specs are accepted too.",
        "; Live options are re-read by the reload function without a restart.",
        "",
        "[global]",
    ]
    group = None
    for opt in OPTIONS:
        if opt.group != group:
            group = opt.group
            lines.extend(["", f"; --- {group} ---"])
        notes = []
        if opt.live:
            notes.append("live")
        if opt.aliases:
            notes.append("alias: " + ", ".join(opt.aliases))
        suffix = f" [{'; '.join(notes)}]" if notes else ""
        lines.append(f"; {opt.doc}{suffix}")
        lines.append(f";{opt.name} = {opt.default}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - regenerates etc/mizud.ini
    import sys

    sys.stdout.write(sample_ini())


def node_name(config: Config) -> str:
    """This node's name: the nodename option, else the host name."""
    import socket

    return config.nodename or socket.gethostname() or "mizud"
