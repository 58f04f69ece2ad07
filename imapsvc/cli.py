"""``python -m imapsvc <command>``: operator commands next to ``twistd imapsvc``.

- ``migrate [--database-url URL]``: apply the SQL migrations
  (:mod:`imapsvc.store.migrate`).
- ``config [--markdown]``: print the effective settings, secrets masked, or
  the settings reference (``docs/settings.md``).

Errors are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping, Optional, Sequence, TextIO

from imapsvc.config import SETTINGS, ConfigError, load_settings, settings_markdown


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
        out.write(f"{setting.env:<{width}}  {masked[setting.env]}  ({source})\n")
    return 0


def _migrate(argv: Sequence[str], err: TextIO) -> int:
    try:
        from imapsvc.store import migrate
    except ImportError as e:
        err.write(f"imapsvc migrate: not available: {e}\n")
        return 1
    return int(migrate.main(list(argv)) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imapsvc",
        description="imapsvc operator commands (the service itself runs as `twistd imapsvc`).",
    )
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    commands.add_parser(
        "migrate",
        help="apply pending SQL migrations (see `python -m imapsvc migrate --help`)",
        add_help=False,
    )
    config = commands.add_parser(
        "config", help="print the effective settings (secrets masked) from the environment"
    )
    config.add_argument(
        "--markdown", action="store_true", help="print the settings reference as Markdown"
    )
    return parser


def main(
    argv: Optional[Sequence[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Run one command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    # migrate owns its own options: hand it everything after the command name.
    if argv and argv[0] == "migrate":
        return _migrate(argv[1:], err)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed usage and its one-line error
        return int(e.code or 0)
    if args.command == "config":
        return _config(args, environ, out, err)
    parser.print_usage(err)
    return 2
