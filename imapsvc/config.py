"""Environment and command-line options -> one frozen, validated :class:`Settings`.

The table :data:`~imapsvc.settings_table.SETTINGS` is the single source of
truth: one row per setting (environment variable, parser, default, one line
of help; :mod:`imapsvc.settings_table`, parsers in
:mod:`imapsvc.config_parsers`). ``twistd imapsvc --help``,
``python -m imapsvc config`` and ``docs/settings.md`` are all generated from
it. This module loads and checks the values.

Precedence, highest first: command-line option, environment variable, a file
named after the variable in ``IMAPSVC_SECRETS_DIR`` (a mounted Kubernetes
secret), the default. An empty value counts as unset.

Every problem raises :class:`ConfigError` with a one-line message naming the
variable. Values of sensitive settings never appear in those messages.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional
from urllib.parse import quote, urlsplit

import attr

from imapsvc.config_parsers import (
    MASK,
    ConfigError,
    InvalidValue,
    default_worker_id,
    fs_base_path_default,
    postgres_url,
    redis_url,
)
from imapsvc.model import Limits
from imapsvc.settings_table import (
    CONTRACT_VARIABLES,
    SETTINGS,
    SETTINGS_BY_ENV,
    SETTINGS_BY_NAME,
    Setting,
)

#: Callers import the table's names from here too.
__all__ = [
    "CONTRACT_VARIABLES",
    "ConfigError",
    "DOVECOT_KEEPALIVE_MS",
    "IDLE_RESTART_LIMIT_MS",
    "SETTINGS",
    "SETTINGS_BY_ENV",
    "SETTINGS_BY_NAME",
    "Setting",
    "Settings",
    "build_database_url",
    "build_redis_url",
    "display_value",
    "load_settings",
    "settings_markdown",
]

#: IMAP servers may close an IDLE after 30 minutes (RFC 2177 asks clients to
#: re-issue it at least every 29): the restart interval must stay below this.
IDLE_RESTART_LIMIT_MS = 29 * 60 * 1000

#: Dovecot sends ``* OK Still here`` every 2 minutes during IDLE; an inactivity
#: watchdog at or below that would drop healthy connections.
DOVECOT_KEEPALIVE_MS = 2 * 60 * 1000

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
    compress: str = _default("IMAP_COMPRESS")
    modseq: str = _default("IMAP_MODSEQ")
    auth_failure_pause_after: int = _default("IMAP_AUTH_FAILURE_PAUSE_AFTER")
    oauth_auth_mechanism: str = _default("IMAP_OAUTH_AUTH_MECHANISM")
    write_back: str = _default("IMAP_WRITE_BACK")
    max_emails_per_sync: int = _default("IMAP_MAX_EMAILS_PER_SYNC")
    first_sync_since_days: int = _default("IMAP_FIRST_SYNC_SINCE_DAYS")
    max_connections_per_tenant: int = _default("IMAP_MAX_CONNECTIONS_PER_TENANT")
    gmail_connection_budget: int = _default("IMAP_GMAIL_CONNECTION_BUDGET")
    max_folders: int = _default("IMAP_MAX_FOLDERS")
    gc_full_pass_ms: int = _default("IMAP_GC_FULL_PASS_MS")
    reactor_events_per_turn: int = _default("IMAP_REACTOR_EVENTS_PER_TURN")
    connect_concurrency: int = _default("IMAP_CONNECT_CONCURRENCY")
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
    event_dedupe_window_ms: int = _default("IMAP_EVENT_DEDUPE_WINDOW_MS")
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
    secret_fs_base_path: str = attr.ib(factory=fs_base_path_default)
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


def read_secret_file(directory: str, env: str) -> Optional[str]:
    """The secret ``env`` as a file in ``directory`` (``IMAPSVC_SECRETS_DIR``),
    stripped; ``None`` when there is no such file."""
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
            text = read_secret_file(secrets_dir, setting.env) or None
        values[setting.name] = _parse_one(setting, text)
    settings = Settings(**values)
    _check_relations(settings)
    return _with_built_urls(settings, environ)


def _parse_one(setting: Setting, text: Optional[str]) -> Any:
    if text is None:
        return setting.default() if callable(setting.default) else setting.default
    try:
        return setting.parse(text)
    except InvalidValue as e:
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
        "Generated from `imapsvc/settings_table.py` by `python -m imapsvc config --markdown`;",
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
