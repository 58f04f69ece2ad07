"""``python -m imapsvc <command>``: operator commands next to ``twistd imapsvc``.

- ``migrate``: apply the SQL migrations to Postgres
  (:mod:`imapsvc.store.migrate`), or create the SQLite schema of the
  embedded store when no database URL is set.
- ``config [--markdown]``: print the effective settings, secrets masked, or
  the settings reference (``docs/settings.md``).
- ``keygen``: print a new ``IMAPSVC_SECRET_KEY``.
- ``provider add|set-password|list|set-active|remove``: providers in the
  store (:mod:`imapsvc.cli_provider`).
- ``poison list|retry``: messages skipped after failed fetches
  (:mod:`imapsvc.cli_poison`).
- ``resync``, ``reconnect``, ``test-connection``, ``status``: the running
  service's admin HTTP API (bearer ``IMAPSVC_ADMIN_TOKEN``).
- ``events tail [--follow]``: the event stream (Redis, or the JSON Lines
  file of the embedded sink).

Errors are one line on stderr and a non-zero exit status; ``docs/cli.md``
is the user's guide.
"""

from __future__ import annotations

import argparse
import collections
import getpass as getpass_module
import json
import os
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.request
from typing import Any, BinaryIO, Callable, Mapping, Optional, Sequence, TextIO
from urllib.parse import unquote, urlsplit

from imapsvc import cli_poison, cli_provider
from imapsvc.cli_provider import AdminError, Context, InputError, parse_uuid
from imapsvc.config import SETTINGS, ConfigError, Settings, load_settings, settings_markdown

#: Exit status of a usage error (argparse's) and of a bad setting.
USAGE = 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) and
    never abbreviates options (``--password`` must not mean ``--password-stdin``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see --help)")


# -- config (unchanged behaviour) --------------------------------------------


