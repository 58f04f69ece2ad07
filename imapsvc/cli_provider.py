"""``python -m imapsvc provider ...``: providers and their secrets, straight
in the store (see :mod:`imapsvc.store.admin_sync`), no running service
needed.

Passwords and client secrets are read from a terminal prompt or, with
``--password-stdin``, from the first line of standard input; never from the
command line, where the shell history and the process list would keep
them. They are sealed by :class:`imapsvc.sealed_secrets.SecretStore` under the key
of ``IMAPSVC_SECRET_KEY`` before they reach the store.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import date
from typing import Any, Callable, Optional, Sequence, TextIO

import attr
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core.cursor import parse_since
from imapsvc.interfaces import ICiphertextStore
from imapsvc.model import ProviderConfig
from imapsvc.sealed_secrets import (
    SecretBox,
    SecretKeyError,
    SecretStore,
    client_secret_name,
    password_name,
    refresh_token_name,
)
from imapsvc.store.admin_sync import AdminError, AdminStore, InputError


#: What the CLI commands share: streams, prompts, the opened store.
@attr.s(auto_attribs=True)
class Context:
    out: TextIO
    err: TextIO
    stdin: TextIO
    getpass: Callable[[str], str]
    secret_keys: tuple[str, ...] = ()
    secrets_dir: str = ""
    open_store: Callable[[bool], AdminStore] = attr.ib(default=None)


def parse_uuid(text: str, what: str) -> str:
    """The canonical form of a uuid argument, or a one-line error."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise InputError(f"{what} is not a UUID: {text!r}") from None


def parse_target(args: argparse.Namespace) -> tuple[str, str]:
    """``(tenant, provider id)`` of a command's ``--tenant`` and ``--provider``."""
    return parse_uuid(args.tenant, "--tenant"), parse_uuid(args.provider, "--provider")


