"""What the two SQL stores (and the admin CLI) read and write the same way:
the provider select and its mapping to :class:`~imapsvc.model.ProviderConfig`,
the admin-request columns, the cursors of a ``folder_state`` object and the
authentication-failure reset.

Statements here use ``%s`` marks (psycopg2); :func:`qmark` turns them into
SQLite's ``?``. Each dialect converts its own column types (timestamps,
JSON text) before :func:`provider_config` builds the config.
"""

from __future__ import annotations

from typing import Any, Mapping

from imapsvc.core.folders import folder_filters_from_json
from imapsvc.model import FolderCursor, ProviderConfig

#: The provider select's columns, named by the ProviderConfig field they fill.
PROVIDER_FIELDS = (
    "tenant", "provider_id", "provider_name", "mailbox",
    "host", "port", "secure", "allow_starttls", "auth_type", "username",
    "connection_timeout_ms", "socket_keepalive", "max_emails_per_sync", "folder_filters",
    "oauth_authorize_url", "oauth_token_url", "oauth_client_id", "oauth_scopes",
    "access_token", "token_expires_at", "folder_state", "server_capabilities",
    "lease_owner", "lease_expires_at",
    "status", "is_active", "inbound_paused_at", "inbound_auth_failure_count",
    "updated_at", "oauth_client_secret", "refresh_token",
    # imap_provider_options (schema/0007, 0009), last so the other columns keep their place.
    "write_back", "oauth_delegate",
)

#: Fields from ``email_providers p``; the rest are ``imap_email_provider_config c``
#: columns of the same name, but for the expressions below.
_PROVIDER_TABLE = frozenset({"tenant", "provider_name", "mailbox", "status", "is_active",
                             "inbound_paused_at", "inbound_auth_failure_count"})
_EXPRESSIONS = {
    "provider_id": "p.id",
    # The later of the two rows' changes: {latest} is GREATEST or max.
    "updated_at": "{latest}(p.updated_at, c.updated_at)",
    "write_back": "o.write_back",
    "oauth_delegate": "o.oauth_delegate",
}

PROVIDER_FROM = """
    FROM email_providers p
    JOIN imap_email_provider_config c ON c.tenant = p.tenant AND c.email_provider_id = p.id
    LEFT JOIN imap_provider_options o ON o.tenant = p.tenant AND o.provider_id = p.id
"""

REQUEST_COLUMNS = ("tenant, id, provider_id, action, folder, requested_by, created_at,"
                   " claimed_by, applied_by, applied_at, result")

#: A successful login (or new credentials): clear the count and an
#: ``auth_failure`` pause, never another pause. Skips the write when there
#: is nothing to clear: this runs on every login. ``{now}``: the dialect's
#: current time (a mark for SQLite, whose clock is the store's).
RESET_AUTH_FAILURES = (
    "UPDATE email_providers SET inbound_auth_failure_count = 0,"
    " inbound_auth_failure_code = NULL,"
    " inbound_paused_at = CASE WHEN inbound_pause_reason = 'auth_failure'"
    "   THEN NULL ELSE inbound_paused_at END,"
    " inbound_pause_reason = CASE WHEN inbound_pause_reason = 'auth_failure'"
    "   THEN NULL ELSE inbound_pause_reason END,"
    " updated_at = {now}"
    " WHERE tenant = %s AND id = %s AND (inbound_auth_failure_count <> 0"
    "   OR inbound_auth_failure_code IS NOT NULL"
    "   OR inbound_pause_reason = 'auth_failure')"
)


def qmark(sql: str) -> str:
    """A statement of this module with SQLite's ``?`` marks."""
    return sql.replace("%s", "?")


def provider_select(latest: str, leading: str = "") -> str:
    """``SELECT <columns of PROVIDER_FIELDS> FROM ...`` with ``latest`` the
    dialect's greatest-of-two function; ``leading`` columns come first
    (``"p.provider_type"`` for the CLI's listing)."""
    columns = [leading] if leading else []
    for field in PROVIDER_FIELDS:
        expression = _EXPRESSIONS.get(field)
        if expression is None:
            expression = ("p." if field in _PROVIDER_TABLE else "c.") + field
        columns.append(expression.format(latest=latest))
    return "SELECT " + ", ".join(columns) + PROVIDER_FROM


def cursors_from_state(state: Any) -> dict[str, FolderCursor]:
    """The readable cursors of a ``folder_state`` object (anything else: none)."""
    out = {}
    for folder, data in (state.items() if isinstance(state, dict) else ()):
        cursor = FolderCursor.from_json(data if isinstance(data, dict) else None)
        if cursor is not None:
            out[str(folder)] = cursor
    return out


def provider_config(values: Mapping[str, Any]) -> ProviderConfig:
    """The config of one provider row (``PROVIDER_FIELDS`` to values, already
    in Python types: timestamps as datetimes, JSON decoded)."""
    v = values
    max_emails = v["max_emails_per_sync"]
    keepalive = v["socket_keepalive"]
    return ProviderConfig(
        tenant=str(v["tenant"]),
        provider_id=str(v["provider_id"]),
        provider_name=v["provider_name"] or "",
        mailbox=v["mailbox"] or "",
        host=v["host"],
        port=int(v["port"]),
        secure=bool(v["secure"]),
        allow_starttls=bool(v["allow_starttls"]),
        auth_type=v["auth_type"],
        username=v["username"] or "",
        connection_timeout_ms=v["connection_timeout_ms"],
        socket_keepalive=None if keepalive is None else bool(keepalive),
        max_emails_per_sync=50 if max_emails is None else int(max_emails),
        folder_filters=folder_filters_from_json(v["folder_filters"]),
        oauth_authorize_url=v["oauth_authorize_url"],
        oauth_token_url=v["oauth_token_url"],
        oauth_client_id=v["oauth_client_id"],
        oauth_scopes=v["oauth_scopes"],
        access_token=v["access_token"],
        token_expires_at=v["token_expires_at"],
        folder_state=cursors_from_state(v["folder_state"]),
        server_capabilities=tuple(str(c) for c in (v["server_capabilities"] or ())),
        lease_owner=v["lease_owner"],
        lease_expires_at=v["lease_expires_at"],
        status=v["status"],
        is_active=bool(v["is_active"]),
        inbound_paused_at=v["inbound_paused_at"],
        inbound_auth_failure_count=int(v["inbound_auth_failure_count"] or 0),
        updated_at=v["updated_at"],
        oauth_client_secret=v["oauth_client_secret"] or None,
        refresh_token=v["refresh_token"] or None,
        write_back=v.get("write_back"),
        oauth_delegate=v.get("oauth_delegate") or None,
    )


def provider_values(row: Any) -> dict[str, Any]:
    """A provider row as ``{field: value}`` (a row without the options
    column reads ``write_back`` as absent)."""
    return dict(zip(PROVIDER_FIELDS, row))
