-- 0007: per-provider options of imapsvc itself (issue 13 item 3).
--
-- write_back: what to do to a message in the IMAP folder once its ledger and
-- outbox rows are committed: 'none' (read-only EXAMINE), 'seen',
-- 'delete' or 'move:<folder>'. No row (or a NULL) means the environment
-- default IMAP_WRITE_BACK. Set with `python -m imapsvc provider
-- set-write-back`; read with the provider row at every discovery.
CREATE TABLE IF NOT EXISTS imap_provider_options (
    tenant uuid NOT NULL,
    provider_id uuid NOT NULL,
    write_back text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_provider_options_pkey PRIMARY KEY (tenant, provider_id),
    CONSTRAINT imap_provider_options_provider_fkey
        FOREIGN KEY (provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE,
    CONSTRAINT imap_provider_options_write_back_check
        CHECK (write_back IS NULL OR write_back IN ('none', 'seen', 'delete')
               OR (write_back LIKE 'move:%' AND length(write_back) > 5))
);

-- The restart sweep asks which UIDs of a folder the ledger holds.
CREATE INDEX IF NOT EXISTS imap_message_ledger_folder_uid_idx
    ON imap_message_ledger (tenant, provider_id, folder, uid_validity, uid);
