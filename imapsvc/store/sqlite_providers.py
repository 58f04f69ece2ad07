"""SqliteOps' providers (also what the admin CLI writes), cursors, backfill,
options, secrets, authentication failures and OAuth state."""

from __future__ import annotations

import json
import sqlite3
from datetime import date, datetime
from typing import Any, Optional, Sequence

from imapsvc.interfaces import LeaseLost
from imapsvc.model import BackfillState, FolderCursor, ProviderConfig
from imapsvc.store import (
    OPTION_COLUMNS,
    backfill_folders,
    provider_or_invalid,
    sorted_capabilities,
)
from imapsvc.store.sql_rows import RESET_AUTH_FAILURES, qmark
from imapsvc.store.sqlite_base import (
    PROVIDER_SELECT,
    SqliteBase,
    cursors_from_json,
    json_load,
    provider_from_row,
    ts,
)


class SqliteProviders(SqliteBase):
    """Providers and their per-provider columns."""

    def insert_provider(self, config: ProviderConfig, provider_type: str = "imap",
                        inbound_pause_reason: Optional[str] = None) -> None:
        """Insert both rows of a provider, as the main app would.

        :raises sqlite3.IntegrityError: the id or (tenant, mailbox) is taken.
        """
        now = self.now()
        reason = inbound_pause_reason
        if config.inbound_paused_at is not None and reason is None:
            reason = "manual"

        def run(cur: sqlite3.Cursor) -> None:
            cur.execute(
                "INSERT INTO email_providers (id, tenant, provider_type, provider_name, mailbox,"
                " is_active, status, inbound_paused_at, inbound_pause_reason,"
                " inbound_auth_failure_count, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (config.provider_id, config.tenant, provider_type, config.provider_name,
                 config.mailbox, int(config.is_active), config.status,
                 ts(config.inbound_paused_at), reason, config.inbound_auth_failure_count,
                 now, now))
            cur.execute(
                "INSERT INTO imap_email_provider_config (email_provider_id, tenant, host, port,"
                " secure, allow_starttls, auth_type, username, connection_timeout_ms,"
                " socket_keepalive, max_emails_per_sync, folder_filters, oauth_authorize_url,"
                " oauth_token_url, oauth_client_id, oauth_scopes, access_token,"
                " token_expires_at, folder_state, server_capabilities, lease_owner,"
                " lease_expires_at, created_at, updated_at, oauth_client_secret, refresh_token)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?)",
                (config.provider_id, config.tenant, config.host, config.port,
                 int(config.secure), int(config.allow_starttls), config.auth_type,
                 config.username, config.connection_timeout_ms,
                 None if config.socket_keepalive is None else int(config.socket_keepalive),
                 config.max_emails_per_sync, json.dumps(list(config.folder_filters)),
                 config.oauth_authorize_url, config.oauth_token_url, config.oauth_client_id,
                 config.oauth_scopes, config.access_token, ts(config.token_expires_at),
                 json.dumps({k: v.to_json() for k, v in config.folder_state.items()}),
                 json.dumps(sorted_capabilities(config.server_capabilities)),
                 config.lease_owner, ts(config.lease_expires_at), now, now,
                 config.oauth_client_secret, config.refresh_token))

        self._transaction(run)

    def list_providers(self, tenant: Optional[str] = None) -> list[tuple[ProviderConfig, str]]:
        """Every provider of any type and state, with its ``provider_type``
        (for ``provider list``)."""
        sql = PROVIDER_SELECT.replace("SELECT ", "SELECT p.provider_type, ", 1)
        params: tuple[Any, ...] = ()
        if tenant is not None:
            sql += " WHERE p.tenant = ?"
            params = (tenant,)
        rows = self._all(sql + " ORDER BY p.tenant, p.mailbox", params)
        return [(provider_or_invalid(provider_from_row, r[1:]), r[0]) for r in rows]

    def set_active(self, tenant: str, provider_id: str, active: bool) -> bool:
        """Switch ``is_active``; ``False`` when the provider is unknown."""
        return self._run(
            "UPDATE email_providers SET is_active = ?, updated_at = ? WHERE tenant = ? AND id = ?",
            (int(active), self.now(), tenant, provider_id)) > 0

    def remove_provider(self, tenant: str, provider_id: str) -> bool:
        """Delete a provider (its config row goes by the cascade);
        ``False`` when unknown."""
        return self._run("DELETE FROM email_providers WHERE tenant = ? AND id = ?",
                         (tenant, provider_id)) > 0

    def list_active_providers(self, tenant: Optional[str] = None) -> list[ProviderConfig]:
        sql = (PROVIDER_SELECT + " WHERE p.provider_type = 'imap' AND p.is_active"
               " AND p.inbound_paused_at IS NULL")
        params: tuple[Any, ...] = ()
        if tenant is not None:
            sql += " AND p.tenant = ?"
            params = (tenant,)
        rows = self._all(sql + " ORDER BY p.tenant, p.id", params)
        return [provider_or_invalid(provider_from_row, r) for r in rows]

    def get_provider(self, tenant: str, provider_id: str) -> Optional[ProviderConfig]:
        rows = self._all(PROVIDER_SELECT + " WHERE p.tenant = ? AND p.id = ?",
                         (tenant, provider_id))
        return provider_or_invalid(provider_from_row, rows[0]) if rows else None

    def read_cursor(self, tenant: str, provider_id: str, folder: str) -> Optional[FolderCursor]:
        row = self._config_columns(self.conn.cursor(), tenant, provider_id, "folder_state")
        return None if row is None else cursors_from_json(row[0]).get(folder)

    def read_modseq(self, tenant: str, provider_id: str,
                    folder: str) -> Optional[tuple[str, int]]:
        rows = self._all(
            "SELECT uid_validity, highest_modseq FROM imap_folder_modseq"
            " WHERE tenant = ? AND provider_id = ? AND folder = ?", (tenant, provider_id, folder))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def save_modseq(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                    modseq: Optional[int], owner: str) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            if not self._holds(cur, tenant, provider_id, owner):
                raise LeaseLost(f"{tenant}/{provider_id}")
            if modseq is None:
                cur.execute("DELETE FROM imap_folder_modseq"
                            " WHERE tenant = ? AND provider_id = ? AND folder = ?",
                            (tenant, provider_id, folder))
                return
            cur.execute(
                "INSERT INTO imap_folder_modseq (tenant, provider_id, folder, uid_validity,"
                " highest_modseq, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, provider_id, folder) DO UPDATE SET"
                " uid_validity = excluded.uid_validity,"
                " highest_modseq = excluded.highest_modseq, updated_at = excluded.updated_at",
                (tenant, provider_id, folder, str(uid_validity), int(modseq), self.now()))

        self._transaction(run)

    def write_cursor(self, tenant: str, provider_id: str, folder: str, cursor: FolderCursor,
                     owner: str) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            if not self._holds(cur, tenant, provider_id, owner):
                raise LeaseLost(f"{tenant}/{provider_id}")
            self._put_cursor(cur, tenant, provider_id, folder, cursor)

        self._transaction(run)

    def reset_cursors(self, tenant: str, provider_id: str, folder: Optional[str] = None) -> bool:
        """Drop cursors; ``False`` when the provider is unknown."""
        def run(cur: sqlite3.Cursor) -> bool:
            row = self._config_columns(cur, tenant, provider_id, "folder_state")
            if row is None:
                return False
            if folder is None:
                cur.execute(
                    "UPDATE imap_email_provider_config SET folder_state = '{}',"
                    " uid_validity = NULL, last_uid = NULL, last_seen_at = NULL, updated_at = ?"
                    " WHERE tenant = ? AND email_provider_id = ?",
                    (self.now(), tenant, provider_id))
            else:
                state = json_load(row[0], {})
                if isinstance(state, dict):
                    state.pop(folder, None)
                else:
                    state = {}
                self._put_folder_state(cur, tenant, provider_id, state)
            return True

        return bool(self._transaction(run))

    def read_backfill(self, tenant: str, provider_id: str,
                      folders: Sequence[str]) -> BackfillState:
        rows = self._all(
            "SELECT first_sync_since_days FROM imap_provider_backfill"
            " WHERE tenant = ? AND provider_id = ?", (tenant, provider_id))
        days = rows[0][0] if rows else None
        pending = None
        if folders:
            marks = ", ".join("?" for _ in folders)
            found = self._all(
                "SELECT min(since) FROM imap_folder_backfill WHERE tenant = ?"
                f" AND provider_id = ? AND folder IN ({marks})",
                (tenant, provider_id, *folders))
            if found and found[0][0]:
                pending = date.fromisoformat(found[0][0])
        return BackfillState(days, pending)

    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> bool:
        """``False`` when the provider is unknown."""
        if days is not None and days < 0:
            raise ValueError("first_sync_since_days must be >= 0")

        def run(cur: sqlite3.Cursor) -> bool:
            if not self._exists(cur, tenant, provider_id):
                return False
            cur.execute(
                "INSERT INTO imap_provider_backfill (tenant, provider_id,"
                " first_sync_since_days, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant, provider_id) DO UPDATE SET"
                " first_sync_since_days = excluded.first_sync_since_days,"
                " updated_at = excluded.updated_at",
                (tenant, provider_id, days, self.now()))
            return True

        return bool(self._transaction(run))

    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> Optional[list[str]]:
        """The folders scheduled; ``None`` when the provider is unknown."""
        def run(cur: sqlite3.Cursor) -> Optional[list[str]]:
            row = self._config_columns(cur, tenant, provider_id, "folder_state, folder_filters")
            if row is None:
                return None
            folders = backfill_folders(folder, json_load(row[0], {}), json_load(row[1], []))
            for name in folders:
                cur.execute(
                    "INSERT INTO imap_folder_backfill (tenant, provider_id, folder, since,"
                    " requested_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant, provider_id, folder) DO UPDATE SET"
                    " since = excluded.since, requested_at = excluded.requested_at",
                    (tenant, provider_id, name, since.isoformat(), self.now()))
            return folders

        return self._transaction(run)  # type: ignore[no-any-return]

    def complete_backfill(self, tenant: str, provider_id: str, folders: Sequence[str],
                          since: date) -> None:
        """Drop the pending requests the pass since ``since`` covered (a
        later request for an earlier date stays)."""
        if not folders:
            return
        marks = ", ".join("?" for _ in folders)
        self._transaction(lambda cur: cur.execute(
            "DELETE FROM imap_folder_backfill WHERE tenant = ? AND provider_id = ?"
            f" AND folder IN ({marks}) AND since >= ?",
            (tenant, provider_id, *folders, since.isoformat())))

    def set_write_back(self, tenant: str, provider_id: str, mode: Optional[str]) -> bool:
        return self._set_option(tenant, provider_id, "write_back", mode)

    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> bool:
        return self._set_option(tenant, provider_id, "oauth_delegate", delegate)

    def _set_option(self, tenant: str, provider_id: str, column: str,
                    value: Optional[str]) -> bool:
        assert column in OPTION_COLUMNS, column  # a name in SQL, never user input

        def run(cur: sqlite3.Cursor) -> bool:
            if not self._exists(cur, tenant, provider_id):
                return False
            cur.execute(
                f"INSERT INTO imap_provider_options (tenant, provider_id, {column}, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (tenant, provider_id) DO UPDATE"
                f" SET {column} = excluded.{column}, updated_at = excluded.updated_at",
                (tenant, provider_id, value, self.now()))
            # Read with the provider row: the next discovery pass applies it.
            cur.execute("UPDATE imap_email_provider_config SET updated_at = ?"
                        " WHERE tenant = ? AND email_provider_id = ?",
                        (self.now(), tenant, provider_id))
            return True

        return bool(self._transaction(run))

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> None:
        self._run(
            "INSERT INTO imap_secrets (tenant, name, ciphertext, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tenant, name) DO UPDATE"
            " SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            (tenant, name, bytes(ciphertext), self.now()))

    def get_secret(self, tenant: str, name: str) -> Optional[bytes]:
        rows = self._all("SELECT ciphertext FROM imap_secrets WHERE tenant = ? AND name = ?",
                         (tenant, name))
        return bytes(rows[0][0]) if rows else None

    def delete_secret(self, tenant: str, name: str) -> None:
        self._run("DELETE FROM imap_secrets WHERE tenant = ? AND name = ?", (tenant, name))

    def set_provider_status(self, tenant: str, provider_id: str, status: str,
                            error_message: Optional[str] = None,
                            owner: Optional[str] = None) -> None:
        self._fenced(
            tenant, provider_id, owner,
            "UPDATE email_providers SET status = ?, error_message = ?, updated_at = ?"
            " WHERE tenant = ? AND id = ?",
            (status, error_message, self.now(), tenant, provider_id))

    def set_last_error(self, tenant: str, provider_id: str, last_error: Optional[str]) -> None:
        self._run(
            "UPDATE imap_email_provider_config SET last_error = ?, updated_at = ?"
            " WHERE tenant = ? AND email_provider_id = ?",
            (last_error, self.now(), tenant, provider_id))

    def save_capabilities(self, tenant: str, provider_id: str, capabilities: Any,
                          owner: Optional[str] = None) -> None:
        self._fenced(
            tenant, provider_id, owner,
            "UPDATE imap_email_provider_config SET server_capabilities = ?"
            " WHERE tenant = ? AND email_provider_id = ?",
            (json.dumps(sorted_capabilities(capabilities)), tenant, provider_id))

    def save_access_token(self, tenant: str, provider_id: str, access_token: Optional[str],
                          expires_at: Optional[datetime], owner: Optional[str] = None) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            # Another replica's live lease refuses it; a free provider does not
            # (a connection test may refresh the token of a provider nobody runs).
            if owner is not None:
                cur.execute(
                    "SELECT 1 FROM imap_email_provider_config WHERE tenant = ?"
                    " AND email_provider_id = ? AND lease_owner IS NOT NULL"
                    " AND lease_owner <> ? AND lease_expires_at > ?",
                    (tenant, provider_id, owner, self.now()))
                if cur.fetchone() is not None:
                    raise LeaseLost(f"{tenant}/{provider_id}")
            cur.execute(
                "UPDATE imap_email_provider_config SET access_token = ?, token_expires_at = ?,"
                " updated_at = ? WHERE tenant = ? AND email_provider_id = ?",
                (access_token, ts(expires_at), self.now(), tenant, provider_id))

        self._transaction(run)

    def set_inbound_pause(self, tenant: str, provider_id: str, paused: bool) -> bool:
        if paused:
            return self._run(
                "UPDATE email_providers SET inbound_paused_at = COALESCE(inbound_paused_at, ?),"
                " inbound_pause_reason = COALESCE(inbound_pause_reason, 'manual'),"
                " updated_at = ? WHERE tenant = ? AND id = ?",
                (self.now(), self.now(), tenant, provider_id)) > 0
        return self._run(
            "UPDATE email_providers SET inbound_paused_at = NULL, inbound_pause_reason = NULL,"
            " inbound_auth_failure_count = 0, inbound_auth_failure_code = NULL,"
            " updated_at = ? WHERE tenant = ? AND id = ?",
            (self.now(), tenant, provider_id)) > 0

    def touch_last_sync(self, tenant: str, provider_id: str) -> None:
        self._run("UPDATE email_providers SET last_sync_at = ? WHERE tenant = ? AND id = ?",
                  (self.now(), tenant, provider_id))

    def record_auth_failure(self, tenant: str, provider_id: str, code: Optional[str],
                            pause_after: int) -> tuple[int, bool]:
        def run(cur: sqlite3.Cursor) -> tuple[int, bool]:
            cur.execute(
                "SELECT inbound_auth_failure_count, inbound_paused_at FROM email_providers"
                " WHERE tenant = ? AND id = ?", (tenant, provider_id))
            row = cur.fetchone()
            if row is None:
                return (0, False)
            count = int(row[0] or 0) + 1
            pause = row[1] is None and count >= pause_after
            now = self.now()
            cur.execute(
                "UPDATE email_providers SET inbound_auth_failure_count = ?,"
                " inbound_auth_failure_last_at = ?, inbound_auth_failure_code = ?,"
                " inbound_paused_at = CASE WHEN ? THEN ? ELSE inbound_paused_at END,"
                " inbound_pause_reason = CASE WHEN ? THEN 'auth_failure'"
                "   ELSE inbound_pause_reason END,"
                " updated_at = ? WHERE tenant = ? AND id = ?",
                (count, now, code, int(pause), now, int(pause), now, tenant, provider_id))
            return (count, pause)

        result: tuple[int, bool] = self._transaction(run)
        return result

    def reset_auth_failures(self, tenant: str, provider_id: str) -> None:
        self._run(qmark(RESET_AUTH_FAILURES.format(now="?")), (self.now(), tenant, provider_id))

    def put_oauth_state(self, tenant: str, nonce: str, verifier: str,
                        expires_at: datetime) -> None:
        self._run(
            "INSERT INTO imap_oauth_states (tenant, nonce, verifier, expires_at, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (tenant, nonce, verifier, ts(expires_at), self.now()))

    def take_oauth_state(self, tenant: str, nonce: str) -> Optional[str]:
        def run(cur: sqlite3.Cursor) -> Optional[str]:
            now = self.now()
            cur.execute(
                "SELECT verifier FROM imap_oauth_states WHERE tenant = ? AND nonce = ?"
                " AND used_at IS NULL AND expires_at > ?", (tenant, nonce, now))
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute("UPDATE imap_oauth_states SET used_at = ? WHERE tenant = ? AND nonce = ?",
                        (now, tenant, nonce))
            return str(row[0])

        result: Optional[str] = self._transaction(run)
        return result

    def ping(self) -> None:
        self._all("SELECT 1 FROM email_providers LIMIT 1")
