"""``STATUS <folder> (UIDNEXT UIDVALIDITY)`` (RFC 3501 6.3.10) for the
shared polling connection of a provider over its connection budget
(:mod:`imapsvc.core.gmail`): one round trip per folder tells whether the
folder has new mail, without selecting it.

:func:`parse_status` reads the untagged answer's tokens; the command itself
and ``UNSELECT`` are :class:`StatusCommands`, part of the client.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.internet import defer

from imapsvc.core.folders import decode_mutf7
from imapsvc.imap.connection import Command
from imapsvc.imap.errors import ProtocolViolation
from imapsvc.imap.mailbox_commands import MailboxCommands
from imapsvc.imap.responses import as_bytes

#: What the poller asks for (and all it reads).
STATUS_ITEMS = ("UIDNEXT", "UIDVALIDITY", "MESSAGES")
#: A STATUS value is a 32-bit number (RFC 3501 nz-number / number).
_MAX_VALUE = (1 << 32) - 1


def _name(token: Any) -> Optional[str]:
    if token is None:
        return None
    try:
        raw = as_bytes(token)
    except ValueError:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _same_folder(answered: Optional[str], asked: str) -> bool:
    """A STATUS answer names the folder as the server spells it: modified
    UTF-7, or UTF-8 once UTF8=ACCEPT is on. INBOX is case-insensitive."""
    if answered is None:
        return False
    if answered == asked or (answered.upper() == "INBOX" and asked.upper() == "INBOX"):
        return True
    try:
        return decode_mutf7(asked) == answered
    except ValueError:
        return False


def parse_status(
    untagged: Sequence[tuple[str, Any]], folder: str
) -> dict[str, Optional[int]]:
    """The answer for ``folder`` among a command's untagged ``STATUS``
    responses (each ``[name, [item, value, ...]]``) as ``{"uidnext",
    "uidvalidity", "messages"}``; a value the server left out is ``None``,
    and so is everything when no answer names ``folder``.

    :raises ProtocolViolation: a value that is not a 32-bit number, or an
        item list with a key but no value.
    """
    found: dict[str, Optional[int]] = {k.lower(): None for k in STATUS_ITEMS}
    for keyword, tokens in untagged:
        if keyword != "STATUS" or len(tokens) < 2 or not _same_folder(_name(tokens[0]), folder):
            continue
        items = tokens[1]
        if not isinstance(items, list) or len(items) % 2:
            raise ProtocolViolation("STATUS answer with a malformed item list")
        for key, value in zip(items[0::2], items[1::2]):
            if not isinstance(key, str):
                raise ProtocolViolation("STATUS item is not an atom")
            name = key.upper()
            if name not in STATUS_ITEMS:
                continue  # UNSEEN, HIGHESTMODSEQ, ...: not ours
            text = value if isinstance(value, str) else None
            if text is None or not text.isascii() or not text.isdigit() or len(text) > 10:
                raise ProtocolViolation(f"bad {name} in STATUS answer")
            number = int(text)
            if number > _MAX_VALUE:
                raise ProtocolViolation(f"bad {name} in STATUS answer")
            found[name.lower()] = number
    return found


class StatusCommands(MailboxCommands):
    """``STATUS`` and ``UNSELECT`` for
    :class:`~imapsvc.imap.protocol.FolderIMAPClient`."""

    def status_folder(self, name: str) -> defer.Deferred[dict[str, Optional[int]]]:
        """``STATUS name (UIDNEXT UIDVALIDITY MESSAGES)`` -> ``{"uidnext",
        "uidvalidity", "messages"}`` (ints, ``None`` when not answered). A
        ``NO`` (no such folder) fails with CommandFailed and keeps the
        session; the selected folder, if any, stays selected."""
        items = b" (" + " ".join(STATUS_ITEMS).encode("ascii") + b")"
        chunks = self._arguments(b"STATUS", [self._wire_name(name)])
        chunks[-1] += items
        cmd = Command(b"STATUS", chunks, "soft")

        def done(cmd: Command, code: Optional[str]) -> dict[str, Optional[int]]:
            return parse_status(cmd.untagged, name)

        cmd.on_ok = done
        return self._submit(cmd)

    def unselect(self) -> defer.Deferred[bool]:
        """``UNSELECT`` (RFC 3691) when offered: leave the selected folder
        without expunging (``CLOSE`` would expunge a SELECTed one), so the
        next ``STATUS`` of it is not about the selected folder, which RFC
        3501 says STATUS should not be used for. Fires with whether it was
        sent; a refusal keeps the session."""
        if b"UNSELECT" not in (self.capabilities or {}):
            return defer.succeed(False)
        cmd = Command(b"UNSELECT", [b"UNSELECT"], "soft")

        def done(cmd: Command, code: Optional[str]) -> bool:
            self.state = "auth"
            return True

        cmd.on_ok = done
        return self._submit(cmd)
