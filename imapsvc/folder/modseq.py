"""CONDSTORE/QRESYNC in a folder's sync pass (RFC 7162): what the pass asks
of :mod:`imapsvc.imap.condstore` and the store.

``IMAP_MODSEQ=condstore`` (the default) opens the folder with ``EXAMINE name
(CONDSTORE)``: no command more than before. ``qresync`` sends ``ENABLE
QRESYNC`` once per connection and opens with the stored HIGHESTMODSEQ
(``EXAMINE name (QRESYNC (uidvalidity modseq))``), which costs that ENABLE
and gives data imapsvc does not use yet (VANISHED, changed flags). At every
pass, when the server's HIGHESTMODSEQ is the stored one and UIDNEXT is not
beyond the cursor, the pass skips its ``UID SEARCH``: the EXAMINE alone
resyncs a folder that has nothing new. Once the pass has committed, the
HIGHESTMODSEQ it saw is stored (``imap_folder_modseq``, schema/0010).

Never skipped: a new or reset cursor, a backfill, another UIDVALIDITY,
NOMODSEQ, a HIGHESTMODSEQ that is not a mod-sequence, a server without
UIDNEXT, or a session without CONDSTORE. The ledger still decides what is
new, so a wrong shortcut could only delay mail until the next change, never
duplicate it; and the shortcut needs UIDNEXT to say nothing is new anyway.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from imapsvc.core.cursor import REASON_RESUME
from imapsvc.core.known_store import KnownStore
from imapsvc.imap import condstore as C
from imapsvc.session_interfaces import IIMAPSession


class ModseqShortcut:
    """The mod-sequence state of one watched folder's passes.

    :ivar skipped: passes that skipped their UID SEARCH.
    :ivar vanished: UIDs reported expunged by ``VANISHED (EARLIER)``.
    :ivar mode: the mode of the current session (``QRESYNC``, ``CONDSTORE``
        or ``None``).
    """

    log = Logger()

    def __init__(self, store: Any, tenant: str, provider_id: str, owner: str,
                 label: str) -> None:
        self.store = store
        self.tenant = tenant
        self.provider_id = provider_id
        self.owner = owner
        self.label = label
        self.skipped = 0
        self.vanished = 0
        self.mode: Optional[str] = None
        self._known: Optional[C.KnownState] = None
        self._state: Optional[C.OpenState] = None
        #: Per folder name, what the store holds as far as this folder knows
        #: (read at an open, or written by it; ``None``: nothing stored).
        self._stored: KnownStore[Optional[C.KnownState]] = KnownStore()

    def session_lost(self) -> None:
        """The session dropped: the next open of each folder uses what this
        folder knows the store holds, as the cursor does."""
        self._stored.session_lost()

    def reload(self) -> None:
        """The next open reads the store (an operator's reconnect)."""
        self._stored.reload()

    @defer.inlineCallbacks
    def enable(self, proto: IIMAPSession, setting: str = "condstore"):  # type: ignore[no-untyped-def]
        """After login (and after ENABLE UTF8=ACCEPT): the mode of
        ``IMAP_MODSEQ`` when the server offers it."""
        self.mode = None
        if setting == "off":
            return None
        self.mode = yield proto.enable_condstore(qresync=setting == "qresync")
        if self.mode is not None:
            self.log.info("{label}: {mode} enabled", label=self.label, mode=self.mode)
        return self.mode

    @defer.inlineCallbacks
    def open(self, proto: IIMAPSession, name: str, select: bool):  # type: ignore[no-untyped-def]
        """EXAMINE (or SELECT) ``name``, with mod-sequence parameters when a
        mode is enabled: the answer dict of the session."""
        self._known = None
        self._state = None
        if self.mode is None or proto.modseq_mode is None:
            info = yield (proto.select_folder(name) if select else proto.examine_folder(name))
            return info
        if self._stored.take_trusted(name):
            self._known = self._stored.value(name)
        else:
            stored = yield self.store.read_modseq(self.tenant, self.provider_id, name)
            if stored is not None:
                self._known = C.KnownState(str(stored[0]), int(stored[1]))
            self._stored.remember(name, self._known)
        info = yield proto.examine_modseq(name, self._known, select=select)
        state = info.get("modseq")
        self._state = state if isinstance(state, C.OpenState) else None
        if self._state is not None:
            self.vanished += self._state.vanished
        if self._state is not None and self._state.invalid is not None:
            self.log.warn("{label}: HIGHESTMODSEQ {value!r} is not a mod-sequence: ignored",
                          label=self.label, value=self._state.invalid)
        return info

    def skip_search(self, info: dict, start: Any) -> bool:
        """Whether this pass may leave out its UID SEARCH (see the module)."""
        if self._state is None or start.reason != REASON_RESUME or start.since is not None:
            return False
        if not start.search_range:
            return False
        skip = C.nothing_new(self._known, self._state, info.get("uidvalidity"),
                             info.get("uidnext"), int(start.last_uid))
        if skip:
            self.skipped += 1
        return skip

    @defer.inlineCallbacks
    def committed(self, name: str, info: dict):  # type: ignore[no-untyped-def]
        """The pass is committed: store the HIGHESTMODSEQ it saw (``None``
        after NOMODSEQ forgets a stored one). Nothing is written when it did
        not change."""
        if self._state is None:
            return
        validity = str(info.get("uidvalidity"))
        value = self._state.highest_modseq
        known = self._known
        if value is None and known is None:
            return
        if known is not None and known.uid_validity == validity and known.modseq == value:
            return
        # Unsure of what the store holds until the save is confirmed.
        self._stored.forget(name)
        yield self.store.save_modseq(self.tenant, self.provider_id, name, validity, value,
                                     self.owner)
        self._known = None if value is None else C.KnownState(validity, value)
        self._stored.remember(name, self._known)
