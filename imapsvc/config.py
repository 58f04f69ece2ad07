"""Environment and command-line options -> one frozen, validated :class:`Settings`.

The table :data:`SETTINGS` is the single source of truth: one row per setting
(environment variable, parser, default, one line of help). ``twistd imapsvc
--help``, ``python -m imapsvc config`` and ``docs/settings.md`` are all
generated from it.

Precedence, highest first: command-line option, environment variable, a file
named after the variable in ``IMAPSVC_SECRETS_DIR`` (a mounted Kubernetes
secret), the default. An empty value counts as unset.

Every problem raises :class:`ConfigError` with a one-line message naming the
variable. Values of sensitive settings never appear in those messages.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Callable, Mapping, Optional
from urllib.parse import quote, urlsplit

import attr

from imapsvc.model import MIB, Limits

#: IMAP servers may close an IDLE after 30 minutes (RFC 2177 asks clients to
#: re-issue it at least every 29): the restart interval must stay below this.
IDLE_RESTART_LIMIT_MS = 29 * 60 * 1000

#: Dovecot sends ``* OK Still here`` every 2 minutes during IDLE; an inactivity
#: watchdog at or below that would drop healthy connections.
DOVECOT_KEEPALIVE_MS = 2 * 60 * 1000

MASK = "***"


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent. ``str(error)`` is one
    line that names the variable and never contains a sensitive value."""


class _Invalid(ValueError):
    """Raised by parsers; the loader turns it into a :class:`ConfigError`."""


