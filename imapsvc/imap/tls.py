"""Client TLS options for IMAP connections (implicit TLS and STARTTLS).

Verification is the default: the server certificate must chain to the
platform trust store (or to the CA bundle in ``ca_file``) and must name
``hostname`` (checked by ``service_identity``). Turning verification off is an
explicit, logged choice for test rigs only.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional, cast

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


def load_ca_bundle(ca_file: str) -> Any:
    """Read every certificate of a PEM bundle into a trust root
    (``IOpenSSLTrustRoot``).

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

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
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


class SharedClientTLS:
    """``host -> client_tls_options(host, ...)``, built once per host and
    shared by every connection to it.

    Each options object holds its own OpenSSL context (trust store, session
    cache): one per folder cost about 23 KiB of RSS per connection (measured,
    ``docs/performance.md``); the connections themselves are created per
    socket from the shared context, as Twisted intends. Rebuilt when the CA
    file changes (its mtime and size), bounded to ``max_entries`` hosts.
    """

    def __init__(
        self, ca_file: Optional[str] = None, insecure: bool = False, max_entries: int = 1024
    ) -> None:
        self.ca_file = ca_file
        self.insecure = insecure
        self.max_entries = max(1, max_entries)
        self._cache: dict[tuple[str, object], IOpenSSLClientConnectionCreator] = {}

    def _ca_stamp(self) -> object:
        if not self.ca_file:
            return None
        try:
            st = os.stat(self.ca_file)
        except OSError:
            return None  # client_tls_options reports the missing file
        return (st.st_mtime_ns, st.st_size)

    def __call__(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        key = (hostname, self._ca_stamp())
        creator = self._cache.get(key)
        if creator is None:
            creator = client_tls_options(hostname, self.ca_file, self.insecure)
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[key] = creator
        return creator
