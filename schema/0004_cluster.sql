-- 0004: one service across replicas (issue 10, item 4).
--
-- imap_folder_status: each replica persists the state of the folders it
-- runs (written fenced by the provider's lease, throttled), so /status on any
-- replica shows every folder of the deployment. A row with holds_connection
-- counts towards IMAP_MAX_CONNECTIONS_PER_TENANT while its owner holds the
-- provider's live lease: the cap is counted here, across replicas, when a
-- lease is taken.
CREATE TABLE IF NOT EXISTS imap_folder_status (
    tenant uuid NOT NULL,
    provider_id uuid NOT NULL,
    folder text NOT NULL,
    owner varchar(255),
    holds_connection boolean NOT NULL DEFAULT false,
    state varchar(32) NOT NULL DEFAULT 'Disconnected',
    since timestamptz,
    last_sync_at timestamptz,
    -- redacted at the source, like every error imapsvc writes
    last_error text,
    counters jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_folder_status_pkey PRIMARY KEY (tenant, provider_id, folder),
    CONSTRAINT imap_folder_status_provider_fkey
        FOREIGN KEY (provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE
);

-- Replicas and their last heartbeat; one silent for two lease TTLs is shown
-- as gone. Not tenant data: on Citus it stays a plain table on the
-- coordinator (a handful of rows).
CREATE TABLE IF NOT EXISTS imap_replicas (
    owner varchar(255) NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    info jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT imap_replicas_pkey PRIMARY KEY (owner)
);

-- Admin actions (reconnect, resync, test-connection, pause, resume) written
-- by whichever replica the HTTP request reaches, announced with
-- pg_notify('imapsvc_admin', ...) and carried out by the replica that owns
-- the provider (or by any replica when nobody does).
CREATE TABLE IF NOT EXISTS imap_admin_requests (
    tenant uuid NOT NULL,
    id uuid NOT NULL,
    provider_id uuid NOT NULL,
    action varchar(32) NOT NULL,
    folder text,
    requested_by varchar(255),
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_by varchar(255),
    claimed_at timestamptz,
    applied_by varchar(255),
    applied_at timestamptz,
    result jsonb,
    CONSTRAINT imap_admin_requests_pkey PRIMARY KEY (tenant, id),
    CONSTRAINT imap_admin_requests_action_check
        CHECK (action IN ('reconnect', 'resync', 'test-connection', 'pause', 'resume'))
);

CREATE INDEX IF NOT EXISTS imap_admin_requests_pending_idx
    ON imap_admin_requests (created_at) WHERE applied_at IS NULL;
