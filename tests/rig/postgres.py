"""A fresh PostgreSQL database for one test run.

:func:`database_dsn` creates ``imapsvc_test_<random>`` on the admin server
(``$IMAPSVC_TEST_PG_DSN``, default ``postgresql://postgres@127.0.0.1:5432/postgres``),
applies the migrations, and drops it when the process exits. Every test in
the run shares it; :func:`truncate_all` empties the tables between tests.

When the server does not answer the tests are skipped, unless ``$CI`` is
set: on CI a missing database is a failure, not a skip.
"""

from __future__ import annotations

import atexit
import os
import secrets
from typing import Any, Optional

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.trial.unittest import SkipTest

from imapsvc.store.migrate import apply_migrations

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

TABLES = (
    "imap_message_ledger",
    "imap_event_outbox",
    "imap_secrets",
    "imap_oauth_states",
    "imap_message_failures",
    "imap_email_provider_config",
    "email_providers",
)

_state: dict[str, Any] = {}


def admin_dsn() -> str:
    return os.environ.get("IMAPSVC_TEST_PG_DSN") or DEFAULT_ADMIN_DSN


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _connect_admin() -> Any:
    conn = psycopg2.connect(admin_dsn(), connect_timeout=5)
    conn.autocommit = True
    return conn


def _drop(name: str) -> None:
    try:
        conn = _connect_admin()
    except psycopg2.Error:
        return
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def database_dsn() -> str:
    """The DSN of this run's database, created (and migrated) on first use.

    :raises SkipTest: Postgres is unreachable and ``$CI`` is not set.
    :raises RuntimeError: Postgres is unreachable under ``$CI``.
    """
    if "dsn" in _state:
        return str(_state["dsn"])
    if "error" in _state:
        _unreachable(_state["error"])
    try:
        conn = _connect_admin()
    except psycopg2.OperationalError as e:
        _state["error"] = " ".join(str(e).split())
        _unreachable(_state["error"])
    name = "imapsvc_test_" + secrets.token_hex(6)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    atexit.register(_drop, name)
    dsn = make_dsn(admin_dsn(), dbname=name)
    apply_migrations(dsn)
    _state["dsn"] = dsn
    _state["name"] = name
    return dsn


def database_name() -> Optional[str]:
    return _state.get("name")


def _unreachable(reason: str) -> None:
    message = f"PostgreSQL at {_where()} is unreachable: {reason}"
    if _on_ci():
        raise RuntimeError(message + " (CI is set: failing instead of skipping)")
    raise SkipTest(message)


def _where() -> str:
    parts = parse_dsn(admin_dsn())
    return "{}:{}".format(parts.get("host", "localhost"), parts.get("port", "5432"))


def truncate_all(dsn: str) -> None:
    """Empty every imapsvc table (and restart the outbox ids)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("TRUNCATE {} RESTART IDENTITY CASCADE".format(", ".join(TABLES)))
    finally:
        conn.close()


def execute(dsn: str, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run one statement synchronously (test setup only); rows if any."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description is not None else []
    finally:
        conn.close()


def fetch_dicts(dsn: str, query: str, params: Any = ()) -> list[dict[str, Any]]:
    """Rows of one query as dicts keyed by column name."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            names = [d.name for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        conn.close()
