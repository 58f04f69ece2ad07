"""The embedded store's schema: the Postgres tables of ``schema/`` in SQLite.

Same table and column names as CONTRACT section 1 and ``schema/0002``, so a
reader of one understands the other. SQLite has no uuid, jsonb, boolean or
timestamptz, so:

- uuids are ``TEXT`` (canonical lower-case form),
- jsonb columns are ``TEXT`` holding JSON,
- booleans are ``INTEGER`` 0/1,
- timestamps are ``TEXT`` in one fixed-width UTC form,
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (:func:`imapsvc.store.sqlite.ts`), so
  comparing the strings compares the instants.

:func:`ensure_schema` is idempotent (``IF NOT EXISTS`` throughout) and
records :data:`SCHEMA_VERSION` in ``PRAGMA user_version``; a file written
by a newer version is refused rather than guessed at.
"""

from __future__ import annotations

import os
import sqlite3

#: Bumped with every change below; stored in ``PRAGMA user_version``.
# 2: cluster tables (schema/0004); 3: message failures (schema/0005) and
# 4: backfill (schema/0008), both merged on main meanwhile; 5: provider
# options (schema/0007, write-back); 6: imap_provider_options.oauth_delegate
# (schema/0009); 7: imap_folder_modseq (schema/0010, CONDSTORE/QRESYNC).
SCHEMA_VERSION = 7

#: Columns added to a table after it first shipped: ``CREATE TABLE IF NOT
#: EXISTS`` leaves an older file's table as it was, so these are added to it.
_ADDED_COLUMNS = (
    ("imap_provider_options", "oauth_delegate", "TEXT"),
)


