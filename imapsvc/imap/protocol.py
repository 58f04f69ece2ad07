"""The IMAP client protocol the folder engine drives.

:class:`FolderIMAPClient` subclasses :class:`twisted.mail.imap4.IMAP4Client`
but replaces its response reader and command machinery, because the
inherited ones have defects that lose data or hang: results keyed by
sequence number, bodies decoded as text, 16 KiB line limit, a literal at
the end of a line eats the line end, an empty line raises, no client IDLE,
XOAUTH2 wrapped at 76 columns, ``login()`` falling back to cleartext, no
per-command deadline.

Only the methods documented here are supported; the inherited command
methods (``select``, ``fetchSpecific``, ...) are disabled.

The class is assembled from modules of one concern each:
:mod:`~imapsvc.imap.connection` (state, command queue, deadlines, byte
budget, writing), :mod:`~imapsvc.imap.reader` (lines, literals and the
dispatch of responses), :mod:`~imapsvc.imap.auth_commands` (STARTTLS,
login, ID, ENABLE), :mod:`~imapsvc.imap.mailbox_commands` (LIST,
EXAMINE/SELECT, SEARCH, write-back), :mod:`~imapsvc.imap.status` (STATUS,
UNSELECT: the Gmail budget's shared poller), :mod:`~imapsvc.imap.fetch_commands`
(UID FETCH); IDLE is here.

Rules every method follows:

- commands go out one at a time, in submission order; a command submitted
  while another (e.g. IDLE) is outstanding goes out after its tagged answer;
- a command that gets NO/BAD, no answer within ``command_timeout`` seconds
  of silence, or a response we cannot parse, fails its Deferred and drops the
  connection (the folder engine reconnects); the other queued commands
  fail with :class:`~imapsvc.imap.errors.ConnectionGone`;
- secrets (passwords, tokens) are never logged nor put in exceptions.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from zope.interface import implementer

from imapsvc.imap.auth_commands import AuthCommands
from imapsvc.imap.condstore_commands import CondstoreCommands
from imapsvc.imap.connection import Caps, Command, IMAPConnection
from imapsvc.imap.fetch_commands import FetchCommands
from imapsvc.imap.reader import MAX_STATUS_LINES
from imapsvc.imap.status import StatusCommands
from imapsvc.interfaces import IIMAPSession

__all__ = ["Caps", "FolderIMAPClient", "MAX_STATUS_LINES"]


@implementer(IIMAPSession)
class FolderIMAPClient(AuthCommands, CondstoreCommands, StatusCommands, FetchCommands):
    """IMAP client for one folder connection: the
    :class:`~imapsvc.interfaces.IIMAPSession` of the folder engine.

    Its parameters (clock, deadlines, watchdog, caps, byte budget) and its
    state (``greeted``, ``capabilities``, ``on_bye``, ``idling``,
    ``last_exists``) are :class:`~imapsvc.imap.connection.IMAPConnection`'s;
    the commands come from the mixins above.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        IMAPConnection.__init__(self, *args, **kwargs)  # its parameters, as they are
        # The state of ending IDLE lives here only; the folder reads it
        # through :attr:`idle_ending` and :attr:`idle_done_sent`.
        self._idle_cmd: Optional[Command] = None
        self._idle_done_requested = False
        self._idle_done_sent = False

    def _take_all_commands(self) -> list[Command]:
        self._idle_cmd = None
        return IMAPConnection._take_all_commands(self)

    # -- IDLE (RFC 2177) ----------------------------------------------------

    @property
    def idle_done_sent(self) -> bool:
        """``DONE`` has been written for the current IDLE and its tagged
        answer has not arrived yet."""
        return self._idle_cmd is not None and self._idle_done_sent

    @property
    def idle_ending(self) -> bool:
        """:meth:`done` was called for the current IDLE and the server has
        not ended it yet (``DONE`` written, or waiting for the ``+``)."""
        return self._idle_cmd is not None and (
            self._idle_done_sent or self._idle_done_requested
        )

    def idle(self, on_exists: Callable[[int], Any]) -> defer.Deferred[None]:
        """``IDLE`` (RFC 2177): ``on_exists(n)`` for every ``* n EXISTS``;
        fires when the server ends the command (after :meth:`done`)."""
        cmd = Command(b"IDLE", [b"IDLE"], kind="idle")
        cmd.on_exists = on_exists
        cmd.on_continuation = self._idle_started

        def finished(cmd: Command, code: Optional[str]) -> None:
            if self._idle_cmd is cmd:
                self._idle_cmd = None
            self.idling = False
            return None

        cmd.on_ok = finished
        self._idle_cmd = cmd
        self._idle_done_requested = False
        self._idle_done_sent = False
        return self._submit(cmd)

    def _idle_started(self, cmd: Command, text: bytes) -> None:
        if cmd.continuations > 1:
            return
        self.idling = True
        # While idling the server is silent by design: no command deadline,
        # the inactivity watchdog alone watches the connection.
        self._disarm(cmd)
        if self._idle_done_requested:
            self._send_done(cmd)

    def done(self) -> None:
        """End IDLE: sends ``DONE`` once (deferred until the server's ``+``
        when that has not arrived yet)."""
        cmd = self._idle_cmd
        if cmd is None or self._idle_done_sent or self._closed:
            return
        if self.idling:
            self._send_done(cmd)
        else:
            self._idle_done_requested = True

    def _send_done(self, cmd: Command) -> None:
        self._idle_done_sent = True
        self.idling = False
        self._write(b"DONE\r\n")
        self._arm(cmd)