def parse_bool(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise InputError(f"{what} must be true or false, not {text!r}")


def read_secret(ctx: Context, from_stdin: bool, label: str, allow_empty: bool = False) -> str:
    """A password from stdin's first line or a prompt (typed twice)."""
    if from_stdin:
        value = ctx.stdin.readline().rstrip("\r\n")
    else:
        isatty = getattr(ctx.stdin, "isatty", None)
        if not (isatty and isatty()):
            raise AdminError(f"no terminal to prompt for the {label} on: "
                             "pipe it in with --password-stdin")
        value = ctx.getpass(f"{label}: ")
        if value and ctx.getpass(f"{label} (again): ") != value:
            raise AdminError(f"the two {label} entries differ")
    if not value and not allow_empty:
        raise AdminError(f"empty {label}")
    return value


@implementer(ICiphertextStore)
class _SyncBackend:
    """The three secret methods of an IStore over a synchronous AdminStore,
    as already-fired Deferreds, so :class:`SecretStore` runs without a
    reactor."""

    def __init__(self, store: AdminStore) -> None:
        self._store = store

    def put_secret(self, tenant: str, name: str, ciphertext: bytes) -> defer.Deferred:
        return defer.maybeDeferred(self._store.put_secret, tenant, name, ciphertext)

    def get_secret(self, tenant: str, name: str) -> defer.Deferred:
        return defer.maybeDeferred(self._store.get_secret, tenant, name)

    def delete_secret(self, tenant: str, name: str) -> defer.Deferred:
        return defer.maybeDeferred(self._store.delete_secret, tenant, name)


def resolved(d: defer.Deferred) -> Any:
    """The result of a Deferred that has already fired (or its exception)."""
    box: list[Any] = []
    d.addBoth(box.append)
    if not box:
        raise RuntimeError("operation did not complete synchronously")
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def secret_store(ctx: Context, store: AdminStore) -> SecretStore:
    """:raises AdminError: no usable ``IMAPSVC_SECRET_KEY``."""
    if not ctx.secret_keys:
        raise InputError(
            "IMAPSVC_SECRET_KEY is not set: secrets are stored encrypted with it; create one "
            "with `python -m imapsvc keygen` and give the same value to the service")
    try:
        box = SecretBox.from_setting(",".join(ctx.secret_keys))
    except SecretKeyError:
        raise InputError("IMAPSVC_SECRET_KEY must be 32 bytes as url-safe base64 or hex"
                         ) from None
    # The mounted-secrets directory is the service's read path only: writes
    # always go to the store, so no secrets_dir here.
    return SecretStore(_SyncBackend(store), box)


# -- commands ----------------------------------------------------------------


def add(ctx: Context, args: argparse.Namespace) -> int:
    tenant = parse_uuid(args.tenant, "--tenant")
    provider_id = parse_uuid(args.provider_id, "--provider-id") if args.provider_id \
        else str(uuid.uuid4())
    starttls = args.tls_mode == "starttls"
    port = args.port if args.port is not None else (143 if starttls else 993)
    if not 1 <= port <= 65535:
        raise InputError(f"--port must be between 1 and 65535, not {port}")
    oauth = args.auth == "oauth2"
    if oauth:
        missing = [flag for flag, value in (
            ("--oauth-client-id", args.oauth_client_id),
            ("--oauth-authorize-url", args.oauth_authorize_url),
            ("--oauth-token-url", args.oauth_token_url),
        ) if not value]
        if missing:
            raise InputError("--auth oauth2 needs " + ", ".join(missing))
    config = ProviderConfig(
        tenant=tenant,
        provider_id=provider_id,
        provider_name=args.name or args.mailbox,
        mailbox=args.mailbox,
        host=args.host,
        port=port,
        secure=not starttls,
        allow_starttls=starttls,
        auth_type=args.auth,
        username=args.username,
        connection_timeout_ms=args.connection_timeout_ms,
        max_emails_per_sync=args.max_emails_per_sync,
        folder_filters=tuple(args.folder or ()),
        oauth_authorize_url=args.oauth_authorize_url if oauth else None,
        oauth_token_url=args.oauth_token_url if oauth else None,
        oauth_client_id=args.oauth_client_id if oauth else None,
        oauth_scopes=args.oauth_scopes if oauth else None,
        is_active=not args.inactive,
    )
    store = ctx.open_store(True)
    try:
        # Everything that can fail before a write, first: the key and the secret.
        secrets = secret_store(ctx, store)
        if oauth:
            secret = read_secret(ctx, args.password_stdin,
                                 "OAuth client secret (empty for a public client)",
                                 allow_empty=True)
        else:
            secret = read_secret(ctx, args.password_stdin, "IMAP password")
        store.add_provider(config)
        name = client_secret_name(provider_id) if oauth else password_name(provider_id)
        if secret:
            try:
                resolved(secrets.put(tenant, name, secret))
            except AdminError:
                # No half-added provider without its credential.
                store.remove_provider(tenant, provider_id)
                raise
        where = store.describe()
    finally:
        store.close()
    ctx.out.write(f"added provider {provider_id} for {config.mailbox} (tenant {tenant}) "
                  f"in {where}\n")
    if oauth:
        ctx.out.write("next: authorise it through POST /api/email/oauth/imap/initiate\n")
    return 0


def set_password(ctx: Context, args: argparse.Namespace) -> int:
    tenant, provider_id = parse_target(args)
    store = ctx.open_store(False)
    try:
        secrets = secret_store(ctx, store)
        config = store.get_provider(tenant, provider_id)
        if config.auth_type == "oauth2":
            label, name = "OAuth client secret", client_secret_name(provider_id)
        else:
            label, name = "IMAP password", password_name(provider_id)
        secret = read_secret(ctx, args.password_stdin, label)
        resolved(secrets.put(tenant, name, secret))
        # New credentials: the failures counted against the old ones no
        # longer apply, and an auth-failure pause (only that kind) is lifted.
        unpaused = store.clear_auth_pause(tenant, provider_id)
    finally:
        store.close()
    ctx.out.write(f"stored the {label} of provider {provider_id}; the service uses it at "
                  "its next login (`python -m imapsvc reconnect` to log in now)\n")
    if unpaused:
        ctx.out.write("lifted the pause after repeated authentication failures\n")
    return 0


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [list(headers), *rows]]
    return "\n".join(lines) + "\n"


def list_(ctx: Context, args: argparse.Namespace) -> int:
    tenant = parse_uuid(args.tenant, "--tenant") if args.tenant else None
    store = ctx.open_store(False)
    try:
        providers = store.list_providers(tenant)
        rows = []
        for config, provider_type in providers:
            name = (client_secret_name if config.auth_type == "oauth2" else password_name)(
                config.provider_id)
            has_secret = store.get_secret(config.tenant, name) is not None
            if config.auth_type == "oauth2":
                has_refresh = store.get_secret(
                    config.tenant, refresh_token_name(config.provider_id)) is not None
                secret = ("client secret" if has_secret else "public client") + \
                    (", authorised" if has_refresh else ", not authorised")
            else:
                secret = "password set" if has_secret else "NO PASSWORD"
            rows.append([
                config.tenant, config.provider_id, config.mailbox,
                f"{config.host}:{config.port}",
                "tls" if config.secure else ("starttls" if config.allow_starttls else "none"),
                config.auth_type,
                "yes" if config.is_active else "no",
                "yes" if config.inbound_paused_at is not None else "no",
                config.status,
                ",".join(config.folders),
                secret,
            ] + ([] if provider_type == "imap" else [f"(type {provider_type})"]))
    finally:
        store.close()
    if not rows:
        ctx.out.write("no providers\n")
        return 0
    headers = ["TENANT", "PROVIDER", "MAILBOX", "SERVER", "TLS", "AUTH", "ACTIVE", "PAUSED",
               "STATUS", "FOLDERS", "SECRET"]
    rows = [r[:len(headers)] for r in rows]
    ctx.out.write(_table(headers, rows))
    return 0


