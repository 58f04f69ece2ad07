"""Which login failures count towards the auto-pause, and the OAuth2 forced
refresh: a refused access token gets one refresh and one retry before it
counts. FolderService on verified fakes (tests/folder_helpers.py), fake clock."""

from __future__ import annotations

import attr
from twisted.internet import defer
from twisted.internet.error import ConnectError

from imapsvc import folder_state as S
from imapsvc.model import Credentials
from imapsvc.testing import FakeMailbox
from tests.folder_helpers import OPTIONS, USER
from tests.unit.test_folder import RigTestCase


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


class Base(RigTestCase):
    def rig(self, oauth=True, mailbox=None, **kw):
        if mailbox is None:
            # The server accepts the second token only (a refresh gives it).
            mailbox = FakeMailbox(accounts={USER: "token-2"}, uidvalidity=7)
        if oauth:
            kw["credentials"] = FakeRefreshingCredentials()
        # Closes take a reactor turn, as a socket's: the folder reads the
        # login's answer before the connection's end.
        rig = super().rig(mailbox=mailbox, lazy_close=True, **kw)
        return rig

    def start(self, rig):
        rig.start()
        rig.reactor.advance(0)

    def again(self, rig, delay=0.0):
        """The next connection attempt after ``delay`` succeeds and greets."""
        session = rig.reconnect_after(delay)
        rig.reactor.advance(0)
        return session

    def counted(self, rig):
        return [e for e in rig.hooks.events if e[0] == "auth_failed"]


class ForcedRefreshTests(Base):
    def test_refusal_refreshes_once_retries_then_counts(self):
        r = self.rig()
        r.mailbox.refuse_logins(times=None)
        self.start(r)
        # First refusal: not counted, reconnect at once with a forced refresh.
        self.assertEqual(self.counted(r), [])
        self.assertEqual(r.svc.state, S.BACKOFF)
        self.assertEqual(r.svc.history[-1].reason,
                         "access token refused: refreshing it once and retrying")
        self.assertEqual(r.creds.calls, [False])
        self.again(r, 0)
        self.assertEqual(r.creds.calls, [False, True])
        # Second refusal: counted, once, and no further attempt.
        self.assertEqual(self.counted(r), [("auth_failed", "AUTHENTICATIONFAILED")])
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)
        calls = r.factory.connect_calls
        r.reactor.advance(24 * 3600)
        self.assertEqual(r.factory.connect_calls, calls)
        self.assertEqual(len(r.mailbox.logins), 2)
        self.assertEqual(r.svc.reconnects["token_refused"], 1)

    def test_retry_succeeds_nothing_counted_and_next_refusal_retries_again(self):
        r = self.rig()
        self.start(r)  # token-1: refused by the accounts
        self.again(r, 0)  # token-2, after the forced refresh: accepted
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(self.counted(r), [])
        # Later the token is revoked again: again one refresh before counting.
        r.mailbox.accounts = {USER: "token-3"}
        r.drop()
        r.reactor.advance(0)
        # ordinary back-off 2 s * (1 - 0.5 * 0.5), + the lost session's
        # spread over the stagger window (2 s * 0.5)
        self.again(r, 2.5)
        self.assertEqual(self.counted(r), [])
        self.again(r, 0)
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(r.creds.calls, [False, True, False, True])

    def test_plain_no_is_a_refusal_too(self):
        r = self.rig()
        r.mailbox.refuse_logins(None, "Authentication failed.", times=None)
        self.start(r)
        self.assertEqual(self.counted(r), [])
        self.again(r, 0)
        self.assertEqual(self.counted(r), [("auth_failed", "AUTHENTICATIONFAILED")])

    def test_no_refresh_token_the_refusal_counts(self):
        r = self.rig()
        r.mailbox.refuse_logins(times=None)
        r.creds.refresh_error = [NoRefreshToken("no refresh token")]
        self.start(r)
        self.again(r, 0)
        # No second login was possible; the server's refusal counts.
        self.assertEqual(len(r.mailbox.logins), 1)
        self.assertEqual(self.counted(r), [("auth_failed", "AUTHENTICATIONFAILED")])
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)

    def test_refresh_unreachable_is_retried_not_counted(self):
        r = self.rig(mailbox=FakeMailbox(uidvalidity=7))
        r.mailbox.refuse_logins()
        r.creds.refresh_error = [ConnectError("token endpoint down")]
        self.start(r)
        self.again(r, 0)
        self.assertEqual(self.counted(r), [])
        self.assertEqual(r.svc.state, S.BACKOFF)
        # The next attempt (after the back-off) forces the refresh again.
        self.again(r, 60)
        self.assertEqual(r.creds.calls, [False, True, True])
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(self.counted(r), [])

    def test_password_refusal_counts_at_once(self):
        r = self.rig(oauth=False, mailbox=FakeMailbox(uidvalidity=7))
        r.mailbox.refuse_logins(times=None)
        self.start(r)
        self.assertEqual(self.counted(r), [("auth_failed", "AUTHENTICATIONFAILED")])
        self.assertEqual(r.creds.calls, 1)

    def test_login_gets_mechanism_setting_host_and_port(self):
        r = self.rig(options=attr.evolve(OPTIONS, oauth_auth_mechanism="oauthbearer"),
                     mailbox=FakeMailbox(uidvalidity=7))
        self.start(r)
        self.assertEqual(r.mailbox.logins[0], ("oauthbearer", USER, "imap.example.com", 993))
        self.assertEqual(r.svc.state, S.IDLING)


