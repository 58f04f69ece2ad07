"""``python -m imapsvc events tail [--count N] [--follow]``: print the event
stream, one JSON object a line: the Redis stream (``REDIS_URL``) through
redis-py, or the JSON Lines file of the embedded sink
(``IMAPSVC_EVENTS_FILE``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from typing import TYPE_CHECKING, Any, BinaryIO, Mapping, TextIO
from urllib.parse import urlsplit

from imapsvc.cli_provider import AdminError

if TYPE_CHECKING:
    from imapsvc.cli import CommandRuntime

#: XREAD's page while following.
FOLLOW_PAGE = 100


def connect_redis(url: str, timeout: float) -> Any:
    """A blocking redis-py client for ``url`` (the CLI runs no reactor).
    redis-py connects on the first command, so errors surface there."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout,
                                socket_connect_timeout=min(timeout, 10.0))


def _entry(entry_id: bytes, fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    return {"id": entry_id.decode("ascii"),
            "fields": {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                       for k, v in fields.items()}}


def _print_entry(out: TextIO, entry: Mapping[str, Any]) -> None:
    out.write(json.dumps({"id": entry.get("id"), "fields": entry.get("fields")},
                         ensure_ascii=False) + "\n")
    out.flush()


def _stream_entries(reply: Any) -> list[Any]:
    """The entries of an XREAD reply on one stream: a list of
    ``[stream, entries]`` pairs (RESP2) or a dict (RESP3)."""
    pairs = reply.items() if isinstance(reply, Mapping) else (reply or [])
    out: list[Any] = []
    for _name, entries in pairs:
        if isinstance(entries, list) and entries and isinstance(entries[0], list):
            entries = entries[0]  # RESP3 wraps the entries once more
        out.extend(entries)
    return out


def _redis_error(url: str, error: Exception) -> AdminError:
    """One line naming the server, never the URL's credentials."""
    import redis

    parts = urlsplit(url)
    where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    if isinstance(error, redis.AuthenticationError):
        return AdminError(f"Redis at {where} refused the credentials of REDIS_URL")
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return AdminError(f"cannot reach Redis at {where}: {error}")
    return AdminError(f"Redis at {where}: {error}")


def _tail_redis(ctx: CommandRuntime, args: argparse.Namespace) -> int:
    import redis

    url = ctx.settings.redis_url
    # A blocked XREAD must come back before the socket times out.
    client = ctx.redis(url, ctx.block_ms / 1000.0 + 10)
    stream = ctx.settings.event_stream
    try:
        newest = client.xrevrange(stream, "+", "-", count=args.count) or []
        for entry_id, fields in reversed(newest):
            _print_entry(ctx.out, _entry(entry_id, fields))
        if not args.follow:
            return 0
        last = newest[0][0] if newest else b"0-0"
        while True:
            reply = client.xread({stream: last}, count=FOLLOW_PAGE, block=ctx.block_ms)
            for entry_id, fields in _stream_entries(reply):
                _print_entry(ctx.out, _entry(entry_id, fields))
                last = entry_id
            if ctx.stop():
                return 0
    except redis.RedisError as e:
        raise _redis_error(url, e) from None
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


def _tail_file(ctx: CommandRuntime, args: argparse.Namespace) -> int:
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


def events(ctx: CommandRuntime, args: argparse.Namespace) -> int:
    """``events tail``: Redis when ``REDIS_URL`` is set, else the file."""
    if args.count < 0:
        raise AdminError("--count must not be negative")
    if ctx.settings.redis_url:
        return _tail_redis(ctx, args)
    return _tail_file(ctx, args)