# -- parsers: str -> value, raising _Invalid with a message that does not
# -- repeat the value (the loader adds it back for non-sensitive settings).


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _Invalid("is not an integer") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise _Invalid("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise _Invalid("must be zero or a positive integer")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise _Invalid("is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise _Invalid("must be between 0 and 1 (a fraction, e.g. 0.1 for 10%)")
    return value


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _Invalid("must be one of true/false/1/0/yes/no")


def port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise _Invalid("must be a port number between 1 and 65535")
    return value


def string(text: str) -> str:
    return text.strip()


def _url(schemes: tuple[str, ...], need_host: bool) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise _Invalid("is not a valid URL") from None
        if parts.scheme.lower() not in schemes:
            raise _Invalid("must be a URL starting with " + " or ".join(s + "://" for s in schemes))
        if need_host and not parts.hostname:
            raise _Invalid("must name a host")
        return text

    return parse


postgres_url = _url(("postgres", "postgresql"), need_host=False)
redis_url = _url(("redis", "rediss"), need_host=False)
http_url = _url(("http", "https"), need_host=True)


def comma_list(item: Callable[[str], str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        out = []
        for piece in text.split(","):
            piece = piece.strip()
            if piece:
                out.append(item(piece))
        return tuple(out)

    return parse


def _host(text: str) -> str:
    if any(c.isspace() for c in text) or "/" in text:
        raise _Invalid("must be a comma-separated list of host names")
    return text.lower()


def _tenant(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise _Invalid("must be a comma-separated list of tenant UUIDs") from None


def _key(text: str) -> str:
    # Checked here so a bad key stops start-up rather than the first secret
    # write; the key itself never reaches the message.
    from imapsvc.secrets import SecretKeyError, parse_key

    try:
        parse_key(text)
    except SecretKeyError:
        raise _Invalid("each key must be 32 bytes as url-safe base64 (44 chars) or hex") from None
    return text


#: Admin tokens that are examples, not secrets (compared case-insensitively,
#: ignoring "-" and "_"): start-up refuses them whatever their length.
_PLACEHOLDER_TOKENS = frozenset(
    {"replaceme", "changeme", "changeit", "secret", "password", "token", "admin", "example",
     "xxx", "todo", "dev", "devtoken", "test", "testtoken", "admintoken", "default"}
)
MIN_ADMIN_TOKEN = 32


def admin_token(text: str) -> str:
    text = text.strip()
    squashed = text.lower().replace("-", "").replace("_", "")
    if any(p in squashed for p in ("replaceme", "changeme", "changeit", "placeholder")) or (
        squashed in _PLACEHOLDER_TOKENS or len(set(squashed)) <= 2
    ):
        raise _Invalid("is a placeholder, not a secret: generate one, e.g. "
                       "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if len(text) < MIN_ADMIN_TOKEN:
        raise _Invalid(f"must be at least {MIN_ADMIN_TOKEN} characters (a random secret)")
    return text


def _cidr_or_host(text: str) -> str:
    from imapsvc.core.netguard import parse_allow_entry

    try:
        parse_allow_entry(text)
    except ValueError:
        raise _Invalid("must be a comma-separated list of CIDRs (10.0.0.0/8), addresses "
                       "or host names") from None
    return text.strip().lower()


def object_store_url(text: str) -> str:
    """An http(s) S3 endpoint without credentials in it (they come from the
    AWS variables, which are never printed)."""
    text = http_url(text)
    if "@" in urlsplit(text).netloc:
        raise _Invalid("must not carry credentials (use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    return text


def object_prefix(text: str) -> str:
    """An object key prefix: ``/``-separated segments, none ``.`` or ``..``."""
    text = text.strip().strip("/")
    if any(seg in (".", "..", "") for seg in text.split("/")) and text:
        raise _Invalid("must not contain empty, '.' or '..' segments")
    return text


def choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in values:
            raise _Invalid("must be one of " + ", ".join(values))
        return lowered

    return parse


def write_back_mode(text: str) -> str:
    """``none`` | ``seen`` | ``delete`` | ``move:<folder>`` (issue 13 item 3)."""
    from imapsvc.core.write_back import parse_mode

    try:
        return str(parse_mode(text))
    except ValueError as e:
        raise _Invalid(str(e)) from None


def existing_file(text: str) -> str:
    text = text.strip()
    if not os.path.isfile(text):
        raise _Invalid("names a file that does not exist")
    return text


def existing_dir(text: str) -> str:
    text = text.strip()
    if not os.path.isdir(text):
        raise _Invalid("names a directory that does not exist")
    return text


def _default_fs_base_path() -> str:
    from imapsvc.secret_chain import default_fs_base_path

    return default_fs_base_path()


def worker_id(text: str) -> str:
    text = text.strip()
    if len(text) > 255:  # lease_owner is varchar(255)
        raise _Invalid("must be at most 255 characters")
    return text


def default_worker_id() -> str:
    """``<hostname>-<pid>``: unique per process, readable in ``lease_owner``."""
    return f"{socket.gethostname()}-{os.getpid()}"


# -- the table -------------------------------------------------------------


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
    Setting("IMAP_BROKEN_BODYSTRUCTURE_HOSTS", comma_list(_host), (),
            "comma list of IMAP hosts whose BODYSTRUCTURE is not trusted (full fetch)", _C),
    Setting("IMAP_ENABLE_UTF8", boolean, False,
            "send ENABLE UTF8=ACCEPT (RFC 6855) when the server offers it: UTF-8 headers "
            "and folder names without downgrading", _C),
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
            "IMAP connections one tenant may hold at once", _P),
    Setting("IMAP_MAX_FOLDERS", non_negative_int, 0,
            "folders (IMAP connections) one replica holds at most; 0: as many as the open-file "
            "limit allows after its reserve (docs/performance.md)", _P),
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
    Setting("IMAP_FETCH_CHUNK", positive_int, 100,
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
    Setting("IMAPSVC_TENANTS", comma_list(_tenant), (),
            "comma list of tenant UUIDs to serve; empty serves all", _W),
    Setting("IMAPSVC_WORKER_ID", worker_id, default_worker_id,
            "this replica's lease owner name", _W, shown_default="<hostname>-<pid>"),
    # Secrets
    Setting("IMAPSVC_ADMIN_TOKEN", admin_token, "",
            "bearer token for the admin and OAuth-initiate routes: at least 32 characters, "
            "not a placeholder; empty disables the admin API", _S, sensitive=True),
    Setting("IMAPSVC_SECRET_KEY", comma_list(_key), (),
            "comma list of secret-encryption keys: the first encrypts, all decrypt (rotation)",
            _S, sensitive=True),
    Setting("IMAPSVC_SECRETS_DIR", existing_dir, "",
            "directory of mounted files named like these variables, read when a variable is unset",
            _S),
    Setting("IMAPSVC_PRIVATE_NETWORK_ALLOWLIST", comma_list(_cidr_or_host), (),
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
    Setting("SECRET_FS_BASE_PATH", string, _default_fs_base_path,
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


def _default(env: str) -> Any:
    return SETTINGS_BY_ENV[env].default


@attr.s(frozen=True, auto_attribs=True, slots=True)
class Settings:
    """Validated, frozen settings; build them with :func:`load_settings`.

    One attribute per row of :data:`SETTINGS`, named :attr:`Setting.name`
    (``IMAP_PROVIDER_REFRESH_MS`` -> ``provider_refresh_ms``), defaulting to
    the table's default (``Settings()`` is the all-defaults configuration,
    handy in tests). The repr leaves out sensitive values.
    """

    provider_refresh_ms: int = _default("IMAP_PROVIDER_REFRESH_MS")
    lease_ttl_ms: int = _default("IMAP_LEASE_TTL_MS")
    poll_interval_ms: int = _default("IMAP_POLL_INTERVAL_MS")
    idle_restart_ms: int = _default("IMAP_IDLE_RESTART_MS")
    idle_keepalive_ms: int = _default("IMAP_IDLE_KEEPALIVE_MS")
    startup_stagger_ms: int = _default("IMAP_STARTUP_STAGGER_MS")
    timer_jitter_pct: float = _default("IMAP_TIMER_JITTER_PCT")
    reconnect_base_ms: int = _default("IMAP_RECONNECT_BASE_MS")
    reconnect_max_ms: int = _default("IMAP_RECONNECT_MAX_MS")
    reconnect_jitter_pct: float = _default("IMAP_RECONNECT_JITTER_PCT")
    command_timeout_ms: int = _default("IMAP_COMMAND_TIMEOUT_MS")
    inactivity_timeout_ms: int = _default("IMAP_INACTIVITY_TIMEOUT_MS")
    shutdown_timeout_ms: int = _default("IMAP_SHUTDOWN_TIMEOUT_MS")
    redis_timeout_ms: int = _default("REDIS_TIMEOUT_MS")
    admin_wait_ms: int = _default("IMAP_ADMIN_WAIT_MS")
    admin_poll_ms: int = _default("IMAP_ADMIN_POLL_MS")
    status_write_ms: int = _default("IMAP_STATUS_WRITE_MS")
    connection_timeout_ms: int = _default("IMAP_CONNECTION_TIMEOUT_MS")
    socket_keepalive: bool = _default("IMAP_SOCKET_KEEPALIVE")
    tls_ca_file: str = _default("IMAP_TLS_CA_FILE")
    tls_insecure: bool = _default("IMAP_TLS_INSECURE")
    broken_bodystructure_hosts: tuple[str, ...] = _default("IMAP_BROKEN_BODYSTRUCTURE_HOSTS")
    enable_utf8: bool = _default("IMAP_ENABLE_UTF8")
    modseq: str = _default("IMAP_MODSEQ")
    auth_failure_pause_after: int = _default("IMAP_AUTH_FAILURE_PAUSE_AFTER")
    oauth_auth_mechanism: str = _default("IMAP_OAUTH_AUTH_MECHANISM")
    write_back: str = _default("IMAP_WRITE_BACK")
    max_emails_per_sync: int = _default("IMAP_MAX_EMAILS_PER_SYNC")
    first_sync_since_days: int = _default("IMAP_FIRST_SYNC_SINCE_DAYS")
    max_connections_per_tenant: int = _default("IMAP_MAX_CONNECTIONS_PER_TENANT")
    max_folders: int = _default("IMAP_MAX_FOLDERS")
    max_attachment_bytes: int = _default("IMAP_MAX_ATTACHMENT_BYTES")
    max_total_attachment_bytes: int = _default("IMAP_MAX_TOTAL_ATTACHMENT_BYTES")
    max_attachment_count: int = _default("IMAP_MAX_ATTACHMENT_COUNT")
    max_raw_mime_bytes: int = _default("IMAP_MAX_RAW_MIME_BYTES")
    max_text_part_bytes: int = _default("IMAP_MAX_TEXT_PART_BYTES")
    expand_tnef: bool = _default("IMAP_EXPAND_TNEF")
    fetch_chunk: int = _default("IMAP_FETCH_CHUNK")
    attachment_fetch_chunk: int = _default("IMAP_ATTACHMENT_FETCH_CHUNK")
    memory_limit_bytes: int = _default("IMAP_MEMORY_LIMIT_BYTES")
    inflight_budget_bytes: int = _default("IMAP_INFLIGHT_BUDGET_BYTES")
    quarantine_after: int = _default("IMAP_QUARANTINE_AFTER")
    quarantine_ms: int = _default("IMAP_QUARANTINE_MS")
    poison_after: int = _default("IMAP_POISON_AFTER")
    parse_thread_threshold_bytes: int = _default("IMAP_PARSE_THREAD_THRESHOLD_BYTES")
    parse_processes: int = _default("IMAP_PARSE_PROCESSES")
    ledger_retention_days: int = _default("IMAP_LEDGER_RETENTION_DAYS")
    event_stream_maxlen: int = _default("IMAP_EVENT_STREAM_MAXLEN")
    attachment_mode: str = _default("IMAP_ATTACHMENT_MODE")
    store_raw_mime: bool = _default("IMAP_STORE_RAW_MIME")
    object_store_url: str = attr.ib(default=_default("IMAP_OBJECT_STORE_URL"), repr=False)
    object_store_bucket: str = _default("IMAP_OBJECT_STORE_BUCKET")
    object_store_prefix: str = _default("IMAP_OBJECT_STORE_PREFIX")
    object_store_region: str = _default("IMAP_OBJECT_STORE_REGION")
    object_store_dir: str = _default("IMAP_OBJECT_STORE_DIR")
    object_store_part_bytes: int = _default("IMAP_OBJECT_STORE_PART_BYTES")
    database_url: str = attr.ib(default=_default("DATABASE_URL"), repr=False)
    redis_url: str = attr.ib(default=_default("REDIS_URL"), repr=False)
    event_stream: str = _default("IMAP_EVENT_STREAM")
    port: int = _default("PORT")
    public_base_url: str = _default("IMAPSVC_PUBLIC_BASE_URL")
    redirect_allowlist: tuple[str, ...] = _default("IMAPSVC_REDIRECT_ALLOWLIST")
    metrics_port: int = _default("IMAPSVC_METRICS_PORT")
    max_request_bytes: int = _default("IMAPSVC_MAX_REQUEST_BYTES")
    sqlite_path: str = _default("IMAPSVC_SQLITE_PATH")
    events_file: str = _default("IMAPSVC_EVENTS_FILE")
    tenants: tuple[str, ...] = _default("IMAPSVC_TENANTS")
    worker_id: str = attr.ib(factory=default_worker_id)
    admin_token: str = attr.ib(default=_default("IMAPSVC_ADMIN_TOKEN"), repr=False)
    secret_key: tuple[str, ...] = attr.ib(default=_default("IMAPSVC_SECRET_KEY"), repr=False)
    secrets_dir: str = _default("IMAPSVC_SECRETS_DIR")
    private_network_allowlist: tuple[str, ...] = _default("IMAPSVC_PRIVATE_NETWORK_ALLOWLIST")
    oauth_allow_http_loopback: bool = _default("IMAPSVC_OAUTH_ALLOW_HTTP_LOOPBACK")
    secret_read_chain: tuple[str, ...] = _default("SECRET_READ_CHAIN")
    secret_write_provider: str = _default("SECRET_WRITE_PROVIDER")
    secret_fs_base_path: str = attr.ib(factory=_default_fs_base_path)
    secret_env_prefix: str = _default("SECRET_ENV_PREFIX")
    vault_addr: str = _default("VAULT_ADDR")
    vault_token: str = attr.ib(default=_default("VAULT_TOKEN"), repr=False)
    vault_tenant_secret_path_template: str = _default("VAULT_TENANT_SECRET_PATH_TEMPLATE")
    vault_app_secret_path: str = _default("VAULT_APP_SECRET_PATH")
    vault_timeout_ms: int = _default("IMAPSVC_VAULT_TIMEOUT_MS")
    secret_cache_ms: int = _default("IMAPSVC_SECRET_CACHE_MS")
    db_host: str = _default("DB_HOST")
    db_port: int = _default("DB_PORT")
    db_name_server: str = _default("DB_NAME_SERVER")
    db_user_server: str = _default("DB_USER_SERVER")
    db_password_server: str = attr.ib(default=_default("DB_PASSWORD_SERVER"), repr=False)
    redis_host: str = _default("REDIS_HOST")
    redis_port: int = _default("REDIS_PORT")
    redis_password: str = attr.ib(default=_default("REDIS_PASSWORD"), repr=False)
    log_format: str = _default("IMAPSVC_LOG_FORMAT")
    #: Derived, not settings: which variables DATABASE_URL / REDIS_URL came
    #: from (for ``config``, the start-up log and ``/status``; no secrets).
    database_url_source: str = attr.ib(default="", metadata={"derived": True})
    redis_url_source: str = attr.ib(default="", metadata={"derived": True})

    def limits(self) -> Limits:
        """The size caps as :class:`imapsvc.model.Limits`."""
        return Limits(
            max_attachment_bytes=self.max_attachment_bytes,
            max_total_attachment_bytes=self.max_total_attachment_bytes,
            max_attachment_count=self.max_attachment_count,
            max_raw_mime_bytes=self.max_raw_mime_bytes,
            max_text_part_bytes=self.max_text_part_bytes,
            expand_tnef=self.expand_tnef,
            attachment_mode=self.attachment_mode,
            store_raw_mime=self.store_raw_mime,
        )

    def masked(self) -> dict[str, str]:
        """``{ENV_NAME: text}`` of every setting, safe to print: sensitive
        values are replaced (URLs keep everything but their password)."""
        return {s.env: display_value(s, getattr(self, s.name)) for s in SETTINGS}


def display_value(setting: Setting, value: Any) -> str:
    """How ``value`` of ``setting`` may be shown to a human."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        if setting.sensitive:
            return f"{MASK} ({len(value)} keys)" if value else "(empty)"
        return ",".join(value) or "(empty)"
    if setting.sensitive:
        if not value:
            return "(empty)"
        if setting.parse in (postgres_url, redis_url):
            return _mask_url_password(value)
        return MASK
    if value == "":
        return "(empty)"
    return str(value)


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:{MASK}@{hostport}").geturl()


def _read_secret_file(directory: str, env: str) -> Optional[str]:
    path = os.path.join(directory, env)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"IMAPSVC_SECRETS_DIR: cannot read {env}: {e.strerror}") from None


def _describe(setting: Setting, text: str) -> str:
    return setting.env if setting.sensitive else f"{setting.env}={text!r}"


def load_settings(
    environ: Optional[Mapping[str, str]] = None,
    overrides: Optional[Mapping[str, Optional[str]]] = None,
) -> Settings:
    """Build :class:`Settings` from the environment and option overrides.

    :param environ: the environment (``os.environ`` when ``None``).
    :param overrides: raw option values keyed by environment variable name
        or attribute name; ``None`` and ``""`` mean "not given". They win
        over the environment.
    :raises ConfigError: on the first bad value or inconsistent pair.
    """
    if environ is None:
        environ = os.environ
    given: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        if value is None or str(value).strip() == "":
            continue
        setting = SETTINGS_BY_ENV.get(key) or SETTINGS_BY_NAME.get(key)
        if setting is None:
            raise ConfigError(f"unknown setting {key}")
        given[setting.env] = str(value)

    def raw(setting: Setting) -> Optional[str]:
        if setting.env in given:
            return given[setting.env]
        text = environ.get(setting.env)
        if text is not None and text.strip() != "":
            return text
        return None

    values: dict[str, Any] = {}
    secrets_setting = SETTINGS_BY_ENV["IMAPSVC_SECRETS_DIR"]
    secrets_dir = _parse_one(secrets_setting, raw(secrets_setting))
    for setting in SETTINGS:
        text = raw(setting)
        if text is None and secrets_dir and setting is not secrets_setting:
            text = _read_secret_file(secrets_dir, setting.env) or None
        values[setting.name] = _parse_one(setting, text)
    settings = Settings(**values)
    _check_relations(settings)
    return _with_built_urls(settings, environ)


def _parse_one(setting: Setting, text: Optional[str]) -> Any:
    if text is None:
        return setting.default() if callable(setting.default) else setting.default
    try:
        return setting.parse(text)
    except _Invalid as e:
        raise ConfigError(f"{_describe(setting, text.strip())} {e}") from None


def _check_relations(s: Settings) -> None:
    if s.reconnect_base_ms > s.reconnect_max_ms:
        raise ConfigError(
            f"IMAP_RECONNECT_BASE_MS ({s.reconnect_base_ms}) must not exceed "
            f"IMAP_RECONNECT_MAX_MS ({s.reconnect_max_ms})"
        )
    if s.idle_restart_ms >= IDLE_RESTART_LIMIT_MS:
        raise ConfigError(
            f"IMAP_IDLE_RESTART_MS ({s.idle_restart_ms}) must be below 29 minutes "
            f"({IDLE_RESTART_LIMIT_MS}); servers drop IDLE after 30"
        )
    if s.inactivity_timeout_ms <= DOVECOT_KEEPALIVE_MS:
        raise ConfigError(
            f"IMAP_INACTIVITY_TIMEOUT_MS ({s.inactivity_timeout_ms}) must exceed "
            f"{DOVECOT_KEEPALIVE_MS} (the 2 minute IDLE keep-alive of Dovecot)"
        )
    # The lease is renewed on the refresh tick, which jitter may stretch: a
    # TTL shorter than the longest tick would let a healthy worker lose it.
    longest_tick = s.provider_refresh_ms * (1 + s.timer_jitter_pct)
    if s.lease_ttl_ms <= longest_tick:
        raise ConfigError(
            f"IMAP_LEASE_TTL_MS ({s.lease_ttl_ms}) must exceed IMAP_PROVIDER_REFRESH_MS "
            f"plus its jitter ({int(longest_tick)}) or leases expire between renewals"
        )
    if s.metrics_port and s.metrics_port == s.port:
        raise ConfigError(f"IMAPSVC_METRICS_PORT ({s.metrics_port}) must differ from PORT")
    if s.tls_insecure and s.tls_ca_file:
        raise ConfigError("IMAP_TLS_INSECURE and IMAP_TLS_CA_FILE contradict each other: set one")
    uses_vault = "vault" in s.secret_read_chain or s.secret_write_provider == "vault"
    if uses_vault and not (s.vault_addr and s.vault_token):
        raise ConfigError(
            "VAULT_ADDR and VAULT_TOKEN are required when vault is in SECRET_READ_CHAIN "
            "or is SECRET_WRITE_PROVIDER"
        )
    if "{tenantId}" not in s.vault_tenant_secret_path_template:
        raise ConfigError("VAULT_TENANT_SECRET_PATH_TEMPLATE must contain {tenantId}")
    if s.object_store_url and not s.object_store_bucket:
        raise ConfigError("IMAP_OBJECT_STORE_URL needs IMAP_OBJECT_STORE_BUCKET")
    if s.max_attachment_bytes > s.max_raw_mime_bytes:
        raise ConfigError(
            f"IMAP_MAX_ATTACHMENT_BYTES ({s.max_attachment_bytes}) must not exceed "
            f"IMAP_MAX_RAW_MIME_BYTES ({s.max_raw_mime_bytes})"
        )


def _host_part(host: str) -> str:
    # An IPv6 literal needs brackets inside a URL.
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def build_database_url(host: str, port: int, name: str, user: str, password: str) -> str:
    """``postgresql://user[:password]@host:port/name``, every part URL-quoted."""
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return f"postgresql://{auth}@{_host_part(host)}:{port}/{quote(name, safe='')}"


def build_redis_url(host: str, port: int, password: str) -> str:
    """``redis://[:password@]host:port/0``, the password URL-quoted."""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{_host_part(host)}:{port}/0"


def _app_password(
    s: Settings, environ: Mapping[str, str], variable: str, value: str, secret: str
) -> tuple[str, str]:
    """The password and where it came from: the variable, else the app
    secret through the read chain (app-wide lookup: env ``[prefix_]name``,
    filesystem ``<base>/name``, vault ``VAULT_APP_SECRET_PATH``)."""
    if value:
        return value, variable
    from imapsvc.secret_chain import SecretBackendUnavailable, lookup_app_secret_sync

    try:
        found, where, places = lookup_app_secret_sync(
            secret,
            s.secret_read_chain,
            environ=environ,
            fs_base_path=s.secret_fs_base_path,
            env_prefix=s.secret_env_prefix,
            vault_addr=s.vault_addr,
            vault_token=s.vault_token,
            vault_app_path=s.vault_app_secret_path,
            timeout_s=s.vault_timeout_ms / 1000.0,
        )
    except SecretBackendUnavailable as e:
        raise ConfigError(
            f"{variable} is unset and the app secret {secret} could not be read: {e}"
        ) from None
    if found:
        return found, f"app secret {secret} ({where})"
    looked = ", ".join([variable] + places)
    return "", f"no password (looked up in {looked})"


def _with_built_urls(s: Settings, environ: Mapping[str, str]) -> Settings:
    """Fill ``DATABASE_URL`` / ``REDIS_URL`` from the app's own variables
    when they are unset (item 7 of issue 10), and record which one won."""
    changes: dict[str, Any] = {}
    if s.database_url:
        changes["database_url_source"] = "DATABASE_URL"
    elif s.db_host:
        for env, value in (("DB_NAME_SERVER", s.db_name_server),
                           ("DB_USER_SERVER", s.db_user_server)):  # fmt: skip
            if not value:
                raise ConfigError(f"DB_HOST is set but {env} is not: both build DATABASE_URL")
        password, origin = _app_password(
            s, environ, "DB_PASSWORD_SERVER", s.db_password_server, "db_password_server"
        )
        changes["database_url"] = build_database_url(
            s.db_host, s.db_port, s.db_name_server, s.db_user_server, password
        )
        changes["database_url_source"] = (
            f"built from DB_HOST, DB_PORT, DB_NAME_SERVER, DB_USER_SERVER; password: {origin}"
        )
    else:
        changes["database_url_source"] = "unset (no DATABASE_URL or DB_HOST): embedded SQLite"
    if s.redis_url:
        changes["redis_url_source"] = "REDIS_URL"
    elif s.redis_host:
        password, origin = _app_password(
            s, environ, "REDIS_PASSWORD", s.redis_password, "redis_password"
        )
        changes["redis_url"] = build_redis_url(s.redis_host, s.redis_port, password)
        changes["redis_url_source"] = f"built from REDIS_HOST, REDIS_PORT; password: {origin}"
    else:
        changes["redis_url_source"] = (
            "unset (no REDIS_URL or REDIS_HOST): events go to IMAPSVC_EVENTS_FILE"
        )
    return attr.evolve(s, **changes)


def settings_markdown() -> str:
    """``docs/settings.md``: the settings table as Markdown."""
    lines = [
        "# Settings",
        "",
        "Generated from `imapsvc/config.py` by `python -m imapsvc config --markdown`;",
        "do not edit by hand.",
        "",
        "Every setting is an environment variable and a `twistd imapsvc` option",
        "(`--provider-refresh-ms` for `IMAP_PROVIDER_REFRESH_MS`). Precedence, highest first:",
        "the option, the environment variable, a file named like the variable in",
        "`IMAPSVC_SECRETS_DIR`, the default. An empty value counts as unset.",
        "A bad value stops start-up with one line naming the variable (exit status 2).",
        "Booleans accept true/false/1/0/yes/no; `_PCT` values are fractions between 0 and 1.",
        "",
        "Consistency rules: `IMAP_RECONNECT_BASE_MS` <= `IMAP_RECONNECT_MAX_MS`;",
        f"`IMAP_IDLE_RESTART_MS` < {IDLE_RESTART_LIMIT_MS} (29 min);",
        f"`IMAP_INACTIVITY_TIMEOUT_MS` > {DOVECOT_KEEPALIVE_MS} (Dovecot's IDLE keep-alive);",
        "`IMAP_LEASE_TTL_MS` > `IMAP_PROVIDER_REFRESH_MS` * (1 + `IMAP_TIMER_JITTER_PCT`);",
        "`IMAP_MAX_ATTACHMENT_BYTES` <= `IMAP_MAX_RAW_MIME_BYTES`;",
        "`IMAP_TLS_INSECURE` and `IMAP_TLS_CA_FILE` are not set together;",
        "`IMAP_OBJECT_STORE_URL` needs `IMAP_OBJECT_STORE_BUCKET`.",
        "",
        "`IMAP_TIMER_JITTER_PCT` draws each periodic timer (provider refresh, lease heartbeat,",
        "poll sleep, IDLE restart, IDLE keep-alive) uniformly from `interval * (1 +/- pct)`,",
        "as the app does; whatever the draw (and the setting), an IDLE restart stays below",
        "29 minutes and an IDLE keep-alive at or below 90 % of `IMAP_INACTIVITY_TIMEOUT_MS`.",
        "",
        "When `DATABASE_URL` is unset and `DB_HOST` is set, `DATABASE_URL` is built as",
        "`postgresql://DB_USER_SERVER[:password]@DB_HOST:DB_PORT/DB_NAME_SERVER`; when",
        "`REDIS_URL` is unset and `REDIS_HOST` is set, `REDIS_URL` is",
        "`redis://[:password@]REDIS_HOST:REDIS_PORT/0` (passwords URL-quoted). The password",
        "is `DB_PASSWORD_SERVER` / `REDIS_PASSWORD`, else the app secret `db_password_server` /",
        "`redis_password` looked up through `SECRET_READ_CHAIN` as the app looks up app-wide",
        "secrets: env `[SECRET_ENV_PREFIX_]name` (then upper-cased), filesystem",
        "`SECRET_FS_BASE_PATH/name`, vault `VAULT_APP_SECRET_PATH` key `name` (the service's",
        "sealed store needs the database, so it is not asked). `python -m imapsvc config` and",
        "the start-up log say which one won, without the password.",
        "",
        "Sensitive settings (marked *secret*) are never printed, logged or repeated in",
        "error messages; prefer the environment or `IMAPSVC_SECRETS_DIR` over options,",
        "which other local users can read from the process list.",
    ]
    group = None
    for setting in SETTINGS:
        if setting.group != group:
            group = setting.group
            lines += ["", f"## {group}", "", "| variable | option | default | meaning |",
                      "|---|---|---|---|"]  # fmt: skip
        meaning = setting.help + (" (*secret*)" if setting.sensitive else "")
        lines.append(
            f"| `{setting.env}` | `--{setting.option}` | `{setting.default_text()}` | {meaning} |"
        )
    return "\n".join(lines) + "\n"
