"""Test certificates made on the spot: a CA, server certificates it signs (for given host
names, over given dates), and self-signed ones."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bitcoind_paychan.transport.tls import ClientTLS, ServerTLS, fingerprint

DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, written as PEM files."""

    cert_file: Path
    key_file: Path
    der: bytes

    @property
    def server(self) -> ServerTLS:
        return ServerTLS(self.cert_file, self.key_file)

    @property
    def pin(self) -> ClientTLS:
        return ClientTLS(fingerprint=fingerprint(self.der))

    def trusted(self) -> ClientTLS:
        """Trust this certificate as a CA (what a client does with a CA file)."""
        return ClientTLS(ca_file=self.cert_file)


class CertFactory:
    """Makes certificates in `folder`; `ca` signs the issued ones."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "paychan test CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(self._ca_name)
                .issuer_name(self._ca_name).public_key(self._ca_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._ca_key, hashes.SHA256()))
        self.ca = self._write("ca", cert, self._ca_key)

    def issue(self, name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), *,
              days: tuple[int, int] = (-1, 30), self_signed: bool = False) -> Issued:
        """A server certificate for `hosts`, valid from/to `days` relative to today."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        issuer, signer = (subject, key) if self_signed else (self._ca_name, self._ca_key)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now + days[0] * DAY).not_valid_after(now + days[1] * DAY)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .sign(signer, hashes.SHA256()))
        return self._write(name, cert, key)

    def _write(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
               ) -> Issued:
        cert_file, key_file = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_file.chmod(0o600)
        return Issued(cert_file, key_file, cert.public_bytes(serialization.Encoding.DER))
