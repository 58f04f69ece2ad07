"""Pure parsing of IMAP server responses (no I/O, no Twisted).

A complete server response arrives as text segments with the literals that
sat between them: ``texts[i]`` ends with ``{n}`` and is followed by
``literals[i]`` (exact bytes), so ``len(texts) == len(literals) + 1``.

Tokens: atoms are ``str`` (ASCII), quoted strings and literals are ``bytes``
(exact, unescaped), ``NIL`` is ``None``, parenthesised lists are ``list``.
An atom keeps a bracketed section whole: ``BODY[HEADER.FIELDS (TO)]<0>``.
"""

from __future__ import annotations

import base64
import re
from array import array
from typing import Any, Iterable, Optional, Sequence

_UNESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}$")
#: One token with the blanks before it. Groups: quoted string (with its
#: quotes, so ``""`` is not empty), atom, ``(``, ``)``, literal size, any other
#: byte (an error). Trailing blanks match the last branch (all groups empty).
#: Every byte of a segment is accounted for, so ``findall`` skips nothing.
#: The unrolled quoted/atom loops keep ``re`` from trying every branch per byte.
#:
#: Linear on any input (STACK.md, "Regular expressions on server bytes"): an
#: unclosed ``[`` or ``"`` makes its branch scan to the end of the segment
#: and fail. Were the error branch one byte long, ``findall`` would restart
#: that scan at every following ``[`` (80,000 ``[`` = 10.8 s). The error branch
#: therefore swallows the rest of the segment: after the first bad byte there
#: is nothing left to scan, so each byte is looked at a bounded number of times.
_TOKEN = re.compile(
    rb'[ \t]*(?:'
    rb'("[^"\\]*(?:\\.[^"\\]*)*")'
    rb'|((?:[^\s()\["{]+|\[[^\]]*\])+)'
    rb"|(\()"
    rb"|(\))"
    rb"|\{(\d+)\+?\}"
    rb"|([^ \t].*)"
    rb")|[ \t]+",
    re.DOTALL,
)
#: Deepest parenthesis nesting accepted in one response. A BODYSTRUCTURE
#: holds at most :data:`imapsvc.core.bodystructure.MAX_DEPTH` (64) multipart
#: levels, each leaf a few lists deep; anything deeper is hostile. Deeper
#: FETCH data fails to parse, is salvaged without its BODYSTRUCTURE and the
#: message takes the whole-message path (with its caps); the nested lists
#: are never built, so nothing later can recurse into them.
MAX_NESTING = 256
_STATUS = re.compile(
    rb"^(OK|NO|BAD|BYE|PREAUTH)(?:[ ]+\[([^\]]*)\])?[ ]*(.*)$", re.IGNORECASE | re.DOTALL
)
_BACKOFF = re.compile(
    rb"Suggested\s{1,16}Backoff\s{1,16}Time:\s{0,16}(\d{1,20})\s{0,16}(milliseconds|ms|seconds|s)?",
    re.IGNORECASE,
)
_FETCH_BODY_KEY = re.compile(r"^BODY\[(.*)\](?:<(\d+)>)?$", re.IGNORECASE | re.DOTALL)

#: Response codes that mean "slow down" rather than "refused".
THROTTLE_CODES = frozenset({"THROTTLED", "LIMIT"})


class ResponseParseError(ValueError):
    """The server sent something that is not valid IMAP syntax."""


#: No number an IMAP server has reason to send is longer (UIDs, sizes and
#: counts are 32/63-bit); longer ones are hostile and would also make int()
#: slow or raise a bare ValueError past 4300 digits.
MAX_DIGITS = 20


def number(digits: bytes | str) -> int:
    """``int(digits)`` for a run of ASCII digits of a sane length.

    :raises ResponseParseError: anything else.
    """
    raw = digits.encode("latin-1") if isinstance(digits, str) else digits
    if not raw or len(raw) > MAX_DIGITS or not raw.isdigit() or not raw.isascii():
        raise ResponseParseError(f"bad number {raw[:24]!r}")
    return int(raw)


def literal_size(line: bytes) -> Optional[int]:
    """The octet count when ``line`` ends with a literal announcement
    (``{n}`` or ``{n+}``), else ``None``."""
    match = _LITERAL_AT_END.search(line)
    return number(match.group(1)) if match else None


