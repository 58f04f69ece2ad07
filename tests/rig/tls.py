"""Throwaway TLS material for the test rig.

One private CA signs two server certificates: the right one (``localhost`` and
``127.0.0.1``) and a wrong one (``wrong.example``) so tests can prove that a
certificate for another host is refused even though its issuer is trusted.
Keys are EC P-256: fast to generate, and accepted by Dovecot's OpenSSL.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@attr.s(frozen=True, auto_attribs=True)
class TLSFiles:
    """Paths of the PEM files written by :func:`make_tls_files`."""

    directory: str
    ca_file: str
    server_cert: str
    server_key: str
    wrong_cert: str
    wrong_key: str

    def ca_pem(self) -> bytes:
        """:return: the CA certificate in PEM, for ``Certificate.loadPEM``."""
        with open(self.ca_file, "rb") as f:
            return f.read()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imapsvc test rig"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: str, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: str, cert: x509.Certificate) -> None:
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    common_name: str,
    san: list[x509.GeneralName],
    now: datetime.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_tls_files(directory: str | None = None) -> TLSFiles:
    """
    Create a CA, a ``localhost``/``127.0.0.1`` server certificate and a
    ``wrong.example`` certificate, all as PEM files.

    :param directory: where to write; a fresh temporary directory if ``None``.
    :return: the paths.
    """
    if directory is None:
        directory = tempfile.mkdtemp(prefix="imapsvc-tls-")
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("imapsvc test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    good, good_key = _leaf(
        ca_key,
        ca_name,
        "localhost",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        now,
    )
    wrong, wrong_key = _leaf(ca_key, ca_name, "wrong.example", [x509.DNSName("wrong.example")], now)

    files = TLSFiles(
        directory=directory,
        ca_file=os.path.join(directory, "ca.pem"),
        server_cert=os.path.join(directory, "server.pem"),
        server_key=os.path.join(directory, "server.key"),
        wrong_cert=os.path.join(directory, "wrong.pem"),
        wrong_key=os.path.join(directory, "wrong.key"),
    )
    _write_cert(files.ca_file, ca_cert)
    _write_cert(files.server_cert, good)
    _write_key(files.server_key, good_key)
    _write_cert(files.wrong_cert, wrong)
    _write_key(files.wrong_key, wrong_key)
    return files