class SchemaTooNew(Exception):
    """The SQLite file was written by a newer imapsvc."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS email_providers (
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    provider_type TEXT NOT NULL,
    provider_name TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL DEFAULT 'configuring'
        CHECK (status IN ('connected', 'disconnected', 'error', 'configuring')),
    error_message TEXT,
    last_sync_at TEXT,
    inbound_paused_at TEXT,
    inbound_pause_reason TEXT
        CHECK (inbound_pause_reason IS NULL
               OR inbound_pause_reason IN ('manual', 'tenant_cancelled', 'auth_failure')),
    inbound_auth_failure_count INTEGER NOT NULL DEFAULT 0,
    inbound_auth_failure_last_at TEXT,
    inbound_auth_failure_code TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (id, tenant),
    UNIQUE (tenant, mailbox),
    CHECK ((inbound_paused_at IS NULL) = (inbound_pause_reason IS NULL))
);

CREATE TABLE IF NOT EXISTS imap_email_provider_config (
    email_provider_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    secure INTEGER NOT NULL DEFAULT 1,
    allow_starttls INTEGER NOT NULL DEFAULT 0,
    auth_type TEXT NOT NULL DEFAULT 'password' CHECK (auth_type IN ('password', 'oauth2')),
    username TEXT,
    connection_timeout_ms INTEGER,
    socket_keepalive INTEGER,
    max_emails_per_sync INTEGER NOT NULL DEFAULT 50,
    folder_filters TEXT NOT NULL DEFAULT '[]',
    oauth_authorize_url TEXT,
    oauth_token_url TEXT,
    oauth_client_id TEXT,
    oauth_client_secret TEXT,
    oauth_scopes TEXT,
    access_token TEXT,
    refresh_token TEXT,
    token_expires_at TEXT,
    folder_state TEXT NOT NULL DEFAULT '{}',
    uid_validity TEXT,
    last_uid TEXT,
    last_seen_at TEXT,
    last_processed_message_id TEXT,
    server_capabilities TEXT NOT NULL DEFAULT '[]',
    lease_owner TEXT,
    lease_expires_at TEXT,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (email_provider_id, tenant),
    FOREIGN KEY (email_provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS imap_message_ledger (
    tenant TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    message_id_key TEXT,
    folder TEXT NOT NULL,
    uid_validity TEXT NOT NULL,
    uid INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('published', 'skipped')),
    reason TEXT,
    event_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, provider_id, dedupe_key)
);

CREATE UNIQUE INDEX IF NOT EXISTS imap_message_ledger_message_id_key
    ON imap_message_ledger (tenant, provider_id, message_id_key)
    WHERE message_id_key IS NOT NULL;

CREATE INDEX IF NOT EXISTS imap_message_ledger_created_idx
    ON imap_message_ledger (created_at);

-- AUTOINCREMENT: ids never reused, so commit order is id order for ever.
CREATE TABLE IF NOT EXISTS imap_event_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    fields TEXT NOT NULL,
    created_at TEXT NOT NULL,
    published_at TEXT
);

CREATE INDEX IF NOT EXISTS imap_event_outbox_unpublished_idx
    ON imap_event_outbox (id) WHERE published_at IS NULL;

CREATE TABLE IF NOT EXISTS imap_secrets (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE IF NOT EXISTS imap_oauth_states (
    tenant TEXT NOT NULL,
    nonce TEXT NOT NULL,
    verifier TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, nonce)
);

-- schema/0004: folder states, replicas, admin requests (one service across
-- processes sharing the file, as across Postgres replicas).
CREATE TABLE IF NOT EXISTS imap_folder_status (
    tenant TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    owner TEXT,
    holds_connection INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'Disconnected',
    since TEXT,
    last_sync_at TEXT,
    last_error TEXT,
    counters TEXT NOT NULL DEFAULT '{}',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, provider_id, folder),
    FOREIGN KEY (provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS imap_replicas (
    owner TEXT NOT NULL PRIMARY KEY,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    info TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE IF NOT EXISTS imap_admin_requests (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    action TEXT NOT NULL
        CHECK (action IN ('reconnect', 'resync', 'test-connection', 'pause', 'resume')),
    folder TEXT,
    requested_by TEXT,
    created_at TEXT NOT NULL,
    claimed_by TEXT,
    claimed_at TEXT,
    applied_by TEXT,
    applied_at TEXT,
    result TEXT,
    PRIMARY KEY (tenant, id)
);

-- schema/0005_quarantine.sql (version 3)
CREATE TABLE IF NOT EXISTS imap_message_failures (
    tenant TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    uid_validity TEXT NOT NULL,
    uid INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    skipped_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, provider_id, folder, uid_validity, uid)
);

-- schema/0008: backfill (a provider's first sync by date, pending resync --since).
CREATE TABLE IF NOT EXISTS imap_provider_backfill (
    tenant TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    first_sync_since_days INTEGER
        CHECK (first_sync_since_days IS NULL OR first_sync_since_days >= 0),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, provider_id),
    FOREIGN KEY (provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS imap_folder_backfill (
    tenant TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    since TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    PRIMARY KEY (tenant, provider_id, folder),
    FOREIGN KEY (provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);

-- schema/0007: imapsvc's own per-provider options (write-back).
CREATE TABLE IF NOT EXISTS imap_provider_options (
    tenant TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    write_back TEXT,
    oauth_delegate TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, provider_id),
    FOREIGN KEY (provider_id, tenant) REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);

-- schema/0010: the HIGHESTMODSEQ of a folder's last committed sync pass.
CREATE TABLE IF NOT EXISTS imap_folder_modseq (
    tenant TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    uid_validity TEXT NOT NULL,
    highest_modseq INTEGER NOT NULL CHECK (highest_modseq > 0),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, provider_id, folder),
    FOREIGN KEY (provider_id, tenant) REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS imap_message_ledger_folder_uid_idx
    ON imap_message_ledger (tenant, provider_id, folder, uid_validity, uid);
"""


def _create_private(path: str) -> None:
    """Create a missing store file readable by its owner only.

    It holds sealed secrets and every tenant's cursors and outbox; SQLite gives
    its ``-wal`` and ``-shm`` files the main file's mode, so this covers them too.
    """
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:
        # No folder, no permission: sqlite3.connect reports it as the store does.
        pass


def connect(path: str, timeout_s: float = 10.0) -> sqlite3.Connection:
    """Open ``path`` the way every imapsvc user of the file must: WAL (readers
    never block the writer), ``synchronous=FULL`` (a committed batch survives
    a power cut; a lost message is a lost customer request), foreign keys on,
    and a busy timeout so the CLI and the service can share the file.

    The connection is in autocommit mode (``isolation_level=None``): callers
    open transactions explicitly with ``BEGIN IMMEDIATE``.
    """
    _create_private(path)
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    except Exception:
        conn.close()
        raise
    return conn


def ensure_schema(conn: sqlite3.Connection) -> bool:
    """Create the tables when missing.

    :return: ``True`` when this call created or upgraded the schema.
    :raises SchemaTooNew: the file comes from a newer imapsvc.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the SQLite file has schema version {version}; this imapsvc knows "
            f"up to {SCHEMA_VERSION}")
    if version == SCHEMA_VERSION:
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        for table, column, kind in _ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return True