#: Most tokens (atoms, strings, lists) one response may hold. Each costs
#: about 60 bytes of Python objects for as little as 2 bytes of input
#: (``()``), so without a cap a 16 MiB line would become ~0.5 GB. 50,000 is a
#: message of ~2,500 MIME parts; a FETCH response above it is salvaged
#: without BODYSTRUCTURE (whole-message path), any other one is an error.
MAX_TOKENS = 50_000
#: Segments up to this long are matched with one ``findall``; longer ones
#: match by match (see :func:`tokenize_counted`).
_FINDALL_MAX = 64 * 1024

def _matches(text: bytes, max_tokens: int) -> Iterable[tuple[bytes, ...]]:
    """The match tuples of a long segment, one at a time; refused past what
    ``max_tokens`` tokens (with their blanks and closing parentheses) take."""
    for n, match in enumerate(_TOKEN.finditer(text)):
        if n > 3 * max_tokens:
            raise ResponseParseError(f"more than {max_tokens} tokens")
        yield match.groups()


def tokenize(
    texts: Sequence[bytes], literals: Sequence[bytes] = (), max_tokens: int = MAX_TOKENS
) -> list[Any]:
    """Parse one response (already split into text segments and literals)
    into nested tokens. Linear in the input; at most :data:`MAX_NESTING`
    levels and ``max_tokens`` tokens.

    :raises ResponseParseError: unbalanced parentheses, bad quoting, a
        literal marker that is not at the end of its segment, too deep or
        too many tokens.
    """
    return tokenize_counted(texts, literals, max_tokens)[0]


def tokenize_counted(
    texts: Sequence[bytes], literals: Sequence[bytes] = (), max_tokens: int = MAX_TOKENS
) -> tuple[list[Any], int]:
    """:func:`tokenize`, and how many tokens it built (what they cost in
    memory is about 60 bytes each, whatever the bytes on the wire)."""
    if len(texts) != len(literals) + 1:
        raise ResponseParseError("literal count does not match segments")
    top: list[Any] = []
    current = top
    stack: list[list[Any]] = []
    depth_limit = MAX_NESTING
    count = 0
    for index, text in enumerate(texts):
        if len(text) <= _FINDALL_MAX:
            # One C-level pass (a FETCH of BODYSTRUCTURE is hundreds of
            # tokens, and a Python loop per token was the hot spot); the list
            # of match tuples is small for a segment this short.
            tokens: Iterable[tuple[bytes, ...]] = _TOKEN.findall(text)
        else:
            # A long segment: match by match, so an error stops at once and
            # no list of tuples (~50x the bytes of ``()()()...``) is built.
            tokens = _matches(text, max_tokens)
        at_literal = False
        for quoted, atom, opening, closing, literal, bad in tokens:
            if at_literal:
                # A literal marker is the segment's last token (its bytes follow).
                raise ResponseParseError("literal marker not at end of line")
            if atom:
                count += 1
                if len(atom) == 3 and atom.upper() == b"NIL":
                    current.append(None)
                else:
                    current.append(atom.decode("latin-1"))
            elif quoted:
                count += 1
                value = quoted[1:-1]
                current.append(_UNESCAPE.sub(rb"\1", value) if b"\\" in value else value)
            elif opening:
                count += 1
                if len(stack) >= depth_limit:
                    raise ResponseParseError(f"nesting deeper than {MAX_NESTING}")
                stack.append(current)
                inner: list[Any] = []
                current.append(inner)
                current = inner
            elif closing:
                if not stack:
                    raise ResponseParseError("unbalanced ')'")
                current = stack.pop()
                # Checked here (each list ends with one) and at the end:
                # cheaper than at every token, and as bounded.
                if count > max_tokens:
                    raise ResponseParseError(f"more than {max_tokens} tokens")
            elif literal:
                count += 1
                at_literal = True
                if index >= len(literals):
                    raise ResponseParseError("literal marker not at end of line")
                if number(literal) != len(literals[index]):
                    raise ResponseParseError("literal size mismatch")
                current.append(literals[index])
            elif bad:
                first = bad[:1]
                if first == b'"':
                    raise ResponseParseError("unterminated quoted string")
                if first == b"{":
                    raise ResponseParseError("literal marker not at end of line")
                raise ResponseParseError(f"unexpected byte {first!r}")
            # else: blanks between tokens
        if count > max_tokens:
            raise ResponseParseError(f"more than {max_tokens} tokens")
    if stack:
        raise ResponseParseError("unbalanced '('")
    return top, count


