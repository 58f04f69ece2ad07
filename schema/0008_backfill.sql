-- 0008: backfill (issue 13, item 6).
--
-- imap_provider_backfill: a provider's own first-sync window by date. A
-- folder with no cursor starts with the messages of the last
-- first_sync_since_days days (UID SEARCH SINCE) instead of the recent
-- window; NULL (or no row) means IMAP_FIRST_SYNC_SINCE_DAYS, 0 means off.
CREATE TABLE IF NOT EXISTS imap_provider_backfill (
    tenant uuid NOT NULL,
    provider_id uuid NOT NULL,
    first_sync_since_days integer,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_provider_backfill_pkey PRIMARY KEY (tenant, provider_id),
    CONSTRAINT imap_provider_backfill_days_check
        CHECK (first_sync_since_days IS NULL OR first_sync_since_days >= 0),
    CONSTRAINT imap_provider_backfill_provider_fkey
        FOREIGN KEY (provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);

-- imap_folder_backfill: pending `resync --since` requests, one per folder
-- (the server's spelling, as in folder_state, or the configured filter).
-- The folder reads them at every sync start, reads the messages since that
-- date again (the ledger drops what was already recorded) and deletes the
-- row once the pass is committed; a crash in between repeats it.
CREATE TABLE IF NOT EXISTS imap_folder_backfill (
    tenant uuid NOT NULL,
    provider_id uuid NOT NULL,
    folder text NOT NULL,
    since date NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_folder_backfill_pkey PRIMARY KEY (tenant, provider_id, folder),
    CONSTRAINT imap_folder_backfill_provider_fkey
        FOREIGN KEY (provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);
