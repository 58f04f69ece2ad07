"""Which login failures count towards the auto-pause, and the OAuth2 forced
refresh: a refused access token gets one refresh and one retry before it
counts. FolderService on the scripted fakes of test_folder, fake clock."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.error import ConnectError
from twisted.trial.unittest import SynchronousTestCase

from imapsvc import folder_state as S
from imapsvc.imap.errors import (
    AuthenticationFailed,
    AuthenticationUnavailable,
    CommandTimeout,
    MechanismUnsupported,
    Throttled,
    TLSRequired,
)
from imapsvc.model import Credentials
from tests.unit import test_folder as tf
from tests.unit.test_folder import Rig


def refused(code="AUTHENTICATIONFAILED"):
    return AuthenticationFailed(code, "Authentication failed.")


class FakeRefreshingCredentials:
    """XOAUTH2 tokens: ``force_refresh`` hands out a new one (or fails with
    ``refresh_error``)."""

    def __init__(self):
        self.token = 1
        self.calls: list[bool] = []
        self.refresh_error: list[Exception] = []

    def credentials(self, provider, force_refresh=False):
        self.calls.append(force_refresh)
        if force_refresh:
            if self.refresh_error:
                return defer.fail(self.refresh_error.pop(0))
            self.token += 1
        return defer.succeed(Credentials("xoauth2", provider.username, f"token-{self.token}"))

    def token_expiry(self, provider):
        return None


class NoRefreshToken(Exception):
    auth_failure = True
    code = "missing_credentials"


class Base(SynchronousTestCase):
    def rig(self, oauth=True, **kw):
        rig = Rig(**kw)
        if oauth:
            rig.creds = FakeRefreshingCredentials()
            rig.svc.credentials = rig.creds
        self.addCleanup(tf.FolderServiceTests._stop, self, rig)
        return rig

    def again(self, rig, delay=0.0):
        """The next connection attempt after ``delay`` succeeds and greets."""
        return rig.reconnect_after(delay)

    def counted(self, rig):
        return [e for e in rig.hooks.events if e[0] == "auth_failed"]


class ForcedRefreshTests(Base):
    def test_refusal_refreshes_once_retries_then_counts(self):
        r = self.rig()
        r.server.auth_error = refused()
        r.start()
        # First refusal: not counted, reconnect at once with a forced refresh.
        self.assertEqual(self.counted(r), [])
        self.assertEqual(r.svc.state, S.BACKOFF)
        self.assertEqual(r.svc.history[-1].reason,
                         "access token refused: refreshing it once and retrying")
        self.assertEqual(r.creds.calls, [False])
        self.again(r, 0)
        self.assertEqual(r.creds.calls, [False, True])
        self.assertEqual(r.server.logins[-1][0].secret, "token-2")
        # Second refusal: counted, once, and no further attempt.
        self.assertEqual(self.counted(r), [("auth_failed", "AUTHENTICATIONFAILED")])
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)
        calls = r.factory.connect_calls
        r.reactor.advance(24 * 3600)
        self.assertEqual(r.factory.connect_calls, calls)
        self.assertEqual(len(r.server.logins), 2)
        self.assertEqual(r.svc.reconnects["token_refused"], 1)

    def test_retry_succeeds_nothing_counted_and_next_refusal_retries_again(self):
        r = self.rig()
        r.server.auth_errors = [refused()]
        r.start()
        self.again(r, 0)
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(self.counted(r), [])
        self.assertEqual(r.server.logins[-1][0].secret, "token-2")
        # Later the token is revoked again: again one refresh before counting.
        r.server.auth_errors = [refused()]
        r.proto.transport.loseConnection()
        # ordinary back-off 2 s * (1 - 0.5 * 0.5), + the lost session's
        # spread over the stagger window (2 s * 0.5)
        self.again(r, 2.5)
        self.assertEqual(self.counted(r), [])
        self.again(r, 0)
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(r.creds.calls, [False, True, False, True])

    def test_plain_no_is_a_refusal_too(self):
        r = self.rig()
        r.server.auth_error = refused(code=None)
        r.start()
        self.assertEqual(self.counted(r), [])
        self.again(r, 0)
        self.assertEqual(self.counted(r), [("auth_failed", "AUTHENTICATIONFAILED")])

    def test_no_refresh_token_the_refusal_counts(self):
        r = self.rig()
        r.server.auth_error = refused()
        r.creds.refresh_error = [NoRefreshToken("no refresh token")]
        r.start()
        self.again(r, 0)
        # No second login was possible; the server's refusal counts.
        self.assertEqual(len(r.server.logins), 1)
        self.assertEqual(self.counted(r), [("auth_failed", "AUTHENTICATIONFAILED")])
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)

    def test_refresh_unreachable_is_retried_not_counted(self):
        r = self.rig()
        r.server.auth_errors = [refused()]
        r.creds.refresh_error = [ConnectError("token endpoint down")]
        r.start()
        self.again(r, 0)
        self.assertEqual(self.counted(r), [])
        self.assertEqual(r.svc.state, S.BACKOFF)
        # The next attempt (after the back-off) forces the refresh again.
        self.again(r, 60)
        self.assertEqual(r.creds.calls, [False, True, True])
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(self.counted(r), [])

    def test_password_refusal_counts_at_once(self):
        r = self.rig(oauth=False)
        r.server.auth_error = refused()
        r.start()
        self.assertEqual(self.counted(r), [("auth_failed", "AUTHENTICATIONFAILED")])
        self.assertEqual(r.creds.calls, 1)

    def test_login_gets_mechanism_setting_host_and_port(self):
        import attr

        from imapsvc.folder import FolderOptions

        r = self.rig(options=attr.evolve(tf.OPTIONS, oauth_auth_mechanism="oauthbearer"))
        r.start()
        self.assertEqual(
            r.server.logins[0][1],
            {"oauth_mechanism": "oauthbearer", "host": "imap.example.com", "port": 993},
        )
        self.assertEqual(FolderOptions().oauth_auth_mechanism, "auto")


class TransientTests(Base):
    """Answers that do not refuse the credentials never count: the folder
    backs off and reconnects, with the error in its state."""

    def run_cycles(self, error, first_delay=1.5, cycles=5):
        r = self.rig()
        r.server.auth_error = error
        r.start()
        for _ in range(cycles):
            self.assertEqual(r.svc.state, S.BACKOFF)
            self.assertIsNotNone(r.svc.history[-1].error)
            r.reactor.advance(3600)
            r.factory.startedConnecting(r.reactor.connectors[-1])
            r.accept()
        self.assertEqual(self.counted(r), [])
        self.assertNotIn(S.NEEDS_REAUTH, r.states())
        self.assertEqual(len(r.server.logins), cycles + 1)
        self.assertEqual(r.creds.calls, [False] * (cycles + 1), "no forced refresh")
        return r

    def test_unavailable(self):
        r = self.run_cycles(AuthenticationUnavailable("UNAVAILABLE", "try later"))
        self.assertIn("UNAVAILABLE", r.svc.last_error)

    def test_bad(self):
        self.run_cycles(AuthenticationUnavailable(None, "syntax", "BAD"))

    def test_throttled_and_limit(self):
        self.run_cycles(Throttled(None, "[THROTTLED]"))
        self.run_cycles(Throttled(5.0, "[LIMIT]"))

    def test_timeout(self):
        self.run_cycles(CommandTimeout("AUTHENTICATE got no answer within 60s"))

    def test_tls_error(self):
        from OpenSSL.SSL import Error as SSLError

        self.run_cycles(SSLError([("SSL routines", "", "certificate verify failed")]))
        self.run_cycles(TLSRequired("server does not offer STARTTLS"))

    def test_mechanism_not_offered(self):
        self.run_cycles(MechanismUnsupported("server does not offer AUTH=XOAUTH2"))
