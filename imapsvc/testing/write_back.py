"""The fake session's write-back commands (SELECT's companions: UID STORE,
UID MOVE, UID COPY, UID EXPUNGE), answered as the real client shapes them
(``tests/session_contract.py`` checks both)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet import defer

from imapsvc.imap.errors import CommandFailed
from imapsvc.testing.mailbox import FakeFolder


class FakeWriteBack:
    """Mixed into :class:`~imapsvc.testing.session.FakeIMAPSession`."""

    mailbox: Any
    capabilities: Any
    read_write: bool

    def _run(self, name: str, answer: Callable[[], Any], soft: bool = False) -> defer.Deferred:
        raise NotImplementedError

    def _folder(self) -> FakeFolder:
        raise NotImplementedError

    def _writable(self, command: str) -> FakeFolder:
        folder = self._folder()
        if not self.read_write:
            raise CommandFailed(None, f"{command} NO: Mailbox is read-only.")
        failure = self.mailbox.write_failure(command)
        if failure is not None:
            code, text = failure
            raise CommandFailed(code, f"{command} NO: {text}")
        return folder

    def uid_store_flags(self, uids: Iterable[int], flags: Iterable[str]) -> defer.Deferred:
        wanted, names = [int(u) for u in uids], list(flags)

        def store() -> None:
            if not self.read_write:
                self._folder()
                return  # as Dovecot: OK, and an EXAMINEd folder's flags stay
            folder = self._writable("UID STORE")
            self.mailbox.store_flags(folder.name, wanted, names)

        return self._run("UID STORE", store, soft=True)

    def _copy_to(self, command: str, uids: Iterable[int], target: str, move: bool) -> Any:
        wanted = [int(u) for u in uids]

        def run() -> None:
            folder = self._writable(command)
            if target not in self.mailbox.folders:
                raise CommandFailed("TRYCREATE", f"{command} NO: Mailbox doesn't exist: {target}")
            if move:
                self.mailbox.move(folder.name, wanted, target)
            else:
                self.mailbox.copy(folder.name, wanted, target)

        return self._run(command, run, soft=True)

    def uid_move(self, uids: Iterable[int], folder: str) -> defer.Deferred:
        if b"MOVE" not in (self.capabilities or {}):
            return self._run("UID MOVE", _refuse("UID MOVE BAD: Unknown command"), soft=True)
        return self._copy_to("UID MOVE", uids, folder, move=True)

    def uid_copy(self, uids: Iterable[int], folder: str) -> defer.Deferred:
        return self._copy_to("UID COPY", uids, folder, move=False)

    def uid_expunge(self, uids: Iterable[int]) -> defer.Deferred:
        wanted = [int(u) for u in uids]
        if b"UIDPLUS" not in (self.capabilities or {}):
            return self._run("UID EXPUNGE", _refuse("UID EXPUNGE BAD: Unknown command"), soft=True)

        def expunge() -> None:
            folder = self._writable("UID EXPUNGE")
            self.mailbox.expunge(folder.name, wanted)

        return self._run("UID EXPUNGE", expunge, soft=True)



def _refuse(text: str) -> Callable[[], Any]:
    def answer() -> Any:
        raise CommandFailed(None, text)

    return answer
