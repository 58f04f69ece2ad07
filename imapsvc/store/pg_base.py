"""The plumbing and row mapping that PostgresStore's parts share."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional, Sequence

from psycopg2.extras import Json
from twisted.internet import defer

from imapsvc.interfaces import LeaseLost, StoreUnavailable
from imapsvc.model import AdminRequest, FolderCursor, MessageRecord, PoisonMessage, ProviderConfig
from imapsvc.store import outbox_parts, parse_seen_at
from imapsvc.store.pg_connections import Pool, shielded, unavailable
from imapsvc.store.sql_rows import provider_config, provider_select, provider_values

#: NOTIFY channel of new admin requests (payload: tenant, id, provider_id).
ADMIN_CHANNEL = "imapsvc_admin"




def admin_request_from_row(row: Sequence[Any]) -> AdminRequest:
    (tenant, rid, pid, action, folder, by, created, claimed_by, applied_by, applied_at,
     result) = row
    return AdminRequest(str(tenant), str(rid), str(pid), action, folder, by, created,
                        claimed_by, applied_by, applied_at, result)


# The fence: the config row locked, and still ours by the database clock
# (clock_timestamp, not the transaction start, since the lock may have waited).
LOCK_LEASE = """
    SELECT 1 FROM imap_email_provider_config
    WHERE tenant = %s AND email_provider_id = %s
      AND lease_owner = %s AND lease_expires_at > clock_timestamp()
    FOR UPDATE
"""


WRITE_CURSOR = """
    UPDATE imap_email_provider_config SET
        folder_state = COALESCE(folder_state, '{}'::jsonb)
                       || jsonb_build_object(%s::text, %s::jsonb),
        uid_validity = %s, last_uid = %s, last_seen_at = %s, updated_at = now()
    WHERE tenant = %s AND email_provider_id = %s
