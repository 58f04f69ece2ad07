"""SqliteOps' ledger, outbox and poison messages: the fenced batch, the
relay's reads, retention."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Optional, Sequence

from imapsvc.core.event import encode_fields
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
from imapsvc.store.sqlite_base import SqliteBase, from_ts, json_load, ts_seconds


def _tenant_filter(column: str, tenants: Sequence[str]) -> tuple[str, list[str]]:
    """``AND <column> IN (?, ...)`` and its parameters; nothing for no tenants."""
    wanted = sorted(set(tenants))
    if not wanted:
        return "", []
    return f" AND {column} IN ({','.join('?' * len(wanted))})", wanted


class SqliteLedger(SqliteBase):
    """Ledger, outbox and message failures."""

    def record_batch(self, tenant: str, provider_id: str, folder: str, owner: str,
                     records: Sequence[MessageRecord],
                     cursor: Optional[FolderCursor]) -> BatchResult:
        records = list(records)
        check_records(records)
        first = first_occurrences(records)

        def run(cur: sqlite3.Cursor) -> BatchResult:
            if not self._holds(cur, tenant, provider_id, owner):
                raise LeaseLost(f"{tenant}/{provider_id}")
            now = self.now()
            new = []
            for r, is_first in zip(records, first):
                if not is_first:
                    new.append(False)
                    continue
                # DO NOTHING covers both unique keys (UID key and Message-ID);
                # rowcount says whether this row is the first of its kind.
                cur.execute(
                    "INSERT INTO imap_message_ledger (tenant, provider_id, dedupe_key,"
                    " message_id_key, folder, uid_validity, uid, outcome, reason, event_id,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (tenant, provider_id, r.dedupe_key, r.message_id_key, r.folder,
                     r.uid_validity, r.uid, r.outcome, r.reason, r.event_id, now))
                inserted = cur.rowcount == 1
                new.append(inserted)
                if inserted and r.outcome == OUTCOME_PUBLISHED:
                    cur.execute(
                        "INSERT INTO imap_event_outbox (tenant, provider_id, event_id, fields,"
                        " created_at) VALUES (?, ?, ?, ?, ?)",
                        (tenant, provider_id, r.event_id,
                         encode_fields(r.fields or {}).decode("utf-8"), now))
            message_id = last_message_id(records, new)
            if message_id is not None:
                cur.execute(
                    "UPDATE imap_email_provider_config SET last_processed_message_id = ?"
                    " WHERE tenant = ? AND email_provider_id = ?",
                    (message_id, tenant, provider_id))
            if cursor is not None:
                self._put_cursor(cur, tenant, provider_id, folder, cursor)
            return BatchResult(tuple(
                r.outcome if n else OUTCOME_DUPLICATE for r, n in zip(records, new)))

        result: BatchResult = self._transaction(run)
        return result

    def add_outbox(self, tenant: str, provider_id: str, event_id: str, fields: Any) -> None:
        self._run(
            "INSERT INTO imap_event_outbox (tenant, provider_id, event_id, fields, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (tenant, provider_id, event_id,
             encode_fields({str(k): str(v) for k, v in fields.items()}).decode("utf-8"),
             self.now()))

    def fetch_outbox(self, limit: int, owner: Optional[str] = None,
                     tenants: Sequence[str] = ()) -> list[OutboxRow]:
        # Same rule as Postgres: with an owner, skip rows of providers that
        # another worker holds a live lease for.
        only, wanted = _tenant_filter("o.tenant", tenants)
        rows = self._all(
            "SELECT o.id, o.tenant, o.provider_id, o.event_id, o.fields, o.created_at"
            " FROM imap_event_outbox o LEFT JOIN imap_email_provider_config c"
            "   ON c.tenant = o.tenant AND c.email_provider_id = o.provider_id"
            " WHERE o.published_at IS NULL AND (? IS NULL"
            "   OR c.email_provider_id IS NULL OR c.lease_owner IS NULL"
            "   OR c.lease_owner = ? OR c.lease_expires_at IS NULL"
            "   OR c.lease_expires_at <= ?)" + only +  # noqa: S608 (marks only)
            " ORDER BY o.id LIMIT ?", (owner, owner, self.now(), *wanted, int(limit)))
        return [OutboxRow(int(i), t, p, e, json.loads(f), from_ts(c))  # type: ignore[arg-type]
                for i, t, p, e, f, c in rows]

    def mark_published(self, ids: Sequence[int]) -> None:
        ids = [int(i) for i in ids]
        if not ids:
            return
        now = self.now()

        def run(cur: sqlite3.Cursor) -> None:
            # Chunks stay under SQLite's bound-parameter limit.
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                cur.execute(
                    f"UPDATE imap_event_outbox SET published_at = ?"  # noqa: S608 (marks only)
                    f" WHERE id IN ({marks}) AND published_at IS NULL", [now, *chunk])

        self._transaction(run)

    def outbox_stats(self, tenants: Sequence[str] = ()) -> tuple[int, Optional[float]]:
        only, wanted = _tenant_filter("tenant", tenants)
        count, oldest = self._all(
            "SELECT count(*), min(created_at) FROM imap_event_outbox"  # noqa: S608 (marks only)
            " WHERE published_at IS NULL" + only, tuple(wanted))[0]
        if not count:
            return (0, None)
        age = self._seconds() - from_ts(oldest).timestamp()  # type: ignore[union-attr]
        return (int(count), max(0.0, age))

    def recorded_uids(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                      first_uid: int, last_uid: int) -> list[int]:
        rows = self._all(
            "SELECT DISTINCT uid FROM imap_message_ledger WHERE tenant = ? AND provider_id = ?"
            " AND folder = ? AND uid_validity = ? AND uid BETWEEN ? AND ? ORDER BY uid",
            (tenant, provider_id, folder, str(uid_validity), int(first_uid), int(last_uid)))
        return [int(r[0]) for r in rows]

    def purge_ledger(self, older_than_days: float) -> int:
        cutoff = ts_seconds(self._seconds() - float(older_than_days) * 86400)

        def run(cur: sqlite3.Cursor) -> int:
            cur.execute("DELETE FROM imap_message_ledger WHERE created_at < ?", (cutoff,))
            deleted = cur.rowcount
            # Unpublished rows stay whatever their age: they are undelivered events.
            cur.execute("DELETE FROM imap_event_outbox WHERE published_at IS NOT NULL"
                        " AND published_at < ?", (cutoff,))
            deleted += cur.rowcount
            cur.execute("DELETE FROM imap_message_failures WHERE updated_at < ?", (cutoff,))
            deleted += cur.rowcount
            # Applied admin requests and long-dead replicas go too (not counted).
            cur.execute("DELETE FROM imap_admin_requests WHERE applied_at < ?", (cutoff,))
            cur.execute("DELETE FROM imap_replicas WHERE heartbeat_at < ?", (cutoff,))
            return int(deleted)

        return int(self._transaction(run))

    def note_message_failure(self, tenant: str, provider_id: str, folder: str,
                             uid_validity: str, uid: int, reason: str) -> int:
        now = self.now()

        def run(cur: sqlite3.Cursor) -> int:
            cur.execute(
                "INSERT INTO imap_message_failures (tenant, provider_id, folder, uid_validity,"
                " uid, failures, reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)"
                " ON CONFLICT (tenant, provider_id, folder, uid_validity, uid) DO UPDATE"
                " SET failures = failures + 1, reason = excluded.reason,"
                " updated_at = excluded.updated_at",
                (tenant, provider_id, folder, str(uid_validity), int(uid), reason, now, now))
            cur.execute(
                "SELECT failures FROM imap_message_failures WHERE tenant = ? AND provider_id = ?"
                " AND folder = ? AND uid_validity = ? AND uid = ?",
                (tenant, provider_id, folder, str(uid_validity), int(uid)))
            return int(cur.fetchone()[0])

        return int(self._transaction(run))

    def clear_message_failures(self, tenant: str, provider_id: str, folder: str,
                               uid_validity: str, uids: Sequence[int]) -> None:
        def run(cur: sqlite3.Cursor) -> None:
            for uid in uids:
                cur.execute(
                    "DELETE FROM imap_message_failures WHERE tenant = ? AND provider_id = ?"
                    " AND folder = ? AND uid_validity = ? AND uid = ? AND skipped_at IS NULL",
                    (tenant, provider_id, folder, str(uid_validity), int(uid)))

        self._transaction(run)

    def mark_poison_skipped(self, tenant: str, provider_id: str, folder: str,
                            uid_validity: str, uid: int) -> None:
        now = self.now()
        self._run(
            "UPDATE imap_message_failures SET skipped_at = ?, updated_at = ?"
            " WHERE tenant = ? AND provider_id = ? AND folder = ? AND uid_validity = ?"
            " AND uid = ?", (now, now, tenant, provider_id, folder, str(uid_validity), int(uid)))

    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> list[PoisonMessage]:
        rows = self._all(
            "SELECT tenant, provider_id, folder, uid_validity, uid, failures, reason,"
            " skipped_at, updated_at FROM imap_message_failures"
            " WHERE (? IS NULL OR tenant = ?) AND (? IS NULL OR provider_id = ?)"
            " ORDER BY updated_at, tenant, provider_id, folder, uid",
            (tenant, tenant, provider_id, provider_id))
        return [PoisonMessage(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6],
                              from_ts(r[7]), from_ts(r[8])) for r in rows]

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> bool:
        key = (tenant, provider_id, folder, str(uid_validity), int(uid))

        def run(cur: sqlite3.Cursor) -> bool:
            cur.execute(
                "DELETE FROM imap_message_failures WHERE tenant = ? AND provider_id = ?"
                " AND folder = ? AND uid_validity = ? AND uid = ?", key)
            if cur.rowcount == 0:
                return False
            cur.execute(
                "DELETE FROM imap_message_ledger WHERE tenant = ? AND provider_id = ?"
                " AND folder = ? AND uid_validity = ? AND uid = ? AND outcome = 'skipped'", key)
            row = self._config_columns(cur, tenant, provider_id, "folder_state")
            state = json_load(row[0], {}) if row is not None else {}
            cursor = state.get(folder) if isinstance(state, dict) else None
            last = str((cursor or {}).get("last_uid") or "")
            if (isinstance(cursor, dict) and str(cursor.get("uid_validity")) == str(uid_validity)
                    and last.isdigit() and int(last) >= int(uid)):
                cursor["last_uid"] = str(int(uid) - 1)
                self._put_folder_state(cur, tenant, provider_id, state)
            return True

        return bool(self._transaction(run))