def _config(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    if args.markdown:
        out.write(settings_markdown())
        return 0
    try:
        settings = load_settings(environ)
    except ConfigError as e:
        err.write(f"imapsvc config: {e}\n")
        return 2
    masked = settings.masked()
    width = max(len(s.env) for s in SETTINGS)
    for setting in SETTINGS:
        source = "env" if environ.get(setting.env, "").strip() else "default"
        if source == "default" and settings.secrets_dir:
            if os.path.exists(os.path.join(settings.secrets_dir, setting.env)):
                source = "secrets dir"
        derived = {"DATABASE_URL": settings.database_url_source,
                   "REDIS_URL": settings.redis_url_source}.get(setting.env)  # fmt: skip
        if derived and derived != setting.env:
            # Built from the app's variables (or left unset): say from which.
            source = derived
        out.write(f"{setting.env:<{width}}  {masked[setting.env]}  ({source})\n")
    return 0


# -- migrate ---------------------------------------------------------------


def _migrate_postgres(argv: Sequence[str], err: TextIO) -> int:
    try:
        from imapsvc.store import migrate
    except ImportError as e:
        err.write(f"imapsvc migrate: not available: {e}\n")
        return 1
    return int(migrate.main(list(argv)) or 0)


def _migrate_sqlite(path: str, out: TextIO) -> int:
    from imapsvc.store.admin_sync import SqliteAdmin

    store = SqliteAdmin(path, create=True)
    try:
        created = store.created
    finally:
        store.close()
    if created:
        out.write(f"created the imapsvc schema in SQLite {path}\n")
    else:
        out.write(f"SQLite {path} schema is up to date: nothing to apply\n")
    return 0


def _migrate_argv(argv: Sequence[str], environ: Mapping[str, str], out: TextIO,
                  err: TextIO) -> int:
    """``migrate`` as the first word: Postgres options belong to
    :mod:`imapsvc.store.migrate`; with no database URL anywhere, SQLite."""
    peek = _Parser(prog="python -m imapsvc migrate", add_help=False)
    peek.add_argument("--database-url")
    peek.add_argument("--sqlite-path")
    known, _ = peek.parse_known_args(list(argv))
    if "-h" in argv or "--help" in argv or known.database_url:
        return _migrate_postgres(argv, err)
    url = environ.get("DATABASE_URL", "").strip()
    if not url and environ.get("DB_HOST", "").strip() and not known.sqlite_path:
        # Next to the app: DATABASE_URL built from DB_HOST and companions.
        try:
            url = load_settings(environ).database_url
        except ConfigError as e:
            err.write(f"imapsvc migrate: {e}\n")
            return 2
    if url and not known.sqlite_path:
        return _migrate_postgres(["--database-url", url, *argv], err)
    path = known.sqlite_path or environ.get("IMAPSVC_SQLITE_PATH", "").strip() or \
        Settings().sqlite_path
    return _migrate_sqlite(path, out)


# -- the running service's admin API -----------------------------------------


def _service_url(args: argparse.Namespace, settings: Settings) -> str:
    return (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/")


def _http(ctx: _Runtime, method: str, url: str, body: Optional[dict] = None) -> Any:
    """One admin request; the decoded JSON answer, or an AdminError line."""
    token = ctx.settings.admin_token
    if not token:
        raise AdminError("IMAPSVC_ADMIN_TOKEN is not set: the admin API needs the service's "
                         "bearer token")
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with ctx.urlopen(request, timeout=ctx.http_timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read().decode("utf-8")).get("error") or ""
        except (ValueError, UnicodeDecodeError, AttributeError):
            detail = ""
        if e.code == 401:
            raise AdminError(f"{url}: the service refused IMAPSVC_ADMIN_TOKEN (401)") from None
        raise AdminError(f"{url}: HTTP {e.code} {detail or e.reason}".rstrip()) from None
    except urllib.error.URLError as e:
        reason = getattr(e.reason, "strerror", None) or str(e.reason)
        raise _Unreachable(f"no imapsvc answering at {url}: {reason}") from None
    except (TimeoutError, OSError) as e:
        raise _Unreachable(f"no imapsvc answering at {url}: {e}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise AdminError(f"{url}: the answer is not JSON") from None


class _Unreachable(AdminError):
    """Nothing answered at the admin URL."""


def _action(ctx: _Runtime, args: argparse.Namespace) -> int:
    tenant = parse_uuid(args.tenant, "--tenant")
    provider_id = parse_uuid(args.provider, "--provider")
    folder = getattr(args, "folder", None)
    since_text = getattr(args, "since", None)
    since = cli_provider.parse_since_arg(since_text) if since_text is not None else None
    if args.command == "resync" and args.offline:
        if since is not None:
            return cli_provider.backfill_offline(ctx.context, tenant, provider_id, folder, since)
        return cli_provider.resync_offline(ctx.context, tenant, provider_id, folder)
    path = {"resync": "resync", "reconnect": "reconnect", "test-connection": "test-connection",
            "pause": "pause", "resume": "resume"}[args.command]
    body: dict[str, Any] = {"tenant": tenant, "providerId": provider_id}
    if folder:
        body["folder"] = folder
    if since is not None:
        body["since"] = since.isoformat()
    url = f"{_service_url(args, ctx.settings)}/api/email/imap/{path}"
    try:
        result = _http(ctx, "POST", url, body)
    except _Unreachable as e:
        hint = " (or reset the cursors in the store with --offline)" \
            if args.command == "resync" else ""
        raise AdminError(f"{e}{hint}") from None
    ctx.out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if isinstance(result, dict) and result.get("status") == "pending":
        # Accepted, not applied yet by the provider's owner (HTTP 202).
        ctx.context.err.write(f"not applied yet: poll {_service_url(args, ctx.settings)}"
                      f"{result.get('poll', '')}\n")
    if isinstance(result, dict) and (result.get("ok") is False or result.get("success") is False):
        return 1
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return " ".join(str(value).split())


def _deployment_table(deployment: Mapping[str, Any]) -> list[str]:
    """Every replica, provider and folder of the deployment."""
    lines = []
    replicas = deployment.get("replicas") or []
    if replicas:
        lines.append("replicas: " + ", ".join(
            f"{_cell(r.get('worker'))} ({_cell(r.get('state'))})" for r in replicas))
    rows = []
    for p in deployment.get("providers") or []:
        folders = p.get("folders") or {"-": {}}
        for name, f in sorted(folders.items()):
            counters = f.get("counters") or {}
            rows.append([_cell(p.get("tenant")), _cell(p.get("providerId")),
                         _cell(p.get("mailbox")), _cell(p.get("status")), _cell(name),
                         _cell(f.get("state")), _cell(f.get("owner")),
                         _cell(f.get("since")), _cell(f.get("lastSyncAt")),
                         _cell(counters.get("syncs")), _cell(counters.get("reconnects")),
                         _cell(f.get("lastError") or p.get("error"))])
    if rows:
        lines.append(cli_provider._table(
            ["TENANT", "PROVIDER", "MAILBOX", "STATUS", "FOLDER", "STATE", "OWNER", "SINCE",
             "LAST SYNC", "SYNCS", "RECONNECTS", "LAST ERROR"], rows).rstrip("\n"))
    else:
        lines.append("no providers in the deployment")
    return lines


def status_table(status: Mapping[str, Any]) -> str:
    """``GET /status`` as a human table: one line per folder (of the whole
    deployment when the service reports it, else of the replica answering)."""
    lines = [f"worker {_cell(status.get('worker'))}; discovery "
             f"{'done' if status.get('discovered') else 'pending'}"
             + (f"; discovery error: {_cell(status['discoveryError'])}"
                if status.get("discoveryError") else "")]
    if isinstance(status.get("deployment"), Mapping):
        return "\n".join(lines + _deployment_table(status["deployment"])) + "\n"
    if status.get("deploymentError"):
        lines.append(f"{_cell(status['deploymentError'])}; this replica only:")
    rows = []
    for p in status.get("providers") or []:
        folders = p.get("folders") or {"-": {}}
        for name, f in sorted(folders.items()):
            cursor = f.get("cursor") or {}
            rows.append([_cell(p.get("tenant")), _cell(p.get("providerId")),
                         _cell(p.get("mailbox")), _cell(p.get("status")), _cell(name),
                         _cell(f.get("state")), _cell(cursor.get("uid_validity")),
                         _cell(cursor.get("last_uid")),
                         _cell(f.get("last_error") or p.get("error"))])
    if rows:
        lines.append(cli_provider._table(
            ["TENANT", "PROVIDER", "MAILBOX", "STATUS", "FOLDER", "STATE", "UIDVALIDITY",
             "LAST UID", "LAST ERROR"], rows).rstrip("\n"))
    else:
        lines.append("no providers on this replica")
    waiting = status.get("waiting") or []
    if waiting:
        lines.append("waiting:")
        lines.append(cli_provider._table(
            ["TENANT", "PROVIDER", "REASON"],
            [[_cell(w.get("tenant")), _cell(w.get("providerId")), _cell(w.get("reason"))]
             for w in waiting]).rstrip("\n"))
    return "\n".join(lines) + "\n"


def _status(ctx: _Runtime, args: argparse.Namespace) -> int:
    result = _http(ctx, "GET", f"{_service_url(args, ctx.settings)}/status")
    if args.json:
        ctx.out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    elif isinstance(result, dict):
        ctx.out.write(status_table(result))
    else:
        raise AdminError("/status did not answer a JSON object")
    return 0


# -- events tail ---------------------------------------------------------------


class RedisError(AdminError):
    """An error reply, or a broken connection."""


def resp_encode(*args: Any) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def resp_read(f: BinaryIO) -> Any:
    """One reply from a RESP2 stream: bytes, int, None, list, or a
    :class:`RedisError` raised for an error reply."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise RedisError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisError("Redis: " + rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)
        if len(data) != size + 2:
            raise RedisError("Redis closed the connection")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [resp_read(f) for _ in range(count)]
    raise RedisError(f"unexpected Redis reply {line[:20]!r}")


class RespClient:
    """A minimal blocking Redis client for ``events tail``: the CLI runs no
    reactor, and a dependency for three commands (AUTH/SELECT, XREVRANGE,
    XREAD) is not worth it."""

    def __init__(self, url: str, timeout: float = 10.0,
                 connect: Callable[..., socket.socket] = socket.create_connection) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        try:
            sock = connect((host, port), timeout=timeout)
        except OSError as e:
            raise AdminError(f"cannot reach Redis at {host}:{port}: "
                             f"{e.strerror or e}") from None
        if parts.scheme == "rediss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self._sock = sock
        self._file = sock.makefile("rb")
        if parts.password is not None:
            auth = [unquote(parts.password)]
            if parts.username:
                auth.insert(0, unquote(parts.username))
            self.call("AUTH", *auth)
        db = parts.path.strip("/")
        if db and db != "0":
            self.call("SELECT", db)

    def settimeout(self, seconds: float) -> None:
        self._sock.settimeout(seconds)

    def call(self, *args: Any) -> Any:
        try:
            self._sock.sendall(resp_encode(*args))
            return resp_read(self._file)  # type: ignore[arg-type]
        except OSError as e:
            raise RedisError(f"Redis connection failed: {e}") from None

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _entry(entry_id: bytes, flat: Sequence[bytes]) -> dict[str, Any]:
    fields = {flat[i].decode("utf-8", "replace"): flat[i + 1].decode("utf-8", "replace")
              for i in range(0, len(flat) - 1, 2)}
    return {"id": entry_id.decode("ascii"), "fields": fields}


def _print_entry(out: TextIO, entry: Mapping[str, Any]) -> None:
    out.write(json.dumps({"id": entry.get("id"), "fields": entry.get("fields")},
                         ensure_ascii=False) + "\n")
    out.flush()


def _tail_redis(ctx: _Runtime, args: argparse.Namespace) -> int:
    client = ctx.redis(ctx.settings.redis_url)
    stream = ctx.settings.event_stream
    try:
        newest = client.call("XREVRANGE", stream, "+", "-", "COUNT", args.count) or []
        for entry_id, flat in reversed(newest):
            _print_entry(ctx.out, _entry(entry_id, flat))
        if not args.follow:
            return 0
        last = newest[0][0] if newest else b"0-0"
        client.settimeout(ctx.block_ms / 1000.0 + 10)
        while True:
            reply = client.call("XREAD", "COUNT", 100, "BLOCK", ctx.block_ms, "STREAMS",
                                stream, last)
            for _name, entries in reply or []:
                for entry_id, flat in entries:
                    _print_entry(ctx.out, _entry(entry_id, flat))
                    last = entry_id
            if ctx.stop():
                return 0
    finally:
        client.close()


def _complete_lines(f: BinaryIO) -> tuple[list[bytes], int]:
    """Complete lines from the current position, and the bytes consumed."""
    lines, used = [], 0
    for line in f:
        if not line.endswith(b"\n"):
            break
        lines.append(line)
        used += len(line)
    return lines, used


def _tail_file(ctx: _Runtime, args: argparse.Namespace) -> int:
    path = ctx.settings.events_file
    if not os.path.exists(path) and not args.follow:
        raise AdminError(f"no events file at {path} (IMAPSVC_EVENTS_FILE)")
    offset = 0
    last: collections.deque = collections.deque(maxlen=args.count)
    if os.path.exists(path):
        with open(path, "rb") as f:
            lines, offset = _complete_lines(f)  # type: ignore[arg-type]
        last.extend(lines)
    for line in last:
        _print_entry(ctx.out, json.loads(line))
    if not args.follow:
        return 0
    while True:
        if ctx.stop():
            return 0
        ctx.wait(0.5)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            continue
        if size < offset:  # replaced or truncated: start over
            offset = 0
        if size == offset:
            continue
        with open(path, "rb") as f:
            f.seek(offset)
            lines, used = _complete_lines(f)  # type: ignore[arg-type]
        offset += used
        for line in lines:
            _print_entry(ctx.out, json.loads(line))


def _events(ctx: _Runtime, args: argparse.Namespace) -> int:
    if args.count < 0:
        raise AdminError("--count must not be negative")
    if ctx.settings.redis_url:
        return _tail_redis(ctx, args)
    return _tail_file(ctx, args)


# -- the parser and main -------------------------------------------------------


class _Runtime:
    """Everything a command needs; tests replace the I/O seams."""

    def __init__(self, context: Context, settings: Settings, urlopen: Callable[..., Any],
                 redis: Callable[[str], Any], wait: Callable[[float], Any],
                 stop: Callable[[], bool]) -> None:
        self.context = context
        self.out = context.out
        self.settings = settings
        self.urlopen = urlopen
        self.redis = redis
        self.wait = wait
        self.stop = stop
        self.http_timeout = 60.0  # test-connection logs in: allow for a slow server
        self.block_ms = 5000


_SECRET_FLAGS = ("--password", "--pass", "--secret", "--client-secret", "--oauth-client-secret",
                 "--token", "--refresh-token")


def _secret_on_argv(argv: Sequence[str]) -> Optional[str]:
    """The flag of a secret given on the command line, if any (never its value)."""
    for arg in argv:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if flag in _SECRET_FLAGS:
            return flag
    return None


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--database-url", default=argparse.SUPPRESS,
                        help="PostgreSQL URL (default $DATABASE_URL; empty: the SQLite file)")
    common.add_argument("--sqlite-path", default=argparse.SUPPRESS,
                        help="use this SQLite file (default $IMAPSVC_SQLITE_PATH)")
    service = _Parser(add_help=False)
    service.add_argument("--url", help="the service's base URL (default "
                         "http://127.0.0.1:$PORT)")

    parser = _Parser(
        prog="python -m imapsvc",
        description="imapsvc operator commands (the service itself runs as `twistd imapsvc`).",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="command", required=True,
                                     parser_class=_Parser)
    commands.add_parser(
        "migrate",
        help="create or upgrade the schema (Postgres migrations, or the SQLite file)",
        add_help=False,
    )
    config = commands.add_parser(
        "config", help="print the effective settings (secrets masked) from the environment"
    )
    config.add_argument(
        "--markdown", action="store_true", help="print the settings reference as Markdown"
    )
    commands.add_parser("keygen", help="print a new random IMAPSVC_SECRET_KEY")
    cli_provider.add_parsers(commands, common, _Parser)
    cli_poison.add_parsers(commands, common, _Parser)

    for name, help_text in (
        ("resync", "reset cursors to the recent window (running service, or --offline)"),
        ("reconnect", "drop and re-open a provider's connections, keeping cursors"),
        ("test-connection", "log in and out once"),
        ("pause", "pause a provider (manual) and stop its connections"),
        ("resume", "clear a provider's pause (any reason)"),
    ):
        p = commands.add_parser(name, help=help_text, parents=[common, service])
        p.add_argument("--tenant", required=True, help="tenant UUID")
        p.add_argument("--provider", required=True, help="provider UUID")
        if name not in ("pause", "resume"):
            p.add_argument("--folder", help="one folder only")
        if name == "resync":
            p.add_argument("--offline", action="store_true",
                           help="no service running: reset the cursors in the store directly")
            p.add_argument("--since", metavar="DATE",
                           help="read the messages since DATE (YYYY-MM-DD or 1-Jan-2026) "
                                "again instead of resetting cursors; nothing published "
                                "twice")
    p = commands.add_parser("status", help="the running service's providers and folders",
                            parents=[service])
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    events = commands.add_parser("events", help="read the event stream")
    ev = events.add_subparsers(dest="events_command", metavar="action", required=True,
                               parser_class=_Parser)
    tail = ev.add_parser("tail", help="print the newest events (JSON, one a line)")
    tail.add_argument("--count", type=int, default=10, help="how many to print first (10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    return parser


def _wait(seconds: float) -> None:
    # The CLI has no reactor; waiting for a file to grow is its one pause.
    threading.Event().wait(seconds)


def main(
    argv: Optional[Sequence[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
    *,
    stdin: Optional[TextIO] = None,
    getpass: Optional[Callable[[str], str]] = None,
    urlopen: Optional[Callable[..., Any]] = None,
    redis: Optional[Callable[[str], Any]] = None,
    wait: Optional[Callable[[float], Any]] = None,
    stop: Optional[Callable[[], bool]] = None,
) -> int:
    """Run one command; returns the exit status. The keyword arguments are
    the I/O seams (tests pass fakes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    flag = _secret_on_argv(argv)
    if flag is not None:
        err.write(f"imapsvc: {flag} is refused: secrets on the command line end up in shell "
                  "history and the process list; use the prompt or --password-stdin\n")
        return USAGE
    try:
        # migrate owns its own options: hand it everything after the command name.
        if argv and argv[0] == "migrate":
            return _migrate_argv(argv[1:], environ, out, err)
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except _UsageError as e:
            err.write(f"{e}\n")
            return USAGE
        except SystemExit as e:  # --help
            return int(e.code or 0)
        if args.command == "config":
            return _config(args, environ, out, err)
        if args.command == "keygen":
            from imapsvc.secrets import generate_key

            out.write(generate_key() + "\n")
            return 0
        overrides = {"DATABASE_URL": getattr(args, "database_url", None)}
        try:
            settings = load_settings(environ, overrides)
        except ConfigError as e:
            err.write(f"imapsvc: {e}\n")
            return USAGE
        if args.command == "migrate":  # the global-option form: --database-url X migrate
            if settings.database_url and not getattr(args, "sqlite_path", None):
                return _migrate_postgres(["--database-url", settings.database_url], err)
            return _migrate_sqlite(getattr(args, "sqlite_path", None) or settings.sqlite_path,
                                   out)
        return _run(args, settings, out, err, stdin or sys.stdin,
                    getpass or getpass_module.getpass, urlopen or urllib.request.urlopen,
                    redis or RespClient, wait or _wait, stop or (lambda: False))
    except InputError as e:
        err.write(f"imapsvc: {e}\n")
        return USAGE
    except AdminError as e:
        err.write(f"imapsvc: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace, settings: Settings, out: TextIO, err: TextIO,
         stdin: TextIO, getpass: Callable[[str], str], urlopen: Callable[..., Any],
         redis: Callable[[str], Any], wait: Callable[[float], Any],
         stop: Callable[[], bool]) -> int:
    from imapsvc.store.admin_sync import open_store

    sqlite_path = getattr(args, "sqlite_path", None)
    database_url = "" if sqlite_path else settings.database_url

    def opener(create: bool) -> Any:
        return open_store(database_url, sqlite_path or settings.sqlite_path, create=create)

    context = Context(out=out, err=err, stdin=stdin, getpass=getpass,
                      secret_keys=settings.secret_key, secrets_dir=settings.secrets_dir,
                      open_store=opener)
    runtime = _Runtime(context, settings, urlopen, redis, wait, stop)
    if args.command == "provider":
        return int(args.provider_run(context, args))
    if args.command == "poison":
        return int(args.poison_run(context, args))
    if args.command in ("resync", "reconnect", "test-connection", "pause", "resume"):
        return _action(runtime, args)
    if args.command == "status":
        return _status(runtime, args)
    if args.command == "events":
        return _events(runtime, args)
    err.write(f"imapsvc: unknown command {args.command}\n")
    return USAGE
