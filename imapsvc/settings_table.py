"""The settings table: one row per setting (environment variable, parser,
default, one line of help, group). ``twistd imapsvc --help``,
``python -m imapsvc config`` and ``docs/settings.md`` are generated from it;
:mod:`imapsvc.config` loads and validates :class:`~imapsvc.config.Settings`
from it. Only the table lives here: no loading, no checks across settings.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import attr

from imapsvc.config_parsers import (
    admin_token,
    boolean,
    choice,
    cidr_or_host,
    comma_list,
    connection_budget,
    default_worker_id,
    existing_dir,
    existing_file,
    fraction,
    fs_base_path_default,
    host_name,
    http_url,
    non_negative_int,
    object_prefix,
    object_store_url,
    port,
    positive_int,
    postgres_url,
    redis_url,
    secret_key_text,
    string,
    tenant_uuid,
    worker_id,
    write_back_mode,
)
from imapsvc.model import MIB


@attr.s(frozen=True, auto_attribs=True)
class Setting:
    """One row of the settings table.

    :ivar env: the environment variable.
    :ivar parse: turns the (non-empty) text into the value or raises.
    :ivar default: the value when unset (already parsed), or a zero-argument
        callable computing it.
    :ivar help: one line for ``--help`` and the docs.
    :ivar group: heading in the docs.
    :ivar sensitive: never shown, logged or put in an error message.
    :ivar shown_default: how the default is written in help, when the value
        itself is not the right thing to show.
    """

    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    group: str
    sensitive: bool = False
    shown_default: Optional[str] = None

    @property
    def name(self) -> str:
        """The :class:`Settings` attribute: the variable lower-cased without
        its ``IMAPSVC_``/``IMAP_`` prefix."""
        env = self.env
        for prefix in ("IMAPSVC_", "IMAP_"):
            if env.startswith(prefix):
                env = env[len(prefix) :]
                break
        return env.lower()

    @property
    def option(self) -> str:
        """The ``twistd imapsvc`` long option, without the dashes."""
        return self.name.replace("_", "-")

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        value = self.default
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ",".join(value) or "(empty)"
        if value == "":
            return "(empty)"
        return str(value)


_T, _C, _P, _M, _W, _S, _A, _D, _O = (
    "Timing",
    "Connection",
    "Capacity and size caps",
    "Attachment content",
    "Wiring",
    "Secrets and security",
    "The app's secret providers (CONTRACT section 3)",
    "The app's connection variables (used when DATABASE_URL / REDIS_URL are unset)",
    "Operations",
)

SETTINGS: tuple[Setting, ...] = (
    # Timing (CONTRACT 5)
    Setting("IMAP_PROVIDER_REFRESH_MS", positive_int, 60000,
            "how often providers are re-read from the database and leases renewed", _T),
    Setting("IMAP_LEASE_TTL_MS", positive_int, 120000,
            "lifetime of a provider lease; must outlast a jittered refresh interval", _T),
    Setting("IMAP_POLL_INTERVAL_MS", positive_int, 30000,
            "poll interval for servers without IDLE", _T),
    Setting("IMAP_IDLE_RESTART_MS", positive_int, 1500000,
            "leave IDLE and sync after this long; must be below 29 minutes (1740000)", _T),
    Setting("IMAP_IDLE_KEEPALIVE_MS", positive_int, 240000,
            "while idling, end and re-issue IDLE this often, so a server silent while idling "
            "is not dropped; capped at 90% of IMAP_INACTIVITY_TIMEOUT_MS", _T),
    Setting("IMAP_STARTUP_STAGGER_MS", non_negative_int, 2000,
            "spread provider start-ups, and the first reconnect after a lost connection, over "
            "this window", _T),
    Setting("IMAP_TIMER_JITTER_PCT", fraction, 0.1,
            "jitter fraction, either way, for refresh, heartbeat, poll sleep, IDLE restart "
            "and IDLE keep-alive", _T),
    Setting("IMAP_RECONNECT_BASE_MS", positive_int, 2000,
            "first reconnect delay after a dropped connection", _T),
    Setting("IMAP_RECONNECT_MAX_MS", positive_int, 60000,
            "longest reconnect delay; must be >= IMAP_RECONNECT_BASE_MS", _T),
    Setting("IMAP_RECONNECT_JITTER_PCT", fraction, 0.5,
            "reconnect delay drawn from [delay*(1-j), delay]", _T),
    Setting("IMAP_COMMAND_TIMEOUT_MS", positive_int, 60000,
            "an IMAP command (other than IDLE) unanswered this long drops the connection", _T),
    Setting("IMAP_INACTIVITY_TIMEOUT_MS", positive_int, 300000,
            "drop a connection silent this long; must exceed Dovecot's 2 minute keep-alive", _T),
    Setting("IMAP_SHUTDOWN_TIMEOUT_MS", positive_int, 20000,
            "time allowed for a clean shutdown (finish batches, release leases)", _T),
    Setting("REDIS_TIMEOUT_MS", positive_int, 5000,
            "deadline of every Redis command", _T),
    Setting("IMAP_ADMIN_WAIT_MS", non_negative_int, 10000,
            "how long an admin request (reconnect, resync, ...) waits for the owning "
            "replica to apply it before answering 202 with a request id to poll", _T),
    Setting("IMAP_ADMIN_POLL_MS", positive_int, 5000,
            "how often a replica looks for admin requests it missed a NOTIFY for", _T),
    Setting("IMAP_STATUS_WRITE_MS", positive_int, 5000,
            "at most one folder status write per provider this often (cluster /status)", _T),
    # Connection
    Setting("IMAP_CONNECTION_TIMEOUT_MS", positive_int, 10000,
            "TCP/TLS connect timeout (a provider's own value wins)", _C),
    Setting("IMAP_SOCKET_KEEPALIVE", boolean, True,
            "TCP keep-alive on IMAP sockets (a provider's own value wins)", _C),
    Setting("IMAP_TLS_CA_FILE", existing_file, "",
            "PEM file of CA certificates to trust instead of the system store", _C),
    Setting("IMAP_TLS_INSECURE", boolean, False,
            "turn off TLS certificate verification (testing only)", _C),
    Setting("IMAP_BROKEN_BODYSTRUCTURE_HOSTS", comma_list(host_name), (),
            "comma list of IMAP hosts whose BODYSTRUCTURE is not trusted (full fetch)", _C),
    Setting("IMAP_ENABLE_UTF8", boolean, False,
            "send ENABLE UTF8=ACCEPT (RFC 6855) when the server offers it: UTF-8 headers "
            "and folder names without downgrading", _C),
    Setting("IMAP_COMPRESS", choice("auto", "off", "always"), "auto",
            "COMPRESS=DEFLATE (RFC 4978) after login when the server offers it: auto (only "
            "when the server's address is not loopback or private), off, or always", _C),
    Setting("IMAP_MODSEQ", choice("condstore", "qresync", "off"), "condstore",
            "mod-sequences (RFC 7162) when the server offers them, so a pass that finds "
            "nothing new skips its UID SEARCH: condstore (EXAMINE ... (CONDSTORE), no "
            "extra command), qresync (ENABLE QRESYNC once per connection, then EXAMINE "
            "... (QRESYNC (uidvalidity modseq))), off", _C),
    Setting("IMAP_AUTH_FAILURE_PAUSE_AFTER", positive_int, 3,
            "pause a provider after this many consecutive authentication failures", _C),
    Setting("IMAP_OAUTH_AUTH_MECHANISM", choice("auto", "xoauth2", "oauthbearer"), "auto",
            "SASL mechanism of OAuth2 logins: auto (OAUTHBEARER only when the server offers it"
            " and not XOAUTH2), xoauth2 or oauthbearer", _C),
    # Write-back (issue 13 item 3)
    Setting("IMAP_WRITE_BACK", write_back_mode, "none",
            "what to do to a message in its folder once its event is committed, for providers "
            "without their own option (`provider set-write-back`): none (read-only EXAMINE), "
            "seen, delete (needs UIDPLUS) or move:<folder> (MOVE, else UIDPLUS)", _C),
    # Capacity
    Setting("IMAP_MAX_EMAILS_PER_SYNC", positive_int, 5,
            "recent window (messages) for a folder with no cursor", _P),
    Setting("IMAP_FIRST_SYNC_SINCE_DAYS", non_negative_int, 0,
            "first sync of a folder with no cursor reads the messages of the last N days "
            "(UID SEARCH SINCE) instead of the recent window; 0 = off; a provider's own "
            "value (provider set-first-sync) wins", _P),
    Setting("IMAP_MAX_CONNECTIONS_PER_TENANT", positive_int, 5,
            "IMAP connections one tenant may hold at once (a Gmail provider's"
            " shared-polled folders count as one connection together)", _P),
    Setting("IMAP_GMAIL_CONNECTION_BUDGET", connection_budget, 15,
            "IMAP connections one Gmail provider (X-GM-EXT-1, or imap.gmail.com) holds at most; "
            "past it, budget - 1 folders idle and the rest are polled with STATUS on one shared "
            "connection every IMAP_POLL_INTERVAL_MS; 0 = off (at least 2 otherwise)", _P),
    Setting("IMAP_MAX_FOLDERS", non_negative_int, 0,
            "folders (IMAP connections) one replica holds at most; 0: as many as the open-file "
            "limit allows after its reserve (docs/performance.md)", _P),
    Setting("IMAP_GC_FULL_PASS_MS", non_negative_int, 900000,
            "Python's cyclic collector leaves out (freezes) what survived its last full pass, "
            "which keeps its pauses of the reactor short at thousands of folders; this often "
            "the frozen set is looked at, and walked once more if it grew by more than a tenth "
            "(docs/performance.md); 0: CPython's default collector", _P),
    Setting("IMAP_REACTOR_EVENTS_PER_TURN", non_negative_int, 64,
            "ready sockets the reactor handles before it runs its timers again, so that a "
            "server ending a thousand sessions at once does not stall every folder "
            "(docs/performance.md); 0: all of them, as Twisted does", _P),
    Setting("IMAP_CONNECT_CONCURRENCY", non_negative_int, 32,
            "IMAP sessions being set up at once (connect, TLS, login, finding the folder), per "
            "replica; the others wait their turn; 0: no limit (docs/performance.md)", _P),
    Setting("IMAP_MAX_ATTACHMENT_BYTES", positive_int, 10 * MIB,
            "largest single attachment reported as accepted", _P),
    Setting("IMAP_MAX_TOTAL_ATTACHMENT_BYTES", positive_int, 25 * MIB,
            "largest total of attachments per message", _P),
    Setting("IMAP_MAX_ATTACHMENT_COUNT", positive_int, 25,
            "most attachments per message", _P),
    Setting("IMAP_MAX_RAW_MIME_BYTES", positive_int, 25 * MIB,
            "a message larger than this is never downloaded whole", _P),
    Setting("IMAP_MAX_TEXT_PART_BYTES", positive_int, 2 * MIB,
            "text/plain and text/html parts are fetched up to this many bytes", _P),
    Setting("IMAP_EXPAND_TNEF", boolean, False,
            "list the files inside winmail.dat (TNEF) parts as attachments; fetches such a "
            "part when it is within IMAP_MAX_ATTACHMENT_BYTES", _P),
    Setting("IMAP_FETCH_CHUNK", positive_int, 50,
            "UIDs per UID FETCH command", _P),
    Setting("IMAP_ATTACHMENT_FETCH_CHUNK", positive_int, 2,
            "UIDs per UID FETCH command in IMAP_ATTACHMENT_MODE inline and store (caps "
            "IMAP_FETCH_CHUNK): bounds the attachment bytes held at once", _P),
    Setting("IMAP_MEMORY_LIMIT_BYTES", non_negative_int, 0,
            "the container's memory limit (k8s passes limits.memory); 0 reads the cgroup "
            "(memory.max)", _P),
    Setting("IMAP_INFLIGHT_BUDGET_BYTES", non_negative_int, 0,
            "IMAP bytes in flight across all connections before reading pauses; 0 is a "
            "quarter of the memory limit (256 MiB without one)", _P),
    Setting("IMAP_QUARANTINE_AFTER", positive_int, 3,
            "connections in a row that break protocol limits before a provider is quarantined",
            _P),
    Setting("IMAP_QUARANTINE_MS", positive_int, 6 * 3600 * 1000,
            "how long a quarantined provider is left alone before it is tried again", _P),
    Setting("IMAP_POISON_AFTER", positive_int, 3,
            "failed fetches of one message before it is skipped as poison (see `poison list`)",
            _P),
    Setting("IMAP_PARSE_THREAD_THRESHOLD_BYTES", non_negative_int, 262144,
            "messages larger than this are parsed off the reactor thread", _P),
    Setting("IMAP_PARSE_PROCESSES", non_negative_int, 0,
            "worker processes for parsing large batches (0: a thread; more trades "
            "memory for throughput, see docs/performance.md)", _P),
    Setting("IMAP_LEDGER_RETENTION_DAYS", positive_int, 90,
            "keep dedupe ledger rows this many days", _P),
    Setting("IMAP_EVENT_STREAM_MAXLEN", non_negative_int, 0,
            "XADD MAXLEN ~ N; 0 keeps every entry (trimming drops unread events)", _P),
    Setting("IMAP_EVENT_DEDUPE_WINDOW_MS", non_negative_int, 86_400_000,
            "how long the stream remembers an event_id it took, so an event re-published "
            "after a crash or a lease change is not appended twice; 0: plain XADD "
            "(at-least-once)", _P),
    # Attachment content (CONTRACT 2)
    Setting("IMAP_ATTACHMENT_MODE", choice("metadata", "inline", "store"), "metadata",
            "attachment content: metadata (none), inline (base64 `content` in the event) or "
            "store (bytes to the object store, `storageKey` and `sha256` in the event)", _M),
    Setting("IMAP_STORE_RAW_MIME", boolean, False,
            "store mode: also store each whole message (within IMAP_MAX_RAW_MIME_BYTES; "
            "`rawMime` in the event); such messages are fetched whole", _M),
    Setting("IMAP_OBJECT_STORE_URL", object_store_url, "",
            "http(s):// endpoint of an S3-compatible object store (path-style); empty "
            "stores in IMAP_OBJECT_STORE_DIR. Credentials: AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN from the environment", _M,
            sensitive=True),
    Setting("IMAP_OBJECT_STORE_BUCKET", string, "",
            "bucket of IMAP_OBJECT_STORE_URL (required with it)", _M),
    Setting("IMAP_OBJECT_STORE_PREFIX", object_prefix, "",
            "key prefix of every stored object (`<prefix>/<tenant>/<provider>/<folder>/"
            "<uidvalidity>/<uid>/<section>`)", _M),
    Setting("IMAP_OBJECT_STORE_REGION", string, "",
            "SigV4 signing region; empty: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1", _M),
    Setting("IMAP_OBJECT_STORE_DIR", string, "imapsvc-objects",
            "folder of the embedded object store (when IMAP_OBJECT_STORE_URL is empty)", _M),
    Setting("IMAP_OBJECT_STORE_PART_BYTES", positive_int, 8 * MIB,
            "objects larger than this go up in a multipart upload of parts this size "
            "(at least 5 MiB); smaller ones in one PUT", _M),
    # Wiring
    Setting("DATABASE_URL", postgres_url, "",
            "postgres(ql):// URL; empty: built from DB_HOST and its companions when DB_HOST "
            "is set, else the embedded SQLite store", _W, sensitive=True),
    Setting("REDIS_URL", redis_url, "",
            "redis(s):// URL; empty: built from REDIS_HOST and its companions when REDIS_HOST "
            "is set, else events go to IMAPSVC_EVENTS_FILE", _W, sensitive=True),
    Setting("IMAP_EVENT_STREAM", string, "workflow:events:global",
            "Redis stream the events are added to", _W),
    Setting("PORT", port, 8080,
            "HTTP port of /healthz, /readyz, /metrics, /status, OAuth and admin routes", _W),
    Setting("IMAPSVC_PUBLIC_BASE_URL", http_url, "",
            "external base URL of this service (builds the OAuth redirect URI)", _W),
    Setting("IMAPSVC_REDIRECT_ALLOWLIST", comma_list(http_url), (),
            "comma list of URLs the OAuth callback may redirect to", _W),
    Setting("IMAPSVC_METRICS_PORT", non_negative_int, 0,
            "separate port serving /metrics with tenant/provider/folder labels and no "
            "token (keep it cluster-internal); 0: none, and /metrics on PORT shows those "
            "labels only to the admin token", _W),
    Setting("IMAPSVC_MAX_REQUEST_BYTES", positive_int, 65536,
            "largest HTTP request body; larger ones get 413 before they are read", _W),
    Setting("IMAPSVC_SQLITE_PATH", string, "imapsvc.sqlite3",
            "SQLite file of the embedded store (when DATABASE_URL is empty)", _W),
    Setting("IMAPSVC_EVENTS_FILE", string, "events.jsonl",
            "JSON Lines file of the embedded sink (when REDIS_URL is empty)", _W),
    Setting("IMAPSVC_TENANTS", comma_list(tenant_uuid), (),
            "comma list of tenant UUIDs to serve: their providers are leased and only their "
            "outbox rows relayed; empty serves all", _W),
    Setting("IMAPSVC_WORKER_ID", worker_id, default_worker_id,
            "this replica's lease owner name", _W, shown_default="<hostname>-<pid>"),
    # Secrets
    Setting("IMAPSVC_ADMIN_TOKEN", admin_token, "",
            "bearer token for the admin and OAuth-initiate routes: at least 32 characters, "
            "not a placeholder; empty disables the admin API", _S, sensitive=True),
    Setting("IMAPSVC_SECRET_KEY", comma_list(secret_key_text), (),
            "comma list of secret-encryption keys: the first encrypts, all decrypt (rotation)",
            _S, sensitive=True),
    Setting("IMAPSVC_SECRETS_DIR", existing_dir, "",
            "directory of mounted files named like these variables, read when a variable is unset",
            _S),
    Setting("IMAPSVC_PRIVATE_NETWORK_ALLOWLIST", comma_list(cidr_or_host), (),
            "comma list of CIDRs and host names that tenant-chosen IMAP hosts and OAuth "
            "endpoints may use although private, loopback or link-local (on-premises "
            "servers); everything else in those ranges is refused", _S),
    Setting("IMAPSVC_OAUTH_ALLOW_HTTP_LOOPBACK", boolean, False,
            "accept http:// OAuth endpoints and return URLs on loopback hosts "
            "(tests and demos only; https is required otherwise)", _S),
    # The app's secret providers (CONTRACT section 3)
    Setting("SECRET_READ_CHAIN", comma_list(choice("filesystem", "vault", "env")),
            ("env", "filesystem"),
            "the app's providers credentials are looked up in, in order, after the service's "
            "own sealed store (then the row's plaintext columns): filesystem, vault, env", _A),
    Setting("SECRET_WRITE_PROVIDER", choice("filesystem", "vault"), "",
            "where a rotated refresh token is written (so the app sees it too); empty: the "
            "service's own sealed store", _A),
    Setting("SECRET_FS_BASE_PATH", string, fs_base_path_default,
            "filesystem provider: secrets are <path>/tenants/<tenantId>/<name> "
            "(app-wide ones <path>/<name>)", _A,
            shown_default="/run/secrets if it exists, else ../secrets"),
    Setting("SECRET_ENV_PREFIX", string, "",
            "env provider: variables are [<prefix>_]TENANT_<tenantId>_<name> (app-wide ones "
            "[<prefix>_]<name>), as the app spells them, then upper-cased", _A),
    Setting("VAULT_ADDR", http_url, "",
            "vault provider: the Vault server (KV v2)", _A),
    Setting("VAULT_TOKEN", string, "",
            "vault provider: sent as X-Vault-Token", _A, sensitive=True),
    Setting("VAULT_TENANT_SECRET_PATH_TEMPLATE", string, "kv/data/tenants/{tenantId}/secrets",
            "vault provider: the tenant's document; the secret is data.data[<name>]", _A),
    Setting("VAULT_APP_SECRET_PATH", string, "kv/data/app/secrets",
            "vault provider: the document of app-wide secrets (db_password_server, "
            "redis_password)", _A),
    Setting("IMAPSVC_VAULT_TIMEOUT_MS", positive_int, 5000,
            "a Vault call not answered completely within this counts as unavailable "
            "(transient; never an authentication failure)", _A),
    Setting("IMAPSVC_SECRET_CACHE_MS", non_negative_int, 30000,
            "reuse a credential lookup this long (0: never); an authentication failure "
            "drops the provider's cached credentials at once", _A),
    # The app's connection variables
    Setting("DB_HOST", string, "",
            "database host; builds DATABASE_URL when that is unset", _D),
    Setting("DB_PORT", port, 5432, "database port", _D),
    Setting("DB_NAME_SERVER", string, "", "database name", _D),
    Setting("DB_USER_SERVER", string, "", "database user", _D),
    Setting("DB_PASSWORD_SERVER", string, "",
            "database password; unset: the app secret db_password_server through "
            "SECRET_READ_CHAIN", _D, sensitive=True),
    Setting("REDIS_HOST", string, "",
            "Redis host; builds REDIS_URL when that is unset", _D),
    Setting("REDIS_PORT", port, 6379, "Redis port", _D),
    Setting("REDIS_PASSWORD", string, "",
            "Redis password; unset: the app secret redis_password through SECRET_READ_CHAIN",
            _D, sensitive=True),
    # Operations
    Setting("IMAPSVC_LOG_FORMAT", choice("json", "text"), "json",
            "log format on stdout or --logfile: json (one object a line) or text", _O),
)  # fmt: skip

SETTINGS_BY_ENV: Mapping[str, Setting] = {s.env: s for s in SETTINGS}
SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}

#: The environment variables of CONTRACT section 5.
CONTRACT_VARIABLES: tuple[str, ...] = (
    "IMAP_PROVIDER_REFRESH_MS", "IMAP_LEASE_TTL_MS", "IMAP_POLL_INTERVAL_MS",
    "IMAP_IDLE_RESTART_MS", "IMAP_STARTUP_STAGGER_MS", "IMAP_TIMER_JITTER_PCT",
    "IMAP_RECONNECT_BASE_MS", "IMAP_RECONNECT_MAX_MS", "IMAP_RECONNECT_JITTER_PCT",
    "IMAP_CONNECTION_TIMEOUT_MS", "IMAP_SOCKET_KEEPALIVE", "IMAP_MAX_EMAILS_PER_SYNC",
    "IMAP_MAX_CONNECTIONS_PER_TENANT", "IMAP_MAX_ATTACHMENT_BYTES",
    "IMAP_MAX_TOTAL_ATTACHMENT_BYTES", "IMAP_MAX_ATTACHMENT_COUNT", "IMAP_MAX_RAW_MIME_BYTES",
    "DATABASE_URL", "REDIS_URL", "IMAP_EVENT_STREAM", "PORT", "IMAPSVC_ADMIN_TOKEN",
    "IMAPSVC_SECRET_KEY", "IMAPSVC_PUBLIC_BASE_URL", "IMAPSVC_REDIRECT_ALLOWLIST",
    # The app's secret and connection variables (issue 10).
    "SECRET_READ_CHAIN", "SECRET_WRITE_PROVIDER", "SECRET_FS_BASE_PATH", "SECRET_ENV_PREFIX",
    "VAULT_ADDR", "VAULT_TOKEN", "VAULT_TENANT_SECRET_PATH_TEMPLATE",
    "DB_HOST", "DB_PORT", "DB_NAME_SERVER", "DB_USER_SERVER", "DB_PASSWORD_SERVER",
    "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD",
)  # fmt: skip
