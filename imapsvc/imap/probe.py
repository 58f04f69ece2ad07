"""One-shot login for the admin "test connection" action: connect with the
provider's TLS settings, log in, log out. Errors come back in words."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.model import ProviderConfig


@defer.inlineCallbacks
def test_login(
    reactor: Any,
    provider: ProviderConfig,
    credentials: Any,
    tls_factory: Callable[[str], Any],
    timeout_s: float = 15.0,
    oauth_mechanism: str = "auto",
):
    """Fires with the server's sorted capabilities; fails with the error."""
    proto = FolderIMAPClient(reactor, timeout_s, inactivity_timeout=timeout_s * 2)
    endpoint: Any = TCP4ClientEndpoint(reactor, provider.host, provider.port, timeout=timeout_s)
    if provider.secure:
        endpoint = wrapClientTLS(tls_factory(provider.host), endpoint)
    elif not provider.allow_starttls:
        raise ValueError("provider allows neither implicit TLS nor STARTTLS: refused")
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
