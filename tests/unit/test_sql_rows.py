"""The provider select and row mapping both SQL stores share
(imapsvc.store.sql_rows)."""

from __future__ import annotations

import re

import attr
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.model import ProviderConfig
from imapsvc.store.sql_rows import (
    PROVIDER_FIELDS,
    RESET_AUTH_FAILURES,
    provider_config,
    provider_select,
    provider_values,
    qmark,
)


def row(**values: object) -> list[object]:
    base = {field: None for field in PROVIDER_FIELDS}
    base.update(tenant="t", provider_id="p", host="imap.example.com", port=993,
                folder_state={}, server_capabilities=[], is_active=1)
    base.update(values)
    return [base[field] for field in PROVIDER_FIELDS]


class ProviderSelectTests(SynchronousTestCase):
    def test_every_config_field_is_read(self) -> None:
        # A new ProviderConfig field must be selected, or both stores drop it.
        fields = {f.name for f in attr.fields(ProviderConfig)} - {"config_error"}
        self.assertEqual(set(PROVIDER_FIELDS), fields)

    def test_columns_follow_the_fields_in_order(self) -> None:
        sql = provider_select("GREATEST")
        # Commas inside a call's parentheses separate no columns.
        columns = re.split(r",\s*(?![^()]*\))", sql[len("SELECT "):sql.index("FROM")])
        self.assertEqual(len(columns), len(PROVIDER_FIELDS))
        self.assertEqual(columns[:2], ["p.tenant", "p.id"])
        self.assertEqual(columns[PROVIDER_FIELDS.index("updated_at")],
                         "GREATEST(p.updated_at, c.updated_at)")
        self.assertEqual([c.strip() for c in columns[-2:]], ["o.write_back", "o.oauth_delegate"])
        self.assertIn("c.folder_state", columns)
        self.assertIn("p.inbound_paused_at", columns)

    def test_leading_column_comes_first(self) -> None:
        sql = provider_select("max", leading="p.provider_type")
        self.assertTrue(sql.startswith("SELECT p.provider_type, p.tenant, p.id,"))
        self.assertIn("max(p.updated_at, c.updated_at)", sql)


class ProviderConfigTests(SynchronousTestCase):
    def test_values_become_a_config(self) -> None:
        config = provider_config(provider_values(row(
            socket_keepalive=0, max_emails_per_sync=None, folder_filters=["INBOX", "Support"],
            folder_state={"INBOX": {"uid_validity": "7", "last_uid": "3"}, "bad": 5},
            server_capabilities=["IDLE"], oauth_client_secret="", write_back="seen")))
        self.assertEqual((config.tenant, config.provider_id, config.port), ("t", "p", 993))
        self.assertIs(config.socket_keepalive, False)
        self.assertEqual(config.max_emails_per_sync, 50)
        self.assertEqual(config.folder_filters, ("INBOX", "Support"))
        self.assertEqual(list(config.folder_state), ["INBOX"])
        self.assertEqual(config.folder_state["INBOX"].last_uid, "3")
        self.assertEqual(config.server_capabilities, ("IDLE",))
        self.assertIsNone(config.oauth_client_secret)
        self.assertEqual(config.write_back, "seen")

    def test_a_row_without_the_options_columns(self) -> None:
        config = provider_config(provider_values(row(write_back="seen")[:-2]))
        self.assertIsNone(config.write_back)
        config = provider_config(provider_values(row(write_back="seen", oauth_delegate="a@b.c")))
        self.assertEqual((config.write_back, config.oauth_delegate), ("seen", "a@b.c"))
        # schema/0007 without 0009: the delegate reads as absent.
        config = provider_config(provider_values(row(write_back="seen")[:-1]))
        self.assertEqual((config.write_back, config.oauth_delegate), ("seen", None))

    def test_unreadable_port_raises(self) -> None:
        with self.assertRaises((TypeError, ValueError)):
            provider_config(provider_values(row(port=None)))


class StatementTests(SynchronousTestCase):
    def test_qmark(self) -> None:
        sql = qmark(RESET_AUTH_FAILURES.format(now="?"))
        self.assertNotIn("%s", sql)
        self.assertEqual(sql.count("?"), 3)
        self.assertIn("inbound_pause_reason = 'auth_failure'", sql)