"""


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)


#: Dollar quotes for an outbox entry and payload: the text goes into the
#: statement as it is, with no escaping pass over it. Both are UTF-8 JSON,
#: which holds no NUL (JSON escapes control characters); a text that
#: contains the tag, or ends with all of it but the last "$" (which the
#: closing tag would complete), goes through mogrify.
_DOLLAR_TAG = b"$imapsvc_entry$"


def client_utf8(cur: Any) -> bool:
    connection = getattr(cur, "connection", None)
    return getattr(connection, "encoding", None) == "UTF8"


def outbox_values(cur: Any, head: bytes, records: Sequence[MessageRecord],
                   utf8: bool) -> list[bytes]:
    """The VALUES rows of the outbox insert as pieces for one join: each
    payload is copied once, into the statement."""
    pieces: list[bytes] = []
    for index, record in enumerate(records):
        entry, payload = outbox_parts(record.fields or {})
        pieces += [b"," if index else b"", head, cur.mogrify("%s, ", (record.event_id,))]
        pieces += _text_literal(cur, entry, utf8)
        pieces.append(b", ")
        pieces += [b"NULL"] if payload is None else _text_literal(cur, payload, utf8)
        pieces.append(b")")
    return pieces


def _text_literal(cur: Any, data: bytes, utf8: bool) -> list[bytes]:
    """A SQL text literal of the UTF-8 ``data``, as pieces (for a UTF8 client
    encoding, the bytes between dollar quotes)."""
    if utf8 and _DOLLAR_TAG not in data and not data.endswith(_DOLLAR_TAG[:-1]):
        return [_DOLLAR_TAG, data, _DOLLAR_TAG]
    literal: bytes = cur.mogrify("%s", (data.decode("utf-8"),))
    return [literal]


#: Every provider column (the admin CLI's listing adds the type).
PROVIDER_SELECT = provider_select("GREATEST")


def provider_from_row(row: Sequence[Any]) -> ProviderConfig:
    """A row of :data:`PROVIDER_SELECT` (psycopg2 decodes jsonb and timestamps)."""
    return provider_config(provider_values(row))


#: Poison messages, shared with the admin CLI (imapsvc.store.admin_sync).
LIST_POISON_SQL = (
    "SELECT tenant::text, provider_id::text, folder, uid_validity, uid, failures, reason,"
    " skipped_at, updated_at FROM imap_message_failures"
    " WHERE (%s::uuid IS NULL OR tenant = %s::uuid)"
    " AND (%s::uuid IS NULL OR provider_id = %s::uuid)"
    " ORDER BY updated_at, tenant, provider_id, folder, uid"
)


def poison_from_row(r: Sequence[Any]) -> PoisonMessage:
    """A row of :data:`LIST_POISON_SQL`."""
    return PoisonMessage(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], r[7], r[8])


def retry_poison_statements(tenant: str, provider_id: str, folder: str, uid_validity: str,
                            uid: int) -> list[tuple[str, tuple[Any, ...]]]:
    """``(sql, params)`` of a poison retry, run in one transaction: forget
    the failures (rowcount 0: unknown, stop), delete the skipped ledger row,
    move the cursor back below the UID (same UIDVALIDITY only)."""
    key = (tenant, provider_id, folder, str(uid_validity), int(uid))
    return [
        ("DELETE FROM imap_message_failures WHERE tenant = %s AND provider_id = %s"
         " AND folder = %s AND uid_validity = %s AND uid = %s", key),
        ("DELETE FROM imap_message_ledger WHERE tenant = %s AND provider_id = %s"
         " AND folder = %s AND uid_validity = %s AND uid = %s AND outcome = 'skipped'", key),
        ("UPDATE imap_email_provider_config SET folder_state = jsonb_set(folder_state,"
         " ARRAY[%s, 'last_uid'], to_jsonb(%s::text)), updated_at = now()"
         " WHERE tenant = %s AND email_provider_id = %s"
         " AND folder_state -> %s ->> 'uid_validity' = %s"
         " AND (CASE WHEN folder_state -> %s ->> 'last_uid' ~ '^[0-9]{1,18}$'"
         "      THEN (folder_state -> %s ->> 'last_uid')::bigint ELSE -1 END) >= %s",
         (folder, str(int(uid) - 1), tenant, provider_id, folder, str(uid_validity),
          folder, folder, int(uid))),
    ]


class PgBase:
    """Runs statements on the pool: one transaction each."""

    _pool: Optional[Pool]

    def _interact(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(cursor, *args)`` (an inlineCallbacks generator function
        or plain function) in one transaction."""
        if self._pool is None:
            return defer.fail(StoreUnavailable("database store not started"))
        return shielded(self._pool.run_interaction(fn, *args).addErrback(unavailable))

    @defer.inlineCallbacks
    def _query(self, sql: str, params: Sequence[Any] = ()) -> Any:
        def run(cur: Any) -> Any:
            return cur.execute(sql, params).addCallback(
                lambda c: c.fetchall() if c.description is not None else c.rowcount)

        result = yield self._interact(run)
        return result

    @staticmethod
    def _cursor_params(tenant: str, provider_id: str, folder: str,
                       cursor: FolderCursor) -> tuple[Any, ...]:
        return (folder, Json(cursor.to_json()), cursor.uid_validity, cursor.last_uid,
                parse_seen_at(cursor.last_seen_at), tenant, provider_id)

    def _fenced(self, tenant: str, provider_id: str, owner: Optional[str], sql: str,
                params: Sequence[Any]) -> defer.Deferred:
        """One write; with ``owner``, only while ``owner`` holds the lease
        (the config row locked first, as for cursor writes)."""
        if owner is None:
            return self._query(sql, params).addCallback(lambda _: None)

        @defer.inlineCallbacks
        def run(cur: Any) -> Any:
            yield cur.execute(LOCK_LEASE, (tenant, provider_id, owner))
            if not cur.fetchall():
                raise LeaseLost(f"{tenant}/{provider_id}")
            yield cur.execute(sql, params)

        return self._interact(run).addCallback(lambda _: None)
