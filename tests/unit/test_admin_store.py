"""The AdminStore contract against :class:`imapsvc.store.admin_sync.SqliteAdmin`
(the Postgres one runs in ``tests.integration.test_admin_store_postgres``)."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from imapsvc.store.admin_sync import AdminError, SqliteAdmin
from imapsvc.store.sql_rows import qmark
from tests.admin_store_contract import AdminStoreContractMixin


class SqliteAdminContractTests(AdminStoreContractMixin, SynchronousTestCase):
    def setUp(self) -> None:
        path = os.path.join(self.mktemp() + "-dir", "imapsvc.sqlite3")
        os.makedirs(os.path.dirname(path))
        self.admin = SqliteAdmin(path, create=True)
        self.addCleanup(self.admin.close)

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self.admin.conn.execute(qmark(sql), params).fetchall())

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.admin.conn.execute(qmark(sql), params)

    def pause(self, tenant: str, provider_id: str, reason: str) -> None:
        self.execute("UPDATE email_providers SET inbound_paused_at = %s,"
                     " inbound_pause_reason = %s, inbound_auth_failure_count = 3"
                     " WHERE tenant = %s AND id = %s",
                     (self.admin.ops.now(), reason, tenant, provider_id))

    def add_failure(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                    uid: int) -> None:
        self.admin.ops.note_message_failure(tenant, provider_id, folder, uid_validity, uid,
                                            "fetch timed out")


class SqliteAdminOpeningTests(SynchronousTestCase):
    def test_missing_file_is_refused_unless_created(self) -> None:
        path = self.mktemp()
        with self.assertRaises(AdminError) as caught:
            SqliteAdmin(path)
        self.assertIn("migrate", str(caught.exception))
        self.assertFalse(os.path.exists(path))
        admin = SqliteAdmin(path, create=True)
        self.addCleanup(admin.close)
        self.assertTrue(admin.created)
