"""The TLS module alone: pins, validity dates, unusable files (handshakes between real
services are in tests/service/test_tls.py)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509

from bitcoind_paychan.errors import PolicyError, TLSError
from bitcoind_paychan.transport.tls import ClientTLS, ServerTLS, fingerprint, validity
from tests.transport.certs import CertFactory


def test_a_fingerprint_is_sha256_of_the_der_and_accepted_as_openssl_prints_it(
        tmp_path: Path) -> None:
    issued = CertFactory(tmp_path).issue("server")
    pin = fingerprint(issued.der)
    digits = pin.removeprefix("sha256:")
    openssl_style = "SHA256:" + ":".join(digits[i:i + 2] for i in range(0, 64, 2)).upper()
    assert ClientTLS(fingerprint=openssl_style).fingerprint == pin
    ClientTLS(fingerprint=pin).check(issued.der, "peer")  # no error


@pytest.mark.parametrize("bad", ["ab" * 32, "sha1:" + "ab" * 20, "sha256:" + "ab" * 31,
                                 "sha256:" + "zz" * 32])
def test_a_malformed_fingerprint_names_the_format(bad: str) -> None:
    with pytest.raises(PolicyError, match="expected sha256: and 64 hex digits") as caught:
        ClientTLS(fingerprint=bad)
    assert caught.value.field == "fingerprint"


def test_validity_dates_are_read_from_the_certificate(tmp_path: Path) -> None:
    issued = CertFactory(tmp_path).issue("expired", days=(-30, -1))
    cert = x509.load_der_x509_certificate(issued.der)
    assert validity(issued.der) == (cert.not_valid_before_utc.replace(microsecond=0),
                                    cert.not_valid_after_utc.replace(microsecond=0))
    with pytest.raises(TLSError, match=r"certificate expired on .* the server must renew it"):
        issued.pin.check(issued.der, "peer")


def test_a_pinned_certificate_not_valid_yet_is_refused(tmp_path: Path) -> None:
    issued = CertFactory(tmp_path).issue("future", days=(2, 30))
    with pytest.raises(TLSError, match=r"not valid before .* clocks"):
        issued.pin.check(issued.der, "peer")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    issued.pin.check(issued.der, "peer", now=later)


def test_unusable_server_files_say_which_file_and_what_is_wrong(tmp_path: Path) -> None:
    certs = CertFactory(tmp_path)
    one, two = certs.issue("one"), certs.issue("two")
    assert one.server.context()  # a matching pair loads
    with pytest.raises(TLSError, match="the key does not belong to the certificate"):
        ServerTLS(one.cert_file, two.key_file).context()
    with pytest.raises(TLSError, match=r"absent\.crt: no such file; expected a PEM file"):
        ServerTLS(tmp_path / "absent.crt", one.key_file).context()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TLSError, match=r"junk\.pem .* unreadable"):
        ServerTLS(tmp_path / "junk.pem", one.key_file).context()
    with pytest.raises(TLSError, match="cannot load the CA file"):
        ClientTLS(ca_file=tmp_path / "junk.pem").context()
