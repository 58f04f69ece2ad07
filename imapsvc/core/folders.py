"""Folder names: modified UTF-7 (RFC 3501 section 5.1.3) and resolving the
configured ``folder_filters`` against a server's LIST result.

Pure code: no I/O.
"""

from __future__ import annotations

import base64
from typing import Iterable, Optional, Sequence

import attr

#: LIST flags that make a name unusable for EXAMINE.
UNSELECTABLE = frozenset({"\\noselect", "\\nonexistent"})


def _is_direct(ch: str) -> bool:
    return 0x20 <= ord(ch) <= 0x7E


def _flush_shifted(buf: list[str], out: list[str]) -> None:
    if not buf:
        return
    raw = "".join(buf).encode("utf-16-be")
    encoded = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
    out.append("&" + encoded + "-")
    buf.clear()


def encode_mutf7(name: str) -> str:
    """Encode a Unicode folder name in modified UTF-7."""
    out: list[str] = []
    shifted: list[str] = []
    for ch in name:
        if _is_direct(ch):
            _flush_shifted(shifted, out)
            out.append("&-" if ch == "&" else ch)
        else:
            shifted.append(ch)
    _flush_shifted(shifted, out)
    return "".join(out)


def decode_mutf7(name: str) -> str:
    """Decode a modified UTF-7 folder name.

    :raises ValueError: when ``name`` is not valid modified UTF-7 (an
        unterminated or malformed shift sequence, or a non-ASCII character).
    """
    out: list[str] = []
    i = 0
    n = len(name)
    while i < n:
        ch = name[i]
        if not _is_direct(ch):
            raise ValueError("not modified UTF-7: character outside printable ASCII")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError("not modified UTF-7: unterminated shift sequence")
        chunk = name[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if any(c not in _B64_ALPHABET for c in chunk):
            raise ValueError("not modified UTF-7: bad base64 in shift sequence")
        b64 = chunk.replace(",", "/")
        b64 += "=" * (-len(b64) % 4)
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError as e:
            raise ValueError("not modified UTF-7: bad base64 in shift sequence") from e
        if len(raw) % 2:
            raise ValueError("not modified UTF-7: odd UTF-16 length")
        try:
            out.append(raw.decode("utf-16-be"))
        except UnicodeDecodeError as e:
            raise ValueError("not modified UTF-7: bad UTF-16") from e
    return "".join(out)


_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def display_name(server_name: str) -> str:
    """The human form of a server's folder name (the raw name if it does not
    decode)."""
    try:
        return decode_mutf7(server_name)
    except ValueError:
        return server_name


@attr.s(frozen=True, auto_attribs=True)
class ListEntry:
    """One LIST response line."""

    flags: tuple[str, ...]
    delimiter: Optional[str]
    name: str  # as the server spells it (modified UTF-7)

    @property
    def selectable(self) -> bool:
        return not any(f.lower() in UNSELECTABLE for f in self.flags)

    @property
    def special_use(self) -> Optional[str]:
        """The folder's SPECIAL-USE (RFC 6154) or XLIST attribute that
        :data:`WILDCARD` leaves out (lower case), or ``None``."""
        return skipped_special_use(self.flags)


@attr.s(frozen=True, auto_attribs=True)
class Resolution:
    """What :func:`resolve_folders` found.

    :ivar matched: ``(filter, server_name)`` pairs in filter order, no
        server name twice.
    :ivar missing: ``(filter, reason)`` pairs for filters that match no
        selectable folder.
    """

    matched: tuple[tuple[str, str], ...]
    missing: tuple[tuple[str, str], ...]


def _candidates(flt: str) -> list[str]:
    """The forms a filter may be written in: as typed (Unicode or already
    modified UTF-7), and its decoded form."""
    forms = [flt]
    try:
        decoded = decode_mutf7(flt)
    except ValueError:
        decoded = None
    if decoded is not None and decoded != flt:
        forms.append(decoded)
    return forms


def _norm_inbox(name: str, delimiter: Optional[str]) -> str:
    # INBOX is case-insensitive (RFC 3501 5.1), also as a hierarchy prefix.
    if name.upper() == "INBOX":
        return "INBOX"
    if delimiter and name.upper().startswith("INBOX" + delimiter):
        return "INBOX" + name[5:]
    return name


_Forms = tuple[frozenset[str], frozenset[str]]


def _forms_for(
    base: Sequence[str], delimiter: Optional[str], cache: dict[Optional[str], _Forms]
) -> _Forms:
    """A filter's forms for one hierarchy delimiter (``/`` written as it),
    normalised as :func:`resolve_folders` compares them, exact and casefolded;
    cached per delimiter."""
    cached = cache.get(delimiter)
    if cached is None:
        forms = list(base)
        if delimiter and delimiter != "/":
            forms += [f.replace("/", delimiter) for f in base if "/" in f]
        forms += [_norm_inbox(f, "/") for f in forms]
        exact = frozenset(_norm_inbox(f, delimiter) for f in forms)
        cached = (exact, frozenset(f.casefold() for f in exact))
        cache[delimiter] = cached
    return cached


def resolve_folders(
    filters: Sequence[str], listing: Iterable[tuple[Sequence[str], Optional[str], str]]
) -> Resolution:
    """Match configured folder paths against a LIST result.

    An empty ``filters`` means ``INBOX``. Matching prefers an exact match of
    the decoded name, then a case-insensitive one (the server's spelling is
    returned either way); ``/`` in a filter also matches the server's
    hierarchy delimiter. ``\\Noselect``/``\\NonExistent`` folders never match.
    """
    entries = [ListEntry(tuple(f), d, n) for f, d, n in listing]
    wanted = list(filters) or ["INBOX"]
    matched: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    used: set[str] = set()
    # The names each entry may be matched by, computed once (not per filter).
    keyed = []
    for entry in entries:
        keys = (
            _norm_inbox(display_name(entry.name), entry.delimiter),
            _norm_inbox(entry.name, entry.delimiter),
        )
        keyed.append((entry, keys, tuple(k.casefold() for k in keys)))

    for flt in wanted:
        typed = [flt] + ([flt.strip()] if flt.strip() != flt else [])
        base = list(dict.fromkeys(c for t in typed for c in _candidates(t)))
        # Linear in the listing: each entry is compared with the filter's
        # forms for ITS OWN delimiter, through sets cached per delimiter.
        # (Building forms for every delimiter of the listing and comparing
        # each entry with all of them was quadratic: 2,000 entries with
        # different delimiters took 32 s.)
        by_delimiter: dict[Optional[str], _Forms] = {}
        hit: Optional[ListEntry] = None
        unselectable = False
        for exact in (True, False):
            for entry, keys, folded in keyed:
                exact_forms, folded_forms = _forms_for(base, entry.delimiter, by_delimiter)
                if exact:
                    ok = keys[0] in exact_forms or keys[1] in exact_forms
                else:
                    ok = folded[0] in folded_forms or folded[1] in folded_forms
                if ok:
                    if entry.selectable:
                        hit = entry
                        break
                    unselectable = True
            if hit is not None:
                break
        if hit is None:
            missing.append((flt, "not selectable" if unselectable else "no such folder"))
        elif hit.name not in used:
            used.add(hit.name)
            matched.append((flt, hit.name))
    return Resolution(tuple(matched), tuple(missing))


def resolve_folder(
    flt: str, listing: Iterable[tuple[Sequence[str], Optional[str], str]]
) -> Optional[str]:
    """The server's spelling of one folder filter, or ``None``."""
    res = resolve_folders([flt], listing)
    return res.matched[0][1] if res.matched else None


# -- SPECIAL-USE (RFC 6154) and the "every folder" filter -------------------------

#: A ``folder_filters`` entry meaning "every selectable folder except the
#: SPECIAL-USE ones below" (opt-in; for shared help-desk mailboxes).
WILDCARD = "*"

#: What :data:`WILDCARD` never picks: sent mail, drafts, junk, trash and the
#: all-mail view (RFC 6154), their XLIST spellings (``\Spam``,
#: ``\AllMail``), and virtual views that only repeat other folders' mail
#: (``\Flagged``, ``\Important``, ``\Starred``). A filter naming such a
#: folder explicitly still watches it: an operator who types ``Sent`` means it.
SKIPPED_SPECIAL_USE = frozenset({
    "\\sent", "\\drafts", "\\junk", "\\trash", "\\all",
    "\\spam", "\\allmail", "\\flagged", "\\important", "\\starred",
})


def skipped_special_use(flags: Iterable[str]) -> Optional[str]:
    """The first of ``flags`` in :data:`SKIPPED_SPECIAL_USE` (lower case)."""
    for flag in flags:
        low = str(flag).lower()
        if low in SKIPPED_SPECIAL_USE:
            return low
    return None


def expand_wildcard(
    filters: Sequence[str], listing: Iterable[tuple[Sequence[str], Optional[str], str]]
) -> tuple[str, ...]:
    """``filters`` with each :data:`WILDCARD` replaced by every selectable
    folder of ``listing`` (server spelling, INBOX first, then LIST order)
    that carries no :data:`SKIPPED_SPECIAL_USE` attribute. Explicit filters
    stay as they are, where they are (an explicit ``Sent`` is watched);
    repeats go (:func:`unique_folders`). Without a wildcard, ``filters`` is
    returned unchanged."""
    if not any(f.strip() == WILDCARD for f in filters):
        return tuple(filters)
    entries = [ListEntry(tuple(f), d, n) for f, d, n in listing]
    picked = [e.name for e in entries if e.selectable and e.special_use is None]
    picked.sort(key=lambda name: _norm_inbox(name, None) != "INBOX")
    out: list[str] = []
    for flt in filters:
        out.extend(picked if flt.strip() == WILDCARD else [flt])
    return unique_folders(out)


# -- configured filters ---------------------------------------------------------

#: Characters that cannot be part of a folder path sent in a command line.
_FORBIDDEN_IN_FILTER = frozenset("\r\n\x00")


def folder_key(flt: str) -> str:
    """What makes two configured filters the same folder.

    Case-insensitive for every name, not only INBOX (RFC 3501 makes only
    INBOX case-insensitive): filters that differ only in case, surrounding
    blanks or modified-UTF-7 spelling open one connection, as the resolver
    would match them to the same server folder whenever the server has only
    one of the spellings. A mailbox that really holds ``Sent`` and ``sent``
    can have only the first configured one watched.
    """
    text = flt.strip()
    try:
        text = decode_mutf7(text)
    except ValueError:
        pass
    return text.casefold()


def unique_folders(filters: Iterable[str]) -> tuple[str, ...]:
    """``filters`` without blanks and repeats (by :func:`folder_key`), in
    order, each in its first spelling."""
    seen: set[str] = set()
    out = []
    for flt in filters:
        key = folder_key(flt)
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(flt)
    return tuple(out)


def folder_filters_from_json(value: object) -> tuple[str, ...]:
    """The ``folder_filters`` column (decoded JSON) as filters for
    :class:`~imapsvc.model.ProviderConfig`: ``None`` or ``[]`` is empty
    (INBOX); ``null`` and blank entries (skipped before too) and repeats
    (:func:`unique_folders`) are dropped.

    :raises ValueError: with a reason naming the column, when the value is
        not a list of strings or a path holds a line break or NUL.
    """
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"folder_filters must be a JSON array of folder paths, not {_json_kind(value)}"
        )
    for index, item in enumerate(value):
        if item is None:
            continue
        if not isinstance(item, str):
            raise ValueError(f"folder_filters[{index}] is {_json_kind(item)}, not a folder path")
        if any(ch in _FORBIDDEN_IN_FILTER for ch in item):
            raise ValueError(f"folder_filters[{index}] contains a line break or NUL")
    return unique_folders(item for item in value if item is not None)


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__
