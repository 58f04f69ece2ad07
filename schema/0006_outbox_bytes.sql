-- 0006: the outbox keeps each stream entry as text the pipeline encoded
-- once, instead of a jsonb the store re-encoded through psycopg2's Json
-- adapter and the server parsed again (issue 12): `payload` is the
-- `payload_json` field exactly as it goes to Redis (the bytes the encoder
-- produced, never escaped into another JSON document), `entry` the other
-- flat fields as a JSON object (small).
--
-- New rows fill `entry` (and `payload`) and leave `fields` NULL; rows written
-- before this migration keep their jsonb `fields` and stay readable (the
-- store reads `entry` when present, else `fields`). Adding a nullable column and dropping
-- NOT NULL do not rewrite the table. The check is NOT VALID so no scan runs:
-- every existing row has `fields`.
--
-- The payload is compressed with lz4 where the server has it (PostgreSQL 14+
-- built with lz4): pglz, the default, cost the server about a third of each
-- batch's commit time on the mixed benchmark corpus. Without lz4 the column
-- keeps the default.
--
-- Rolling upgrade: a replica of an older version reads `fields` only, so stop
-- old replicas before new ones relay (their relays would fail on rows with a
-- NULL `fields`, and retry until then; nothing is lost).

ALTER TABLE imap_event_outbox ADD COLUMN IF NOT EXISTS entry text;
ALTER TABLE imap_event_outbox ADD COLUMN IF NOT EXISTS payload text;
ALTER TABLE imap_event_outbox ALTER COLUMN fields DROP NOT NULL;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint WHERE conname = 'imap_event_outbox_entry_present'
    ) THEN
        ALTER TABLE imap_event_outbox ADD CONSTRAINT imap_event_outbox_entry_present
            CHECK (entry IS NOT NULL OR fields IS NOT NULL) NOT VALID;
    END IF;
END
$$;

DO $$
BEGIN
    ALTER TABLE imap_event_outbox ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN others THEN
    RAISE NOTICE 'imap_event_outbox.payload keeps the default compression: %', SQLERRM;
END
$$;
