"""Missing is not failed: a credential found nowhere puts the folder in
NeedsReauth without the auth-failure hook, the provider's status becomes
``error`` with the looked-up names and places, the login is retried on the
discovery timer, and ``inbound_auth_failure_count`` never moves. An actual
refusal drops the cached credentials so the next login reads them again."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from imapsvc import folder_state as S
from imapsvc.secret_chain import CredentialsMissing
from tests.folder_helpers import FolderRig, PasswordSource
from tests.unit import test_supervisor as supervisor_tests
from tests.unit.test_supervisor import T1

MISSING = CredentialsMissing(
    [("imap_password_p1", ["imapsvc sealed store", "filesystem /run/secrets/tenants/t1/x"])],
    "no password found",
)


class Hooks:
    def __init__(self):
        self.events = []

    def state_changed(self, state, reason="", error=None):
        self.events.append(("state", state, error))

    def auth_failed(self, code, text=""):
        self.events.append(("auth_failed", code))

    def credentials_missing(self, text=""):
        self.events.append(("credentials_missing", text))


class ForgettingSource(PasswordSource):
    """A credential source whose cache the folder can drop."""

    def __init__(self, missing=False):
        super().__init__()
        self.missing = missing
        self.forgotten = []

    def credentials(self, provider, force_refresh=False):
        if self.missing:
            self.calls += 1
            return defer.fail(MISSING)
        return super().credentials(provider, force_refresh)

    def invalidate(self, tenant, pid):
        self.forgotten.append((tenant, pid))


class FolderTests(SynchronousTestCase):
    def rig(self, missing=False):
        r = FolderRig(hooks=Hooks(), credentials=ForgettingSource(missing))
        self.addCleanup(r.stop)
        return r

    def test_missing_credentials_wait_for_discovery_without_auth_failure(self):
        r = self.rig(missing=True)
        r.start()
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)
        kinds = [e[0] for e in r.hooks.events]
        self.assertIn("credentials_missing", kinds)
        self.assertNotIn("auth_failed", kinds)
        self.assertIn("imap_password_p1", r.svc.last_error)
        self.assertIn("filesystem /run/secrets/tenants/t1/x", r.svc.last_error)
        self.assertEqual(r.mailbox.logins, [])
        # No reconnect storm: the supervisor's discovery pass retries it.
        r.reactor.advance(3600)
        self.assertEqual(r.factory.connect_calls, 1)
        self.assertEqual(r.creds.forgotten, [("t1", "p1")])

    def test_server_refusal_drops_cached_credentials(self):
        r = self.rig()
        r.mailbox.refuse_logins(times=None)
        r.start()
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)
        self.assertEqual(r.creds.forgotten, [("t1", "p1")])
        self.assertIn(("auth_failed", "AUTHENTICATIONFAILED"), r.hooks.events)


class SupervisorMissingTests(unittest.TestCase):
    # The supervisor tests' harness, without running their tests again here.
    setUp = supervisor_tests.SupervisorTests.setUp
    make_supervisor = supervisor_tests.SupervisorTests.make_supervisor
    add = supervisor_tests.SupervisorTests.add

    def test_missing_never_pauses_sets_error_and_is_retried(self):
        self.add("p1", folder_filters=("INBOX", "Other"))
        sup = self.make_supervisor(auth_pause_after=3)
        self.clock.advance(0)
        text = str(MISSING)
        starts = []
        for _ in range(5):
            svc = sup.providers[(T1, "p1")]
            starts.append(svc)  # kept alive, so no id is reused
            for folder in ("INBOX", "Other"):
                svc.folder_state_changed(folder, "NeedsReauth", f"CredentialsMissing: {text}")
                svc.credentials_missing(folder, text)
            # The discovery pass retries the login (60 s, jittered up to +10 %).
            self.clock.advance(67)
        self.assertEqual(self.paused, [])
        self.assertEqual(len({id(s) for s in starts}), 5)  # restarted on every pass
        row = self.store.provider_row(T1, "p1")
        self.assertEqual(row["inbound_auth_failure_count"], 0)
        self.assertIsNone(row["inbound_paused_at"])
        self.assertEqual(row["status"], "error")
        self.assertIn("imap_password_p1", row["error_message"])
        self.assertIn("filesystem /run/secrets/tenants/t1/x", row["error_message"])
        self.assertEqual(sup.status()["authFailures"], 0)
