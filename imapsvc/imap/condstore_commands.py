"""``ENABLE QRESYNC`` and EXAMINE/SELECT with mod-sequence parameters
(RFC 7162) for :class:`~imapsvc.imap.protocol.FolderIMAPClient`; the rules
and parsers are in :mod:`imapsvc.imap.condstore`."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer

from imapsvc.imap import condstore as C
from imapsvc.imap.connection import Command
from imapsvc.imap.mailbox_commands import MailboxCommands


class CondstoreCommands(MailboxCommands):
    """The mailbox commands plus mod-sequences."""

    #: Set by :meth:`enable_condstore`: ``QRESYNC``, ``CONDSTORE`` or ``None``.
    modseq_mode: Optional[str] = None

    def enable_condstore(self, qresync: bool = True) -> defer.Deferred[Optional[str]]:
        """After login: the mode to use, ``ENABLE QRESYNC`` first when
        ``qresync`` and offered. CONDSTORE needs no command: opening a folder
        with ``(CONDSTORE)`` enables it (RFC 7162 3.1). Fires with the mode
        now in effect (``None`` when neither is offered or the server
        refused ENABLE); a ``NO``/``BAD`` answer does not drop the connection."""
        mode = C.offered_mode(self.capabilities, qresync)
        if mode != C.MODE_QRESYNC:
            self.modseq_mode = mode
            return defer.succeed(mode)
        cmd = Command(b"ENABLE", [C.enable_line(mode)], kind="advisory")

        def done(cmd: Command, code: Optional[str]) -> Optional[str]:
            self.modseq_mode = C.enabled_mode(mode, cmd.untagged)
            return self.modseq_mode

        cmd.on_ok = done
        # Refused (an advisory command): fires with None, no mode in effect.
        return self._submit(cmd)

    def examine_modseq(self, name: str, known: Optional[C.KnownState] = None,
                       select: bool = False) -> defer.Deferred[dict[str, Any]]:
        """EXAMINE (or SELECT) ``name`` with the mod-sequence parameters of
        the enabled mode; with a mode, the answer dict gains ``modseq`` (an
        :class:`~imapsvc.imap.condstore.OpenState`)."""
        verb = b"SELECT" if select else b"EXAMINE"
        return self._open_folder(verb, name, C.open_parameters(self.modseq_mode, known))
