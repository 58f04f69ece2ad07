"""Synchronous store access for the admin CLI (no reactor).

``python -m imapsvc provider ...`` adds, lists, switches and removes
providers, stores their secrets and resets cursors. Those are a handful of
statements run once, so the CLI talks to the database directly: sqlite3
through :class:`imapsvc.store.sqlite.SqliteOps` (the very code the service
uses) or psycopg2 for Postgres, with the same tables and columns as
:class:`imapsvc.store.postgres.PostgresStore`.

Every failure a user can cause or meet is an :class:`AdminError` with a
one-line message (no DSN password, no secret).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from datetime import date
from typing import Any, Iterator, Optional

from imapsvc.model import PoisonMessage, ProviderConfig
from imapsvc.store import OPTION_COLUMNS, sorted_capabilities
from imapsvc.store.pg_errors import connect_failure


class AdminError(Exception):
    """A one-line, user-facing reason an admin operation failed."""


class InputError(AdminError):
    """An argument or a setting is wrong, not the operation: exit status 2,
    like argparse's usage errors (``docs/cli.md``)."""


class NotFound(AdminError):
    """The tenant has no such provider."""


class AdminStore:
    """What the CLI needs from a store, synchronously. Subclasses:
    :class:`SqliteAdmin`, :class:`PostgresAdmin`."""

    #: ``"sqlite"`` or ``"postgres"``.
    kind = ""

    def describe(self) -> str:
        """Where the data is, safe to print."""
        raise NotImplementedError

    def add_provider(self, config: ProviderConfig) -> None:
        raise NotImplementedError

    def list_providers(self, tenant: Optional[str] = None) -> list[tuple[ProviderConfig, str]]:
        """``(config, provider_type)`` of every provider, any state."""
        raise NotImplementedError

    def get_provider(self, tenant: str, provider_id: str) -> ProviderConfig:
        """:raises NotFound:"""
        raise NotImplementedError

    def set_active(self, tenant: str, provider_id: str, active: bool) -> None:
        """:raises NotFound:"""
        raise NotImplementedError

    def remove_provider(self, tenant: str, provider_id: str) -> None:
        """:raises NotFound:"""
        raise NotImplementedError

    def reset_cursors(self, tenant: str, provider_id: str, folder: Optional[str]) -> None:
        """:raises NotFound:"""
        raise NotImplementedError

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> list[str]:
        """Store a pending ``resync --since`` (schema/0008). :raises NotFound:"""
        raise NotImplementedError

    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> None:
        """The provider's own first-sync window. :raises NotFound:"""
        raise NotImplementedError

    def set_write_back(self, tenant: str, provider_id: str, mode: Optional[str]) -> None:
        """``imap_provider_options.write_back`` (``None``: the environment
        default). :raises NotFound:"""
        raise NotImplementedError

    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> None:
        """``imap_provider_options.oauth_delegate`` (``None``: the mailbox's
        own user consents). :raises NotFound:"""
        raise NotImplementedError

    def clear_auth_pause(self, tenant: str, provider_id: str) -> bool:
        """New credentials were stored: reset the authentication-failure
        counters and lift an ``auth_failure`` pause (never a ``manual`` or
        ``tenant_cancelled`` one). :return: whether a pause was lifted.
        :raises NotFound:"""
        raise NotImplementedError

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> None:
        raise NotImplementedError

    def get_secret(self, tenant: str, name: str) -> Optional[bytes]:
        raise NotImplementedError

    def delete_secret(self, tenant: str, name: str) -> None:
        raise NotImplementedError

    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> list[PoisonMessage]:
        """Messages with failed fetches (:meth:`IStore.list_poison`)."""
        raise NotImplementedError

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
        """:meth:`IStore.retry_poison`; ``False`` when unknown."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _missing(tenant: str, provider_id: str) -> NotFound:
    return NotFound(f"tenant {tenant} has no provider {provider_id}")


class SqliteAdmin(AdminStore):
    """The embedded store's file.

    :param create: create the file and its schema when missing (``migrate``,
        ``provider add``); otherwise a missing file is an error, so a typo in
        ``IMAPSVC_SQLITE_PATH`` does not quietly start an empty database.
    """

    kind = "sqlite"

    def __init__(self, path: str, create: bool = False) -> None:
        from imapsvc.store.sqlite import SqliteOps
        from imapsvc.store.sqlite_schema import SchemaTooNew, connect, ensure_schema

        self.path = path
        if not create and not os.path.exists(path):
            raise AdminError(
                f"no SQLite database at {path} (IMAPSVC_SQLITE_PATH): "
                "run `python -m imapsvc migrate` or `provider add` first")
        try:
            self.conn = connect(path)
        except sqlite3.Error as e:
            raise AdminError(f"cannot open the SQLite database {path}: {e}") from None
        try:
            self.created = ensure_schema(self.conn)
        except (SchemaTooNew, sqlite3.Error) as e:
            self.conn.close()
            raise AdminError(f"SQLite database {path}: {e}") from None
        self.ops = SqliteOps(self.conn, time.time)

    def describe(self) -> str:
        return f"SQLite {self.path}"

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except sqlite3.IntegrityError as e:
            raise AdminError(_integrity_message(str(e))) from None
        except sqlite3.Error as e:
            raise AdminError(f"SQLite database {self.path}: {e}") from None

    def add_provider(self, config: ProviderConfig) -> None:
        self._guard(self.ops.insert_provider, config)

    def list_providers(self, tenant: Optional[str] = None) -> list[tuple[ProviderConfig, str]]:
        result: list[tuple[ProviderConfig, str]] = self._guard(self.ops.list_providers, tenant)
        return result

    def get_provider(self, tenant: str, provider_id: str) -> ProviderConfig:
        config = self._guard(self.ops.get_provider, tenant, provider_id)
        if config is None:
            raise _missing(tenant, provider_id)
        return config  # type: ignore[no-any-return]

    def set_active(self, tenant: str, provider_id: str, active: bool) -> None:
        if not self._guard(self.ops.set_active, tenant, provider_id, active):
            raise _missing(tenant, provider_id)

    def remove_provider(self, tenant: str, provider_id: str) -> None:
        if not self._guard(self.ops.remove_provider, tenant, provider_id):
            raise _missing(tenant, provider_id)

    def reset_cursors(self, tenant: str, provider_id: str, folder: Optional[str]) -> None:
        if not self._guard(self.ops.reset_cursors, tenant, provider_id, folder):
            raise _missing(tenant, provider_id)

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> list[str]:
        folders = self._guard(self.ops.request_backfill, tenant, provider_id, folder, since)
        if folders is None:
            raise _missing(tenant, provider_id)
        return folders  # type: ignore[no-any-return]

    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> None:
        if not self._guard(self.ops.set_first_sync_since_days, tenant, provider_id, days):
            raise _missing(tenant, provider_id)

    def set_write_back(self, tenant: str, provider_id: str, mode: Optional[str]) -> None:
        if not self._guard(self.ops.set_write_back, tenant, provider_id, mode):
            raise _missing(tenant, provider_id)

    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> None:
        if not self._guard(self.ops.set_oauth_delegate, tenant, provider_id, delegate):
            raise _missing(tenant, provider_id)

    def clear_auth_pause(self, tenant: str, provider_id: str) -> bool:
        def run() -> Optional[str]:
            rows = self.conn.execute(
                "SELECT inbound_pause_reason FROM email_providers WHERE tenant = ? AND id = ?",
                (tenant, provider_id)).fetchall()
            if not rows:
                raise _missing(tenant, provider_id)
            self.ops.reset_auth_failures(tenant, provider_id)
            return rows[0][0]  # type: ignore[no-any-return]

        return self._guard(run) == "auth_failure"

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> None:
        self._guard(self.ops.put_secret, tenant, name, ciphertext)

    def get_secret(self, tenant: str, name: str) -> Optional[bytes]:
        return self._guard(self.ops.get_secret, tenant, name)  # type: ignore[no-any-return]

    def delete_secret(self, tenant: str, name: str) -> None:
        self._guard(self.ops.delete_secret, tenant, name)

    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> list[PoisonMessage]:
        return self._guard(self.ops.list_poison, tenant, provider_id)  # type: ignore[no-any-return]

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
        return bool(self._guard(self.ops.retry_poison, tenant, provider_id, folder,
                                uid_validity, uid))

    def close(self) -> None:
        self.conn.close()


def _integrity_message(text: str) -> str:
    if "mailbox" in text:
        return "the tenant already has a provider with that mailbox"
    if "email_providers" in text or "pkey" in text or "PRIMARY" in text.upper():
        return "the tenant already has a provider with that id"
    return f"refused by the database: {' '.join(text.split())}"


_PG_PROVIDER_SELECT = """
    SELECT p.provider_type, p.tenant, p.id, p.provider_name, p.mailbox,
        c.host, c.port, c.secure, c.allow_starttls, c.auth_type, c.username,
        c.connection_timeout_ms, c.socket_keepalive, c.max_emails_per_sync, c.folder_filters,
        c.oauth_authorize_url, c.oauth_token_url, c.oauth_client_id, c.oauth_scopes,
        c.access_token, c.token_expires_at, c.folder_state, c.server_capabilities,
        c.lease_owner, c.lease_expires_at,
        p.status, p.is_active, p.inbound_paused_at, p.inbound_auth_failure_count,
        GREATEST(p.updated_at, c.updated_at),
        c.oauth_client_secret, c.refresh_token,
        o.write_back, o.oauth_delegate
    FROM email_providers p
    JOIN imap_email_provider_config c ON c.tenant = p.tenant AND c.email_provider_id = p.id
    LEFT JOIN imap_provider_options o ON o.tenant = p.tenant AND o.provider_id = p.id
