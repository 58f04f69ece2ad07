"""The store contract against :class:`imapsvc.store.memory.MemoryStore`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc.interfaces import IStore
from imapsvc.model import FolderCursor
from imapsvc.store.memory import MemoryStore
from tests.store_contract import StoreContractMixin


class MemoryStoreContractTests(StoreContractMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        # Start at a realistic time so tests can speak in real datetimes.
        self.clock.advance(1767225600)  # 2026-01-01T00:00:00Z
        self.store = MemoryStore(self.clock)

    def insert_provider(self, **kwargs: Any) -> Any:
        return self.store.add_provider(**kwargs)

    def set_folder_filters_raw(self, tenant: str, provider_id: str, value: Any) -> None:
        self.store.update_provider(tenant, provider_id, folder_filters=value)

    def expire_lease(self, tenant: str, provider_id: str) -> None:
        self.store.expire_lease(tenant, provider_id)

    def provider_row(self, tenant: str, provider_id: str) -> Any:
        row = self.store.provider_row(tenant, provider_id)
        row["folder_state"] = {k: v.to_json() for k, v in row["folder_state"].items()}
        return row

    def ledger_rows(self, tenant: str, provider_id: str) -> Any:
        return self.store.ledger_rows(tenant, provider_id)

    def backdate(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def now(self) -> datetime:
        return self.store.now()


class MemoryStoreExtrasTests(unittest.TestCase):
    """What only the fake has: its test helpers and its clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock)

    def test_provides_istore(self) -> None:
        from zope.interface.verify import verifyObject

        self.assertTrue(verifyObject(IStore, self.store))

    def test_lease_expires_by_injected_clock(self) -> None:
        p = self.store.add_provider()
        self.assertTrue(self.successResultOf(
            self.store.acquire_lease(p.tenant, p.provider_id, "a", 1000)))
        self.clock.advance(0.999)
        self.assertFalse(self.successResultOf(
            self.store.acquire_lease(p.tenant, p.provider_id, "b", 1000)))
        self.clock.advance(0.001)
        self.assertTrue(self.successResultOf(
            self.store.acquire_lease(p.tenant, p.provider_id, "b", 1000)))

    def test_set_active_and_paused(self) -> None:
        p = self.store.add_provider()
        self.store.set_active(p.tenant, p.provider_id, False)
        self.assertEqual(self.successResultOf(self.store.list_active_providers()), [])
        self.store.set_active(p.tenant, p.provider_id, True)
        self.store.set_paused(p.tenant, p.provider_id, "tenant_cancelled")
        self.assertEqual(self.successResultOf(self.store.list_active_providers()), [])
        self.store.set_paused(p.tenant, p.provider_id, None)
        self.assertEqual(len(self.successResultOf(self.store.list_active_providers())), 1)

    def test_returned_config_is_a_copy(self) -> None:
        p = self.store.add_provider(folder_state={"INBOX": FolderCursor("1", "2")})
        got = self.successResultOf(self.store.get_provider(p.tenant, p.provider_id))
        got.folder_state["INBOX"] = FolderCursor("9", "9")  # type: ignore[index]
        again = self.successResultOf(self.store.get_provider(p.tenant, p.provider_id))
        self.assertEqual(again.folder_state["INBOX"], FolderCursor("1", "2"))

    def test_published_record_needs_fields(self) -> None:
        from imapsvc.model import MessageRecord

        p = self.store.add_provider()
        self.successResultOf(self.store.acquire_lease(p.tenant, p.provider_id, "a", 1000))
        bad = MessageRecord("k", "INBOX", "1", 1, None, "published", "e", fields=None)
        self.failureResultOf(
            self.store.record_batch(p.tenant, p.provider_id, "INBOX", "a", [bad], None),
            ValueError)
