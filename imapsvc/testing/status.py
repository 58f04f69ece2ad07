"""The fake session's ``STATUS`` and ``UNSELECT`` (the Gmail budget's shared
poller), answered as the real client shapes them (``tests/session_contract.py``
checks both)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer

from imapsvc.imap.errors import CommandFailed


class FakeStatus:
    """Mixed into :class:`~imapsvc.testing.session.FakeIMAPSession`."""

    mailbox: Any
    selected: Optional[str]

    def _run(self, name: str, answer: Callable[[], Any], soft: bool = False) -> defer.Deferred:
        raise NotImplementedError

    def unselect(self) -> defer.Deferred:
        if "UNSELECT" not in self.mailbox.capability_words:
            return defer.succeed(False)

        def unselect() -> bool:
            self.selected = None
            return True

        return self._run("UNSELECT", unselect, soft=True)

    def status_folder(self, name: str) -> defer.Deferred:
        def status() -> dict:
            folder = self.mailbox.folders.get(name)
            if folder is None:
                raise CommandFailed("NONEXISTENT", f"STATUS NO: Mailbox doesn't exist: {name}")
            self.mailbox.status_calls.append(name)
            return {
                "uidnext": folder.uidnext,
                "uidvalidity": folder.uidvalidity,
                "messages": len(folder.messages),
            }

        return self._run("STATUS", status, soft=True)
