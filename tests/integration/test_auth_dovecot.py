"""Logins against the real Dovecot of tests/rig: XOAUTH2 and OAUTHBEARER
(RFC 7628, with host/port and the error-challenge answer), the
IMAP_OAUTH_AUTH_MECHANISM choice, a wrong password counted towards the
auto-pause, and a refused access token refreshed once before it counts."""

from __future__ import annotations

import uuid

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from imapsvc import folder_state as S
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.errors import AuthenticationFailed
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import Credentials, Limits
from imapsvc.store.memory import MemoryStore
from imapsvc.supervisor import Supervisor
from tests.folder_helpers import recording_pipeline
from tests.integration.test_folder_dovecot import wait_for
from tests.integration.test_protocol_dovecot import _TestClient
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user

TIMEOUT = 20


def new_token() -> str:
    # Real access tokens are long: Twisted's own AUTHENTICATE would wrap them.
    return "tok-" + uuid.uuid4().hex + "x" * 1200


class ProtocolTests(TestCase):
    timeout = 60

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("auth"))

    @defer.inlineCallbacks
    def open(self):
        from twisted.internet.endpoints import (
            TCP4ClientEndpoint,
            connectProtocol,
            wrapClientTLS,
        )

        client = _TestClient(reactor, command_timeout=TIMEOUT, inactivity_timeout=300)
        endpoint = wrapClientTLS(
            client_tls_options("localhost", ca_file=self.dovecot.ca_file),
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.dovecot.ports.imaps, timeout=TIMEOUT),
        )
        yield connectProtocol(endpoint, client)
        self.addCleanup(self._close, client)
        caps = yield client.greeted.addTimeout(TIMEOUT, reactor)
        return client, caps

    def _close(self, client):
        if not client.lost.called:
            client.transport.abortConnection()
        return client.lost

    def login(self, client, token, setting):
        return client.authenticate_with(
            Credentials("xoauth2", self.user, token),
            oauth_mechanism=setting, host="localhost", port=self.dovecot.ports.imaps,
        )

    @defer.inlineCallbacks
    def test_oauthbearer_good_token_with_host_and_port(self):
        token = new_token()
        self.dovecot.introspection.add_token(token, self.user)
        client, caps = yield self.open()
        self.assertIn(b"OAUTHBEARER", caps[b"AUTH"])
        after = yield self.login(client, token, "oauthbearer")
        self.assertEqual(client.auth_mechanism, "oauthbearer")
        self.assertIn(b"IDLE", after)
        info = yield client.examine_folder("INBOX")
        self.assertGreater(info["uidvalidity"], 0)

    @defer.inlineCallbacks
    def test_oauthbearer_refused_token_is_an_authentication_failure(self):
        # Dovecot answers the bad token with an error challenge; the client's
        # %x01 ends the exchange and the server says NO [AUTHENTICATIONFAILED].
        for token, active in (("never-issued", None), (new_token(), False)):
            if active is not None:
                self.dovecot.introspection.add_token(token, self.user, active=active)
            client, _ = yield self.open()
            with self.assertRaises(AuthenticationFailed) as caught:
                yield self.login(client, token, "oauthbearer")
            self.assertEqual(caught.exception.code, "AUTHENTICATIONFAILED")
            self.assertNotIn(token, str(caught.exception))

    @defer.inlineCallbacks
    def test_auto_takes_xoauth2_when_both_are_offered(self):
        token = new_token()
        self.dovecot.introspection.add_token(token, self.user)
        client, caps = yield self.open()
        self.assertIn(b"XOAUTH2", caps[b"AUTH"])
        yield self.login(client, token, "auto")
        self.assertEqual(client.auth_mechanism, "xoauth2")

    @defer.inlineCallbacks
    def test_auto_takes_oauthbearer_when_xoauth2_is_not_offered(self):
        token = new_token()
        self.dovecot.introspection.add_token(token, self.user)
        client, caps = yield self.open()
        # As a server that offers only OAUTHBEARER would advertise itself.
        client.capabilities[b"AUTH"] = [m for m in caps[b"AUTH"] if m != b"XOAUTH2"]
        yield self.login(client, token, "auto")
        self.assertEqual(client.auth_mechanism, "oauthbearer")

    @defer.inlineCallbacks
    def test_xoauth2_refused_token(self):
        client, _ = yield self.open()
        with self.assertRaises(AuthenticationFailed) as caught:
            yield self.login(client, "never-issued", "xoauth2")
        self.assertEqual(caught.exception.code, "AUTHENTICATIONFAILED")


class TokenSource:
    """OAuth2 credentials: ``tokens`` in order, the next one on a forced
    refresh."""

    def __init__(self, user, tokens):
        self.user = user
        self.tokens = list(tokens)
        self.calls: list[bool] = []

    def credentials(self, provider, force_refresh=False):
        self.calls.append(force_refresh)
        if force_refresh and len(self.tokens) > 1:
            self.tokens.pop(0)
        return defer.succeed(Credentials("xoauth2", self.user, self.tokens[0]))


class PasswordSource:
    def __init__(self, user, password):
        self.user, self.password = user, password

    def credentials(self, provider, force_refresh=False):
        return defer.succeed(Credentials("password", self.user, self.password))


