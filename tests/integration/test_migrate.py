"""``imapsvc migrate`` against a real PostgreSQL: a fresh database per test."""

from __future__ import annotations

import io
import secrets
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn
from twisted.trial import unittest

from imapsvc.store import migrate
from tests.rig import postgres as rig


class MigrateTests(unittest.TestCase):
    def setUp(self) -> None:
        rig.database_dsn()  # skips (or fails on CI) when Postgres is unreachable
        self.name = "imapsvc_test_mig_" + secrets.token_hex(4)
        admin = psycopg2.connect(rig.admin_dsn())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        admin.close()
        self.addCleanup(rig._drop, self.name)
        self.dsn = make_dsn(rig.admin_dsn(), dbname=self.name)

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = migrate.main(list(argv), out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def test_applies_in_order_then_nothing(self) -> None:
        files = [name for _, name, _ in migrate.list_migrations()]
        self.assertEqual(files[:3], ["0001_contract_tables.sql", "0002_imapsvc_tables.sql",
                                     "0003_notify_trigger.sql"])
        code, out, err = self.run_main("--database-url", self.dsn)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual([line for line in out.splitlines() if line.startswith("applied")],
                         [f"applied {name}" for name in files])
        recorded = rig.execute(self.dsn, "SELECT version, name FROM imap_schema_migrations"
                                         " ORDER BY version")
        self.assertEqual([r[1] for r in recorded], files)
        code, out, err = self.run_main("--database-url", self.dsn)
        self.assertEqual(code, 0)
        self.assertIn("nothing to apply", out)
        self.assertEqual(migrate.apply_migrations(self.dsn), [])

    def test_works_where_the_main_app_created_the_tables(self) -> None:
        contract = migrate.schema_dir() / "0001_contract_tables.sql"
        rig.execute(self.dsn, contract.read_text())
        self.assertEqual(len(migrate.apply_migrations(self.dsn)), len(migrate.list_migrations()))

    def test_constraints(self) -> None:
        migrate.apply_migrations(self.dsn)
        tenant = "11111111-1111-1111-1111-111111111111"
        insert = ("INSERT INTO email_providers (tenant, provider_type, provider_name, mailbox,"
                  " status, inbound_paused_at, inbound_pause_reason) VALUES (%s, 'imap', 'n',"
                  " %s, %s, %s, %s)")
        rig.execute(self.dsn, insert, (tenant, "ok@x", "configuring", None, None))
        bad = [
            ("a@x", "sleeping", None, None),  # unknown status
            ("b@x", "error", "2026-01-01T00:00:00Z", None),  # paused without reason
            ("c@x", "error", None, "manual"),  # reason without pause
            ("d@x", "error", "2026-01-01T00:00:00Z", "bored"),  # unknown reason
            ("ok@x", "error", None, None),  # mailbox twice in one tenant
        ]
        for values in bad:
            with self.assertRaises(psycopg2.IntegrityError, msg=repr(values)):
                rig.execute(self.dsn, insert, (tenant,) + values)

    def test_unreachable_database_one_line_on_stderr(self) -> None:
        code, out, err = self.run_main(
            "--database-url", "postgresql://postgres:hunter2@127.0.0.1:1/nothing")
        self.assertNotEqual(code, 0)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("cannot reach the database", err)
        self.assertNotIn("hunter2", err + out)

    def test_failed_migration_leaves_nothing(self) -> None:
        directory = self.mktemp()
        import os
        import shutil

        os.makedirs(directory)
        for _, _name, path in migrate.list_migrations():
            shutil.copy(path, directory)
        with open(os.path.join(directory, "0099_broken.sql"), "w") as f:
            f.write("CREATE TABLE imap_half (x int); SELECT no_such_function();")
        from pathlib import Path

        with self.assertRaises(migrate.MigrationError) as caught:
            migrate.apply_migrations(self.dsn, Path(directory))
        self.assertIn("0099_broken.sql", str(caught.exception))
        rows: Any = rig.execute(self.dsn, "SELECT to_regclass('imap_half') IS NULL,"
                                " (SELECT max(version) FROM imap_schema_migrations)")
        last = max(version for version, _name, _path in migrate.list_migrations())
        self.assertEqual(rows[0], (True, last))
