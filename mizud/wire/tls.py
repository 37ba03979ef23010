"""TLS for the shared ports: the certificate, and the hand-off from the demux.

The certificate comes from the C{tlscert}/C{tlskey} PEM files; without
them a self-signed one (EC P-256, ten years, for this host name, localhost
and 127.0.0.1) is generated into C{var/mizud-tls.pem} at first start and
its SHA-256 fingerprint logged, so clients can pin it.  Only TLS 1.2 and
newer are offered.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from typing import Any

from twisted.internet import ssl
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from ..errors import StartupError

log = Logger()

GENERATED = os.path.join("var", "mizud-tls.pem")


def generate_self_signed(path: str) -> None:
    """Write a new self-signed certificate and its key (PEM) to C{path}, mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname()[:64] or "mizud")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(socket.gethostname() or "mizud"), x509.DNSName("localhost"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + certificate.public_bytes(serialization.Encoding.PEM)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)


class TlsProvider:
    """Loads (or first creates) the certificate once, when a TLS listener first needs it."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self._options: Any = None
        self.fingerprint = ""

    def options(self) -> Any:
        """The pyOpenSSL context options (TLS 1.2+)."""
        if self._options is None:
            cert_path, key_path = self.cert, self.key or self.cert
            if not cert_path:
                cert_path = key_path = GENERATED
                if not os.path.exists(GENERATED):
                    generate_self_signed(GENERATED)
                    log.info("generated a self-signed TLS certificate in {path}", path=GENERATED)
            try:
                with open(cert_path, "rb") as handle:
                    cert_pem = handle.read()
                with open(key_path, "rb") as handle:
                    key_pem = handle.read()
                private = ssl.PrivateCertificate.loadPEM(key_pem + b"\n" + cert_pem)
            except Exception as problem:
                raise StartupError(f"cannot load the TLS certificate or key: {problem}") from None
            self.fingerprint = private.digest("sha256").decode()
            log.info("TLS certificate {subject} SHA-256 {fingerprint}", subject=private.getSubject().commonName,
                     fingerprint=self.fingerprint)
            self._options = ssl.CertificateOptions(
                privateKey=private.privateKey.original, certificate=private.original,
                raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
                # Clients that offer ALPN (curl, browsers) get HTTP/1.1; with
                # no list at all this Twisted answers ALPN with an alert.
                acceptableProtocols=[b"http/1.1"],
            )
        return self._options

    def wrap(self, factory: Any) -> TLSMemoryBIOFactory:
        """A factory that terminates TLS and hands the plain bytes to C{factory}."""
        tls = TLSMemoryBIOFactory(self.options(), False, factory)
        tls.noisy = False
        return tls


class TlsHandOff:
    """The demux's TLS branch: terminate TLS, then demux the decrypted stream again."""

    def __init__(self, provider: TlsProvider, inner: Any) -> None:
        self.provider = provider
        self.inner = inner
        self._factory: TLSMemoryBIOFactory | None = None

    def buildProtocol(self, address: Any) -> Any:
        """A TLS protocol wrapping a fresh inner demux."""
        if self._factory is None:
            self._factory = self.provider.wrap(self.inner)
        return self._factory.buildProtocol(address)


class TlsPortFactory(Factory):
    """The factory of the TLS-only port (sslportmain): every connection starts with TLS."""

    noisy = False

    def __init__(self, hand_off: TlsHandOff) -> None:
        self.hand_off = hand_off

    def buildProtocol(self, addr: Any) -> Any:
        """TLS, then the demux."""
        return self.hand_off.buildProtocol(addr)
