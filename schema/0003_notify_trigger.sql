-- 0003: tell running replicas at once when a provider row changes.
--
-- imap_notify_provider_change() sends
--     pg_notify('imapsvc_providers',
--               '{"tenant": ..., "provider_id": ..., "op": "INSERT|UPDATE|DELETE", "table": ...}')
-- after a row of email_providers or imap_email_provider_config changes.
-- The trigger argument names the column that holds the provider id.
--
-- Updates that touch only columns imapsvc itself writes all the time (status,
-- cursor, lease, capabilities, token, counters, timestamps) are not announced:
-- otherwise every lease renewal and every batch would wake every replica.
-- The notification is a hint; the supervisor's periodic refresh stays the
-- source of truth (a NOTIFY sent while a listener reconnects is lost).

CREATE OR REPLACE FUNCTION imap_notify_provider_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    noisy text[] := ARRAY[
        -- email_providers: written by imapsvc
        'status', 'error_message', 'last_sync_at', 'updated_at',
        'inbound_auth_failure_count', 'inbound_auth_failure_last_at',
        'inbound_auth_failure_code',
        -- imap_email_provider_config: written by imapsvc
        'folder_state', 'uid_validity', 'last_uid', 'last_seen_at',
        'last_processed_message_id', 'server_capabilities', 'lease_owner',
        'lease_expires_at', 'last_error', 'access_token', 'token_expires_at'];
    subject jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        subject := to_jsonb(OLD);
    ELSE
        subject := to_jsonb(NEW);
    END IF;
    IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - noisy) = (subject - noisy) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('imapsvc_providers', json_build_object(
        'tenant', subject ->> 'tenant',
        'provider_id', subject ->> TG_ARGV[0],
        'op', TG_OP,
        'table', TG_TABLE_NAME)::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS imap_notify_provider_change ON email_providers;
CREATE TRIGGER imap_notify_provider_change
    AFTER INSERT OR UPDATE OR DELETE ON email_providers
    FOR EACH ROW EXECUTE FUNCTION imap_notify_provider_change('id');

DROP TRIGGER IF EXISTS imap_notify_provider_change ON imap_email_provider_config;
CREATE TRIGGER imap_notify_provider_change
    AFTER INSERT OR UPDATE OR DELETE ON imap_email_provider_config
    FOR EACH ROW EXECUTE FUNCTION imap_notify_provider_change('email_provider_id');
