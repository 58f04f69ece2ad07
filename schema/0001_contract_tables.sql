-- 0001: the provider tables of CONTRACT section 1.
--
-- The main application owns these tables; imapsvc ships them so that it can
-- run on its own (tests, demos, a fresh deployment). Everything is
-- IF NOT EXISTS so applying this where the main app already created them
-- changes nothing.

CREATE TABLE IF NOT EXISTS email_providers (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    tenant uuid NOT NULL,
    provider_type varchar(50) NOT NULL,
    provider_name varchar(255) NOT NULL,
    mailbox varchar(255) NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    status varchar(50) NOT NULL DEFAULT 'configuring',
    error_message text,
    last_sync_at timestamptz,
    inbound_paused_at timestamptz,
    inbound_pause_reason text,
    inbound_auth_failure_count integer NOT NULL DEFAULT 0,
    inbound_auth_failure_last_at timestamptz,
    inbound_auth_failure_code text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT email_providers_pkey PRIMARY KEY (id, tenant),
    CONSTRAINT email_providers_tenant_mailbox_key UNIQUE (tenant, mailbox),
    CONSTRAINT email_providers_status_check
        CHECK (status IN ('connected', 'disconnected', 'error', 'configuring')),
    CONSTRAINT email_providers_pause_reason_check
        CHECK (inbound_pause_reason IS NULL
               OR inbound_pause_reason IN ('manual', 'tenant_cancelled', 'auth_failure')),
    -- A pause has both a time and a reason, or neither.
    CONSTRAINT email_providers_pause_pair_check
        CHECK ((inbound_paused_at IS NULL) = (inbound_pause_reason IS NULL))
);

-- Discovery reads exactly this set.
CREATE INDEX IF NOT EXISTS email_providers_active_imap_idx
    ON email_providers (tenant, id)
    WHERE provider_type = 'imap' AND is_active AND inbound_paused_at IS NULL;

CREATE TABLE IF NOT EXISTS imap_email_provider_config (
    email_provider_id uuid NOT NULL,
    tenant uuid NOT NULL,
    -- connection
    host varchar(255) NOT NULL,
    port integer NOT NULL,
    secure boolean NOT NULL DEFAULT true,
    allow_starttls boolean NOT NULL DEFAULT false,
    auth_type varchar(50) NOT NULL DEFAULT 'password',
    username varchar(255),
    connection_timeout_ms integer,
    socket_keepalive boolean,
    -- processing
    max_emails_per_sync integer NOT NULL DEFAULT 50,
    folder_filters jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- OAuth (oauth_client_secret and refresh_token exist for compatibility
    -- only: imapsvc keeps those two in imap_secrets, encrypted)
    oauth_authorize_url text,
    oauth_token_url text,
    oauth_client_id text,
    oauth_client_secret text,
    oauth_scopes text,
    access_token text,
    refresh_token text,
    token_expires_at timestamptz,
    -- cursor: per folder in folder_state, the last folder written mirrored
    folder_state jsonb NOT NULL DEFAULT '{}'::jsonb,
    uid_validity varchar(64),
    last_uid varchar(64),
    last_seen_at timestamptz,
    -- runtime
    last_processed_message_id text,
    server_capabilities jsonb NOT NULL DEFAULT '[]'::jsonb,
    lease_owner varchar(255),
    lease_expires_at timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT imap_email_provider_config_pkey PRIMARY KEY (email_provider_id, tenant),
    CONSTRAINT imap_email_provider_config_provider_fkey
        FOREIGN KEY (email_provider_id, tenant)
        REFERENCES email_providers (id, tenant) ON DELETE CASCADE,
    CONSTRAINT imap_email_provider_config_auth_type_check
        CHECK (auth_type IN ('password', 'oauth2'))
);

CREATE INDEX IF NOT EXISTS imap_email_provider_config_lease_idx
    ON imap_email_provider_config (tenant, lease_expires_at);
