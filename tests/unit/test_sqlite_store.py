"""The store contract against :class:`imapsvc.store.sqlite.SqliteStore` on a
temporary file, plus what only the SQLite store has."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from imapsvc.interfaces import IStore, LeaseLost, StoreUnavailable
from imapsvc.model import FolderCursor, ProviderConfig
from imapsvc.store.sqlite import SqliteStore, ts, ts_seconds
from imapsvc.store.sqlite_schema import SCHEMA_VERSION, connect
from tests.store_contract import StoreContractMixin, new_id, record

_JSON_COLUMNS = ("folder_state", "folder_filters", "server_capabilities")


class SqliteStoreTestBase(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.path = os.path.join(self.mktemp() + ".d", "store.sqlite3")
        os.makedirs(os.path.dirname(self.path))
        self.store = SqliteStore(self.path, reactor)
        yield self.store.start()
        self.addCleanup(self.store.stop)
        # A second connection for the helpers, as another process would have.
        self.side = connect(self.path)
        self.addCleanup(self.side.close)

    def fetch_dicts(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        cur = self.side.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


class SqliteStoreContractTests(StoreContractMixin, SqliteStoreTestBase):
    def insert_provider(self, **kwargs: Any) -> Any:
        extra = {k: kwargs.pop(k) for k in ("provider_type", "inbound_pause_reason")
                 if k in kwargs}
        config = ProviderConfig(**kwargs)
        # The store's own synchronous layer on the side connection: the same
        # code `imapsvc provider add` uses.
        from imapsvc.store.sqlite import SqliteOps

        SqliteOps(self.side, reactor.seconds).insert_provider(config, **extra)
        return config

    def set_folder_filters_raw(self, tenant: str, provider_id: str, value: Any) -> None:
        self.side.execute(
            "UPDATE imap_email_provider_config SET folder_filters = ?"
            " WHERE tenant = ? AND email_provider_id = ?", (json.dumps(value), tenant, provider_id))

    def expire_lease(self, tenant: str, provider_id: str) -> None:
        self.side.execute(
            "UPDATE imap_email_provider_config SET lease_expires_at = ?"
            " WHERE tenant = ? AND email_provider_id = ? AND lease_owner IS NOT NULL",
            (ts_seconds(reactor.seconds() - 1), tenant, provider_id))

    def provider_row(self, tenant: str, provider_id: str) -> Any:
        [provider] = self.fetch_dicts(
            "SELECT * FROM email_providers WHERE tenant = ? AND id = ?", (tenant, provider_id))
        [config] = self.fetch_dicts(
            "SELECT * FROM imap_email_provider_config WHERE tenant = ? AND email_provider_id = ?",
            (tenant, provider_id))
        provider.update(config)
        for column in _JSON_COLUMNS:
            provider[column] = json.loads(provider[column])
        return provider

    def ledger_rows(self, tenant: str, provider_id: str) -> Any:
        return self.fetch_dicts(
            "SELECT * FROM imap_message_ledger WHERE tenant = ? AND provider_id = ?"
            " ORDER BY created_at", (tenant, provider_id))

    def backdate(self, seconds: float) -> None:
        # Timestamps are text: shift them in Python, row by row.
        from imapsvc.store.sqlite import from_ts

        def shifted(text: Any) -> Any:
            if text is None:
                return None
            return ts_seconds(from_ts(text).timestamp() - seconds)  # type: ignore[union-attr]

        for table, key, columns in (
            ("imap_message_ledger", "rowid", ("created_at",)),
            ("imap_event_outbox", "id", ("created_at", "published_at")),
            ("imap_message_failures", "rowid", ("created_at", "updated_at", "skipped_at")),
        ):
            rows = self.side.execute(
                f"SELECT {key}, {', '.join(columns)} FROM {table}").fetchall()
            for row in rows:
                sets = ", ".join(f"{c} = ?" for c in columns)
                self.side.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?",
                                  [shifted(v) for v in row[1:]] + [row[0]])

    def now(self) -> datetime:
        return datetime.now(UTC)

    def test_provides_istore(self) -> None:
        self.assertTrue(verifyObject(IStore, self.store))


class SqliteStoreExtrasTests(SqliteStoreTestBase):
    @defer.inlineCallbacks
    def test_folder_filters_that_are_no_json_are_a_config_error(self) -> Any:
        from imapsvc.store.sqlite import SqliteOps

        tenant = new_id()
        ops = SqliteOps(self.side, reactor.seconds)
        ids = [new_id(), new_id()]
        for pid in ids:
            ops.insert_provider(ProviderConfig(tenant=tenant, provider_id=pid, provider_name="S",
                                               mailbox=f"{pid}@example.com", host="h", port=993))
        # TEXT, unlike jsonb, holds anything: broken JSON is a reason, not [].
        self.side.execute("UPDATE imap_email_provider_config SET folder_filters = '[\"INBOX\",'"
                          " WHERE email_provider_id = ?", (ids[0],))
        listed = yield self.store.list_active_providers(tenant)
        by_id = {p.provider_id: p for p in listed}
        self.assertEqual(by_id[ids[0]].config_error,
                         "unreadable configuration: folder_filters is not valid JSON")
        self.assertIsNone(by_id[ids[1]].config_error)

    def test_wal_and_schema_version(self) -> None:
        mode = self.side.execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(mode, "wal")
        self.assertEqual(self.side.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)

    def test_files_private_to_the_owner(self) -> None:
        # Sealed secrets and every tenant's outbox: not for other local users,
        # whatever the umask (the demo ran with 022 and left it world-readable).
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                self.assertEqual(stat.S_IMODE(os.stat(self.path + suffix).st_mode), 0o600, suffix)

    def test_existing_file_mode_is_left_alone(self) -> None:
        other = self.mktemp()
        with open(other, "w"):
            pass
        os.chmod(other, 0o640)
        connect(other).close()
        self.assertEqual(stat.S_IMODE(os.stat(other).st_mode), 0o640)

    @defer.inlineCallbacks
    def test_restart_keeps_data_and_schema(self) -> Any:
        tenant = new_id()
        yield self.store.put_secret(tenant, "imap_password_x", b"\x00sealed")
        yield self.store.stop()
        again = SqliteStore(self.path, reactor)
        yield again.start()
        self.addCleanup(again.stop)
        self.assertEqual((yield again.get_secret(tenant, "imap_password_x")), b"\x00sealed")

    @defer.inlineCallbacks
    def test_older_file_gets_the_provider_options_table(self) -> Any:
        # A file of an earlier version (no imap_provider_options) is upgraded
        # in place: the provider SELECT joins the new table.
        yield self.store.stop()
        conn = sqlite3.connect(self.path)
        conn.execute("DROP TABLE imap_provider_options")
        conn.execute("PRAGMA user_version=2")
        conn.close()
        again = SqliteStore(self.path, reactor)
        yield again.start()
        self.addCleanup(again.stop)
        p = ProviderConfig(tenant=new_id(), provider_id=new_id(), provider_name="S",
                           mailbox="s@example.com", host="h", port=993)
        again.ops.insert_provider(p)
        self.assertTrue((yield again.set_write_back(p.tenant, p.provider_id, "seen")))
        self.assertEqual((yield again.get_provider(p.tenant, p.provider_id)).write_back, "seen")

    @defer.inlineCallbacks
    def test_version_five_file_gains_the_oauth_delegate_column(self) -> Any:
        # schema/0009: the options table of a version 5 file has no
        # oauth_delegate; opening it adds the column and keeps the rows.
        yield self.store.stop()
        conn = sqlite3.connect(self.path)
        p = ProviderConfig(tenant=new_id(), provider_id=new_id(), provider_name="S",
                           mailbox="support@example.com", host="h", port=993)
        conn.execute("ALTER TABLE imap_provider_options DROP COLUMN oauth_delegate")
        conn.execute("PRAGMA user_version=5")
        conn.close()
        again = SqliteStore(self.path, reactor)
        yield again.start()
        self.addCleanup(again.stop)
        again.ops.insert_provider(p)
        self.assertTrue((yield again.set_write_back(p.tenant, p.provider_id, "seen")))
        self.assertTrue((yield again.set_oauth_delegate(p.tenant, p.provider_id,
                                                        "alice@example.com")))
        got = yield again.get_provider(p.tenant, p.provider_id)
        self.assertEqual((got.write_back, got.oauth_delegate), ("seen", "alice@example.com"))
        self.assertFalse((yield again.set_oauth_delegate(p.tenant, new_id(), "a@b.c")))

    @defer.inlineCallbacks
    def test_newer_schema_refused(self) -> Any:
        path = self.mktemp()
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        conn.close()
        store = SqliteStore(path, reactor)
        failure = yield self.assertFailure(store.start(), StoreUnavailable)
        self.assertIn("schema version", str(failure))
        self.assertEqual((yield store.stop()), None)

    def test_version_one_file_gains_the_poison_table(self) -> None:
        from imapsvc.store.sqlite_schema import connect, ensure_schema

        path = self.mktemp()
        conn = connect(path)
        ensure_schema(conn)
        conn.execute("DROP TABLE imap_message_failures")
        conn.execute("PRAGMA user_version=1")  # a file written before schema/0005
        self.assertTrue(ensure_schema(conn))
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
        conn.execute("SELECT count(*) FROM imap_message_failures").fetchone()
        conn.close()

    @defer.inlineCallbacks
    def test_unopenable_file_is_unavailable(self) -> Any:
        store = SqliteStore(os.path.join(self.mktemp(), "no", "such", "dir.sqlite3"), reactor)
        yield self.assertFailure(store.start(), StoreUnavailable)
        yield store.stop()

    @defer.inlineCallbacks
    def test_not_started_fails_cleanly(self) -> Any:
        store = SqliteStore(self.mktemp(), reactor)
        yield self.assertFailure(store.ping(), StoreUnavailable)

    @defer.inlineCallbacks
    def test_lease_fences_another_connection(self) -> Any:
        """Another process sharing the file (here: the side connection) that
        steals the lease makes the batch fail and write nothing."""
        from imapsvc.store.sqlite import SqliteOps

        tenant, pid = new_id(), new_id()
        SqliteOps(self.side, reactor.seconds).insert_provider(ProviderConfig(
            tenant=tenant, provider_id=pid, provider_name="S", mailbox="s@example.com",
            host="h", port=993))
        self.assertTrue((yield self.store.acquire_lease(tenant, pid, "a", 60000)))
        self.side.execute(
            "UPDATE imap_email_provider_config SET lease_owner = 'b'"
            " WHERE tenant = ? AND email_provider_id = ?", (tenant, pid))
        yield self.assertFailure(
            self.store.record_batch(tenant, pid, "INBOX", "a", [record(1)],
                                    FolderCursor("7", "1")), LeaseLost)
        self.assertEqual(self.fetch_dicts("SELECT * FROM imap_message_ledger"), [])
        self.assertEqual(self.fetch_dicts("SELECT * FROM imap_event_outbox"), [])

    @defer.inlineCallbacks
    def test_batch_is_atomic_on_error(self) -> Any:
        """A failure in the middle of a batch rolls back its ledger rows."""
        from imapsvc.store.sqlite import SqliteOps

        tenant, pid = new_id(), new_id()
        SqliteOps(self.side, reactor.seconds).insert_provider(ProviderConfig(
            tenant=tenant, provider_id=pid, provider_name="S", mailbox="s@example.com",
            host="h", port=993))
        yield self.store.acquire_lease(tenant, pid, "a", 60000)
        # Sabotage the outbox so the first published record fails after its
        # ledger row was written.
        self.side.execute("ALTER TABLE imap_event_outbox RENAME TO gone")
        d = self.store.record_batch(tenant, pid, "INBOX", "a", [record(1)],
                                    FolderCursor("7", "1"))
        yield self.assertFailure(d, StoreUnavailable)
        self.assertEqual(self.fetch_dicts("SELECT * FROM imap_message_ledger"), [])
        self.assertIsNone((yield self.store.read_cursor(tenant, pid, "INBOX")))

    def test_timestamps_sort_as_text(self) -> None:
        early = datetime(2026, 1, 9, 23, 59, 59, 999999, tzinfo=UTC)
        late = datetime(2026, 1, 10, 0, 0, 0, 0, tzinfo=UTC)
        self.assertLess(ts(early), ts(late))
        self.assertEqual(ts(late), "2026-01-10T00:00:00.000000Z")
