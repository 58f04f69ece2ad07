"""The :class:`~imapsvc.store.admin_sync.AdminStore` contract (what the admin
CLI needs from a store, synchronously), run against every implementation.

A test case mixes in :class:`AdminStoreContractMixin`, sets ``self.admin``
in ``setUp`` and implements the helpers that reach under the interface:
:meth:`fetch` (a statement with ``%s`` marks, as simple as both SQL dialects
read alike), :meth:`pause` and :meth:`add_failure`.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from typing import Any

from imapsvc.model import FolderCursor, ProviderConfig
from imapsvc.store.admin_sync import AdminError, AdminStore, NotFound


def new_id() -> str:
    return str(uuid.uuid4())


class AdminStoreContractMixin:
    """Contract tests for an ``AdminStore``; mix into a ``TestCase``."""

    admin: AdminStore

    # -- what a concrete test case provides -----------------------------------

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement on the store's database."""
        raise NotImplementedError

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """Run and commit one write as the main app would."""
        raise NotImplementedError

    def pause(self, tenant: str, provider_id: str, reason: str) -> None:
        """Pause the provider now with ``reason`` (and 3 failures counted)."""
        raise NotImplementedError

    def add_failure(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                    uid: int) -> None:
        """One failed fetch of a message, as the service notes it."""
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------

    def added(self, **kwargs: Any) -> ProviderConfig:
        pid = kwargs.setdefault("provider_id", new_id())
        kwargs.setdefault("tenant", new_id())
        kwargs.setdefault("provider_name", "Support")
        kwargs.setdefault("mailbox", f"support-{pid[:8]}@example.com")
        kwargs.setdefault("host", "imap.example.com")
        kwargs.setdefault("port", 993)
        config = ProviderConfig(**kwargs)
        self.admin.add_provider(config)
        return config

    def set_cursors(self, p: ProviderConfig, state: dict[str, Any]) -> None:
        self.execute("UPDATE imap_email_provider_config SET folder_state = %s"
                     " WHERE tenant = %s AND email_provider_id = %s",
                     (json.dumps(state), p.tenant, p.provider_id))

    def cursors(self, p: ProviderConfig) -> dict[str, Any]:
        [(state,)] = self.fetch("SELECT folder_state FROM imap_email_provider_config"
                                " WHERE tenant = %s AND email_provider_id = %s",
                                (p.tenant, p.provider_id))
        return state if isinstance(state, dict) else json.loads(state)

    # -- providers ----------------------------------------------------------------

    def test_kind_and_description(self) -> None:
        self.assertIn(self.admin.kind, ("sqlite", "postgres"))
        self.assertTrue(self.admin.describe())

    def test_add_then_get_round_trips_what_the_cli_writes(self) -> None:
        p = self.added(secure=False, allow_starttls=True, username="help",
                       folder_filters=("INBOX", "Support"), max_emails_per_sync=20,
                       connection_timeout_ms=5000, socket_keepalive=True,
                       server_capabilities=("IMAP4rev1", "IDLE"), is_active=False)
        got = self.admin.get_provider(p.tenant, p.provider_id)
        for field in ("tenant", "provider_id", "provider_name", "mailbox", "host", "port",
                      "secure", "allow_starttls", "username", "folder_filters",
                      "max_emails_per_sync", "connection_timeout_ms", "socket_keepalive",
                      "is_active"):
            self.assertEqual(getattr(got, field), getattr(p, field), field)
        self.assertEqual(sorted(got.server_capabilities), ["IDLE", "IMAP4rev1"])
        self.assertIsNone(got.config_error)

    def test_list_providers_by_tenant_with_type(self) -> None:
        a = self.added()
        b = self.added(tenant=a.tenant, mailbox="other@example.com")
        c = self.added()
        mine = self.admin.list_providers(a.tenant)
        self.assertEqual(sorted(cfg.provider_id for cfg, _ in mine),
                         sorted([a.provider_id, b.provider_id]))
        self.assertEqual({kind for _, kind in mine}, {"imap"})
        everyone = {cfg.provider_id for cfg, _ in self.admin.list_providers()}
        self.assertTrue({a.provider_id, b.provider_id, c.provider_id} <= everyone)

    def test_duplicate_id_or_mailbox_is_a_one_line_error(self) -> None:
        p = self.added()
        with self.assertRaises(AdminError) as same_id:
            self.added(tenant=p.tenant, provider_id=p.provider_id, mailbox="x@example.com")
        self.assertIn("id", str(same_id.exception))
        with self.assertRaises(AdminError) as same_box:
            self.added(tenant=p.tenant, mailbox=p.mailbox)
        self.assertIn("mailbox", str(same_box.exception))
        self.assertNotIn("\n", str(same_box.exception))

    def test_set_active_and_remove(self) -> None:
        p = self.added()
        self.admin.set_active(p.tenant, p.provider_id, False)
        self.assertFalse(self.admin.get_provider(p.tenant, p.provider_id).is_active)
        self.admin.set_active(p.tenant, p.provider_id, True)
        self.assertTrue(self.admin.get_provider(p.tenant, p.provider_id).is_active)
        self.admin.remove_provider(p.tenant, p.provider_id)
        with self.assertRaises(NotFound):
            self.admin.get_provider(p.tenant, p.provider_id)

    def test_unknown_provider_is_not_found_everywhere(self) -> None:
        other = self.added()  # another tenant's provider is not found either
        tenant, pid = new_id(), other.provider_id
        calls = [
            lambda: self.admin.get_provider(tenant, pid),
            lambda: self.admin.set_active(tenant, pid, True),
            lambda: self.admin.remove_provider(tenant, pid),
            lambda: self.admin.reset_cursors(tenant, pid, None),
            lambda: self.admin.request_backfill(tenant, pid, None, date(2026, 1, 2)),
            lambda: self.admin.set_first_sync_since_days(tenant, pid, 3),
            lambda: self.admin.set_write_back(tenant, pid, "seen"),
            lambda: self.admin.set_oauth_delegate(tenant, pid, "a@b.c"),
            lambda: self.admin.clear_auth_pause(tenant, pid),
        ]
        for call in calls:
            with self.assertRaises(NotFound):
                call()
        self.assertTrue(self.admin.get_provider(other.tenant, pid).is_active)

    # -- cursors and backfill -------------------------------------------------------

    def test_reset_cursors_of_one_folder_or_all(self) -> None:
        p = self.added()
        cursor = FolderCursor(uid_validity="7", last_uid="42").to_json()
        self.set_cursors(p, {"INBOX": cursor, "Support": cursor})
        self.admin.reset_cursors(p.tenant, p.provider_id, "Support")
        self.assertEqual(list(self.cursors(p)), ["INBOX"])
        self.admin.reset_cursors(p.tenant, p.provider_id, None)
        self.assertEqual(self.cursors(p), {})

    def test_request_backfill_names_cursor_folders_and_filters(self) -> None:
        p = self.added(folder_filters=("INBOX", "*"))
        cursor = FolderCursor(uid_validity="7", last_uid="42").to_json()
        self.set_cursors(p, {"Archive": cursor})
        since = date(2026, 3, 1)
        folders = self.admin.request_backfill(p.tenant, p.provider_id, None, since)
        self.assertEqual(sorted(folders), ["Archive", "INBOX"])
        self.assertEqual(self.admin.request_backfill(p.tenant, p.provider_id, "Sent", since),
                         ["Sent"])
        rows = self.fetch("SELECT folder, since FROM imap_folder_backfill"
                          " WHERE tenant = %s AND provider_id = %s ORDER BY folder",
                          (p.tenant, p.provider_id))
        self.assertEqual([(f, str(s)[:10]) for f, s in rows],
                         [("Archive", "2026-03-01"), ("INBOX", "2026-03-01"),
                          ("Sent", "2026-03-01")])

    def test_first_sync_window(self) -> None:
        p = self.added()
        self.admin.set_first_sync_since_days(p.tenant, p.provider_id, 5)
        self.admin.set_first_sync_since_days(p.tenant, p.provider_id, 0)
        rows = self.fetch("SELECT first_sync_since_days FROM imap_provider_backfill"
                          " WHERE tenant = %s AND provider_id = %s", (p.tenant, p.provider_id))
        self.assertEqual(rows, [(0,)])

    def test_write_back_set_and_cleared(self) -> None:
        p = self.added()
        self.admin.set_write_back(p.tenant, p.provider_id, "move:Done")
        self.assertEqual(self.admin.get_provider(p.tenant, p.provider_id).write_back,
                         "move:Done")
        self.admin.set_write_back(p.tenant, p.provider_id, None)
        self.assertIsNone(self.admin.get_provider(p.tenant, p.provider_id).write_back)

    def test_oauth_delegate_beside_write_back(self) -> None:
        p = self.added()
        self.admin.set_write_back(p.tenant, p.provider_id, "seen")
        self.admin.set_oauth_delegate(p.tenant, p.provider_id, "alice@example.com")
        got = self.admin.get_provider(p.tenant, p.provider_id)
        self.assertEqual((got.write_back, got.oauth_delegate), ("seen", "alice@example.com"))
        self.admin.set_oauth_delegate(p.tenant, p.provider_id, None)
        got = self.admin.get_provider(p.tenant, p.provider_id)
        self.assertEqual((got.write_back, got.oauth_delegate), ("seen", None))

    # -- authentication pause -------------------------------------------------------

    def test_clear_auth_pause_lifts_only_an_auth_failure_pause(self) -> None:
        p = self.added()
        self.pause(p.tenant, p.provider_id, "auth_failure")
        self.assertTrue(self.admin.clear_auth_pause(p.tenant, p.provider_id))
        got = self.admin.get_provider(p.tenant, p.provider_id)
        self.assertEqual((got.inbound_paused_at, got.inbound_auth_failure_count),
                         (None, 0))
        self.pause(p.tenant, p.provider_id, "manual")
        self.assertFalse(self.admin.clear_auth_pause(p.tenant, p.provider_id))
        got = self.admin.get_provider(p.tenant, p.provider_id)
        self.assertIsNotNone(got.inbound_paused_at)
        self.assertEqual(got.inbound_auth_failure_count, 0)

    # -- secrets --------------------------------------------------------------------

    def test_secrets_round_trip_per_tenant(self) -> None:
        tenant, other = new_id(), new_id()
        self.assertIsNone(self.admin.get_secret(tenant, "imap:p:password"))
        self.admin.put_secret(tenant, "imap:p:password", b"\x00sealed\xff")
        self.admin.put_secret(other, "imap:p:password", b"theirs")
        self.assertEqual(self.admin.get_secret(tenant, "imap:p:password"),
                         b"\x00sealed\xff")
        self.admin.put_secret(tenant, "imap:p:password", b"rotated")
        self.assertEqual(self.admin.get_secret(tenant, "imap:p:password"), b"rotated")
        self.admin.delete_secret(tenant, "imap:p:password")
        self.admin.delete_secret(tenant, "imap:p:password")  # absent: no error
        self.assertIsNone(self.admin.get_secret(tenant, "imap:p:password"))
        self.assertEqual(self.admin.get_secret(other, "imap:p:password"), b"theirs")

    # -- poison messages --------------------------------------------------------------

    def test_list_and_retry_poison(self) -> None:
        p = self.added()
        cursor = FolderCursor(uid_validity="7", last_uid="42").to_json()
        self.set_cursors(p, {"INBOX": cursor})
        self.add_failure(p.tenant, p.provider_id, "INBOX", "7", 40)
        q = self.added()
        self.add_failure(q.tenant, q.provider_id, "INBOX", "7", 3)
        [poison] = self.admin.list_poison(p.tenant)
        self.assertEqual((poison.provider_id, poison.folder, poison.uid_validity, poison.uid,
                          poison.failures), (p.provider_id, "INBOX", "7", 40, 1))
        self.assertEqual(len(self.admin.list_poison(q.tenant, q.provider_id)), 1)
        self.assertFalse(self.admin.retry_poison(p.tenant, p.provider_id, "INBOX", "7", 41))
        self.assertTrue(self.admin.retry_poison(p.tenant, p.provider_id, "INBOX", "7", 40))
        self.assertEqual(self.admin.list_poison(p.tenant), [])
        # The cursor moved back below the message, so the next sync fetches it.
        self.assertEqual(self.cursors(p)["INBOX"]["last_uid"], "39")
