"""Client TLS options for IMAP connections (implicit TLS and STARTTLS).

Verification is the default: the server certificate must chain to the
platform trust store (or to the CA bundle in ``ca_file``) and must name
``hostname`` (checked by ``service_identity``). Turning verification off is an
explicit, logged choice for test rigs only.
"""

from __future__ import annotations

import re
from typing import Optional, cast

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def load_ca_bundle(ca_file: str):
    """Read every certificate of a PEM bundle into a trust root.

    :raises ValueError: when the file holds no certificate.
    """
    with open(ca_file, "rb") as handle:
        data = handle.read()
    pems = _PEM_CERT.findall(data)
    if not pems:
        raise ValueError(f"no PEM certificate in CA file {ca_file!r}")
    return trustRootFromCertificates([Certificate.loadPEM(pem) for pem in pems])


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """Encrypts but verifies nothing (still sends SNI). Only ever built by
    :func:`client_tls_options` with ``insecure=True``."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname.encode("idna")
        self._options = CertificateOptions(verify=False)

    def clientConnectionForTLS(self, tlsProtocol):
        context = self._options.getContext()
        connection = SSL.Connection(context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self._hostname)
        return connection


def client_tls_options(
    hostname: str, ca_file: Optional[str] = None, insecure: bool = False
) -> IOpenSSLClientConnectionCreator:
    """Build the TLS connection creator for one IMAP server.

    :param hostname: the name the certificate must carry (also sent as SNI).
    :param ca_file: a PEM bundle to trust instead of the platform store.
    :param insecure: skip all verification (logged at warning level every
        time it is used); never for production.
    :rtype: ``IOpenSSLClientConnectionCreator``, for ``wrapClientTLS`` (implicit
        TLS) or :meth:`FolderIMAPClient.start_tls`.
    """
    if insecure:
        log.warn(
            "TLS certificate verification DISABLED for {hostname}", hostname=hostname
        )
        return cast(IOpenSSLClientConnectionCreator, _UnverifiedClientTLS(hostname))
    if ca_file:
        return optionsForClientTLS(hostname, trustRoot=load_ca_bundle(ca_file))
    return optionsForClientTLS(hostname)