"""


class PostgresAdmin(AdminStore):
    """The production database, through psycopg2 (autocommit off: every
    method is one transaction)."""

    kind = "postgres"

    def __init__(self, dsn: str) -> None:
        import psycopg2
        import psycopg2.errors  # noqa: F401 (the errors module is not imported by default)

        self._pg = psycopg2
        try:
            self.conn = psycopg2.connect(dsn, connect_timeout=10,
                                         application_name="imapsvc-cli")
        except psycopg2.OperationalError as e:
            raise AdminError(connect_failure(e)) from None
        params = self.conn.get_dsn_parameters()
        self._where = f"{params.get('host', '?')}:{params.get('port', '?')}/{params.get('dbname')}"

    def describe(self) -> str:
        return f"PostgreSQL {self._where}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """psycopg2 errors -> one-line AdminErrors."""
        pg = self._pg
        try:
            yield
        except pg.errors.UndefinedTable:
            raise AdminError("the database has no imapsvc tables: run `python -m imapsvc migrate`"
                             ) from None
        except pg.errors.UniqueViolation as e:
            raise AdminError(_integrity_message(e.diag.constraint_name or str(e))) from None
        except pg.errors.InvalidTextRepresentation:
            raise AdminError("not a valid id (uuid expected)") from None
        except pg.OperationalError as e:
            raise AdminError(f"cannot reach the database: {' '.join(str(e).split())}") from None
        except pg.Error as e:
            raise AdminError(f"refused by the database: {' '.join(str(e).split())}") from None

    def _run(self, sql: str, params: Any = (), fetch: bool = False) -> Any:
        with self._errors(), self.conn, self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if fetch else cur.rowcount

    def add_provider(self, config: ProviderConfig) -> None:
        from psycopg2.extras import Json

        with self._errors(), self.conn, self.conn.cursor() as cur:
            cur.execute(
                "INSERT INTO email_providers (id, tenant, provider_type, provider_name,"
                " mailbox, is_active) VALUES (%s, %s, 'imap', %s, %s, %s)",
                (config.provider_id, config.tenant, config.provider_name, config.mailbox,
                 config.is_active))
            cur.execute(
                "INSERT INTO imap_email_provider_config (email_provider_id, tenant, host,"
                " port, secure, allow_starttls, auth_type, username, connection_timeout_ms,"
                " socket_keepalive, max_emails_per_sync, folder_filters,"
                " oauth_authorize_url, oauth_token_url, oauth_client_id, oauth_scopes,"
                " server_capabilities)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (config.provider_id, config.tenant, config.host, config.port, config.secure,
                 config.allow_starttls, config.auth_type, config.username,
                 config.connection_timeout_ms, config.socket_keepalive,
                 config.max_emails_per_sync, Json(list(config.folder_filters)),
                 config.oauth_authorize_url, config.oauth_token_url,
                 config.oauth_client_id, config.oauth_scopes,
                 Json(sorted_capabilities(config.server_capabilities))))

    def list_providers(self, tenant: Optional[str] = None) -> list[tuple[ProviderConfig, str]]:
        from imapsvc.store import provider_or_invalid
        from imapsvc.store.postgres import provider_from_row

        sql, params = _PG_PROVIDER_SELECT, ()
        if tenant is not None:
            sql, params = sql + " WHERE p.tenant = %s", (tenant,)  # type: ignore[assignment]
        rows = self._run(sql + " ORDER BY p.tenant, p.mailbox", params, fetch=True)
        return [(provider_or_invalid(provider_from_row, r[1:]), r[0]) for r in rows]

    def get_provider(self, tenant: str, provider_id: str) -> ProviderConfig:
        from imapsvc.store import provider_or_invalid
        from imapsvc.store.postgres import provider_from_row

        rows = self._run(_PG_PROVIDER_SELECT + " WHERE p.tenant = %s AND p.id = %s",
                         (tenant, provider_id), fetch=True)
        if not rows:
            raise _missing(tenant, provider_id)
        return provider_or_invalid(provider_from_row, rows[0][1:])

    def set_active(self, tenant: str, provider_id: str, active: bool) -> None:
        if not self._run("UPDATE email_providers SET is_active = %s, updated_at = now()"
                         " WHERE tenant = %s AND id = %s", (active, tenant, provider_id)):
            raise _missing(tenant, provider_id)

    def remove_provider(self, tenant: str, provider_id: str) -> None:
        if not self._run("DELETE FROM email_providers WHERE tenant = %s AND id = %s",
                         (tenant, provider_id)):
            raise _missing(tenant, provider_id)

    def reset_cursors(self, tenant: str, provider_id: str, folder: Optional[str]) -> None:
        if folder is None:
            count = self._run(
                "UPDATE imap_email_provider_config SET folder_state = '{}'::jsonb,"
                " uid_validity = NULL, last_uid = NULL, last_seen_at = NULL, updated_at = now()"
                " WHERE tenant = %s AND email_provider_id = %s", (tenant, provider_id))
        else:
            count = self._run(
                "UPDATE imap_email_provider_config SET folder_state = folder_state - %s,"
                " updated_at = now() WHERE tenant = %s AND email_provider_id = %s",
                (folder, tenant, provider_id))
        if not count:
            raise _missing(tenant, provider_id)

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> list[str]:
        from imapsvc.store import backfill_folders

        with self._errors(), self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT folder_state, folder_filters FROM imap_email_provider_config"
                        " WHERE tenant = %s AND email_provider_id = %s", (tenant, provider_id))
            rows = cur.fetchall()
            if not rows:
                raise _missing(tenant, provider_id)
            folders = backfill_folders(folder, rows[0][0], rows[0][1])
            for name in folders:  # as PostgresStore.request_backfill
                cur.execute(
                    "INSERT INTO imap_folder_backfill (tenant, provider_id, folder, since)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, provider_id, folder)"
                    " DO UPDATE SET since = EXCLUDED.since, requested_at = now()",
                    (tenant, provider_id, name, since))
        return folders

    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> None:
        rows = self._run(
            "INSERT INTO imap_provider_backfill (tenant, provider_id, first_sync_since_days)"
            " SELECT tenant, id, %s FROM email_providers WHERE tenant = %s AND id = %s"
            " ON CONFLICT (tenant, provider_id) DO UPDATE SET"
            " first_sync_since_days = EXCLUDED.first_sync_since_days, updated_at = now()"
            " RETURNING 1", (days, tenant, provider_id), fetch=True)
        if not rows:
            raise _missing(tenant, provider_id)

    def set_write_back(self, tenant: str, provider_id: str, mode: Optional[str]) -> None:
        self._set_option(tenant, provider_id, "write_back", mode)

    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> None:
        self._set_option(tenant, provider_id, "oauth_delegate", delegate)

    def _set_option(self, tenant: str, provider_id: str, column: str,
                    value: Optional[str]) -> None:
        assert column in OPTION_COLUMNS, column  # a name in SQL, never user input
        with self._errors(), self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT 1 FROM email_providers WHERE tenant = %s AND id = %s",
                        (tenant, provider_id))
            if cur.fetchone() is None:
                raise _missing(tenant, provider_id)
            cur.execute(
                f"INSERT INTO imap_provider_options (tenant, provider_id, {column}, updated_at)"
                " VALUES (%s, %s, %s, now()) ON CONFLICT (tenant, provider_id) DO UPDATE"
                f" SET {column} = excluded.{column}, updated_at = now()",
                (tenant, provider_id, value))
            # Read with the provider row: the next discovery pass applies it.
            cur.execute("UPDATE imap_email_provider_config SET updated_at = now()"
                        " WHERE tenant = %s AND email_provider_id = %s", (tenant, provider_id))

    def clear_auth_pause(self, tenant: str, provider_id: str) -> bool:
        with self._errors(), self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT inbound_pause_reason FROM email_providers"
                        " WHERE tenant = %s AND id = %s FOR UPDATE", (tenant, provider_id))
            rows = cur.fetchall()
            if not rows:
                raise _missing(tenant, provider_id)
            # As PostgresStore.reset_auth_failures (what a successful login does).
            cur.execute(
                "UPDATE email_providers SET inbound_auth_failure_count = 0,"
                " inbound_auth_failure_code = NULL,"
                " inbound_paused_at = CASE WHEN inbound_pause_reason = 'auth_failure'"
                "   THEN NULL ELSE inbound_paused_at END,"
                " inbound_pause_reason = CASE WHEN inbound_pause_reason = 'auth_failure'"
                "   THEN NULL ELSE inbound_pause_reason END,"
                " updated_at = now() WHERE tenant = %s AND id = %s",
                (tenant, provider_id))
            return bool(rows[0][0] == "auth_failure")

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> None:
        self._run(
            "INSERT INTO imap_secrets (tenant, name, ciphertext) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant, name) DO UPDATE"
            " SET ciphertext = EXCLUDED.ciphertext, updated_at = now()",
            (tenant, name, self._pg.Binary(bytes(ciphertext))))

    def get_secret(self, tenant: str, name: str) -> Optional[bytes]:
        rows = self._run("SELECT ciphertext FROM imap_secrets WHERE tenant = %s AND name = %s",
                         (tenant, name), fetch=True)
        return bytes(rows[0][0]) if rows else None

    def delete_secret(self, tenant: str, name: str) -> None:
        self._run("DELETE FROM imap_secrets WHERE tenant = %s AND name = %s", (tenant, name))

    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> list[PoisonMessage]:
        from imapsvc.store.postgres import LIST_POISON_SQL, poison_from_row

        rows = self._run(LIST_POISON_SQL, (tenant, tenant, provider_id, provider_id),
                         fetch=True)
        return [poison_from_row(r) for r in rows]

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
        from imapsvc.store.postgres import retry_poison_statements

        forget, unskip, rewind = retry_poison_statements(tenant, provider_id, folder,
                                                         uid_validity, uid)
        with self._errors(), self.conn, self.conn.cursor() as cur:
            cur.execute(*forget)
            if cur.rowcount == 0:
                return False
            cur.execute(*unskip)
            cur.execute(*rewind)
        return True

    def close(self) -> None:
        self.conn.close()


def open_store(database_url: str, sqlite_path: str, create: bool = False) -> AdminStore:
    """Postgres when ``database_url`` is set, else the SQLite file."""
    if database_url:
        return PostgresAdmin(database_url)
    return SqliteAdmin(sqlite_path, create=create)


def folder_state_json(config: ProviderConfig) -> str:
    """The cursors of a provider as compact JSON (for ``provider list --json``)."""
    return json.dumps({k: v.to_json() for k, v in config.folder_state.items()}, sort_keys=True)
