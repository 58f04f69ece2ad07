"""The commands that talk to the running service's admin HTTP API:
``resync``, ``reconnect``, ``test-connection``, ``pause``, ``resume`` and
``status`` (bearer ``IMAPSVC_ADMIN_TOKEN``). ``resync --offline`` resets the
cursors in the store instead (:mod:`imapsvc.cli_provider`).
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Mapping, Optional

from imapsvc import cli_provider
from imapsvc.cli_provider import AdminError
from imapsvc.config import Settings

if TYPE_CHECKING:
    from imapsvc.cli import CommandRuntime


def _service_url(args: argparse.Namespace, settings: Settings) -> str:
    return (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/")


def _http(ctx: CommandRuntime, method: str, url: str, body: Optional[dict] = None) -> Any:
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


def action(ctx: CommandRuntime, args: argparse.Namespace) -> int:
    tenant, provider_id = cli_provider.parse_target(args)
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


def status(ctx: CommandRuntime, args: argparse.Namespace) -> int:
    result = _http(ctx, "GET", f"{_service_url(args, ctx.settings)}/status")
    if args.json:
        ctx.out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    elif isinstance(result, dict):
        ctx.out.write(status_table(result))
    else:
        raise AdminError("/status did not answer a JSON object")
    return 0
