"""MemoryStore's ledger, outbox and poison messages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional, Sequence

import attr

from imapsvc.core.ledger import check_records, first_occurrences, last_message_id
from imapsvc.interfaces import LeaseLost
from imapsvc.model import (
    OUTCOME_DUPLICATE,
    OUTCOME_PUBLISHED,
    BatchResult,
    FolderCursor,
    MessageRecord,
    OutboxRow,
    PoisonMessage,
)
from imapsvc.store.memory_base import MemoryBase, deferred


class MemoryLedger(MemoryBase):
    """Ledger, outbox and message failures."""

    @deferred
    def record_batch(self, tenant: str, provider_id: str, folder: str, owner: str,
                     records: Sequence[MessageRecord],
                     cursor: Optional[FolderCursor]) -> BatchResult:
        records = list(records)
        check_records(records)
        row = self._row(tenant, provider_id)
        if not self._holds(row, owner):
            raise LeaseLost(f"{tenant}/{provider_id}")
        assert row is not None
        ledger = self._ledger.setdefault((tenant, provider_id), [])
        known_keys = {r["dedupe_key"] for r in ledger}
        known_ids = {r["message_id_key"] for r in ledger if r["message_id_key"] is not None}
        outcomes = []
        new = []
        for record, first in zip(records, first_occurrences(records)):
            known = record.dedupe_key in known_keys or (
                record.message_id_key is not None and record.message_id_key in known_ids
            )
            is_new = first and not known
            new.append(is_new)
            if not is_new:
                outcomes.append(OUTCOME_DUPLICATE)
                continue
            outcomes.append(record.outcome)
            ledger.append(
                {
                    "tenant": tenant,
                    "provider_id": provider_id,
                    "dedupe_key": record.dedupe_key,
                    "message_id_key": record.message_id_key,
                    "folder": record.folder,
                    "uid_validity": record.uid_validity,
                    "uid": record.uid,
                    "outcome": record.outcome,
                    "reason": record.reason,
                    "event_id": record.event_id,
                    "created_at": self.now(),
                }
            )
            if record.outcome == OUTCOME_PUBLISHED:
                self._append_outbox(tenant, provider_id, record.event_id, record.fields)
        message_id = last_message_id(records, new)
        if message_id is not None:
            row["last_processed_message_id"] = message_id
        if cursor is not None:
            self._put_cursor(row, folder, cursor)
        return BatchResult(tuple(outcomes))

    @deferred
    def add_outbox(self, tenant: str, provider_id: str, event_id: str, fields: Any) -> None:
        self._append_outbox(tenant, provider_id, event_id, fields)

    @deferred
    def fetch_outbox(self, limit: int, owner: Optional[str] = None,
                     tenants: Sequence[str] = ()) -> list[OutboxRow]:
        wanted = frozenset(tenants)

        def relayable(r: dict[str, Any]) -> bool:
            if wanted and r["tenant"] not in wanted:
                return False
            if owner is None:
                return True
            row = self._row(r["tenant"], r["provider_id"])
            if row is None or row["lease_owner"] is None or row["lease_owner"] == owner:
                return True
            expires = row["lease_expires_at"]
            return expires is None or expires <= self.now()

        rows = [r for r in self._outbox if r["published_at"] is None and relayable(r)][:limit]
        return [
            OutboxRow(r["id"], r["tenant"], r["provider_id"], r["event_id"], dict(r["fields"]),
                      r["created_at"])
            for r in rows
        ]

    @deferred
    def mark_published(self, ids: Sequence[int]) -> None:
        wanted = set(ids)
        for r in self._outbox:
            if r["id"] in wanted and r["published_at"] is None:
                r["published_at"] = self.now()

    @deferred
    def outbox_stats(self, tenants: Sequence[str] = ()) -> tuple[int, Optional[float]]:
        wanted = frozenset(tenants)
        pending = [r for r in self._outbox if r["published_at"] is None
                   and (not wanted or r["tenant"] in wanted)]
        if not pending:
            return (0, None)
        oldest = min(r["created_at"] for r in pending)
        return (len(pending), max(0.0, (self.now() - oldest).total_seconds()))

    @deferred
    def recorded_uids(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                      first_uid: int, last_uid: int) -> list[int]:
        return sorted(
            {int(r["uid"]) for r in self._ledger.get((tenant, provider_id), [])
             if r["folder"] == folder and r["uid_validity"] == str(uid_validity)
             and first_uid <= int(r["uid"]) <= last_uid}
        )

    @deferred
    def purge_ledger(self, older_than_days: float) -> int:
        cutoff = self.now() - timedelta(days=older_than_days)
        deleted = 0
        for key, rows in self._ledger.items():
            keep = [r for r in rows if r["created_at"] >= cutoff]
            deleted += len(rows) - len(keep)
            self._ledger[key] = keep
        keep_out = [
            r for r in self._outbox if r["published_at"] is None or r["published_at"] >= cutoff
        ]
        deleted += len(self._outbox) - len(keep_out)
        self._outbox = keep_out
        old = [k for k, r in self._failures.items() if r["updated_at"] < cutoff]
        for stale in old:
            del self._failures[stale]
        deleted += len(old)
        # Applied admin requests and long-dead replicas go too (not counted).
        for key in [k for k, r in self._requests.items()
                    if r["applied_at"] is not None and r["applied_at"] < cutoff]:
            del self._requests[key]
        for owner in [o for o, r in self._replicas.items() if r["heartbeat_at"] < cutoff]:
            del self._replicas[owner]
        return deleted

    @deferred
    def note_message_failure(self, tenant: str, provider_id: str, folder: str,
                             uid_validity: str, uid: int, reason: str) -> int:
        key = (tenant, provider_id, folder, str(uid_validity), int(uid))
        row = self._failures.get(key)
        if row is None:
            row = self._failures[key] = {"failures": 0, "skipped_at": None,
                                         "created_at": self.now()}
        row["failures"] += 1
        row["reason"] = reason
        row["updated_at"] = self.now()
        return int(row["failures"])

    @deferred
    def clear_message_failures(self, tenant: str, provider_id: str, folder: str,
                               uid_validity: str, uids: Sequence[int]) -> None:
        for uid in uids:
            key = (tenant, provider_id, folder, str(uid_validity), int(uid))
            row = self._failures.get(key)
            if row is not None and row["skipped_at"] is None:
                del self._failures[key]

    @deferred
    def mark_poison_skipped(self, tenant: str, provider_id: str, folder: str,
                            uid_validity: str, uid: int) -> None:
        row = self._failures.get((tenant, provider_id, folder, str(uid_validity), int(uid)))
        if row is not None:
            row["skipped_at"] = row["updated_at"] = self.now()

    @deferred
    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> list[PoisonMessage]:
        out = []
        for (t, p, folder, validity, uid), row in self._failures.items():
            if (tenant is not None and t != tenant) or (
                    provider_id is not None and p != provider_id):
                continue
            out.append(PoisonMessage(t, p, folder, validity, uid, row["failures"],
                                     row["reason"], row["skipped_at"], row["updated_at"]))
        return sorted(out, key=lambda m: (m.updated_at, m.tenant, m.provider_id, m.folder,
                                          m.uid))

    @deferred
    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
        key = (tenant, provider_id, folder, str(uid_validity), int(uid))
        if self._failures.pop(key, None) is None:
            return False
        ledger = self._ledger.get((tenant, provider_id), [])
        self._ledger[(tenant, provider_id)] = [
            r for r in ledger
            if not (r["folder"] == folder and r["uid_validity"] == str(uid_validity)
                    and r["uid"] == int(uid) and r["outcome"] == "skipped")
        ]
        row = self._row(tenant, provider_id)
        cursor = None if row is None else row["folder_state"].get(folder)
        if (cursor is not None and cursor.uid_validity == str(uid_validity)
                and cursor.last_uid is not None and int(cursor.last_uid) >= int(uid)):
            assert row is not None
            state = dict(row["folder_state"])
            state[folder] = attr.evolve(cursor, last_uid=str(int(uid) - 1))
            row["folder_state"] = state
            row["updated_at"] = self.now()
        return True
