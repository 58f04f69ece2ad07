"""How many folders one process can hold open (pure).

Every watched folder is one TCP socket, so the open-file limit
(``RLIMIT_NOFILE``) caps the folders a replica can run. Past it, connects
fail with EMFILE, and so do the web surface's accepts and the database's
reconnects. The supervisor therefore starts no more folders than
:func:`folder_capacity` allows and gives the providers beyond it an error
naming the limit (:func:`fit_capacity`).

The reserve (:func:`fd_reserve`) is what the process needs besides its IMAP
sockets: standard streams, log files, the listening sockets and the
connections of the web surface, the database pool and LISTEN connection,
the Redis connections, parse-pool pipes, DNS look-ups, SQLite files.
"""

from __future__ import annotations

import errno
from datetime import datetime
from typing import Iterable, Optional, Sequence

from imapsvc.model import ProviderConfig

Key = tuple[str, str]

#: Descriptors for everything that is not a pool or a web connection: stdio,
#: log files, listening sockets, the reactor's waker, parse-pool pipes,
#: threads' DNS look-ups, SQLite files, TLS CA files read at start-up.
BASE_RESERVE = 64
#: Concurrent web connections (probes, scrapes, admin, OAuth) kept free.
WEB_RESERVE = 64
#: Database pool and LISTEN connections (with room for a reconnect overlap).
DB_RESERVE = 16
#: Redis connections (the sink's pool plus a reconnect overlap).
REDIS_RESERVE = 8

#: errno values that mean "out of descriptors" (this process, the system).
FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


def fd_reserve(
    base: int = BASE_RESERVE,
    web: int = WEB_RESERVE,
    db: int = DB_RESERVE,
    redis: int = REDIS_RESERVE,
) -> int:
    """Descriptors kept free of IMAP sockets: 152 with the module's
    defaults (64 base + 64 web + 16 database + 8 Redis)."""
    return max(0, int(base)) + max(0, int(web)) + max(0, int(db)) + max(0, int(redis))


def folder_capacity(
    open_files_limit: Optional[int], reserve: int, max_folders: int = 0
) -> Optional[int]:
    """Folders (one socket each) that fit under ``open_files_limit`` after
    ``reserve``, and at most ``max_folders`` (``IMAP_MAX_FOLDERS``; 0 = no
    such cap); ``None`` when neither limits it."""
    cap = int(max_folders) if max_folders and max_folders > 0 else None
    if open_files_limit is None or open_files_limit < 0:
        return cap
    fit = max(0, int(open_files_limit) - max(0, int(reserve)))
    return fit if cap is None else min(fit, cap)


def raised_soft_limit(soft: int, hard: int, infinity: int = -1) -> int:
    """The soft ``RLIMIT_NOFILE`` to ask for: the hard limit. An unlimited
    hard limit is not a valid soft value on Linux (``nr_open`` caps it), so
    then the soft limit is kept when already unlimited, else raised to
    1,048,576 (Linux's default ``nr_open``)."""
    if hard == infinity:
        return soft if soft == infinity else max(soft, 1 << 20)
    return max(soft, hard) if soft != infinity else soft


def capacity_reason(capacity: int, in_use: int, need: int, limit: Optional[int]) -> str:
    """The ``error_message`` of a provider that does not fit (no secrets)."""
    return (
        f"replica folder capacity reached: {in_use} of {capacity} folders open, "
        f"this provider needs {need} (open-file limit {limit}, "
        f"{'unknown' if limit is None else max(0, limit - capacity)} descriptors reserved); "
        "raise the open-file limit (ulimit -n) or add replicas"
    )


def held_elsewhere(provider: ProviderConfig, owner: str, now: datetime) -> bool:
    """Whether another replica holds a live lease on ``provider``."""
    expires = provider.lease_expires_at
    return (
        provider.lease_owner is not None
        and provider.lease_owner != owner
        and expires is not None
        and expires > now
    )


#: :func:`admit` outcomes.
START, SKIP, OVER = "start", "skip", "over"


def admit(
    provider: ProviderConfig,
    used: int,
    capacity: Optional[int],
    limit: Optional[int] = None,
    owner: str = "",
    now: Optional[datetime] = None,
    need: Optional[int] = None,
) -> tuple[str, Optional[str]]:
    """One provider against the room left: ``(START, None)``, ``(SKIP,
    None)`` when another replica holds a live lease on it (it runs there,
    takes no room here and is no error), or ``(OVER, reason)``.

    :param used: folders this replica holds open or has just started.
    :param capacity: :func:`folder_capacity`; ``None`` = unlimited.
    :param limit: the open-file limit, named in the reason.
    :param need: connections the provider holds (a budgeted Gmail provider
        holds fewer than its folders); ``None``: one per folder.
    """
    if now is not None and held_elsewhere(provider, owner, now):
        return SKIP, None
    need = len(provider.folders) if need is None else need
    if capacity is not None and used + need > capacity:
        return OVER, capacity_reason(capacity, used, need, limit)
    return START, None


def fit_capacity(
    start: Sequence[ProviderConfig],
    in_use: int,
    capacity: Optional[int],
    limit: Optional[int] = None,
    owner: str = "",
    now: Optional[datetime] = None,
) -> tuple[tuple[ProviderConfig, ...], tuple[tuple[Key, str], ...]]:
    """:func:`admit` over a discovery pass's starts, assuming every start
    gets its lease: those that fit, and those refused with their reason. In
    order: a provider too big for what is left is refused, a later smaller
    one may still fit. (The supervisor admits one at a time instead, so a
    lease another replica won frees the room it had counted.)"""
    fits: list[ProviderConfig] = []
    over: list[tuple[Key, str]] = []
    used = max(0, int(in_use))
    for provider in start:
        outcome, reason = admit(provider, used, capacity, limit, owner, now)
        if outcome == OVER and reason is not None:
            over.append((provider.key, reason))
        elif outcome == START:
            used += len(provider.folders)
            fits.append(provider)
    return tuple(fits), tuple(over)


def folders_in_use(counts: Iterable[int]) -> int:
    """Sum of folder counts (running providers after stops and restarts)."""
    return sum(max(0, int(n)) for n in counts)


def is_fd_exhaustion(err: object) -> bool:
    """Whether ``err`` (an ``OSError``, or Twisted's ``ConnectBindError``,
    which keeps the errno in ``osError`` and the text in ``args``) is
    EMFILE or ENFILE."""
    for code in (getattr(err, "errno", None), getattr(err, "osError", None)):
        if isinstance(code, int) and code in FD_EXHAUSTED:
            return True
    args = getattr(err, "args", ())
    if args and isinstance(args[0], int) and args[0] in FD_EXHAUSTED:
        return True
    return any("Too many open files" in str(a) for a in args)
