"""Authentication primitives, exactly as the specs define them.

authmd5, full form (spec, "Authentication"):
    "authv3_" + MD5(MD5("tU29m" + authid + authpwd + authsalt1) + authsalt2 + serversalt + nonce)
authmd5, simplified form:
    MD5("ck5Gp" + authid + authpwd + serversalt + authsalt1)
old HTTP interface md5auth:
    MD5("rd58s:" + username + ":" + password + ":" + salt)   (also spelled "rD58s")
web portal md5:
    MD5("C8y5:" + username + ":" + password + ":" + salt)

MD5 values are lower-case hex and compared case-insensitively in constant
time.  L{Trust} classifies source addresses (loopback, LAN, trusted lists)
under the C{allowtrustedip} and C{trustlanip} options.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from typing import Iterable

from ..config import Config, IPNetwork


def md5hex(text: str) -> str:
    """Lower-case hex MD5 of the UTF-8 text."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def authmd5_full(authid: str, password: str, salt1: str, salt2: str, serversalt: str, nonce: str) -> str:
    """The spec's full authmd5, with its C{authv3_} prefix."""
    inner = md5hex("tU29m" + authid + password + salt1)
    return "authv3_" + md5hex(inner + salt2 + serversalt + nonce)


def authmd5_simple(authid: str, password: str, serversalt: str, salt1: str) -> str:
    """The spec's simplified authmd5 (no nonce)."""
    return md5hex("ck5Gp" + authid + password + serversalt + salt1)


def legacy_md5(username: str, password: str, salt: str, prefix: str = "rd58s") -> str:
    """The old HTTP interface's md5auth."""
    return md5hex(f"{prefix}:{username}:{password}:{salt}")


def portal_md5(username: str, password: str, salt: str) -> str:
    """The web portal's auto-login md5."""
    return md5hex(f"C8y5:{username}:{password}:{salt}")


def same(given: str, expected: str) -> bool:
    """Constant-time, case-insensitive comparison of two secrets."""
    return hmac.compare_digest(given.strip().lower().encode("utf-8"), expected.lower().encode("utf-8"))


def secret_equal(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets (case-sensitive)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address C{text} names (an IPv4-mapped IPv6 address as IPv4), or None; remembered for the most
    recent sources (addresses are immutable, and a request's source is looked at several times)."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def in_networks(text: str, networks: Iterable[IPNetwork]) -> bool:
    """Whether the address C{text} lies in any of C{networks}."""
    address = _address(text)
    return address is not None and any(address in network for network in networks)


def is_loopback(text: str) -> bool:
    """127.0.0.0/8 or ::1."""
    address = _address(text)
    return address is not None and address.is_loopback


#: LAN ranges: RFC 1918, link-local, IPv6 unique-local and link-local.  Not
#: Python's wider is_private, which also counts documentation and other
#: special ranges that are no operator's LAN.
LAN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10")
)


def is_private(text: str) -> bool:
    """A private (LAN) or link-local address."""
    return in_networks(text, LAN_NETWORKS)


class Trust:
    """Which source addresses are trusted, from the current config.

    allowtrustedip: 0 none; 1 this machine only; 2 this machine and private
    addresses; 3 (default) this machine, private addresses unless trustlanip
    is false, and trustediplist; 4 as 3 (and the console too).
    """

    def __init__(self, config: Config) -> None:
        self.config = config

    def trusted(self, source: str, extra: Iterable[IPNetwork] = ()) -> bool:
        """Whether requests from C{source} are from a trusted address (C{extra}: more trusted networks,
        such as the old interface's httpapiallowedip2, counted as trustediplist is)."""
        mode = self.config.allowtrustedip
        if mode == 0:
            return False
        if is_loopback(source):
            return True
        if mode == 1:
            return False
        if mode == 2:
            return is_private(source)
        if self.config.trustlanip and is_private(source):
            return True
        return in_networks(source, self.config.trustediplist) or in_networks(source, extra)

    def ip_allowed(self, source: str, extra: Iterable[IPNetwork] = ()) -> bool:
        """The req_ip check: apiv2ipauth, or (when empty) trusted addresses."""
        if self.config.apiv2ipauth:
            return in_networks(source, self.config.apiv2ipauth) or in_networks(source, extra) or is_loopback(source)
        return self.trusted(source, extra)