def set_active(ctx: Context, args: argparse.Namespace) -> int:
    tenant, provider_id = parse_target(args)
    active = parse_bool(args.active, "--active")
    store = ctx.open_store(False)
    try:
        store.set_active(tenant, provider_id, active)
    finally:
        store.close()
    ctx.out.write(f"provider {provider_id} is now {'active' if active else 'inactive'}\n")
    return 0


def set_write_back(ctx: Context, args: argparse.Namespace) -> int:
    """``imap_provider_options.write_back`` (issue 13 item 3)."""
    from imapsvc.core.write_back import parse_mode

    tenant, provider_id = parse_target(args)
    if args.mode.strip().lower() == "default":
        mode: Optional[str] = None
    else:
        try:
            mode = str(parse_mode(args.mode))
        except ValueError as e:
            raise InputError(f"--mode: {e}") from None
    store = ctx.open_store(False)
    try:
        store.set_write_back(tenant, provider_id, mode)
    finally:
        store.close()
    what = "the IMAP_WRITE_BACK default" if mode is None else mode
    ctx.out.write(f"provider {provider_id} write-back: {what} (from its next sync)\n")
    return 0


def set_oauth_delegate(ctx: Context, args: argparse.Namespace) -> int:
    """``imap_provider_options.oauth_delegate`` (schema/0009): the account
    that consents for a Microsoft 365 shared mailbox."""
    tenant = parse_uuid(args.tenant, "--tenant")
    provider_id = parse_uuid(args.provider, "--provider")
    text = args.delegate.strip()
    delegate: Optional[str] = None
    if text.lower() != "none":
        local, at, domain = text.partition("@")
        if not (local and at and domain) or any(c.isspace() or ord(c) < 32 for c in text):
            raise InputError("--delegate: an e-mail address, or 'none'")
        delegate = text
    store = ctx.open_store(False)
    try:
        store.set_oauth_delegate(tenant, provider_id, delegate)
    finally:
        store.close()
    if delegate is None:
        ctx.out.write(f"provider {provider_id}: the mailbox's own user gives the OAuth consent\n")
    else:
        ctx.out.write(f"provider {provider_id}: {delegate} gives the OAuth consent; the login "
                      "name stays the provider's username\n")
    return 0


def remove(ctx: Context, args: argparse.Namespace) -> int:
    tenant, provider_id = parse_target(args)
    store = ctx.open_store(False)
    try:
        store.remove_provider(tenant, provider_id)
        # Its secrets go with it; no key is needed to delete ciphertext.
        for name in (password_name(provider_id), client_secret_name(provider_id),
                     refresh_token_name(provider_id)):
            store.delete_secret(tenant, name)
    finally:
        store.close()
    ctx.out.write(f"removed provider {provider_id} and its secrets\n")
    return 0


def resync_offline(ctx: Context, tenant: str, provider_id: str,
                   folder: Optional[str]) -> int:
    """Reset cursors in the store directly (no service running)."""
    store = ctx.open_store(False)
    try:
        store.reset_cursors(tenant, provider_id, folder)
    finally:
        store.close()
    what = f"folder {folder}" if folder else "every folder"
    ctx.out.write(f"reset the cursor of {what} of provider {provider_id}: the next sync "
                  "starts at the recent window\n")
    return 0


def parse_since_arg(text: str) -> date:
    """``--since``: ``YYYY-MM-DD`` or ``1-Jan-2026`` (a usage error otherwise)."""
    try:
        return parse_since(text)
    except ValueError as e:
        raise InputError(f"--since: {e}") from None


def backfill_offline(ctx: Context, tenant: str, provider_id: str, folder: Optional[str],
                     since: date) -> int:
    """Store a ``resync --since`` request directly (no service running): the
    folders read it at their next sync."""
    store = ctx.open_store(False)
    try:
        folders = store.request_backfill(tenant, provider_id, folder, since)
    finally:
        store.close()
    ctx.out.write(f"backfill since {since.isoformat()} stored for {', '.join(folders)} of "
                  f"provider {provider_id}: read at the next sync, nothing published twice\n")
    return 0


