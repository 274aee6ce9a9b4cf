"""Optional TLS for the payment listeners and the client: contexts, pins and clear errors.

Off by default: bitcoinj peers speak plain TCP. A server's TLS is its certificate chain and
key (PEM files). A client verifies the server against a CA file (and the host name it
dials), or against a pinned certificate fingerprint: `sha256:` followed by the SHA-256 of
the certificate's DER encoding in hex, colons allowed (as
`openssl x509 -noout -fingerprint -sha256 -in cert.pem` prints it). Either way an expired
certificate is refused.

The server's side of the handshake is `tlsdoor.TLSDoor`'s. Every failure is one TLSError whose
message says what went wrong and what to do.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from bitcoind_paychan.channel import messages
from bitcoind_paychan.errors import ErrorCode, PolicyError, TLSError
from bitcoind_paychan.transport.stream import MessageStream
from bitcoind_paychan.wire.codec import encode_message
from bitcoind_paychan.wire.framing import encode_frame

FINGERPRINT_FORMAT = "sha256: and 64 hex digits, colons allowed (sha256:AB:CD:...)"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def fingerprint(der: bytes) -> str:
    """The pin of a DER certificate, as `ClientTLS.fingerprint` takes it."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class ServerTLS:
    """A listener's certificate chain (leaf first) and private key, PEM files."""

    cert_file: Path
    key_file: Path

    def context(self) -> ssl.SSLContext:
        """The server context; TLSError naming the file if either cannot be used."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for path in (self.cert_file, self.key_file):
            if not path.is_file():
                raise TLSError(f"{path}: no such file; expected a PEM file")
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            problem = ("the key does not belong to the certificate"
                       if "KEY_VALUES_MISMATCH" in str(exc) else f"unreadable ({exc.reason})")
            raise TLSError(f"{self.cert_file} with key {self.key_file}: {problem}; expected "
                           "a PEM certificate chain and its PEM private key") from exc
        except OSError as exc:
            raise TLSError(f"{self.cert_file} / {self.key_file}: {exc.strerror or exc}") from exc
        return ctx


@dataclass(frozen=True)
class ClientTLS:
    """How a client trusts one server: a CA file, a pinned fingerprint, or (neither) the
    system's CAs. With a CA the server's certificate must name the host dialled."""

    ca_file: Path | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.fingerprint is not None:
            value = self.fingerprint.strip().lower()
            digits = value.removeprefix("sha256:").replace(":", "")
            if not value.startswith("sha256:") or not _HEX64.fullmatch(digits):
                raise PolicyError("fingerprint",
                                  f"found {self.fingerprint!r}, expected {FINGERPRINT_FORMAT}")
            object.__setattr__(self, "fingerprint", "sha256:" + digits)

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.fingerprint is not None and self.ca_file is None:
            ctx.check_hostname = False  # the pin names the certificate itself
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise TLSError(f"{self.ca_file}: cannot load the CA file "
                               f"({getattr(exc, 'strerror', None) or exc}); expected PEM "
                               "certificates") from exc
        return ctx

    def check(self, der: bytes | None, peer: str, now: datetime.datetime | None = None) -> None:
        """After the handshake: the pinned fingerprint, and the validity dates OpenSSL did
        not check (a pin alone skips its verification)."""
        if der is None:
            raise TLSError(f"{peer} sent no certificate; expected its TLS certificate")
        if self.fingerprint is not None and fingerprint(der) != self.fingerprint:
            raise TLSError(
                f"{peer} presented a certificate with fingerprint {fingerprint(der)}, not the "
                f"pinned {self.fingerprint}: if the server's certificate was replaced, pin the "
                "new fingerprint; otherwise someone else answers at that address")
        not_before, not_after = validity(der)
        now = now or datetime.datetime.now(datetime.UTC)
        if now > not_after:
            raise TLSError(f"{peer}'s certificate expired on {not_after:%Y-%m-%d %H:%M} UTC: "
                           "the server must renew it (then pin the new fingerprint)")
        if now < not_before:
            raise TLSError(f"{peer}'s certificate is not valid before "
                           f"{not_before:%Y-%m-%d %H:%M} UTC: check the server's and this "
                           "machine's clocks")


async def connect_tls(host: str, port: int, tls: ClientTLS, timeout: float | None
                      ) -> MessageStream:
    """Open a TLS connection to host:port and verify the server; TLSError if it fails the
    checks, OSError/TimeoutError if it cannot be reached."""
    peer = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls.context(), server_hostname=host,
                ssl_handshake_timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"connecting to {peer} with TLS timed out after {timeout} s"
                           ) from None
    except (ssl.SSLError, ConnectionError) as exc:
        raise handshake_failed(exc, peer, tls) from exc
    try:
        tls.check(writer.get_extra_info("ssl_object").getpeercert(binary_form=True), peer)
    except TLSError as exc:  # tell the server why, in the protocol's words, then hang up
        writer.write(encode_frame(refusal(exc)))
        writer.close()
        raise
    return MessageStream(reader, writer)


def refusal(exc: TLSError) -> bytes:
    """The ERROR message (encoded) that tells a server why its certificate was refused."""
    return encode_message(messages.error(
        ErrorCode.OTHER, f"the client refused the server's certificate: {exc}"))


def handshake_failed(exc: ssl.SSLError | ConnectionError, peer: str, tls: ClientTLS
                     ) -> TLSError:
    """The client's error for a handshake that failed with `exc`."""
    if isinstance(exc, ssl.SSLError):
        return TLSError(f"TLS with {peer} failed: {client_reason(exc, tls)}")
    return TLSError(f"{peer} hung up during the TLS handshake: it may not speak TLS (a plain "
                    "listener, as bitcoinj's); connect without TLS, or enable TLS on the "
                    "server")


