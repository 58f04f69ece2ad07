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
- ``resync``, ``reconnect``, ``test-connection``, ``pause``, ``resume``,
  ``status``: the running service's admin HTTP API (:mod:`imapsvc.cli_service`).
- ``events tail [--follow]``: the event stream (Redis, or the JSON Lines
  file of the embedded sink; :mod:`imapsvc.cli_events`).

Errors are one line on stderr and a non-zero exit status; ``docs/cli.md``
is the user's guide.
"""

from __future__ import annotations

import argparse
import getpass as getpass_module
import os
import sys
import threading
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO

from imapsvc import cli_events, cli_poison, cli_provider, cli_service
from imapsvc.cli_provider import AdminError, Context, InputError
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


MIGRATE_DESCRIPTION = ("Create or upgrade the schema: the numbered migrations of schema/ on "
                       "Postgres, else the SQLite file. Safe to run again.")


def _add_migrate_options(parser: argparse.ArgumentParser) -> None:
    """Both stores' options, for ``--help`` (Postgres's own parser knows only
    its URL). SUPPRESS: the global options' values are not overwritten."""
    parser.add_argument("--database-url", default=argparse.SUPPRESS,
                        help="PostgreSQL URL (default $DATABASE_URL)")
    parser.add_argument("--sqlite-path", default=argparse.SUPPRESS,
                        help="with no database URL: this SQLite file "
                        "(default $IMAPSVC_SQLITE_PATH)")


def _migrate_help() -> str:
    parser = argparse.ArgumentParser(prog="python -m imapsvc migrate",
                                     description=MIGRATE_DESCRIPTION)
    _add_migrate_options(parser)
    return parser.format_help()


def _migrate_argv(argv: Sequence[str], environ: Mapping[str, str], out: TextIO,
                  err: TextIO) -> int:
    """``migrate`` as the first word: Postgres options belong to
    :mod:`imapsvc.store.migrate`; with no database URL anywhere, SQLite."""
    peek = _Parser(prog="python -m imapsvc migrate", add_help=False)
    peek.add_argument("--database-url")
    peek.add_argument("--sqlite-path")
    known, _ = peek.parse_known_args(list(argv))
    if "-h" in argv or "--help" in argv:
        out.write(_migrate_help())
        return 0
    if known.database_url:
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


# -- the parser and main -------------------------------------------------------


class CommandRuntime:
    """Everything a command needs; tests replace the I/O seams."""

    def __init__(self, context: Context, settings: Settings, urlopen: Callable[..., Any],
                 redis: Callable[[str, float], Any], wait: Callable[[float], Any],
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
    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the schema (Postgres migrations, or the SQLite file)",
        description=MIGRATE_DESCRIPTION,
    )
    _add_migrate_options(migrate)
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
    redis: Optional[Callable[[str, float], Any]] = None,
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
            from imapsvc.sealed_secrets import generate_key

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
                    redis or cli_events.connect_redis, wait or _wait, stop or (lambda: False))
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
         redis: Callable[[str, float], Any], wait: Callable[[float], Any],
         stop: Callable[[], bool]) -> int:
    from imapsvc.store.admin_sync import open_store

    sqlite_path = getattr(args, "sqlite_path", None)
    database_url = "" if sqlite_path else settings.database_url

    def opener(create: bool) -> Any:
        return open_store(database_url, sqlite_path or settings.sqlite_path, create=create)

    context = Context(out=out, err=err, stdin=stdin, getpass=getpass,
                      secret_keys=settings.secret_key, secrets_dir=settings.secrets_dir,
                      open_store=opener)
    runtime = CommandRuntime(context, settings, urlopen, redis, wait, stop)
    if args.command == "provider":
        return int(args.provider_run(context, args))
    if args.command == "poison":
        return int(args.poison_run(context, args))
    if args.command in ("resync", "reconnect", "test-connection", "pause", "resume"):
        return cli_service.action(runtime, args)
    if args.command == "status":
        return cli_service.status(runtime, args)
    if args.command == "events":
        return cli_events.events(runtime, args)
    err.write(f"imapsvc: unknown command {args.command}\n")
    return USAGE
