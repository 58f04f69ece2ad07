"""Commands on mailboxes: LIST, EXAMINE/SELECT, UID SEARCH, and the
write-back commands (UID STORE/MOVE/COPY/EXPUNGE, issue 13 item 3).

Mailbox names are passed and returned in modified UTF-7 (the spelling the
folder cursors are stored under) and sent in UTF-8 once ``ENABLE
UTF8=ACCEPT`` is in force (RFC 6855 section 3).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.internet import defer

from imapsvc.core.cursor import is_imap_date
from imapsvc.core.folders import decode_mutf7, encode_mutf7
from imapsvc.imap import condstore, responses
from imapsvc.imap.connection import Command
from imapsvc.imap.errors import ProtocolViolation
from imapsvc.imap.reader import ResponseReader
from imapsvc.imap.responses import as_text

#: One LIST entry: ``(flags, delimiter, name)``.
FolderEntry = tuple[tuple[str, ...], Optional[str], str]


class MailboxCommands(ResponseReader):
    """LIST, EXAMINE/SELECT, UID SEARCH and write-back for
    :class:`~imapsvc.imap.protocol.FolderIMAPClient`."""

    def list_folders(self, pattern: str = "*") -> defer.Deferred[list[FolderEntry]]:
        """``LIST "" pattern`` -> ``[(flags, delimiter, name)]``, names as the
        server spells them (modified UTF-7). ``pattern`` is a mailbox name
        (modified UTF-7) whose ``*`` and ``%`` match as LIST wildcards: a
        folder's own name lists that folder, not the account's hundreds."""
        if pattern == "*":
            cmd = Command(b"LIST", [b'LIST "" "*"'])
        else:
            cmd = Command(b"LIST", self._arguments(b'LIST ""', [self._wire_name(pattern)]))

        def done(cmd: Command, code: Optional[str]) -> list[FolderEntry]:
            out: list[FolderEntry] = []
            for keyword, tokens in cmd.untagged:
                if keyword != "LIST" or len(tokens) < 3:
                    continue
                flags, delimiter, name = tokens[0], tokens[1], tokens[2]
                out.append(
                    (
                        tuple(str(flag) for flag in (flags or ()) if isinstance(flag, str)),
                        None if delimiter is None else as_text(delimiter),
                        # UTF8=ACCEPT: back to the modified UTF-7 spelling.
                        encode_mutf7(as_text(name)) if self.utf8_accept else as_text(name),
                    )
                )
            return out

        cmd.on_ok = done
        return self._submit(cmd)

    def examine_folder(self, name: str) -> defer.Deferred[dict[str, Any]]:
        """``EXAMINE name`` (read-only) -> ``{"uidvalidity", "uidnext",
        "exists", "read_only"}``; ``uidnext`` is ``None`` when the server
        gives none."""
        return self._open_folder(b"EXAMINE", name)

    # -- write-back (issue 13 item 3; only after the batch is committed) -----

    def select_folder(self, name: str) -> defer.Deferred[dict[str, Any]]:
        """``SELECT name`` (read-write, for write-back) -> the same dict as
        :meth:`examine_folder`; ``read_only`` is true unless the server
        answered ``[READ-WRITE]``."""
        return self._open_folder(b"SELECT", name)

    def _open_folder(self, verb: bytes, name: str,
                     parameters: bytes = b"") -> defer.Deferred[dict[str, Any]]:
        """EXAMINE or SELECT ``name``: the answer's UIDVALIDITY, UIDNEXT and
        EXISTS, whether the server granted write access, and with
        ``parameters`` (RFC 7162, :mod:`imapsvc.imap.condstore`) its
        mod-sequence state as ``modseq``."""
        chunks = self._arguments(verb, [self._wire_name(name)])
        if parameters:
            chunks[-1] += parameters
        cmd = Command(verb, chunks)
        what = verb.decode("ascii")

        def done(cmd: Command, code: Optional[str]) -> dict[str, Any]:
            found: dict[str, Optional[int]] = {"uidvalidity": None, "uidnext": None}
            for _kind, resp_code, args, _text in cmd.codes:
                key = (resp_code or "").lower()
                if key in found:
                    try:
                        found[key] = int(args.split()[0])
                    except (ValueError, IndexError):
                        raise ProtocolViolation(f"bad {resp_code} in {what} answer") from None
            if found["uidvalidity"] is None:
                raise ProtocolViolation(f"{what} answer without UIDVALIDITY")
            self.state = "selected"
            answer: dict[str, Any] = {
                "uidvalidity": found["uidvalidity"],
                "uidnext": found["uidnext"],
                "exists": cmd.exists or 0,
                "read_only": code != "READ-WRITE",
            }
            if parameters:
                answer["modseq"] = condstore.open_state(cmd.codes, cmd.untagged)
            return answer

        cmd.on_ok = done
        return self._submit(cmd)

    def uid_store_flags(
        self, uids: Sequence[int], flags: Sequence[str]
    ) -> defer.Deferred[None]:
        """``UID STORE uids +FLAGS.SILENT (flags)``; fires with ``None``. A
        ``NO`` fails the Deferred with CommandFailed and keeps the session."""
        for flag in flags:
            if not flag or any(c in flag for c in ' ()"{\r\n') or not flag.isascii():
                return defer.fail(ValueError(f"unusable flag {flag!r}"))
        line = (
            b"UID STORE " + responses.uid_set(uids) + b" +FLAGS.SILENT ("
            + " ".join(flags).encode("ascii") + b")"
        )
        return self._submit(Command(b"UID STORE", [line], "soft"))

    def uid_move(self, uids: Sequence[int], folder: str) -> defer.Deferred[None]:
        """``UID MOVE uids folder`` (RFC 6851); fires with ``None``."""
        prefix = b"UID MOVE " + responses.uid_set(uids)
        chunks = self._arguments(prefix, [self._wire_name(folder)])
        return self._submit(Command(b"UID MOVE", chunks, "soft"))

    def uid_copy(self, uids: Sequence[int], folder: str) -> defer.Deferred[None]:
        """``UID COPY uids folder``; fires with ``None``."""
        prefix = b"UID COPY " + responses.uid_set(uids)
        chunks = self._arguments(prefix, [self._wire_name(folder)])
        return self._submit(Command(b"UID COPY", chunks, "soft"))

    def uid_expunge(self, uids: Sequence[int]) -> defer.Deferred[None]:
        """``UID EXPUNGE uids`` (RFC 4315, UIDPLUS): removes only these
        UIDs' ``\\Deleted`` messages; fires with ``None``."""
        line = b"UID EXPUNGE " + responses.uid_set(uids)
        return self._submit(Command(b"UID EXPUNGE", [line], "soft"))

    def _wire_name(self, name: str) -> bytes:
        """A mailbox name (modified UTF-7) as this session sends it: in
        UTF-8 once UTF8=ACCEPT is enabled (RFC 6855 section 3)."""
        if self.utf8_accept:
            try:
                name = decode_mutf7(name)
            except ValueError:
                pass
        return name.encode("utf-8")

    def uid_search_from(self, first_uid: int) -> defer.Deferred[responses.UidArray]:
        """``UID SEARCH UID first:*`` -> sorted UIDs ``>= first_uid`` (the
        range always matches the highest UID, even below ``first_uid``), as
        a :class:`~imapsvc.imap.responses.UidArray` (8 bytes per UID; it
        compares, slices and iterates like a list of ints)."""
        first_uid = max(1, int(first_uid))
        cmd = Command(b"UID SEARCH", [b"UID SEARCH UID %d:*" % first_uid])

        def done(cmd: Command, code: Optional[str]) -> responses.UidArray:
            # Numbers stay in an array('Q') (8 bytes each): a SEARCH of a
            # million UIDs must not become a million Python ints and a set.
            found = [numbers for keyword, numbers in cmd.untagged if keyword == "SEARCH"]
            if len(found) == 1:
                return responses.sorted_unique_from(found[0], first_uid)
            joined = responses.UidArray()
            for numbers in found:
                joined.extend(numbers)
            return responses.sorted_unique_from(joined, first_uid)

        cmd.on_ok = done
        return self._submit(cmd)

    def uid_search_since(self, since: str) -> defer.Deferred[list[int]]:
        """``UID SEARCH SINCE <date>`` -> sorted UIDs whose INTERNALDATE is on
        or after ``since`` (RFC 3501 ``date``, ``1-Jan-2026``; the server
        disregards time and zone). For a first sync by date and a backfill."""
        text = str(since)
        if not is_imap_date(text):
            # Only a plain atom may reach the command line.
            return defer.fail(ValueError(f"not an RFC 3501 date: {text[:40]!r}"))
        cmd = Command(b"UID SEARCH", [b"UID SEARCH SINCE " + text.encode("ascii")])

        def done(cmd: Command, code: Optional[str]) -> list[int]:
            uids: set[int] = set()
            for keyword, numbers in cmd.untagged:
                if keyword == "SEARCH":
                    uids.update(numbers)
            return sorted(uids)

        cmd.on_ok = done
        return self._submit(cmd)