def parse_status(text: bytes) -> Optional[tuple[str, Optional[str], str, str]]:
    """Split a status response (``OK``/``NO``/``BAD``/``BYE``/``PREAUTH``).

    :returns: ``(status, code, code_args, text)`` with ``status`` and ``code``
        upper-cased (``code`` ``None`` when there is none), or ``None`` when
        ``text`` is not a status response.
    """
    match = _STATUS.match(text)
    if match is None:
        return None
    status = match.group(1).decode("ascii").upper()
    code: Optional[str] = None
    args = ""
    if match.group(2) is not None:
        inner = match.group(2).decode("latin-1").strip()
        head, _, args = inner.partition(" ")
        code = head.upper() or None
    return status, code, args.strip(), match.group(3).decode("utf-8", "replace")


def parse_capabilities(words: Sequence[str]) -> dict[bytes, Optional[list[bytes]]]:
    """Capability atoms -> the dict shape Twisted uses: ``{b"IMAP4REV1": None,
    b"AUTH": [b"PLAIN", b"XOAUTH2"]}`` (names upper-cased)."""
    caps: dict[bytes, Optional[list[bytes]]] = {}
    for word in words:
        name, sep, value = word.upper().partition("=")
        key = name.encode("ascii", "replace")
        if sep:
            existing = caps.get(key) or []
            existing.append(value.encode("ascii", "replace"))
            caps[key] = existing
        else:
            caps.setdefault(key, None)
    return caps


def capability_strings(caps: Optional[dict[bytes, Optional[list[bytes]]]]) -> list[str]:
    """A capability dict as the sorted list of strings stored in
    ``server_capabilities`` (``"AUTH=PLAIN"``, ``"IDLE"``, ...)."""
    out: list[str] = []
    for key, values in (caps or {}).items():
        name = key.decode("ascii", "replace")
        if values is None:
            out.append(name)
        else:
            out.extend(f"{name}={value.decode('ascii', 'replace')}" for value in values)
    return sorted(out)


def throttle_delay(code: Optional[str], text: str) -> tuple[bool, Optional[float]]:
    """Whether a response asks us to slow down, and for how many seconds.

    Recognises the ``[THROTTLED]`` and ``[LIMIT]`` codes and Office 365's
    "Suggested Backoff Time: N milliseconds".
    """
    match = _BACKOFF.search(text.encode("utf-8", "replace"))
    delay: Optional[float] = None
    if match:
        unit = (match.group(2) or b"milliseconds").lower()
        try:
            value = number(match.group(1))
        except ResponseParseError:
            return True, None
        delay = value / 1000.0 if unit in (b"milliseconds", b"ms") else float(value)
    throttled = (code is not None and code.upper() in THROTTLE_CODES) or match is not None
    return throttled, delay


class UidArray(array):  # type: ignore[type-arg]
    """UIDs as ``array('Q')`` (8 bytes each, no ``int`` object per UID) that
    compares equal to a list of the same numbers and stays an ``UidArray``
    when sliced, so callers may treat it as a list of ints."""

    def __new__(cls, values: Any = ()) -> UidArray:
        return super().__new__(cls, "Q", values)  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return len(self) == len(other) and list(self) == other
        return array.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None

    def __getitem__(self, index: Any) -> Any:
        value = array.__getitem__(self, index)
        return UidArray(value) if isinstance(index, slice) else value


#: One SEARCH word: digits, or a parenthesised suffix such as ``(MODSEQ n)``.
_SEARCH_WORD = re.compile(rb"\S+")
#: A SEARCH answer is read in slices of about this many bytes: each slice is
#: split and converted in C, and only one slice's words exist at a time.
_SEARCH_SLICE = 256 * 1024
_SEARCH_PLAIN = b"0123456789 "


