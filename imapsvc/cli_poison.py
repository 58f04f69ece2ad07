"""``python -m imapsvc poison list|retry``: messages whose fetch failed.

A message that a server refuses to deliver (``NO`` to its FETCH), or that
breaks a protocol limit, is fetched alone and, after ``IMAP_POISON_AFTER``
failures, recorded as skipped (ledger reason ``poison: ...``) so its folder
goes on. ``list`` shows them (also those still being counted); ``retry``
forgets one and moves its folder's cursor back below it, so the running
service fetches it again at its next sync (``reconnect`` makes that now);
the messages after it come back as duplicates of the ledger and are not
published again.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from imapsvc.cli_provider import AdminError, Context, _table, parse_target, parse_uuid


def list_(ctx: Context, args: argparse.Namespace) -> int:
    tenant = parse_uuid(args.tenant, "--tenant") if args.tenant else None
    provider = parse_uuid(args.provider, "--provider") if args.provider else None
    store = ctx.open_store(False)
    try:
        entries = store.list_poison(tenant, provider)
    finally:
        store.close()
    if args.skipped_only:
        entries = [e for e in entries if e.skipped_at is not None]
    if args.json:
        for e in entries:
            ctx.out.write(json.dumps({
                "tenant": e.tenant, "providerId": e.provider_id, "folder": e.folder,
                "uidValidity": e.uid_validity, "uid": e.uid, "failures": e.failures,
                "reason": e.reason,
                "skippedAt": e.skipped_at.isoformat() if e.skipped_at else None,
            }, sort_keys=True) + "\n")
        return 0
    if not entries:
        ctx.out.write("no poison messages\n")
        return 0
    rows = [[e.tenant, e.provider_id, e.folder, e.uid_validity, str(e.uid), str(e.failures),
             "skipped" if e.skipped_at is not None else "counting", (e.reason or "")[:80]]
            for e in entries]
    ctx.out.write(_table(["TENANT", "PROVIDER", "FOLDER", "UIDVALIDITY", "UID", "FAILURES",
                          "STATE", "REASON"], rows))
    return 0


def retry(ctx: Context, args: argparse.Namespace) -> int:
    tenant, provider = parse_target(args)
    store = ctx.open_store(False)
    try:
        if args.all:
            targets = [(e.folder, e.uid_validity, e.uid)
                       for e in store.list_poison(tenant, provider) if e.skipped_at is not None]
        else:
            if args.folder is None or args.uid is None or args.uid_validity is None:
                raise AdminError("poison retry: give --folder, --uid-validity and --uid, "
                                 "or --all")
            targets = [(args.folder, args.uid_validity, args.uid)]
        done = 0
        for folder, validity, uid in targets:
            if store.retry_poison(tenant, provider, folder, validity, uid):
                done += 1
                ctx.out.write(f"retrying {folder} UID {uid} (UIDVALIDITY {validity})\n")
            else:
                ctx.err.write(f"imapsvc: no poison message {folder} UID {uid} "
                              f"(UIDVALIDITY {validity}) for provider {provider}\n")
    finally:
        store.close()
    if not targets:
        ctx.out.write("no skipped poison messages\n")
        return 0
    if done:
        ctx.out.write("the running service fetches them at the folder's next sync "
                      "(`python -m imapsvc reconnect` for now)\n")
    return 0 if done == len(targets) else 1


def _uid(text: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise argparse.ArgumentTypeError("must be a UID (digits)")
    return int(text)


def add_parsers(commands: Any, parent: argparse.ArgumentParser, parser_class: Any) -> None:
    """The ``poison`` command and its subcommands."""
    poison = commands.add_parser(
        "poison", help="list and retry messages skipped after failed fetches", parents=[parent])
    sub = poison.add_subparsers(dest="poison_command", metavar="action", required=True,
                                parser_class=parser_class)
    p = sub.add_parser("list", help="messages whose fetch failed (skipped or counting)",
                       parents=[parent])
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--skipped-only", action="store_true", help="only those already skipped")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(poison_run=list_)
    p = sub.add_parser("retry", help="fetch a skipped message again", parents=[parent])
    p.add_argument("--tenant", required=True, help="tenant UUID")
    p.add_argument("--provider", required=True, help="provider UUID")
    p.add_argument("--folder", help="the folder as the server spells it (see list)")
    p.add_argument("--uid-validity", help="the folder's UIDVALIDITY (see list)")
    p.add_argument("--uid", type=_uid, help="the message's UID")
    p.add_argument("--all", action="store_true", help="every skipped message of the provider")
    p.set_defaults(poison_run=retry)
