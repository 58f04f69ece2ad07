-- 0002: imapsvc's own tables. Every one carries tenant and leads its keys
-- with it, so they can be distributed by tenant on Citus (migrate.py does
-- that when Citus is present).

-- Which migrations ran (migrate.py also creates it before running 0001).
CREATE TABLE IF NOT EXISTS imap_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per message recorded (published or deliberately skipped).
-- Duplicates are not stored: they are recognised by the two unique keys.
CREATE TABLE IF NOT EXISTS imap_message_ledger (
    tenant uuid NOT NULL,
    provider_id uuid NOT NULL,
    -- imap:<mailbox>:<uidvalidity>:<uid>
    dedupe_key text NOT NULL,
    -- normalised Message-ID; a copy in another folder is the same message
    message_id_key text,
    folder text NOT NULL,
    uid_validity varchar(64) NOT NULL,
    uid bigint NOT NULL,
    outcome varchar(20) NOT NULL,
    reason text,
    event_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_message_ledger_pkey PRIMARY KEY (tenant, provider_id, dedupe_key),
    CONSTRAINT imap_message_ledger_outcome_check CHECK (outcome IN ('published', 'skipped'))
);

CREATE UNIQUE INDEX IF NOT EXISTS imap_message_ledger_message_id_key
    ON imap_message_ledger (tenant, provider_id, message_id_key)
    WHERE message_id_key IS NOT NULL;

-- Retention purge.
CREATE INDEX IF NOT EXISTS imap_message_ledger_created_idx
    ON imap_message_ledger (created_at);

-- Stream entries written in the same transaction as their ledger rows and
-- cursor; the relay publishes them oldest first and stamps published_at.
CREATE TABLE IF NOT EXISTS imap_event_outbox (
    id bigserial NOT NULL,
    tenant uuid NOT NULL,
    provider_id uuid NOT NULL,
    event_id text NOT NULL,
    fields jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    CONSTRAINT imap_event_outbox_pkey PRIMARY KEY (tenant, id)
);

CREATE INDEX IF NOT EXISTS imap_event_outbox_unpublished_idx
    ON imap_event_outbox (id) WHERE published_at IS NULL;

CREATE INDEX IF NOT EXISTS imap_event_outbox_published_idx
    ON imap_event_outbox (published_at) WHERE published_at IS NOT NULL;

-- Encrypted secrets (CONTRACT section 3): ciphertext only, never plaintext.
CREATE TABLE IF NOT EXISTS imap_secrets (
    tenant uuid NOT NULL,
    name varchar(255) NOT NULL,
    ciphertext bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_secrets_pkey PRIMARY KEY (tenant, name)
);

-- OAuth `state` nonces with their PKCE verifier; single use, short-lived.
CREATE TABLE IF NOT EXISTS imap_oauth_states (
    tenant uuid NOT NULL,
    nonce varchar(255) NOT NULL,
    verifier text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_oauth_states_pkey PRIMARY KEY (tenant, nonce)
);

CREATE INDEX IF NOT EXISTS imap_oauth_states_expires_idx
    ON imap_oauth_states (expires_at);
