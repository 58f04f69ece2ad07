"""MemoryStore's providers, cursors, backfill, options, secrets,
authentication failures and OAuth state."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Optional, Sequence

from imapsvc.interfaces import LeaseLost
from imapsvc.model import BackfillState, FolderCursor, ProviderConfig
from imapsvc.store import backfill_folders, sorted_capabilities
from imapsvc.store.memory_base import MemoryBase, deferred


class MemoryProviders(MemoryBase):
    """Providers and their per-provider columns."""

    @deferred
    def list_active_providers(self, tenant: Optional[str] = None) -> list[ProviderConfig]:
        out = []
        for (row_tenant, _), row in sorted(self._providers.items()):
            if tenant is not None and row_tenant != tenant:
                continue
            if row["provider_type"] != "imap" or not row["is_active"]:
                continue
            if row["inbound_paused_at"] is not None:
                continue
            out.append(self._config(row))
        return out

    @deferred
    def get_provider(self, tenant: str, provider_id: str) -> Optional[ProviderConfig]:
        row = self._row(tenant, provider_id)
        return None if row is None else self._config(row)

    @deferred
    def read_cursor(self, tenant: str, provider_id: str, folder: str) -> Optional[FolderCursor]:
        row = self._row(tenant, provider_id)
        if row is None:
            return None
        return row["folder_state"].get(folder)

    @deferred
    def read_modseq(self, tenant: str, provider_id: str,
                    folder: str) -> Optional[tuple[str, int]]:
        return self._modseqs.get((tenant, provider_id, folder))

    @deferred
    def save_modseq(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                    modseq: Optional[int], owner: str) -> None:
        row = self._row(tenant, provider_id)
        if not self._holds(row, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")
        if modseq is None:
            self._modseqs.pop((tenant, provider_id, folder), None)
        else:
            self._modseqs[(tenant, provider_id, folder)] = (str(uid_validity), int(modseq))

    @deferred
    def write_cursor(self, tenant: str, provider_id: str, folder: str, cursor: FolderCursor,
                     owner: str) -> None:
        row = self._row(tenant, provider_id)
        if not self._holds(row, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")
        assert row is not None
        self._put_cursor(row, folder, cursor)

    @deferred
    def reset_cursors(self, tenant: str, provider_id: str, folder: Optional[str] = None) -> None:
        row = self._row(tenant, provider_id)
        if row is None:
            return
        if folder is None:
            row["folder_state"] = {}
            row["uid_validity"] = row["last_uid"] = row["last_seen_at"] = None
        else:
            row["folder_state"] = {k: v for k, v in row["folder_state"].items() if k != folder}
        row["updated_at"] = self.now()

    @deferred
    def read_backfill(self, tenant: str, provider_id: str,
                      folders: Sequence[str]) -> BackfillState:
        days = self._first_sync.get((tenant, provider_id))
        pending = [self._backfill[(tenant, provider_id, f)] for f in folders
                   if (tenant, provider_id, f) in self._backfill]
        return BackfillState(days, min(pending) if pending else None)

    @deferred
    def set_first_sync_since_days(self, tenant: str, provider_id: str,
                                  days: Optional[int]) -> bool:
        if self._row(tenant, provider_id) is None:
            return False
        if days is not None and days < 0:
            raise ValueError("first_sync_since_days must be >= 0")
        self._first_sync[(tenant, provider_id)] = days
        return True

    @deferred
    def request_backfill(self, tenant: str, provider_id: str, folder: Optional[str],
                         since: date) -> Optional[list[str]]:
        row = self._row(tenant, provider_id)
        if row is None:
            return None
        folders = backfill_folders(folder, row["folder_state"], row["folder_filters"])
        for name in folders:
            self._backfill[(tenant, provider_id, name)] = since
        return folders

    @deferred
    def complete_backfill(self, tenant: str, provider_id: str, folders: Sequence[str],
                          since: date) -> None:
        for name in folders:
            key = (tenant, provider_id, name)
            if key in self._backfill and self._backfill[key] >= since:
                del self._backfill[key]

    @deferred
    def set_write_back(self, tenant: str, provider_id: str, mode: Optional[str]) -> bool:
        return self._set_option(tenant, provider_id, "write_back", mode)

    @deferred
    def set_oauth_delegate(self, tenant: str, provider_id: str,
                           delegate: Optional[str]) -> bool:
        return self._set_option(tenant, provider_id, "oauth_delegate", delegate)

    def _set_option(self, tenant: str, provider_id: str, column: str,
                    value: Optional[str]) -> bool:
        # One per-provider option, as the SQL stores' _set_option.
        row = self._row(tenant, provider_id)
        if row is None:
            return False
        row[column] = value
        row["updated_at"] = self.now()
        return True

    @deferred
    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> None:
        self._secrets[(tenant, name)] = bytes(ciphertext)

    @deferred
    def get_secret(self, tenant: str, name: str) -> Optional[bytes]:
        return self._secrets.get((tenant, name))

    @deferred
    def delete_secret(self, tenant: str, name: str) -> None:
        self._secrets.pop((tenant, name), None)

    @deferred
    def set_provider_status(self, tenant: str, provider_id: str, status: str,
                            error_message: Optional[str] = None,
                            owner: Optional[str] = None) -> None:
        row = self._row(tenant, provider_id)
        self._fence(row, tenant, provider_id, owner)
        if row is None:
            return
        if status not in ("connected", "disconnected", "error", "configuring"):
            raise ValueError(f"unknown provider status {status!r}")
        row["status"] = status
        row["error_message"] = error_message
        row["updated_at"] = self.now()

    @deferred
    def set_last_error(self, tenant: str, provider_id: str, last_error: Optional[str]) -> None:
        row = self._row(tenant, provider_id)
        if row is not None:
            row["last_error"] = last_error
            row["updated_at"] = self.now()

    @deferred
    def save_capabilities(self, tenant: str, provider_id: str, capabilities: Any,
                          owner: Optional[str] = None) -> None:
        row = self._row(tenant, provider_id)
        self._fence(row, tenant, provider_id, owner)
        if row is not None:
            row["server_capabilities"] = tuple(sorted_capabilities(capabilities))
            row["updated_at"] = self.now()

    @deferred
    def save_access_token(self, tenant: str, provider_id: str, access_token: Optional[str],
                          expires_at: Optional[datetime], owner: Optional[str] = None) -> None:
        row = self._row(tenant, provider_id)
        if owner is not None and row is not None and self._live_owner(row) not in (None, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")
        if row is not None:
            row["access_token"] = access_token
            row["token_expires_at"] = expires_at
            row["updated_at"] = self.now()

    @deferred
    def set_inbound_pause(self, tenant: str, provider_id: str, paused: bool) -> bool:
        row = self._row(tenant, provider_id)
        if row is None:
            return False
        if paused and row["inbound_paused_at"] is None:
            row["inbound_paused_at"], row["inbound_pause_reason"] = self.now(), "manual"
        elif not paused:
            row["inbound_paused_at"] = row["inbound_pause_reason"] = None
            row["inbound_auth_failure_count"] = 0
            row["inbound_auth_failure_code"] = None
        row["updated_at"] = self.now()
        return True

    @deferred
    def touch_last_sync(self, tenant: str, provider_id: str) -> None:
        row = self._row(tenant, provider_id)
        if row is not None:
            row["last_sync_at"] = self.now()

    @deferred
    def record_auth_failure(self, tenant: str, provider_id: str, code: Optional[str],
                            pause_after: int) -> tuple[int, bool]:
        row = self._row(tenant, provider_id)
        if row is None:
            return (0, False)
        row["inbound_auth_failure_count"] += 1
        row["inbound_auth_failure_last_at"] = self.now()
        row["inbound_auth_failure_code"] = code
        paused = False
        if row["inbound_paused_at"] is None and row["inbound_auth_failure_count"] >= pause_after:
            row["inbound_paused_at"] = self.now()
            row["inbound_pause_reason"] = "auth_failure"
            paused = True
        row["updated_at"] = self.now()
        return (row["inbound_auth_failure_count"], paused)

    @deferred
    def reset_auth_failures(self, tenant: str, provider_id: str) -> None:
        row = self._row(tenant, provider_id)
        if row is None:
            return
        row["inbound_auth_failure_count"] = 0
        row["inbound_auth_failure_code"] = None
        if row["inbound_pause_reason"] == "auth_failure":
            row["inbound_paused_at"] = None
            row["inbound_pause_reason"] = None
        row["updated_at"] = self.now()

    @deferred
    def put_oauth_state(self, tenant: str, nonce: str, verifier: str,
                        expires_at: datetime) -> None:
        self._oauth[(tenant, nonce)] = {
            "verifier": verifier, "expires_at": expires_at, "used_at": None,
        }

    @deferred
    def take_oauth_state(self, tenant: str, nonce: str) -> Optional[str]:
        state = self._oauth.get((tenant, nonce))
        if state is None or state["used_at"] is not None or state["expires_at"] <= self.now():
            return None
        state["used_at"] = self.now()
        return str(state["verifier"])

    @deferred
    def ping(self) -> None:
        return None
