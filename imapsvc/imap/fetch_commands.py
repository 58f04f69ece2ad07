"""UID FETCH in the three shapes the sync pass asks for: metadata (size,
date, BODYSTRUCTURE, header bytes), body sections, and whole messages.

Results are keyed by UID (Twisted keys them by sequence number) and bodies
stay exact bytes (Twisted decodes them as text).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

from twisted.internet import defer

from imapsvc.core.gmail import GMAIL_CAPABILITY, parse_msgid
from imapsvc.imap import responses
from imapsvc.imap.connection import Command
from imapsvc.imap.reader import ResponseReader
from imapsvc.imap.responses import as_text

#: Fetch results by UID: each message's FETCH items.
ByUid = dict[int, dict[str, Any]]
#: One group of section requests: ``((section, length or None), ...)``.
SectionKey = tuple[tuple[str, Optional[int]], ...]


class FetchCommands(ResponseReader):
    """UID FETCH for :class:`~imapsvc.imap.protocol.FolderIMAPClient`."""

    def _uid_fetch(self, uids: Sequence[int], items: bytes) -> defer.Deferred[ByUid]:
        cmd = Command(
            b"UID FETCH", [b"UID FETCH " + responses.uid_set(uids) + b" " + items], "fetch"
        )
        wanted = {int(uid) for uid in uids}

        def done(cmd: Command, code: Optional[str]) -> ByUid:
            by_uid: ByUid = {}
            for pairs in cmd.fetches.values():
                try:
                    uid = int(pairs["UID"])
                except (KeyError, TypeError, ValueError):
                    continue  # an unsolicited FETCH (flags) without UID
                if uid in wanted:
                    by_uid.setdefault(uid, {}).update(pairs)
            return by_uid

        cmd.on_ok = done
        return self._submit(cmd)

    def fetch_meta(self, uids: Sequence[int]) -> defer.Deferred[ByUid]:
        """Size, INTERNALDATE, BODYSTRUCTURE and exact header bytes, keyed by
        UID: ``{uid: {"size", "internaldate", "bodystructure", "header"}}``,
        plus ``"gm_msgid"`` when the server offers X-GM-EXT-1.
        ``bodystructure`` is a nested list of ``str``/``None`` or ``None``."""
        # Gmail: X-GM-MSGID, the message's identity across labels (core.gmail).
        gmail = GMAIL_CAPABILITY.encode("ascii") in (self.capabilities or {})
        d = self._uid_fetch(
            uids,
            b"(UID RFC822.SIZE INTERNALDATE BODYSTRUCTURE "
            + (b"X-GM-MSGID " if gmail else b"")
            + b"BODY.PEEK[HEADER])",
        )

        def shape(by_uid: ByUid) -> ByUid:
            out: ByUid = {}
            for uid, pairs in by_uid.items():
                sections = _sections(pairs)
                size = pairs.get("RFC822.SIZE")
                date = pairs.get("INTERNALDATE")
                structure = pairs.get("BODYSTRUCTURE")
                out[uid] = {
                    "size": _size(size),
                    "internaldate": as_text(date) if isinstance(date, (bytes, str)) else None,
                    "bodystructure": responses.to_text_tree(structure)
                    if isinstance(structure, list)
                    else None,
                    "header": sections.get(("HEADER", None), b""),
                }
                if gmail:
                    out[uid]["gm_msgid"] = parse_msgid(pairs.get("X-GM-MSGID"))
            return out

        d.addCallback(shape)
        return d

    def fetch_sections(
        self, requests: Mapping[int, Iterable[tuple[str, Optional[int]]]]
    ) -> defer.Deferred[dict[int, dict[str, bytes]]]:
        """``BODY.PEEK[section]`` (``<0.N>`` when a length is given) for each
        UID -> ``{uid: {section: exact bytes}}``. UIDs that ask for the same
        sections share one command."""
        groups: dict[SectionKey, list[int]] = {}
        for uid, wanted in requests.items():
            key = tuple((str(section), length) for section, length in wanted)
            if key:
                groups.setdefault(key, []).append(int(uid))
        results: dict[int, dict[str, bytes]] = {}
        d: defer.Deferred[None] = defer.succeed(None)
        for key, uids in groups.items():
            d.addCallback(self._next_group, key, uids, results)
        return d.addCallback(lambda _: results)

    def _next_group(
        self,
        _ignored: object,
        key: SectionKey,
        uids: list[int],
        results: dict[int, dict[str, bytes]],
    ) -> defer.Deferred[None]:
        return self._fetch_group(key, uids, results)

    def _fetch_group(
        self, key: SectionKey, uids: list[int], results: dict[int, dict[str, bytes]]
    ) -> defer.Deferred[None]:
        items = [b"UID"]
        for section, length in key:
            item = b"BODY.PEEK[" + section.encode("ascii") + b"]"
            if length is not None:
                item += b"<0.%d>" % int(length)
            items.append(item)
        d = self._uid_fetch(uids, b"(" + b" ".join(items) + b")")

        def collect(by_uid: ByUid) -> None:
            for uid, pairs in by_uid.items():
                sections = _sections(pairs)
                got = results.setdefault(uid, {})
                for section, length in key:
                    origin = None if length is None else 0
                    value = sections.get((section.upper(), origin))
                    if value is None and origin is not None:
                        # Some servers omit <0> when the part is shorter.
                        value = sections.get((section.upper(), None))
                    if value is not None:
                        got[section] = value

        return d.addCallback(collect)

    def fetch_full(self, uids: Sequence[int]) -> defer.Deferred[dict[int, bytes]]:
        """``BODY.PEEK[]`` -> ``{uid: exact message bytes}``."""

        def shape(by_uid: ByUid) -> dict[int, bytes]:
            out: dict[int, bytes] = {}
            for uid, pairs in by_uid.items():
                body = _sections(pairs).get(("", None))
                if body is not None:
                    out[uid] = body
            return out

        return self._uid_fetch(uids, b"(UID BODY.PEEK[])").addCallback(shape)


def _size(value: Any) -> int:
    """RFC822.SIZE as an int; 0 when it is not a number."""
    if not isinstance(value, str):
        return 0
    try:
        return responses.number(value.encode("latin-1"))
    except (responses.ResponseParseError, UnicodeEncodeError):
        return 0


def _sections(pairs: dict[str, Any]) -> dict[tuple[str, Optional[int]], bytes]:
    out: dict[tuple[str, Optional[int]], bytes] = {}
    for key, value in pairs.items():
        try:
            section = responses.body_section_key(key)
        except ValueError:
            continue  # e.g. an origin <n> of thousands of digits
        if section is not None:
            out[section] = responses.as_bytes(value) if not isinstance(value, list) else b""
    return out
