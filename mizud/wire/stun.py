"""STUN binding requests (RFC 5389): recognise one, answer with XOR-MAPPED-ADDRESS."""

from __future__ import annotations

import ipaddress
import struct

MAGIC_COOKIE = 0x2112A442
HEADER = 20
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
MAX_MESSAGE = 2048


def looks_like_stun(data: bytes) -> bool | None:
    """True/False once 8 bytes decide it; None while fewer have arrived.

    A STUN message starts with two zero bits, a length that is a multiple
    of 4, and the magic cookie at bytes 4 to 8.
    """
    if data and data[0] & 0xC0:
        return False
    if len(data) < 8:
        return None
    length: int = struct.unpack("!H", data[2:4])[0]
    cookie: int = struct.unpack("!I", data[4:8])[0]
    return cookie == MAGIC_COOKIE and length % 4 == 0 and length <= MAX_MESSAGE


def message_length(data: bytes) -> int:
    """The whole length of the STUN message starting at C{data} (header + attributes)."""
    length: int = struct.unpack("!H", data[2:4])[0]
    return HEADER + length


def binding_response(request: bytes, host: str, port: int) -> bytes | None:
    """The success response to a binding request from host:port, or None for anything else."""
    if len(request) < HEADER or struct.unpack("!H", request[0:2])[0] != BINDING_REQUEST:
        return None
    if struct.unpack("!I", request[4:8])[0] != MAGIC_COOKIE:
        return None
    transaction = request[8:20]
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    xport = port ^ (MAGIC_COOKIE >> 16)
    if isinstance(address, ipaddress.IPv4Address):
        value = struct.pack("!BBH", 0, 0x01, xport) + struct.pack("!I", int(address) ^ MAGIC_COOKIE)
    else:
        mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + transaction, "big")
        value = struct.pack("!BBH", 0, 0x02, xport) + (int(address) ^ mask).to_bytes(16, "big")
    software = b"mizud"
    attributes = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    attributes += struct.pack("!HH", SOFTWARE, len(software)) + software + b"\0" * (-len(software) % 4)
    return struct.pack("!HHI", BINDING_SUCCESS, len(attributes), MAGIC_COOKIE) + transaction + attributes


def parse_xor_mapped_address(response: bytes) -> tuple[str, int] | None:
    """(host, port) from a binding response's XOR-MAPPED-ADDRESS (used by tests and clients)."""
    if len(response) < HEADER:
        return None
    transaction = response[8:20]
    position = HEADER
    while position + 4 <= len(response):
        kind, length = struct.unpack("!HH", response[position:position + 4])
        value = response[position + 4:position + 4 + length]
        if kind == XOR_MAPPED_ADDRESS:
            family = value[1]
            port = struct.unpack("!H", value[2:4])[0] ^ (MAGIC_COOKIE >> 16)
            if family == 0x01:
                return str(ipaddress.IPv4Address(struct.unpack("!I", value[4:8])[0] ^ MAGIC_COOKIE)), port
            mask = int.from_bytes(struct.pack("!I", MAGIC_COOKIE) + transaction, "big")
            return str(ipaddress.IPv6Address(int.from_bytes(value[4:20], "big") ^ mask)), port
        position += 4 + length + (-length % 4)
    return None