class SupervisedTests(TestCase):
    """Supervisor + real FolderService + memory store against Dovecot."""

    timeout = 120

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("sup"))
        self.store = MemoryStore(reactor)
        self.folders: list[FolderService] = []

    def supervise(self, credentials, auth_type="password", mechanism="auto"):
        self.store.add_provider(
            tenant="t1", provider_id="p1", mailbox=self.user, username=self.user,
            host="localhost", port=self.dovecot.ports.imaps, auth_type=auth_type,
        )
        options = FolderOptions(
            startup_stagger_ms=0, reconnect_base_ms=100, reconnect_max_ms=500,
            oauth_auth_mechanism=mechanism,
        )

        def make_folder(provider, folder, hooks):
            svc = FolderService(
                provider, folder, reactor, self.store, recording_pipeline(self.store, reactor,
                                                                          Limits()), credentials,
                "w1", options, hooks=hooks,
                tls_factory=lambda host: client_tls_options(host, ca_file=self.dovecot.ca_file),
            )
            self.folders.append(svc)
            return svc

        sup = Supervisor(self.store, reactor, "w1", make_folder, refresh_s=3600,
                         auth_pause_after=3)
        sup.startService()
        self.addCleanup(sup.stopService)
        return sup

    def row(self):
        return self.store.provider_row("t1", "p1")

    @defer.inlineCallbacks
    def test_wrong_password_counts_once(self):
        self.supervise(PasswordSource(self.user, "wrong-" + DEFAULT_PASSWORD))
        yield wait_for(lambda: self.row()["inbound_auth_failure_count"] == 1, timeout=15)
        self.assertEqual(self.row()["inbound_auth_failure_code"], "AUTHENTICATIONFAILED")
        self.assertEqual(self.folders[-1].state, S.NEEDS_REAUTH)
        # Provider status writes are coalesced (at most one every 2 s).
        yield wait_for(lambda: self.row()["status"] == "error", timeout=5)
        self.assertIn("AUTHENTICATIONFAILED", self.row()["last_error"])
        self.assertIsNone(self.row()["inbound_paused_at"])

    @defer.inlineCallbacks
    def test_refused_token_is_refreshed_once_and_not_counted(self):
        good = new_token()
        self.dovecot.introspection.add_token(good, self.user)
        source = TokenSource(self.user, ["revoked-" + uuid.uuid4().hex, good])
        self.supervise(source, auth_type="oauth2")
        yield wait_for(lambda: self.folders and self.folders[-1].state == S.IDLING, timeout=15)
        self.assertEqual(source.calls, [False, True])
        self.assertEqual(self.row()["inbound_auth_failure_count"], 0)
        yield wait_for(lambda: self.row()["status"] == "connected", timeout=5)
        self.assertEqual(self.folders[-1].reconnects["token_refused"], 1)

    @defer.inlineCallbacks
    def test_token_refused_twice_counts_once(self):
        source = TokenSource(self.user, ["bad-1", "bad-2"])
        self.supervise(source, auth_type="oauth2", mechanism="oauthbearer")
        yield wait_for(lambda: self.row()["inbound_auth_failure_count"] == 1, timeout=20)
        self.assertEqual(source.calls, [False, True])
        self.assertEqual(self.folders[-1].state, S.NEEDS_REAUTH)

    @defer.inlineCallbacks
    def test_oauthbearer_folder_idles(self):
        good = new_token()
        self.dovecot.introspection.add_token(good, self.user)
        self.supervise(TokenSource(self.user, [good]), auth_type="oauth2",
                       mechanism="oauthbearer")
        yield wait_for(lambda: self.folders and self.folders[-1].state == S.IDLING, timeout=15)
        yield wait_for(lambda: self.row()["status"] == "connected", timeout=5)
        self.assertIsNone(self.row()["last_error"])


class ConnectionTestTests(TestCase):
    """The admin test-connection login honours IMAP_OAUTH_AUTH_MECHANISM."""

    timeout = 60

    @defer.inlineCallbacks
    def test_oauthbearer_test_login(self):
        from imapsvc.imap.probe import ProbeError, test_login
        from imapsvc.model import ProviderConfig

        dovecot = get_dovecot()
        user = dovecot.add_user(unique_user("probe"))
        token = new_token()
        dovecot.introspection.add_token(token, user)
        provider = ProviderConfig(
            tenant="t1", provider_id="p1", provider_name="x", mailbox=user,
            host="localhost", port=dovecot.ports.imaps, username=user, auth_type="oauth2",
        )
        caps = yield test_login(
            reactor, provider, TokenSource(user, [token]),
            lambda host: client_tls_options(host, ca_file=dovecot.ca_file),
            timeout_s=TIMEOUT, oauth_mechanism="oauthbearer",
        )
        self.assertIn("IDLE", caps)
        # A refused token is reported as the generic class only (no server text).
        with self.assertRaises(ProbeError) as refused:
            yield test_login(
                reactor, provider, TokenSource(user, ["bad"]),
                lambda host: client_tls_options(host, ca_file=dovecot.ca_file),
                timeout_s=TIMEOUT, oauth_mechanism="oauthbearer",
            )
        self.assertEqual(refused.exception.kind, "auth_failed")
        # test_login closes without waiting for the TLS close to finish.
        port = dovecot.ports.imaps

        def closed():
            return not [c for c in reactor.getReaders() + reactor.getWriters()
                        if getattr(c, "addr", (None, None))[1] == port]

        yield wait_for(closed, timeout=10)
