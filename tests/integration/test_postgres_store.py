"""The store contract against :class:`imapsvc.store.postgres.PostgresStore`
on a real PostgreSQL, plus what only the real store has: connection healing
and LISTEN/NOTIFY."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import attr
from psycopg2.extras import Json
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from imapsvc.interfaces import IStore, StoreUnavailable
from imapsvc.model import ProviderConfig
from imapsvc.store.postgres import PostgresStore
from tests.rig import postgres as rig
from tests.store_contract import StoreContractMixin

_PROVIDER_COLUMNS = ("provider_type", "provider_name", "mailbox", "is_active", "status",
                     "inbound_paused_at", "inbound_pause_reason",
                     "inbound_auth_failure_count")
_CONFIG_FIELDS = {f.name for f in attr.fields(ProviderConfig)}


def insert_provider(dsn: str, **kwargs: Any) -> ProviderConfig:
    """Insert a provider as the main app would (both tables)."""
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in _CONFIG_FIELDS}
    config = ProviderConfig(**kwargs)
    values = attr.asdict(config, recurse=False)
    values.update(extra)
    values.setdefault("provider_type", "imap")
    if values["inbound_paused_at"] is not None:
        values.setdefault("inbound_pause_reason", "manual")
    provider = {k: values[k] for k in _PROVIDER_COLUMNS if k in values}
    provider["id"] = config.provider_id
    provider["tenant"] = config.tenant
    skip = set(_PROVIDER_COLUMNS) | {"tenant", "provider_id", "updated_at", "key", "config_error",
                                     "write_back", "oauth_delegate"}
    cfg = {k: v for k, v in values.items() if k not in skip}
    cfg["email_provider_id"] = config.provider_id
    cfg["tenant"] = config.tenant
    cfg["folder_state"] = Json({k: v.to_json() for k, v in cfg["folder_state"].items()})
    cfg["folder_filters"] = Json(list(cfg["folder_filters"]))
    cfg["server_capabilities"] = Json(list(cfg["server_capabilities"]))
    for table, row in (("email_providers", provider), ("imap_email_provider_config", cfg)):
        columns = ", ".join(row)
        marks = ", ".join(["%s"] * len(row))
        rig.execute(dsn, f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))
    if config.write_back is not None or config.oauth_delegate is not None:
        # imapsvc's own option table (schema/0007, 0009)
        rig.execute(dsn, "INSERT INTO imap_provider_options"
                    " (tenant, provider_id, write_back, oauth_delegate) VALUES (%s, %s, %s, %s)",
                    [config.tenant, config.provider_id, config.write_back,
                     config.oauth_delegate])
    return config


class PostgresStoreTestBase(unittest.TestCase):
    pool_size = 2

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dsn = rig.database_dsn()
        rig.truncate_all(self.dsn)
        self.store = PostgresStore(self.dsn, reactor, pool_size=self.pool_size)
        yield self.store.start()
        self.addCleanup(self.store.stop)


class PostgresStoreContractTests(StoreContractMixin, PostgresStoreTestBase):
    def insert_provider(self, **kwargs: Any) -> Any:
        return insert_provider(self.dsn, **kwargs)

    def set_folder_filters_raw(self, tenant: str, provider_id: str, value: Any) -> None:
        rig.execute(
            self.dsn,
            "UPDATE imap_email_provider_config SET folder_filters = %s"
            " WHERE tenant = %s AND email_provider_id = %s", (Json(value), tenant, provider_id))

    def expire_lease(self, tenant: str, provider_id: str) -> None:
        rig.execute(
            self.dsn,
            "UPDATE imap_email_provider_config SET lease_expires_at = now() - interval '1 second'"
            " WHERE tenant = %s AND email_provider_id = %s AND lease_owner IS NOT NULL",
            (tenant, provider_id))

    def provider_row(self, tenant: str, provider_id: str) -> Any:
        [provider] = rig.fetch_dicts(
            self.dsn, "SELECT * FROM email_providers WHERE tenant = %s AND id = %s",
            (tenant, provider_id))
        [config] = rig.fetch_dicts(
            self.dsn, "SELECT * FROM imap_email_provider_config"
            " WHERE tenant = %s AND email_provider_id = %s", (tenant, provider_id))
        provider.update(config)
        return provider

    def ledger_rows(self, tenant: str, provider_id: str) -> Any:
        return rig.fetch_dicts(
            self.dsn, "SELECT * FROM imap_message_ledger WHERE tenant = %s AND provider_id = %s"
            " ORDER BY created_at", (tenant, provider_id))

    def backdate(self, seconds: float) -> None:
        shift = "make_interval(secs => %s)"
        rig.execute(self.dsn, f"UPDATE imap_message_ledger SET created_at = created_at - {shift}",
                    (seconds,))
        rig.execute(
            self.dsn,
            f"UPDATE imap_event_outbox SET created_at = created_at - {shift},"
            f" published_at = published_at - {shift}", (seconds, seconds))
        rig.execute(
            self.dsn,
            f"UPDATE imap_message_failures SET created_at = created_at - {shift},"
            f" updated_at = updated_at - {shift}", (seconds, seconds))

    def now(self) -> datetime:
        return datetime.now(UTC)

    def test_provides_istore(self) -> None:
        self.assertTrue(verifyObject(IStore, self.store))

    @defer.inlineCallbacks
    def test_concurrent_batches_one_ledger_row(self) -> Any:
        """Two transactions racing on the same message: one row, one outbox entry."""
        from tests.store_contract import record

        p = yield self.leased()
        results = yield defer.gatherResults([
            self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a",
                                    [record(1, message_id="<r@x>")], None)
            for _ in range(2)
        ])
        self.assertEqual(sorted(r.outcomes[0] for r in results), ["duplicate", "published"])
        self.assertEqual(len((yield self.store.fetch_outbox(10))), 1)

    @defer.inlineCallbacks
    def test_concurrent_capped_leases_keep_the_tenant_cap(self) -> Any:
        """Replicas taking leases of one tenant at the same moment: the cap is
        counted under a per-tenant lock, so together they never exceed it."""
        tenant = str(uuid.uuid4())
        providers = []
        for _ in range(4):
            p = yield self.provider(tenant=tenant)
            providers.append(p)
        grants = yield defer.gatherResults([
            self.store.acquire_lease_capped(tenant, p.provider_id, f"worker-{i}", 60000,
                                            p.folders, 2)
            for i, p in enumerate(providers)
        ])
        self.assertEqual(sorted(g.acquired for g in grants), [False, False, True, True])
        refused = [g for g in grants if not g.acquired]
        self.assertTrue(all("IMAP_MAX_CONNECTIONS_PER_TENANT=2" in g.error for g in refused))

    @defer.inlineCallbacks
    def test_batch_reports_its_outbox_rows_with_cursor_and_message_id(self) -> Any:
        """The outbox insert shares a round trip with the row updates: its
        RETURNING rows still come back, and the updates still land."""
        from imapsvc.model import FolderCursor
        from tests.store_contract import record

        p = yield self.leased()
        recs = [record(1, message_id="<a@x>"), record(2, message_id="<b@x>")]
        result = yield self.store.record_batch(
            p.tenant, p.provider_id, "INBOX", "worker-a", recs,
            FolderCursor("7", "2", "2026-01-10T12:00:00.000Z"))
        stored = yield self.store.fetch_outbox(10)
        self.assertEqual([(r.id, r.event_id) for r in result.outbox],
                         [(r.id, r.event_id) for r in stored])
        self.assertEqual([r.event_id for r in stored], [r.event_id for r in recs])
        row = self.provider_row(p.tenant, p.provider_id)
        self.assertEqual((row["last_processed_message_id"], row["last_uid"]), ("<b@x>", "2"))

    @defer.inlineCallbacks
    def test_rows_from_before_0006_stay_readable(self) -> Any:
        """A row written as jsonb ``fields`` (no ``entry``) is relayed as before;
        new rows carry the entry text and leave ``fields`` empty."""
        p = yield self.leased()
        old = {"event_id": "old", "payload_json": '{"a": 1}'}
        rig.execute(self.dsn, "INSERT INTO imap_event_outbox (tenant, provider_id, event_id,"
                    " fields) VALUES (%s, %s, %s, %s)", (p.tenant, p.provider_id, "old", Json(old)))
        yield self.store.add_outbox(p.tenant, p.provider_id, "new", {"event_id": "new"})
        rows = yield self.store.fetch_outbox(10)
        self.assertEqual([(r.event_id, r.fields) for r in rows],
                         [("old", old), ("new", {"event_id": "new"})])
        stored = rig.fetch_dicts(self.dsn, "SELECT fields, entry, payload FROM imap_event_outbox"
                                 " ORDER BY id")
        self.assertEqual([(r["fields"], r["entry"], r["payload"]) for r in stored],
                         [(old, None, None), (None, '{"event_id":"new"}', None)])

    @defer.inlineCallbacks
    def test_the_payload_is_stored_as_it_goes_to_redis(self) -> Any:
        from imapsvc.core.event import StreamEntry
        from tests.store_contract import record

        p = yield self.leased()
        payload = '{"subject":"caf\u00e9 \\"x\\""}'
        rec = attr.evolve(record(1), fields=StreamEntry({"event_id": "e"}, payload.encode()))
        yield self.store.record_batch(p.tenant, p.provider_id, "INBOX", "worker-a", [rec], None)
        [row] = rig.fetch_dicts(self.dsn, "SELECT fields, entry, payload FROM imap_event_outbox")
        self.assertEqual((row["fields"], row["entry"], row["payload"]),
                         (None, '{"event_id":"e"}', payload))


def _eventually(test: unittest.TestCase, attempt: Any, tries: int = 60,
                delay: float = 0.05) -> defer.Deferred:
    """Call ``attempt()`` until it succeeds; fires with (result, failures)."""

    @defer.inlineCallbacks
    def run() -> Any:
        failures = []
        for _ in range(tries):
            try:
                result = yield attempt()
            except Exception as e:
                failures.append(e)
                yield deferLater(reactor, delay, lambda: None)
            else:
                return (result, failures)
        test.fail(f"never succeeded: {failures[-3:]!r}")

    return run()


class PostgresHealingTests(PostgresStoreTestBase):
    def backends(self) -> list[int]:
        rows = rig.execute(
            self.dsn, "SELECT pid FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'imapsvc' AND pid <> pg_backend_pid()",
            (rig.database_name(),))
        return sorted(r[0] for r in rows)

    @defer.inlineCallbacks
    def test_pool_heals_after_backend_terminated(self) -> Any:
        yield self.store.ping()
        before = self.backends()
        self.assertEqual(len(before), self.pool_size)
        rig.execute(self.dsn, "SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid",
                    (before,))
        # Some operations may fail while the pool notices; each such failure
        # is StoreUnavailable, and the pool comes back by itself.
        _, failures = yield _eventually(self, self.store.ping)
        for failure in failures:
            self.assertIsInstance(failure, StoreUnavailable)
        self.assertLessEqual(len(failures), self.pool_size)
        # Every connection is back (new backends), and real work goes through.
        yield _eventually(self, lambda: defer.succeed(None) if len(self.backends()) ==
                          self.pool_size else defer.fail(AssertionError("not yet")))
        after = self.backends()
        self.assertFalse(set(before) & set(after))
        for _ in range(2 * self.pool_size):
            providers = yield self.store.list_active_providers()
            self.assertEqual(providers, [])

    @defer.inlineCallbacks
    def test_start_fails_cleanly_when_unreachable(self) -> Any:
        store = PostgresStore("postgresql://postgres@127.0.0.1:1/postgres", reactor)
        yield self.assertFailure(store.start(), StoreUnavailable)
        yield store.stop()


class PostgresListenTests(PostgresStoreTestBase):
    @defer.inlineCallbacks
    def test_provider_changes_are_notified(self) -> Any:
        got: defer.DeferredQueue = defer.DeferredQueue()
        yield self.store.listen("imapsvc_providers", got.put)
        tenant, pid = str(uuid.uuid4()), str(uuid.uuid4())
        insert_provider(self.dsn, tenant=tenant, provider_id=pid, provider_name="S",
                        mailbox="s@example.com", host="h", port=993)
        first = json.loads((yield got.get().addTimeout(5, reactor)))
        second = json.loads((yield got.get().addTimeout(5, reactor)))
        self.assertEqual((first["tenant"], first["provider_id"], first["op"], first["table"]),
                         (tenant, pid, "INSERT", "email_providers"))
        self.assertEqual((second["provider_id"], second["op"], second["table"]),
                         (pid, "INSERT", "imap_email_provider_config"))
        # Our own noisy writes (lease, cursor, status) are not announced...
        yield self.store.acquire_lease(tenant, pid, "w", 60000)
        yield self.store.set_provider_status(tenant, pid, "connected")
        yield self.store.save_capabilities(tenant, pid, ["IDLE"])
        # ...a change made by the main app is, and it is the next one to arrive
        # (notifications are delivered in commit order).
        rig.execute(self.dsn, "UPDATE email_providers SET is_active = false"
                    " WHERE tenant = %s AND id = %s", (tenant, pid))
        third = json.loads((yield got.get().addTimeout(5, reactor)))
        self.assertEqual((third["provider_id"], third["op"], third["table"]),
                         (pid, "UPDATE", "email_providers"))

    @defer.inlineCallbacks
    def test_listener_reconnects_and_resumes(self) -> Any:
        got: defer.DeferredQueue = defer.DeferredQueue()
        reconnected: defer.Deferred = defer.Deferred()
        yield self.store.listen("imapsvc_test_chan", got.put,
                                on_reconnect=lambda: reconnected.callback(None))
        rig.execute(self.dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN%%' AND datname = %s", (rig.database_name(),))
        yield reconnected.addTimeout(10, reactor)
        rig.execute(self.dsn, "SELECT pg_notify('imapsvc_test_chan', 'hello')")
        self.assertEqual((yield got.get().addTimeout(5, reactor)), "hello")

    def test_bad_channel_refused(self) -> None:
        self.failureResultOf(self.store.listen("x; DROP TABLE y", lambda p: None), ValueError)
