"""The AdminStore contract against :class:`imapsvc.store.admin_postgres.PostgresAdmin`
on the real Postgres (the SQLite one runs in ``tests.unit.test_admin_store``)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from imapsvc.store.admin_postgres import PostgresAdmin
from tests.admin_store_contract import AdminStoreContractMixin
from tests.rig import postgres as rig


class PostgresAdminContractTests(AdminStoreContractMixin, TestCase):
    def setUp(self) -> None:
        self.dsn = rig.database_dsn()
        rig.truncate_all(self.dsn)
        self.admin = PostgresAdmin(self.dsn)
        self.addCleanup(self.admin.close)

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return rig.execute(self.dsn, sql, params)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        rig.execute(self.dsn, sql, params)

    def pause(self, tenant: str, provider_id: str, reason: str) -> None:
        self.execute("UPDATE email_providers SET inbound_paused_at = now(),"
                     " inbound_pause_reason = %s, inbound_auth_failure_count = 3"
                     " WHERE tenant = %s AND id = %s", (reason, tenant, provider_id))

    def add_failure(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                    uid: int) -> None:
        self.execute("INSERT INTO imap_message_failures (tenant, provider_id, folder,"
                     " uid_validity, uid, failures, reason) VALUES (%s, %s, %s, %s, %s, 1,"
                     " 'fetch timed out')", (tenant, provider_id, folder, uid_validity, uid))

    def test_description_names_no_password(self) -> None:
        self.assertNotIn("password", self.admin.describe().lower())
        self.assertTrue(self.admin.describe().startswith("PostgreSQL "))
