"""The admin CLI's synchronous store on PostgreSQL, through psycopg2 (see
:mod:`imapsvc.store.admin_sync`)."""

from __future__ import annotations

import contextlib
from datetime import date
from typing import Any, Iterator, Optional

from imapsvc.model import PoisonMessage, ProviderConfig
from imapsvc.store import (
    OPTION_COLUMNS,
    backfill_folders,
    provider_or_invalid,
    sorted_capabilities,
)
from imapsvc.store.admin_sync import AdminError, AdminStore, integrity_message, missing
from imapsvc.store.pg_base import (
    LIST_POISON_SQL,
    poison_from_row,
    provider_from_row,
    retry_poison_statements,
)
from imapsvc.store.pg_errors import connect_failure
from imapsvc.store.sql_rows import RESET_AUTH_FAILURES, provider_select

#: The provider select with the provider's type first (the CLI lists every type).
_PG_PROVIDER_SELECT = provider_select("GREATEST", leading="p.provider_type")


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
            raise AdminError(integrity_message(e.diag.constraint_name or str(e))) from None
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

        sql, params = _PG_PROVIDER_SELECT, ()
        if tenant is not None:
            sql, params = sql + " WHERE p.tenant = %s", (tenant,)  # type: ignore[assignment]
        rows = self._run(sql + " ORDER BY p.tenant, p.mailbox", params, fetch=True)
        return [(provider_or_invalid(provider_from_row, r[1:]), r[0]) for r in rows]

    def get_provider(self, tenant: str, provider_id: str) -> ProviderConfig:

        rows = self._run(_PG_PROVIDER_SELECT + " WHERE p.tenant = %s AND p.id = %s",
                         (tenant, provider_id), fetch=True)
        if not rows:
            raise missing(tenant, provider_id)
        return provider_or_invalid(provider_from_row, rows[0][1:])

    def set_active(self, tenant: str, provider_id: str, active: bool) -> None:
        if not self._run("UPDATE email_providers SET is_active = %s, updated_at = now()"
                         " WHERE tenant = %s AND id = %s", (active, tenant, provider_id)):
            raise missing(tenant, provider_id)

    def remove_provider(self, tenant: str, provider_id: str) -> None:
        if not self._run("DELETE FROM email_providers WHERE tenant = %s AND id = %s",
                         (tenant, provider_id)):
            raise missing(tenant, provider_id)

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
            raise missing(tenant, provider_id)

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> list[str]:
        with self._errors(), self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT folder_state, folder_filters FROM imap_email_provider_config"
                        " WHERE tenant = %s AND email_provider_id = %s", (tenant, provider_id))
            rows = cur.fetchall()
            if not rows:
                raise missing(tenant, provider_id)
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
            raise missing(tenant, provider_id)

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
                raise missing(tenant, provider_id)
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
                raise missing(tenant, provider_id)
            # What a successful login does (PostgresStore.reset_auth_failures).
            cur.execute(RESET_AUTH_FAILURES.format(now="now()"), (tenant, provider_id))
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
        rows = self._run(LIST_POISON_SQL, (tenant, tenant, provider_id, provider_id),
                         fetch=True)
        return [poison_from_row(r) for r in rows]

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
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
