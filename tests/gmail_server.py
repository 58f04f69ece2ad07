"""A Gmail-style fixture on top of :mod:`tests.imap_server`.

Gmail shows one message in every folder that is one of its labels, each copy
under that folder's own UID, all with one ``X-GM-MSGID``; ``[Gmail]/All
Mail`` (``\\All``) holds every message, Spam (``\\Junk``) and Trash
(``\\Trash``) sit beside it, and the server announces ``X-GM-EXT-1``.
:class:`GmailMailbox` keeps that shape over a
:class:`~imapsvc.testing.FakeMailbox`: :meth:`GmailMailbox.deliver` puts one
message under several labels. The scripted server already answers
``X-GM-MSGID`` in FETCH and ``STATUS``; :class:`GmailIMAPServer` only counts
the most sessions open at once, so a test can check the connection budget.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from imapsvc.testing import FakeMailbox
from tests.imap_server import ScriptedIMAPServer

#: What Gmail announces, less what the scripted server does not speak
#: (ID, ENABLE, UTF8=ACCEPT, COMPRESS, CONDSTORE, ESEARCH, LIST-STATUS, ...).
GMAIL_CAPABILITIES = (
    "IMAP4rev1", "UNSELECT", "IDLE", "NAMESPACE", "QUOTA", "XLIST", "CHILDREN", "X-GM-EXT-1",
    "UIDPLUS", "MOVE", "SPECIAL-USE", "LITERAL-", "AUTH=PLAIN", "AUTH=XOAUTH2",
)
ALL_MAIL = "[Gmail]/All Mail"
#: Gmail's own folders and their SPECIAL-USE attributes (the "[Gmail]"
#: parent itself cannot be selected).
SYSTEM_FOLDERS = (
    ("[Gmail]", ("\\HasChildren", "\\Noselect")),
    (ALL_MAIL, ("\\All", "\\HasNoChildren")),
    ("[Gmail]/Drafts", ("\\Drafts", "\\HasNoChildren")),
    ("[Gmail]/Important", ("\\HasNoChildren", "\\Important")),
    ("[Gmail]/Sent Mail", ("\\HasNoChildren", "\\Sent")),
    ("[Gmail]/Spam", ("\\HasNoChildren", "\\Junk")),
    ("[Gmail]/Starred", ("\\Flagged", "\\HasNoChildren")),
    ("[Gmail]/Trash", ("\\HasNoChildren", "\\Trash")),
)


class GmailMailbox(FakeMailbox):
    """A Gmail account: INBOX, ``labels`` and Gmail's system folders."""

    def __init__(self, labels: Iterable[str] = (), accounts: Optional[dict[str, str]] = None,
                 first_msgid: int = 1789000000000000000) -> None:
        super().__init__(GMAIL_CAPABILITIES, accounts, folders=("INBOX", *labels))
        for name, flags in SYSTEM_FOLDERS:
            self.add_folder(name).flags = flags
        self._next_msgid = first_msgid
        #: X-GM-MSGID -> {folder: uid} of every delivered message.
        self.copies: dict[str, dict[str, int]] = {}
        #: The most sessions that were open at once (GmailIMAPServer).
        self.most_at_once = 0

    def deliver(self, raw: bytes, labels: Iterable[str] = ("INBOX",), **kw: Any) -> str:
        """One message under ``labels`` (and in All Mail, as Gmail does);
        :return: its X-GM-MSGID."""
        msgid = str(self._next_msgid)
        self._next_msgid += 1
        where = self.copies.setdefault(msgid, {})
        for label in dict.fromkeys([*labels, ALL_MAIL]):
            where[label] = self.append(raw, folder=label, gm_msgid=msgid, **kw)
        return msgid

    def label(self, msgid: str, label: str) -> int:
        """Put a delivered message under one more label (a new UID there)."""
        folder, uid = next(iter(self.copies[msgid].items()))
        message = self.folders[folder].messages[uid]
        new = self.append(message.raw, folder=label, internaldate=message.internaldate,
                          gm_msgid=msgid)
        self.copies[msgid][label] = new
        return new


class GmailIMAPServer(ScriptedIMAPServer):
    """The scripted server over a :class:`GmailMailbox`; keeps the most
    connections that were open at once (Gmail refuses past 15)."""

    mailbox: GmailMailbox

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self.mailbox.most_at_once = max(self.mailbox.most_at_once, len(self.mailbox.sessions))