class TransientTests(Base):
    """Answers that do not refuse the credentials never count: the folder
    backs off and reconnects, with the error in its state."""

    def run_cycles(self, refuse, cycles=5, capabilities=None, **kw):
        """Every login answered by ``refuse(mailbox)``'s scripting."""
        caps = {"capabilities": capabilities} if capabilities else {}
        r = self.rig(mailbox=FakeMailbox(uidvalidity=7, **caps), **kw)
        refuse(r.mailbox)
        self.start(r)
        for _ in range(cycles):
            self.assertEqual(r.svc.state, S.BACKOFF)
            self.assertIsNotNone(r.svc.history[-1].error)
            self.again(r, 3600)
        self.assertEqual(self.counted(r), [])
        self.assertNotIn(S.NEEDS_REAUTH, r.states())
        if r.mailbox.logins:
            self.assertEqual(r.creds.calls, [False] * (cycles + 1), "no forced refresh")
        return r

    def test_unavailable(self):
        r = self.run_cycles(lambda m: m.refuse_logins("UNAVAILABLE", "try later", times=None))
        self.assertEqual(len(r.mailbox.logins), 6)
        self.assertIn("UNAVAILABLE", r.svc.last_error)

    def test_bad(self):
        r = self.run_cycles(lambda m: m.refuse_logins(None, "syntax", times=None, status="BAD"))
        self.assertEqual(len(r.mailbox.logins), 6)

    def test_throttled_and_limit(self):
        r = self.run_cycles(lambda m: m.refuse_logins("THROTTLED", "slow down", times=None))
        self.assertIn("throttled", r.svc.last_error)
        self.run_cycles(lambda m: m.refuse_logins(
            "LIMIT", "Suggested Backoff Time: 5000 milliseconds", times=None))

    def test_starttls_not_offered(self):
        # Port 143 with STARTTLS required: a server that does not offer it.
        r = self.run_cycles(lambda m: None, port=143, secure=False, allow_starttls=True,
                            tls=False)
        self.assertIn("STARTTLS", r.svc.last_error)
        self.assertEqual(r.mailbox.logins, [])

    def test_mechanism_not_offered(self):
        r = self.run_cycles(lambda m: None, capabilities=("IMAP4rev1", "IDLE", "AUTH=PLAIN"))
        self.assertIn("XOAUTH2", r.svc.last_error)
        self.assertEqual(r.mailbox.logins, [])
