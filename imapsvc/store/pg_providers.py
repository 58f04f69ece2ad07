"""PostgresStore's providers, cursors, backfill, options, secrets,
authentication failures and OAuth state."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Optional, Sequence

import psycopg2
from psycopg2.extras import Json
from twisted.internet import defer

from imapsvc.interfaces import LeaseLost
from imapsvc.model import BackfillState, FolderCursor
from imapsvc.store import (
    OPTION_COLUMNS,
    backfill_folders,
    provider_or_invalid,
    sorted_capabilities,
)
from imapsvc.store.pg_base import (
    LOCK_LEASE,
    PROVIDER_SELECT,
    WRITE_CURSOR,
    PgBase,
    provider_from_row,
)
from imapsvc.store.sql_rows import RESET_AUTH_FAILURES


class PgProviders(PgBase):
    """Providers and their per-provider columns."""

    @defer.inlineCallbacks
    def list_active_providers(self, tenant: Optional[str] = None) -> Any:
        sql = (PROVIDER_SELECT
               + " WHERE p.provider_type = 'imap' AND p.is_active"
               " AND p.inbound_paused_at IS NULL")
        params: tuple[Any, ...] = ()
        if tenant is not None:
            sql += " AND p.tenant = %s"
            params = (tenant,)
        rows = yield self._query(sql + " ORDER BY p.tenant, p.id", params)
        return [provider_or_invalid(provider_from_row, r) for r in rows]

    @defer.inlineCallbacks
    def get_provider(self, tenant: str, provider_id: str) -> Any:
        rows = yield self._query(
            PROVIDER_SELECT + " WHERE p.tenant = %s AND p.id = %s",
            (tenant, provider_id))
        return provider_or_invalid(provider_from_row, rows[0]) if rows else None

    @defer.inlineCallbacks
    def read_cursor(self, tenant: str, provider_id: str, folder: str) -> Any:
        rows = yield self._query(
            "SELECT folder_state -> %s FROM imap_email_provider_config"
            " WHERE tenant = %s AND email_provider_id = %s",
            (folder, tenant, provider_id))
        if not rows or not isinstance(rows[0][0], dict):
            return None
        return FolderCursor.from_json(rows[0][0])

    @defer.inlineCallbacks
    def read_modseq(self, tenant: str, provider_id: str, folder: str) -> Any:
        rows = yield self._query(
            "SELECT uid_validity, highest_modseq FROM imap_folder_modseq"
            " WHERE tenant = %s AND provider_id = %s AND folder = %s",
            (tenant, provider_id, folder))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def save_modseq(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                    modseq: Optional[int], owner: str) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(LOCK_LEASE, (tenant, provider_id, owner))
            if not cur.fetchall():
                raise LeaseLost(f"{tenant}/{provider_id}")
            if modseq is None:
                yield cur.execute(
                    "DELETE FROM imap_folder_modseq"
                    " WHERE tenant = %s AND provider_id = %s AND folder = %s",
                    (tenant, provider_id, folder))
                return
            yield cur.execute(
                "INSERT INTO imap_folder_modseq (tenant, provider_id, folder, uid_validity,"
                " highest_modseq, updated_at) VALUES (%s, %s, %s, %s, %s, now())"
                " ON CONFLICT (tenant, provider_id, folder) DO UPDATE SET"
                " uid_validity = excluded.uid_validity,"
                " highest_modseq = excluded.highest_modseq, updated_at = now()",
                (tenant, provider_id, folder, str(uid_validity), int(modseq)))

        return self._interact(run)

    def write_cursor(self, tenant: str, provider_id: str, folder: str, cursor: FolderCursor,
                     owner: str) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(LOCK_LEASE, (tenant, provider_id, owner))
            if not cur.fetchall():
                raise LeaseLost(f"{tenant}/{provider_id}")
            yield cur.execute(WRITE_CURSOR,
                              self._cursor_params(tenant, provider_id, folder, cursor))

        return self._interact(run)

    def reset_cursors(self, tenant: str, provider_id: str,
                      folder: Optional[str] = None) -> defer.Deferred:
        if folder is None:
            d = self._query(
                "UPDATE imap_email_provider_config SET folder_state = '{}'::jsonb,"
                " uid_validity = NULL, last_uid = NULL, last_seen_at = NULL, updated_at = now()"
                " WHERE tenant = %s AND email_provider_id = %s",
                (tenant, provider_id))
        else:
            d = self._query(
                "UPDATE imap_email_provider_config SET folder_state = folder_state - %s,"
                " updated_at = now() WHERE tenant = %s AND email_provider_id = %s",
                (folder, tenant, provider_id))
        return d.addCallback(lambda _: None)

    @defer.inlineCallbacks
    def read_backfill(self, tenant: str, provider_id: str, folders: Sequence[str]) -> Any:
        rows = yield self._query(
            "SELECT (SELECT first_sync_since_days FROM imap_provider_backfill"
            "        WHERE tenant = %s AND provider_id = %s),"
            " (SELECT min(since) FROM imap_folder_backfill"
            "  WHERE tenant = %s AND provider_id = %s AND folder = ANY(%s))",
            (tenant, provider_id, tenant, provider_id, list(folders)))
        days, since = rows[0] if rows else (None, None)
        return BackfillState(days, since)

    @defer.inlineCallbacks
    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> Any:
        if days is not None and days < 0:
            raise ValueError("first_sync_since_days must be >= 0")
        rows = yield self._query(
            "INSERT INTO imap_provider_backfill (tenant, provider_id, first_sync_since_days)"
            " SELECT tenant, id, %s FROM email_providers WHERE tenant = %s AND id = %s"
            " ON CONFLICT (tenant, provider_id) DO UPDATE SET"
            " first_sync_since_days = EXCLUDED.first_sync_since_days, updated_at = now()"
            " RETURNING 1",
            (days, tenant, provider_id))
        return bool(rows)

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(
                "SELECT folder_state, folder_filters FROM imap_email_provider_config"
                " WHERE tenant = %s AND email_provider_id = %s", (tenant, provider_id))
            rows = cur.fetchall()
            if not rows:
                return None
            folders = backfill_folders(folder, rows[0][0], rows[0][1])
            for name in folders:  # a handful of folders
                yield cur.execute(
                    "INSERT INTO imap_folder_backfill (tenant, provider_id, folder, since)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, provider_id, folder)"
                    " DO UPDATE SET since = EXCLUDED.since, requested_at = now()",
                    (tenant, provider_id, name, since))
            return folders

        return self._interact(run)

    def complete_backfill(self, tenant: str, provider_id: str, folders: Sequence[str],
                          since: date) -> defer.Deferred:
        return self._query(
            "DELETE FROM imap_folder_backfill WHERE tenant = %s AND provider_id = %s"
            " AND folder = ANY(%s) AND since >= %s",
            (tenant, provider_id, list(folders), since)).addCallback(lambda _: None)

    def set_write_back(self, tenant: str, provider_id: str,
                       mode: Optional[str]) -> defer.Deferred:
        return self._set_option(tenant, provider_id, "write_back", mode)

    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> defer.Deferred:
        return self._set_option(tenant, provider_id, "oauth_delegate", delegate)

    def _set_option(self, tenant: str, provider_id: str, column: str,
                    value: Optional[str]) -> defer.Deferred:
        assert column in OPTION_COLUMNS, column  # a name in SQL, never user input

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute("SELECT 1 FROM email_providers WHERE tenant = %s AND id = %s",
                              (tenant, provider_id))
            if not cur.fetchall():
                return False
            yield cur.execute(
                f"INSERT INTO imap_provider_options (tenant, provider_id, {column}, updated_at)"
                " VALUES (%s, %s, %s, now()) ON CONFLICT (tenant, provider_id) DO UPDATE"
                f" SET {column} = excluded.{column}, updated_at = now()",
                (tenant, provider_id, value))
            # The option is read with the provider row: the next discovery pass
            # sees it (the NOTIFY trigger ignores updated_at-only updates).
            yield cur.execute(
                "UPDATE imap_email_provider_config SET updated_at = now()"
                " WHERE tenant = %s AND email_provider_id = %s", (tenant, provider_id))
            return True

        return self._interact(run)

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> defer.Deferred:
        return self._query(
            "INSERT INTO imap_secrets (tenant, name, ciphertext) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant, name) DO UPDATE"
            " SET ciphertext = EXCLUDED.ciphertext, updated_at = now()",
            (tenant, name, psycopg2.Binary(bytes(ciphertext))),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def get_secret(self, tenant: str, name: str) -> Any:
        rows = yield self._query(
            "SELECT ciphertext FROM imap_secrets WHERE tenant = %s AND name = %s",
            (tenant, name))
        # bytea arrives as a memoryview.
        return bytes(rows[0][0]) if rows else None

    def delete_secret(self, tenant: str, name: str) -> defer.Deferred:
        return self._query(
            "DELETE FROM imap_secrets WHERE tenant = %s AND name = %s", (tenant, name),
        ).addCallback(lambda _: None)

    def set_provider_status(self, tenant: str, provider_id: str, status: str,
                            error_message: Optional[str] = None,
                            owner: Optional[str] = None) -> defer.Deferred:
        return self._fenced(
            tenant, provider_id, owner,
            "UPDATE email_providers SET status = %s, error_message = %s, updated_at = now()"
            " WHERE tenant = %s AND id = %s",
            (status, error_message, tenant, provider_id))

    def set_last_error(self, tenant: str, provider_id: str,
                       last_error: Optional[str]) -> defer.Deferred:
        return self._query(
            "UPDATE imap_email_provider_config SET last_error = %s, updated_at = now()"
            " WHERE tenant = %s AND email_provider_id = %s",
            (last_error, tenant, provider_id),
        ).addCallback(lambda _: None)

    def save_capabilities(self, tenant: str, provider_id: str, capabilities: Any,
                          owner: Optional[str] = None) -> defer.Deferred:
        return self._fenced(
            tenant, provider_id, owner,
            "UPDATE imap_email_provider_config SET server_capabilities = %s"
            " WHERE tenant = %s AND email_provider_id = %s",
            (Json(sorted_capabilities(capabilities)), tenant, provider_id))

    def save_access_token(self, tenant: str, provider_id: str, access_token: Optional[str],
                          expires_at: Optional[datetime],
                          owner: Optional[str] = None) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            # Another replica's live lease refuses it; a free provider does not
            # (a connection test may refresh the token of a provider nobody runs).
            yield cur.execute(
                "SELECT lease_owner IS NOT NULL AND lease_owner <> %s"
                " AND lease_expires_at > clock_timestamp() FROM imap_email_provider_config"
                " WHERE tenant = %s AND email_provider_id = %s FOR UPDATE",
                (owner or "", tenant, provider_id))
            rows = cur.fetchall()
            if owner is not None and rows and rows[0][0]:
                raise LeaseLost(f"{tenant}/{provider_id}")
            yield cur.execute(
                "UPDATE imap_email_provider_config SET access_token = %s, token_expires_at = %s,"
                " updated_at = now() WHERE tenant = %s AND email_provider_id = %s",
                (access_token, expires_at, tenant, provider_id))

        return self._interact(run).addCallback(lambda _: None)

    def set_inbound_pause(self, tenant: str, provider_id: str, paused: bool) -> defer.Deferred:
        if paused:
            sql = ("UPDATE email_providers SET inbound_paused_at = COALESCE(inbound_paused_at,"
                   " now()), inbound_pause_reason = COALESCE(inbound_pause_reason, 'manual'),"
                   " updated_at = now() WHERE tenant = %s AND id = %s")
        else:
            sql = ("UPDATE email_providers SET inbound_paused_at = NULL,"
                   " inbound_pause_reason = NULL, inbound_auth_failure_count = 0,"
                   " inbound_auth_failure_code = NULL, updated_at = now()"
                   " WHERE tenant = %s AND id = %s")
        return self._query(sql, (tenant, provider_id)).addCallback(lambda n: bool(n))

    def touch_last_sync(self, tenant: str, provider_id: str) -> defer.Deferred:
        return self._query(
            "UPDATE email_providers SET last_sync_at = now() WHERE tenant = %s AND id = %s",
            (tenant, provider_id),
        ).addCallback(lambda _: None)

    def record_auth_failure(self, tenant: str, provider_id: str, code: Optional[str],
                            pause_after: int) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(
                "SELECT inbound_auth_failure_count, inbound_paused_at FROM email_providers"
                " WHERE tenant = %s AND id = %s FOR UPDATE", (tenant, provider_id))
            rows = cur.fetchall()
            if not rows:
                return (0, False)
            count = int(rows[0][0] or 0) + 1
            pause = rows[0][1] is None and count >= pause_after
            yield cur.execute(
                "UPDATE email_providers SET inbound_auth_failure_count = %s,"
                " inbound_auth_failure_last_at = now(), inbound_auth_failure_code = %s,"
                " inbound_paused_at = CASE WHEN %s THEN now() ELSE inbound_paused_at END,"
                " inbound_pause_reason = CASE WHEN %s THEN 'auth_failure'"
                "   ELSE inbound_pause_reason END,"
                " updated_at = now() WHERE tenant = %s AND id = %s",
                (count, code, pause, pause, tenant, provider_id))
            return (count, pause)

        return self._interact(run)

    def reset_auth_failures(self, tenant: str, provider_id: str) -> defer.Deferred:
        return self._query(RESET_AUTH_FAILURES.format(now="now()"), (tenant, provider_id)
                           ).addCallback(lambda _: None)

    def put_oauth_state(self, tenant: str, nonce: str, verifier: str,
                        expires_at: datetime) -> defer.Deferred:
        return self._query(
            "INSERT INTO imap_oauth_states (tenant, nonce, verifier, expires_at)"
            " VALUES (%s, %s, %s, %s)",
            (tenant, nonce, verifier, expires_at),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def take_oauth_state(self, tenant: str, nonce: str) -> Any:
        rows = yield self._query(
            "UPDATE imap_oauth_states SET used_at = now()"
            " WHERE tenant = %s AND nonce = %s AND used_at IS NULL AND expires_at > now()"
            " RETURNING verifier",
            (tenant, nonce))
        return rows[0][0] if rows else None

    def ping(self) -> defer.Deferred:
        return self._query("SELECT 1").addCallback(lambda _: None)