def set_first_sync(ctx: Context, args: argparse.Namespace) -> int:
    tenant, provider_id = parse_target(args)
    text = str(args.days).strip().lower()
    days: Optional[int] = None
    if text != "default":
        if not text.isdigit():
            raise InputError(f"--days must be a number of days (0: off) or 'default', "
                             f"not {args.days!r}")
        days = int(text)
    store = ctx.open_store(False)
    try:
        store.set_first_sync_since_days(tenant, provider_id, days)
    finally:
        store.close()
    what = ("IMAP_FIRST_SYNC_SINCE_DAYS" if days is None
            else "off (the recent window)" if days == 0 else f"the last {days} days")
    ctx.out.write(f"provider {provider_id}: a folder's first sync reads {what}\n")
    return 0


def add_parsers(commands: Any, parent: argparse.ArgumentParser,
                parser_class: Any) -> None:
    """The ``provider`` command and its subcommands."""
    provider = commands.add_parser(
        "provider", help="add, list, switch and remove IMAP providers in the store",
        parents=[parent])
    sub = provider.add_subparsers(dest="provider_command", metavar="action", required=True,
                                  parser_class=parser_class)

    def ident(p: argparse.ArgumentParser, provider_flag: bool = True) -> None:
        p.add_argument("--tenant", required=True, help="tenant UUID")
        if provider_flag:
            p.add_argument("--provider", required=True, help="provider UUID")

    p = sub.add_parser("add", help="add an IMAP provider (password from a prompt or stdin)",
                       parents=[parent])
    ident(p, provider_flag=False)
    p.add_argument("--provider-id", help="provider UUID (default: a new one)")
    p.add_argument("--mailbox", required=True, help="the address the mailbox receives")
    p.add_argument("--name", help="display name (default: the mailbox)")
    p.add_argument("--host", required=True, help="IMAP server host")
    p.add_argument("--port", type=int, help="IMAP port (default 993 with --tls, 143 with "
                   "--starttls)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tls", dest="tls_mode", action="store_const", const="tls",
                      help="implicit TLS (the default)")
    mode.add_argument("--starttls", dest="tls_mode", action="store_const", const="starttls",
                      help="plain connection upgraded with STARTTLS (required, never skipped)")
    p.set_defaults(tls_mode="tls")
    p.add_argument("--auth", choices=("password", "oauth2"), default="password")
    p.add_argument("--username", required=True, help="IMAP login name")
    p.add_argument("--folder", action="append",
                   help="folder to watch (repeat; default INBOX)")
    p.add_argument("--max-emails-per-sync", type=int, default=50)
    p.add_argument("--connection-timeout-ms", type=int)
    p.add_argument("--inactive", action="store_true", help="add it switched off")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password (or OAuth client secret) from stdin's first line")
    p.add_argument("--oauth-client-id")
    p.add_argument("--oauth-authorize-url")
    p.add_argument("--oauth-token-url")
    p.add_argument("--oauth-scopes", help="space separated")
    p.set_defaults(provider_run=add)

    p = sub.add_parser("set-password",
                       help="replace a provider's password (or OAuth client secret)",
                       parents=[parent])
    ident(p)
    p.add_argument("--password-stdin", action="store_true",
                   help="read it from stdin's first line instead of a prompt")
    p.set_defaults(provider_run=set_password)

    p = sub.add_parser("list", help="list providers (never shows secrets)", parents=[parent])
    p.add_argument("--tenant", help="only this tenant")
    p.set_defaults(provider_run=list_)

    p = sub.add_parser("set-active", help="switch is_active", parents=[parent])
    ident(p)
    p.add_argument("--active", required=True, help="true or false")
    p.set_defaults(provider_run=set_active)

    p = sub.add_parser("set-first-sync",
                       help="first sync of a folder by date: the last N days (0: off)",
                       parents=[parent])
    ident(p)
    p.add_argument("--days", required=True,
                   help="days (0: off, the recent window) or 'default' "
                        "(IMAP_FIRST_SYNC_SINCE_DAYS)")
    p.set_defaults(provider_run=set_first_sync)

    p = sub.add_parser("set-write-back",
                       help="what to do to processed mail in its folder: none, seen, delete, "
                       "move:<folder>, or default (IMAP_WRITE_BACK)", parents=[parent])
    ident(p)
    p.add_argument("--mode", required=True,
                   help="none | seen | delete | move:<folder> | default")
    p.set_defaults(provider_run=set_write_back)

    p = sub.add_parser("set-oauth-delegate",
                       help="shared mailbox: the account that gives the OAuth consent (its "
                       "token logs in as the provider's username)", parents=[parent])
    ident(p)
    p.add_argument("--delegate", required=True,
                   help="the delegate's address, or 'none' (the mailbox's own user)")
    p.set_defaults(provider_run=set_oauth_delegate)

    p = sub.add_parser("remove", help="delete a provider and its secrets", parents=[parent])
    ident(p)
    p.set_defaults(provider_run=remove)