def parse_search(text: bytes) -> UidArray:
    """The numbers of a ``SEARCH`` response body (everything after the word
    ``SEARCH``) as an :class:`UidArray`: 8 bytes per number, about the size of
    the line itself. A list of ``int`` (and ``text.split()``'s list of bytes)
    cost about 8x the line (a 4 MiB line added 32 MiB).

    :raises ResponseParseError: a token that is not a number (e.g. a
        ``(MODSEQ n)`` suffix is skipped, anything else is an error).
    """
    out = UidArray()
    start, size = 0, len(text)
    skip = False  # inside a parenthesised suffix, which may span slices
    while start < size:
        end = min(size, start + _SEARCH_SLICE)
        if end < size:
            # Cut at a blank so no number is split between slices.
            cut = text.rfind(b" ", start, end)
            end = cut + 1 if cut > start else text.find(b" ", end) + 1 or size
        piece = text[start:end]
        start = end
        if not skip and not piece.translate(None, _SEARCH_PLAIN):
            # Only digits and spaces (the usual answer): split and convert in C.
            words = piece.split()
            if any(len(word) > MAX_DIGITS for word in words):
                raise ResponseParseError("bad SEARCH number: too many digits")
            try:
                out.extend(map(int, words))
            except OverflowError:
                raise ResponseParseError("bad SEARCH number: beyond 64 bits") from None
        else:
            skip = _parse_search_words(piece, out, skip)
    return out


def _parse_search_words(text: bytes, out: UidArray, skip: bool) -> bool:
    # A ``(MODSEQ n)`` suffix (RFC 7162) is skipped; any other word is an
    # error. Returns whether the text ends inside the parentheses.
    for match in _SEARCH_WORD.finditer(text):
        word = match.group()
        if word.startswith(b"("):
            skip = not word.endswith(b")")
            continue
        if skip:
            skip = not word.endswith(b")")
            continue
        if not word.isdigit() or len(word) > MAX_DIGITS:
            raise ResponseParseError(f"bad SEARCH number {word[:20]!r}")
        value = int(word)
        if value >= 1 << 64:
            raise ResponseParseError(f"bad SEARCH number {word[:20]!r}")
        out.append(value)
    return skip


def sorted_unique_from(numbers: Sequence[int], first: int) -> UidArray:
    """The numbers ``>= first``, sorted and without repeats, as a :class:`UidArray`.

    Servers send SEARCH results in ascending order: then this is one linear
    pass and no Python ``int`` per number is kept. Otherwise (rare) it sorts.
    """
    out = UidArray()
    previous = -1
    ordered = True
    for value in numbers:
        if value < first:
            continue
        if value <= previous:
            ordered = False
            break
        out.append(value)
        previous = value
    if ordered:
        return out
    return UidArray(sorted({v for v in numbers if v >= first}))


def fetch_pairs(items: Sequence[Any]) -> dict[str, Any]:
    """A FETCH response's parenthesised list -> ``{KEY: value}``; keys are
    upper-cased outside the brackets (``BODY[1.2]<0>`` stays as sent).

    :raises ResponseParseError: an odd number of items.
    """
    if len(items) % 2:
        raise ResponseParseError("FETCH data with a dangling key")
    out: dict[str, Any] = {}
    for key, value in zip(items[0::2], items[1::2]):
        if not isinstance(key, str):
            raise ResponseParseError("FETCH key is not an atom")
        head, bracket, tail = key.partition("[")
        out[head.upper() + bracket + tail] = value
    return out


def body_section_key(key: str) -> Optional[tuple[str, Optional[int]]]:
    """``BODY[1.2]<0>`` -> ``("1.2", 0)``; ``BODY[]`` -> ``("", None)``;
    section upper-cased; ``None`` for any other key."""
    match = _FETCH_BODY_KEY.match(key)
    if match is None:
        return None
    origin = match.group(2)
    return match.group(1).upper(), (number(origin) if origin is not None else None)


