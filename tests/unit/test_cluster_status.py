"""Folder states persisted for the deployment-wide /status: throttling, the
lease fence, heartbeats and "gone" replicas (fake clock, memory store)."""

from datetime import UTC, datetime, timedelta

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc.cluster_status import StatusReporter, folder_counters
from imapsvc.core.cluster import (
    cap_error,
    connection_holders,
    connection_order,
    deployment_status,
    grant,
)
from imapsvc.model import FolderStatus
from imapsvc.store.memory import MemoryStore

T = "11111111-1111-1111-1111-111111111111"
P = "22222222-2222-2222-2222-222222222222"


class CountingStore(MemoryStore):
    def __init__(self, clock):
        super().__init__(clock)
        self.status_writes = []
        self.fail_next = 0

    def write_folder_status(self, tenant, provider_id, owner, statuses):
        if self.fail_next:
            self.fail_next -= 1
            return defer.fail(ConnectionError("database away"))
        self.status_writes.append([(s.folder, s.state) for s in statuses])
        return super().write_folder_status(tenant, provider_id, owner, statuses)


class ReporterTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = CountingStore(self.clock)
        self.store.add_provider(tenant=T, provider_id=P, folder_filters=("INBOX", "Sent"))
        self.successResultOf(self.store.acquire_lease_capped(T, P, "a", 120_000,
                                                             ("INBOX", "Sent"), None))
        self.rep = StatusReporter(self.store, self.clock, "a", interval_s=5, heartbeat_s=40,
                                  lease_ttl_s=120)

    def change(self, folder, state, error=None):
        self.rep.folder_changed((T, P), FolderStatus(folder, state, last_error=error))

    def test_first_change_at_once_then_throttled_and_coalesced(self):
        self.change("INBOX", "Connecting")
        self.clock.advance(0)
        self.assertEqual(self.store.status_writes, [[("INBOX", "Connecting")]])
        for state in ("Authenticating", "Selected", "Syncing", "Idling"):
            self.change("INBOX", state)
        self.change("Sent", "Idling")
        self.clock.advance(4.9)
        self.assertEqual(len(self.store.status_writes), 1)
        self.clock.advance(0.1)
        # One write with the newest state of each folder.
        self.assertEqual(self.store.status_writes[1], [("INBOX", "Idling"), ("Sent", "Idling")])
        self.clock.advance(60)
        self.assertEqual(len(self.store.status_writes), 2)  # nothing changed: nothing written

    def test_builder_called_only_when_the_write_is_due(self):
        built = []

        def builder(folder):
            def build():
                built.append(folder)
                return FolderStatus(folder, state[folder])
            return build

        state = {"INBOX": "Connecting", "Sent": "Connecting"}
        self.rep.folder_dirty((T, P), "INBOX", builder("INBOX"))
        self.clock.advance(0)
        self.assertEqual(built, ["INBOX"])
        for name in ("Authenticating", "Selected", "Syncing", "Idling"):
            state["INBOX"] = state["Sent"] = name
            self.rep.folder_dirty((T, P), "INBOX", builder("INBOX"))
            self.rep.folder_dirty((T, P), "Sent", builder("Sent"))
        self.assertEqual(built, ["INBOX"])  # nothing built between writes
        self.clock.advance(5)
        self.assertEqual(sorted(built), ["INBOX", "INBOX", "Sent"])
        self.assertEqual(self.store.status_writes[1], [("INBOX", "Idling"), ("Sent", "Idling")])

    def test_failing_builder_leaves_out_only_its_folder(self):
        def broken():
            raise RuntimeError("snapshot bug")

        self.rep.folder_dirty((T, P), "INBOX", broken)
        self.change("Sent", "Idling")
        self.clock.advance(0)
        self.assertEqual(self.store.status_writes, [[("Sent", "Idling")]])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_lost_lease_writes_nothing_more(self):
        self.store.expire_lease(T, P)
        self.change("INBOX", "Idling")
        self.clock.advance(0)
        self.assertEqual(self.rep.fenced, 1)
        self.assertEqual(self.rep.writes, 0)
        rows = self.successResultOf(self.store.read_deployment([T]))["folders"]
        self.assertEqual({f["folder"]: f["state"] for f in rows},
                         {"INBOX": "Disconnected", "Sent": "Disconnected"})

    def test_failed_write_is_retried_with_the_newest_state(self):
        self.store.fail_next = 1
        self.change("INBOX", "Syncing")
        self.clock.advance(0)
        self.assertEqual(self.rep.failures, 1)
        self.change("INBOX", "Idling")
        self.clock.advance(5)
        self.assertEqual(self.store.status_writes, [[("INBOX", "Idling")]])
        self.flushLoggedErrors()

    def test_forget_cancels_pending_writes(self):
        self.change("INBOX", "Connecting")
        self.clock.advance(0)
        self.change("INBOX", "Idling")
        self.rep.forget((T, P))
        self.clock.advance(10)
        self.assertEqual(len(self.store.status_writes), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heartbeat_and_gone_replica(self):
        self.rep.start()
        self.change("INBOX", "Idling")
        self.clock.advance(0)
        doc = self.successResultOf(self.rep.deployment())
        self.assertEqual([(r["worker"], r["state"]) for r in doc["replicas"]], [("a", "alive")])
        provider = doc["providers"][0]
        self.assertEqual((provider["owner"], provider["folders"]["INBOX"]["state"]),
                         ("a", "Idling"))
        # The replica goes silent (no heartbeat) but its lease is renewed by
        # nobody: after two TTLs it is gone, and so are its folders.
        self.rep._heartbeat.stop()
        self.successResultOf(self.store.renew_lease(T, P, "a", 1_000_000))
        self.clock.advance(241)
        doc = self.successResultOf(self.rep.deployment())
        self.assertEqual([(r["worker"], r["state"]) for r in doc["replicas"]], [("a", "gone")])
        self.assertEqual(doc["providers"][0]["folders"]["INBOX"]["state"], "Gone")
        self.successResultOf(self.rep.stop())
        doc = self.successResultOf(self.rep.deployment())
        self.assertEqual(doc["replicas"], [])

    def test_counters(self):
        snap = {"syncs": 3, "reconnects": {"bye": 1, "connection_lost": 2}, "lag": 0,
                "cursor": {"last_uid": "9"}}
        self.assertEqual(folder_counters(snap),
                         {"syncs": 3, "reconnects": 3, "lag": 0, "lastUid": "9"})


class PureTests(unittest.TestCase):
    def test_inbox_first_and_grant(self):
        self.assertEqual(connection_order(["A", "inbox", "B"]), ("inbox", "A", "B"))
        self.assertEqual(grant(["A", "INBOX", "B"], 5, 3), (("INBOX", "A"), ("B",)))
        self.assertEqual(grant(["A"], 2, 5), ((), ("A",)))
        self.assertEqual(grant(["A", "B"], None, 99), (("A", "B"), ()))

    def test_grant_with_a_budget_counts_connections(self):
        labels = [f"L{i}" for i in range(7)]
        # Cap 5, budget 3: three connections for eight folders, all granted.
        self.assertEqual(grant([*labels, "INBOX"], 5, 0, 3), (("INBOX", *labels), ()))
        self.assertEqual(connection_holders(["INBOX", *labels], 3), ("INBOX", "L0", "L1"))
        # Less room than the budget: one connection each, as without one.
        self.assertEqual(grant(labels, 5, 3, 3), (("L0", "L1"), tuple(labels[2:])))
        self.assertEqual(grant(labels, 5, 0, None), (tuple(labels[:5]), tuple(labels[5:])))
        # "*" is never shared: it holds a connection of its own.
        self.assertEqual(connection_holders(["A", "B", "*"], 2), ("*", "A"))
        self.assertEqual(connection_holders(["A", "B"], None), ("A", "B"))

    def test_cap_error_names_the_setting(self):
        self.assertIsNone(cap_error(2, 0, (), 2))
        text = cap_error(2, 2, ("INBOX", "X"), 0)
        self.assertIn("IMAP_MAX_CONNECTIONS_PER_TENANT=2", text)
        self.assertIn("INBOX, X", text)

    def test_deployment_status_states(self):
        now = datetime(2026, 1, 1, tzinfo=UTC)
        later = now + timedelta(minutes=1)
        providers = [
            {"tenant": T, "provider_id": P, "mailbox": "m", "status": "connected",
             "error_message": None, "lease_owner": "a", "lease_expires_at": later,
             "is_active": True, "paused": False, "last_sync_at": None},
            {"tenant": T, "provider_id": "q", "mailbox": "n", "status": "error",
             "error_message": "token=abc", "lease_owner": "b", "lease_expires_at": now,
             "is_active": True, "paused": False, "last_sync_at": None},
        ]
        folders = [
            {"tenant": T, "provider_id": P, "folder": "INBOX", "owner": "a",
             "holds_connection": True, "state": "Idling"},
            {"tenant": T, "provider_id": P, "folder": "X", "owner": "a",
             "holds_connection": False, "state": "Waiting", "last_error": "cap"},
            {"tenant": T, "provider_id": "q", "folder": "INBOX", "owner": "b",
             "holds_connection": True, "state": "Idling"},
        ]
        replicas = [{"owner": "a", "heartbeat_at": now}, {"owner": "b", "heartbeat_at": now}]
        doc = deployment_status(now, providers, folders, replicas, 60,
                                redact=lambda s: s.replace("abc", "***"))
        p, q = doc["providers"]
        self.assertEqual({k: v["state"] for k, v in p["folders"].items()},
                         {"INBOX": "Idling", "X": "Waiting"})
        self.assertTrue(p["folders"]["INBOX"]["connection"])
        self.assertFalse(p["folders"]["X"]["connection"])
        # q's lease expired: not owned, its folder stopped; errors redacted.
        self.assertIsNone(q["owner"])
        self.assertEqual(q["folders"]["INBOX"]["state"], "Stopped")
        self.assertEqual(q["error"], "token=***")
