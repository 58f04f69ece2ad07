-- 0010: CONDSTORE/QRESYNC (RFC 7162, issue 13 item 5).
--
-- imap_folder_modseq: the HIGHESTMODSEQ a folder had when its last sync pass
-- was committed, with the UIDVALIDITY it belongs to. On the next sync the
-- folder is opened with EXAMINE ... (QRESYNC (uid_validity highest_modseq));
-- when the server's HIGHESTMODSEQ is the same and UIDNEXT is not beyond the
-- cursor, the UID SEARCH is skipped. Written after the pass's cursor: a
-- crash in between leaves an older value, which only turns the shortcut off
-- once. The ledger still decides what is new. bigint holds every
-- mod-sequence (1 .. 2^63-1).
CREATE TABLE IF NOT EXISTS imap_folder_modseq (
    tenant uuid NOT NULL,
    provider_id uuid NOT NULL,
    folder text NOT NULL,
    uid_validity text NOT NULL,
    highest_modseq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_folder_modseq_pkey PRIMARY KEY (tenant, provider_id, folder),
    CONSTRAINT imap_folder_modseq_positive CHECK (highest_modseq > 0),
    CONSTRAINT imap_folder_modseq_provider_fkey
        FOREIGN KEY (provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);