def client_reason(exc: ssl.SSLError, tls: ClientTLS) -> str:
    """What a failed handshake means for the client, and what to do."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, detail = exc.verify_code, exc.verify_message
        trusted = f"the CA in {tls.ca_file}" if tls.ca_file else "the system's CAs"
        if code == 10:
            return "its certificate has expired; the server must renew it"
        if code == 9:
            return "its certificate is not valid yet; check the server's and this machine's clocks"
        if code in (62, 64):
            return (f"its certificate does not name this host ({detail}); dial the name in "
                    "the certificate, or have the server's certificate name this one")
        return (f"its certificate is not signed by {trusted} ({detail}); give the CA that "
                "signed it (ca_file) or pin its fingerprint")
    if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return ("the server does not speak TLS (a plain TCP listener, as bitcoinj's): connect "
                "without TLS, or enable TLS on the server")
    return f"{exc.reason or exc}; check the server's TLS settings"


def validity(der: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    """(notBefore, notAfter) of a DER X.509 certificate, read from its TBSCertificate."""
    try:
        tbs = _children(_children(der)[0][1])[0][1]  # Certificate → tbsCertificate
        fields = _children(tbs)
        if fields[0][0] == 0xA0:  # [0] version
            fields = fields[1:]
        times = _children(fields[3][1])  # serial, signature, issuer, validity
        return _time(*times[0]), _time(*times[1])
    except (IndexError, ValueError) as exc:
        raise TLSError(f"the peer's certificate cannot be read ({exc})") from exc


def _children(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) items of a DER string of TLVs (definite lengths only)."""
    items, pos = [], 0
    while pos < len(data):
        tag, size, pos = data[pos], data[pos + 1], pos + 2
        if size & 0x80:
            count = size & 0x7F
            size, pos = int.from_bytes(data[pos:pos + count], "big"), pos + count
        if pos + size > len(data):
            raise ValueError("truncated DER")
        items.append((tag, data[pos:pos + size]))
        pos += size
    return items


def _time(tag: int, value: bytes) -> datetime.datetime:
    text = value.decode("ascii")
    shape = {0x17: "%y%m%d%H%M%SZ", 0x18: "%Y%m%d%H%M%SZ"}.get(tag)
    if shape is None:
        raise ValueError(f"not a time (tag {tag:#x})")
    return datetime.datetime.strptime(text, shape).replace(tzinfo=datetime.UTC)
