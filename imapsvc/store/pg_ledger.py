"""PostgresStore's ledger, outbox and poison messages: the fenced batch,
the relay's reads, retention."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.internet import defer

from imapsvc.core.ledger import check_records, first_occurrences, last_message_id
from imapsvc.interfaces import LeaseLost
from imapsvc.model import (
    OUTCOME_DUPLICATE,
    OUTCOME_PUBLISHED,
    BatchResult,
    FolderCursor,
    MessageRecord,
    OutboxRow,
)
from imapsvc.store import outbox_fields, outbox_parts
from imapsvc.store.pg_base import (
    LIST_POISON_SQL,
    LOCK_LEASE,
    WRITE_CURSOR,
    PgBase,
    client_utf8,
    outbox_values,
    poison_from_row,
    retry_poison_statements,
)

#: Rows of the given tenants only; an empty array means every tenant. Takes
#: the tenant array twice.
_FOR_TENANTS = " AND (%s::text[] = '{{}}' OR {column}::text = ANY(%s::text[]))"


class PgLedger(PgBase):
    """Ledger, outbox and message failures."""

    def record_batch(self, tenant: str, provider_id: str, folder: str, owner: str,
                     records: Sequence[MessageRecord],
                     cursor: Optional[FolderCursor]) -> defer.Deferred:
        records = list(records)
        try:
            check_records(records)
        except ValueError:
            return defer.fail()
        first = first_occurrences(records)

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(LOCK_LEASE, (tenant, provider_id, owner))
            if not cur.fetchall():
                raise LeaseLost(f"{tenant}/{provider_id}")
            candidates = [r for r, f in zip(records, first) if f]
            inserted: set[str] = set()
            if candidates:
                values = b",".join(
                    cur.mogrify(
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (tenant, provider_id, r.dedupe_key, r.message_id_key, r.folder,
                         r.uid_validity, r.uid, r.outcome, r.reason, r.event_id),
                    )
                    for r in candidates
                )
                # DO NOTHING covers both unique keys (UID key and Message-ID).
                yield cur.execute(
                    b"INSERT INTO imap_message_ledger (tenant, provider_id, dedupe_key,"
                    b" message_id_key, folder, uid_validity, uid, outcome, reason, event_id)"
                    b" VALUES " + values + b" ON CONFLICT DO NOTHING RETURNING dedupe_key")
                inserted = {row[0] for row in cur.fetchall()}
            new = [f and r.dedupe_key in inserted for r, f in zip(records, first)]
            published = [r for r, n in zip(records, new) if n and r.outcome == OUTCOME_PUBLISHED]
            # The row updates and the outbox insert go in one round trip
            # (psycopg2 sends them as one simple query); the insert comes last
            # because only the last statement's rows come back.
            statements: list[bytes] = []
            message_id = last_message_id(records, new)
            if message_id is not None:
                statements.append(cur.mogrify(
                    "UPDATE imap_email_provider_config SET last_processed_message_id = %s"
                    " WHERE tenant = %s AND email_provider_id = %s",
                    (message_id, tenant, provider_id)))
            if cursor is not None:
                statements.append(cur.mogrify(
                    WRITE_CURSOR, self._cursor_params(tenant, provider_id, folder, cursor)))
            outbox: list[OutboxRow] = []
            if published:
                # The payload goes in as the bytes the pipeline encoded
                # (schema 0006): neither re-encoded here nor parsed as jsonb.
                head = cur.mogrify("(%s, %s, ", (tenant, provider_id))
                statements.append(b"".join([
                    b"INSERT INTO imap_event_outbox (tenant, provider_id, event_id, entry,"
                    b" payload) VALUES ",
                    *outbox_values(cur, head, published, client_utf8(cur)),
                    b" RETURNING id, event_id, created_at"]))
            if statements:
                yield cur.execute(b";\n".join(statements))
            if published:
                # RETURNING: the relay publishes these rows from memory.
                by_event = {r.event_id: r for r in published}
                # The record's own (read-only) fields: copying a StreamEntry
                # into a dict would decode its payload for nothing.
                outbox = sorted(
                    (OutboxRow(int(i), tenant, provider_id, e, by_event[e].fields or {}, c)
                     for i, e, c in cur.fetchall()),
                    key=lambda row: row.id)
            return BatchResult(tuple(
                r.outcome if n else OUTCOME_DUPLICATE for r, n in zip(records, new)),
                outbox=tuple(outbox))

        return self._interact(run)

    def add_outbox(self, tenant: str, provider_id: str, event_id: str,
                   fields: Any) -> defer.Deferred:
        entry, payload = outbox_parts(fields)
        return self._query(
            "INSERT INTO imap_event_outbox (tenant, provider_id, event_id, entry, payload)"
            " VALUES (%s, %s, %s, %s, %s)",
            (tenant, provider_id, event_id, entry.decode("utf-8"),
             None if payload is None else payload.decode("utf-8")),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def fetch_outbox(self, limit: int, owner: Optional[str] = None,
                     tenants: Sequence[str] = ()) -> Any:
        # With an owner: rows of providers it leases, or that nobody holds a
        # live lease for (released, expired, deleted). Rows another replica
        # is relaying right now are left to it, so two relays never XADD the
        # same row.
        rows = yield self._query(
            "SELECT o.id, o.tenant, o.provider_id, o.event_id, o.fields, o.entry, o.payload,"
            " o.created_at"
            " FROM imap_event_outbox o LEFT JOIN imap_email_provider_config c"
            "   ON c.tenant = o.tenant AND c.email_provider_id = o.provider_id"
            " WHERE o.published_at IS NULL AND (%s::text IS NULL"
            "   OR c.email_provider_id IS NULL OR c.lease_owner IS NULL"
            "   OR c.lease_owner = %s OR c.lease_expires_at IS NULL"
            "   OR c.lease_expires_at <= now())"
            + _FOR_TENANTS.format(column="o.tenant") +
            " ORDER BY o.id LIMIT %s",
            (owner, owner, list(tenants), list(tenants), int(limit)))
        # Rows written before schema 0006 have only the jsonb ``fields``.
        return [OutboxRow(int(i), str(t), str(p), e,
                          f if entry is None else outbox_fields(entry, payload), c)
                for i, t, p, e, f, entry, payload, c in rows]

    def mark_published(self, ids: Sequence[int]) -> defer.Deferred:
        ids = [int(i) for i in ids]
        if not ids:
            return defer.succeed(None)
        return self._query(
            "UPDATE imap_event_outbox SET published_at = now()"
            " WHERE id = ANY(%s) AND published_at IS NULL",
            (ids,),
        ).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def outbox_stats(self, tenants: Sequence[str] = ()) -> Any:
        wanted = list(tenants)
        rows = yield self._query(
            "SELECT count(*), EXTRACT(EPOCH FROM (now() - min(created_at)))"
            " FROM imap_event_outbox WHERE published_at IS NULL"
            + _FOR_TENANTS.format(column="tenant"), (wanted, wanted))
        count, age = rows[0]
        return (int(count), None if age is None else max(0.0, float(age)))

    def recorded_uids(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                      first_uid: int, last_uid: int) -> defer.Deferred:
        return self._query(
            "SELECT DISTINCT uid FROM imap_message_ledger WHERE tenant = %s AND provider_id = %s"
            " AND folder = %s AND uid_validity = %s AND uid BETWEEN %s AND %s ORDER BY uid",
            (tenant, provider_id, folder, str(uid_validity), int(first_uid), int(last_uid)),
        ).addCallback(lambda rows: [int(r[0]) for r in rows])

    def purge_ledger(self, older_than_days: float) -> defer.Deferred:
        seconds = float(older_than_days) * 86400

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(
                "DELETE FROM imap_message_ledger"
                " WHERE created_at < now() - make_interval(secs => %s)", (seconds,))
            deleted = cur.rowcount
            # Unpublished rows stay whatever their age: they are undelivered events.
            yield cur.execute(
                "DELETE FROM imap_event_outbox WHERE published_at IS NOT NULL"
                " AND published_at < now() - make_interval(secs => %s)", (seconds,))
            deleted += cur.rowcount
            yield cur.execute(
                "DELETE FROM imap_message_failures"
                " WHERE updated_at < now() - make_interval(secs => %s)", (seconds,))
            deleted += cur.rowcount
            # Applied admin requests and long-dead replicas go too (not counted).
            yield cur.execute(
                "DELETE FROM imap_admin_requests"
                " WHERE applied_at < now() - make_interval(secs => %s)", (seconds,))
            yield cur.execute(
                "DELETE FROM imap_replicas"
                " WHERE heartbeat_at < now() - make_interval(secs => %s)", (seconds,))
            return deleted

        return self._interact(run)

    def note_message_failure(self, tenant: str, provider_id: str, folder: str,
                             uid_validity: str, uid: int, reason: str) -> defer.Deferred:
        return self._query(
            "INSERT INTO imap_message_failures (tenant, provider_id, folder, uid_validity, uid,"
            " failures, reason) VALUES (%s, %s, %s, %s, %s, 1, %s)"
            " ON CONFLICT (tenant, provider_id, folder, uid_validity, uid) DO UPDATE"
            " SET failures = imap_message_failures.failures + 1, reason = EXCLUDED.reason,"
            " updated_at = now() RETURNING failures",
            (tenant, provider_id, folder, str(uid_validity), int(uid), reason),
        ).addCallback(lambda rows: int(rows[0][0]))

    def clear_message_failures(self, tenant: str, provider_id: str, folder: str,
                               uid_validity: str, uids: Sequence[int]) -> defer.Deferred:
        return self._query(
            "DELETE FROM imap_message_failures WHERE tenant = %s AND provider_id = %s"
            " AND folder = %s AND uid_validity = %s AND uid = ANY(%s) AND skipped_at IS NULL",
            (tenant, provider_id, folder, str(uid_validity), [int(u) for u in uids]),
        ).addCallback(lambda _: None)

    def mark_poison_skipped(self, tenant: str, provider_id: str, folder: str,
                            uid_validity: str, uid: int) -> defer.Deferred:
        return self._query(
            "UPDATE imap_message_failures SET skipped_at = now(), updated_at = now()"
            " WHERE tenant = %s AND provider_id = %s AND folder = %s AND uid_validity = %s"
            " AND uid = %s", (tenant, provider_id, folder, str(uid_validity), int(uid)),
        ).addCallback(lambda _: None)

    def list_poison(self, tenant: Optional[str] = None,
                    provider_id: Optional[str] = None) -> defer.Deferred:
        d = self._query(LIST_POISON_SQL, (tenant, tenant, provider_id, provider_id))
        return d.addCallback(lambda rows: [poison_from_row(r) for r in rows])

    def retry_poison(self, tenant: str, provider_id: str, folder: str, uid_validity: str,
                     uid: int) -> defer.Deferred:
        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            [forget, unskip, rewind] = retry_poison_statements(
                tenant, provider_id, folder, uid_validity, uid)
            yield cur.execute(*forget)
            if cur.rowcount == 0:
                return False
            yield cur.execute(*unskip)
            yield cur.execute(*rewind)
            return True

        return self._interact(run)