def to_text_tree(value: Any) -> Any:
    """Turn tokens into the shape Twisted's fetch parsing gives: strings
    (``bytes`` decoded as UTF-8, falling back to Latin-1), ``None`` and
    nested lists. Used for BODYSTRUCTURE."""
    if isinstance(value, list):
        return [to_text_tree(item) for item in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return value


def as_bytes(value: Any) -> bytes:
    """A string/literal/atom token as bytes (``NIL`` -> ``b""``)."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    raise ResponseParseError("expected a string")


def as_text(value: Any) -> str:
    """A string/literal/atom token as text: UTF-8 when it decodes, else
    Latin-1 (which never fails)."""
    raw = as_bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def quote(value: bytes) -> bytes:
    """An IMAP quoted string (caller checks :func:`needs_literal` first)."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def needs_literal(value: bytes) -> bool:
    """Whether ``value`` cannot be sent as a quoted string (8-bit, CR, LF,
    NUL)."""
    return any(byte > 0x7E or byte in (0, 0x0A, 0x0D) for byte in value)


def xoauth2_initial(username: str, token: str) -> bytes:
    """The XOAUTH2 initial client response, base64 encoded, one line."""
    raw = f"user={username}\x01auth=Bearer {token}\x01\x01".encode()
    return base64.b64encode(raw)


def _gs2_name(username: str) -> str:
    return username.replace("=", "=3D").replace(",", "=2C")


def oauthbearer_initial(
    username: str, token: str, host: Optional[str] = None, port: Optional[int] = None
) -> bytes:
    """The OAUTHBEARER (RFC 7628 section 3.1) initial client response, base64,
    one line: the gs2 header ``n,a=<user>,`` then ``host``/``port`` (when
    known) and ``auth`` key-value pairs, each ended by ``%x01``, and a final
    ``%x01``."""
    pairs = ""
    if host:
        pairs += f"host={host}\x01"
    if port:
        pairs += f"port={int(port)}\x01"
    raw = f"n,a={_gs2_name(username)},\x01{pairs}auth=Bearer {token}\x01\x01".encode()
    return base64.b64encode(raw)


def uid_set(uids: Sequence[int]) -> bytes:
    """A compact UID set (``1:3,7,9:10``) from any iterable of UIDs."""
    ordered = sorted(set(int(uid) for uid in uids))
    if not ordered:
        raise ValueError("empty UID set")
    ranges: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        ranges.append(f"{start}:{prev}" if start != prev else str(start))
        start = prev = uid
    ranges.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(ranges).encode("ascii")


# Bounded repetitions only: salvage runs on input the tokenizer rejected,
# i.e. on exactly what a hostile server sends (``BODY[`` x 100,000 ...).
_SALVAGE_UID = re.compile(rb"\bUID[ \t]{1,16}(\d{1,20})", re.IGNORECASE)
_SALVAGE_SIZE = re.compile(rb"\bRFC822\.SIZE[ \t]{1,16}(\d{1,20})", re.IGNORECASE)
_SALVAGE_DATE = re.compile(rb'\bINTERNALDATE[ \t]{1,16}"([^"]{0,64})"', re.IGNORECASE)
_SALVAGE_LITERAL_KEY = re.compile(
    rb"(BODY\[[^\]\[]{0,256}\](?:<\d{1,20}>)?)[ \t]{0,16}\{\d{1,20}\+?\}$", re.IGNORECASE
)
#: How far before a literal marker the salvage looks for its ``BODY[...]`` key.
_SALVAGE_TAIL = 512


def salvage_fetch(texts: Sequence[bytes], literals: Sequence[bytes]) -> dict[str, Any]:
    """Best effort for a FETCH response the tokenizer rejects (e.g. a
    broken BODYSTRUCTURE): UID, size, date and the literal body sections, so
    the caller can fall back to the whole message instead of failing the
    folder forever. BODYSTRUCTURE is left out."""
    joined = b" ".join(texts)
    out: dict[str, Any] = {}
    for key, pattern in (
        ("UID", _SALVAGE_UID),
        ("RFC822.SIZE", _SALVAGE_SIZE),
        ("INTERNALDATE", _SALVAGE_DATE),
    ):
        match = pattern.search(joined)
        if match:
            value = match.group(1)
            out[key] = value if key == "INTERNALDATE" else value.decode("ascii")
    for text, literal in zip(texts, literals):
        match = _SALVAGE_LITERAL_KEY.search(text[-_SALVAGE_TAIL:])
        if match:
            head, bracket, tail = match.group(1).decode("latin-1").partition("[")
            out[head.upper() + bracket + tail] = literal
    return out
