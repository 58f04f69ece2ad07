"""One-shot login for the admin "test connection" action: connect with the
provider's TLS settings, log in, log out.

Its answer goes to whoever holds the admin token on behalf of a tenant, so a
failure is only ever one of a few generic classes (:data:`PROBE_ERRORS`),
never the raw error text: otherwise the probe is a port scanner for the
cluster network (which ports answer, which TLS names, which banners). The
detail goes to the log.
"""

from __future__ import annotations

from typing import Any, Callable, Generator, Optional

from twisted.internet import defer, error
from twisted.internet.endpoints import connectProtocol, wrapClientTLS
from twisted.logger import Logger

from imapsvc.core.netguard import AddressRefused, Allowlist
from imapsvc.imap import errors as E
from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.model import ProviderConfig

log = Logger(namespace="imapsvc.probe")

#: Every class a failed probe can report.
PROBE_ERRORS = (
    "address_refused",
    "connect_failed",
    "tls_failed",
    "auth_failed",
    "timeout",
    "protocol_error",
    "config_error",
)


class ProbeError(Exception):
    """A failed probe; ``str()`` is the generic class only."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def classify(err: BaseException) -> str:
    """The generic class of a probe failure."""
    if isinstance(err, ProbeError):
        return err.kind
    if isinstance(err, AddressRefused):
        return "address_refused"
    if isinstance(err, (defer.TimeoutError, defer.CancelledError, error.TimeoutError,
                        E.CommandTimeout)):
        return "timeout"
    if isinstance(err, E.AuthenticationFailed) or getattr(err, "auth_failure", False):
        return "auth_failed"
    if isinstance(err, (E.TLSRequired, E.CleartextRefused)):
        return "tls_failed"
    name = type(err).__module__ + "." + type(err).__name__
    if "SSL" in name or "ssl" in name.lower() or "VerificationError" in name:
        return "tls_failed"
    if isinstance(err, (error.ConnectError, error.DNSLookupError, error.ConnectionLost,
                        error.ConnectionDone, E.ConnectionGone)):
        return "connect_failed"
    if isinstance(err, (E.IMAPError, ValueError)):
        return "protocol_error"
    if getattr(err, "auth_failure", None) is False:  # credentials misconfigured (no key)
        return "config_error"
    return "connect_failed"


def test_login(
    reactor: Any,
    provider: ProviderConfig,
    credentials: Any,
    tls_factory: Callable[[str], Any],
    timeout_s: float = 15.0,
    allow: Optional[Allowlist] = None,
    oauth_mechanism: str = "auto",
) -> defer.Deferred[list[str]]:
    """Fires with the server's sorted capabilities; fails with
    :class:`ProbeError` (a generic class, the detail logged)."""

    def generic(failure: Any) -> Any:
        kind = classify(failure.value)
        log.info(
            "connection test of {tenant}/{provider} failed ({kind}): {err}",
            tenant=provider.tenant, provider=provider.provider_id, kind=kind,
            err=f"{type(failure.value).__name__}: {failure.value}"[:300],
        )
        raise ProbeError(kind)

    d = _login(reactor, provider, credentials, tls_factory, timeout_s, allow, oauth_mechanism)
    return d.addErrback(generic)


@defer.inlineCallbacks
def _login(
    reactor: Any,
    provider: Any,
    credentials: Any,
    tls_factory: Callable[[str], Any],
    timeout_s: float,
    allow: Optional[Allowlist],
    oauth_mechanism: str,
) -> Generator[defer.Deferred[Any], Any, list[str]]:
    from imapsvc.egress import checked_address, tcp_endpoint

    if not provider.secure and not provider.allow_starttls:
        raise ProbeError("config_error")  # neither implicit TLS nor STARTTLS: refused
    proto = FolderIMAPClient(reactor, timeout_s, inactivity_timeout=timeout_s * 2)
    resolving = checked_address(reactor, provider.host, provider.port, allow)
    resolving.addTimeout(timeout_s, reactor)
    address = yield resolving
    # The checked address, not the name: a second lookup could answer
    # differently (DNS rebinding). TLS still checks the name.
    endpoint: Any = tcp_endpoint(reactor, address, provider.port, timeout_s)
    if provider.secure:
        endpoint = wrapClientTLS(tls_factory(provider.host), endpoint)
    connected = connectProtocol(endpoint, proto)
    connected.addTimeout(timeout_s, reactor)
    yield connected
    try:
        greeted = proto.greeted
        greeted.addTimeout(timeout_s, reactor)
        yield greeted
        if not provider.secure:
            yield proto.start_tls(tls_factory(provider.host))
        creds = yield credentials.credentials(provider)
        caps = yield proto.authenticate_with(
            creds, oauth_mechanism=oauth_mechanism, host=provider.host, port=provider.port
        )
        try:
            yield proto.logout()
        except Exception:
            pass
        from imapsvc.imap.responses import capability_strings

        return capability_strings(caps)
    finally:
        if proto.transport is not None:
            proto.transport.loseConnection()
