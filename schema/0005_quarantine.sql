-- 0005: poison messages (issue 11).
--
-- One row per message whose fetch failed: how often, why, and when it was
-- given up on. A message that fails IMAP_POISON_AFTER times is recorded as
-- skipped in imap_message_ledger (reason 'poison: ...'), skipped_at is set
-- and the folder's cursor moves past it. Kept in the database, not in
-- memory: the count must survive a restart and a lease moving to another
-- replica (a message that kills the process would otherwise be retried by
-- every replica in turn, for ever). `python -m imapsvc poison list|retry`.
CREATE TABLE IF NOT EXISTS imap_message_failures (
    tenant uuid NOT NULL,
    provider_id uuid NOT NULL,
    folder text NOT NULL,
    uid_validity varchar(64) NOT NULL,
    uid bigint NOT NULL,
    failures integer NOT NULL DEFAULT 0,
    reason text,
    skipped_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_message_failures_pkey
        PRIMARY KEY (tenant, provider_id, folder, uid_validity, uid)
);
