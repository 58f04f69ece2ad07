"""Gmail specifics (pure): the message identity and the connection budget.

Gmail shows one message in every folder that is one of its labels (INBOX,
``Work``, ``[Gmail]/All Mail``), each copy with its own folder's UID. The
``X-GM-EXT-1`` extension gives every message an ``X-GM-MSGID``, the same in
all those folders, so it is the identity the ledger keys on: a mail seen in
INBOX and under a label is one event.

Gmail also allows an account 15 simultaneous IMAP connections. A provider
watching more folders than its budget keeps one connection per folder for
the first ``budget - 1`` folders (they idle) and polls the rest through one
shared connection with ``STATUS`` (:func:`split_by_budget`).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

#: The capability that says the server is Gmail (or speaks as Gmail does).
GMAIL_CAPABILITY = "X-GM-EXT-1"
#: Hosts that are Gmail whatever their capabilities say (checked before the
#: first login, when nothing is known yet).
GMAIL_HOSTS = frozenset({"imap.gmail.com", "imap.googlemail.com"})
#: Gmail's documented limit of simultaneous IMAP connections per account.
DEFAULT_CONNECTION_BUDGET = 15
#: ``dedupe_key`` prefix of a message identified by its X-GM-MSGID.
GMAIL_KEY_PREFIX = "gmail:"
#: X-GM-MSGID is an unsigned 64-bit number.
_MAX_MSGID = (1 << 64) - 1

#: How a folder is watched (``mode`` in ``/status``): a connection of its
#: own (idling when the server offers IDLE), or the shared STATUS poller.
MODE_OWN = "own"
MODE_SHARED_POLL = "shared-poll"


def offers_gmail(capabilities: Iterable[str]) -> bool:
    """Whether a capability list (any case) includes ``X-GM-EXT-1``."""
    return any(str(c).upper() == GMAIL_CAPABILITY for c in capabilities)


def is_gmail(host: str, capabilities: Iterable[str] = ()) -> bool:
    """Whether a provider is Gmail: by its host name, or by the
    capabilities its server announced at an earlier login."""
    return (host or "").strip().rstrip(".").lower() in GMAIL_HOSTS or offers_gmail(capabilities)


def parse_msgid(value: object) -> Optional[str]:
    """An ``X-GM-MSGID`` FETCH value as a canonical decimal string, or
    ``None`` for anything that is not an unsigned 64-bit number (a server
    that sends garbage keeps the folder/UID identity)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 20 or not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    if number == 0 or number > _MAX_MSGID:
        return None
    return str(number)


def gmail_dedupe_key(msgid: str) -> str:
    """``gmail:<X-GM-MSGID>``: one message of the account, whichever folder
    (label) it was seen in. Never collides with the ``imap:`` keys."""
    return f"{GMAIL_KEY_PREFIX}{msgid}"


def split_by_budget(
    folders: Sequence[str], budget: Optional[int]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(own, shared)``: folders with a connection of their own, and those
    polled through the one shared connection. Within the budget every folder
    has its own; beyond it the first ``budget - 1`` (in configured order, so
    INBOX first when configured first) keep theirs and the shared
    connection is the last one of the budget. ``None`` or a budget below 2
    (nothing to share with) means no budget."""
    folders = tuple(folders)
    if budget is None or budget < 2 or len(folders) <= budget:
        return folders, ()
    return folders[: budget - 1], folders[budget - 1 :]


def status_says_sync(
    uid_validity: Optional[int],
    uid_next: Optional[int],
    cursor_validity: Optional[str],
    cursor_last_uid: Optional[str],
    last_pass: Optional[tuple[str, str, int]] = None,
) -> bool:
    """Whether a ``STATUS (UIDNEXT UIDVALIDITY)`` answer asks for a sync pass
    of a folder whose cursor is ``(cursor_validity, cursor_last_uid)``: no
    cursor yet, another UIDVALIDITY, or UIDNEXT past ``last_uid + 1`` (new
    mail). An answer without UIDNEXT or UIDVALIDITY cannot tell: sync.

    ``last_pass`` is ``(uid_validity, last_uid, uid_next)`` as the folder's
    last pass left them: when nothing of it changed, the gap above the
    cursor is mail deleted before it was read, and another pass would find
    nothing again (an operator's resync moves the cursor, so it still runs).
    """
    if uid_validity is None or uid_next is None:
        return True
    if not cursor_validity or cursor_last_uid is None:
        return True
    if str(uid_validity) != str(cursor_validity):
        return True
    try:
        last = int(cursor_last_uid)
    except ValueError:
        return True
    if last_pass is not None and last_pass == (str(cursor_validity), str(cursor_last_uid),
                                               uid_next):
        return False
    return uid_next > last + 1
