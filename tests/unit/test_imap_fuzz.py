"""Property-based tests: a hostile or broken IMAP server must never crash
:class:`FolderIMAPClient` nor the pure parsers of ``responses``.

The client properties, for every state (before the greeting, with each
command outstanding, while idling) and any chunking of the server's bytes:

- ``dataReceived`` never raises;
- every outstanding Deferred stays pending, succeeds with the documented
  shape, or fails with an :class:`~imapsvc.imap.errors.IMAPError`;
- a client that gave up on the stream has closed the transport;
- what it buffers stays under its caps (lowered here so that hypothesis
  reaches them).

Settings are derandomized so CI runs the same examples every time.
"""

from __future__ import annotations

from array import array
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from imapsvc.imap import responses
from imapsvc.imap.errors import CommandTimeout, ConnectionGone, IMAPError, ProtocolViolation
from imapsvc.imap.protocol import FolderIMAPClient
from imapsvc.imap.responses import ResponseParseError
from imapsvc.model import Credentials

FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE AUTH=PLAIN AUTH=XOAUTH2] ready\r\n"
#: Caps lowered on the fuzzed instances so that random input reaches them.
SMALL_LINE = 6000
SMALL_LITERAL = 200
SMALL_RESPONSE = 500

# -- what the server sends ------------------------------------------------

_tags = st.sampled_from([b"*", b"+", b"0001", b"0002", b"0003", b"A1", b"", b"0001\x00"])
_words = st.sampled_from(
    [
        b"OK",
        b"NO",
        b"BAD",
        b"BYE",
        b"PREAUTH",
        b"EXISTS",
        b"RECENT",
        b"FETCH",
        b"SEARCH",
        b"LIST",
        b"FLAGS",
        b"CAPABILITY",
        b"EXPUNGE",
        b"UID",
        b"NIL",
        b"RFC822.SIZE",
        b"INTERNALDATE",
        b"BODYSTRUCTURE",
        b"BODY[HEADER]",
        b"BODY[1]<0>",
        b"BODY[]",
        b"BODY[1.2]",
        b"[UIDVALIDITY",
        b"[UIDNEXT",
        b"[CAPABILITY",
        b"[READ-WRITE]",
        b"[THROTTLED]",
        b"]",
        b"(",
        b")",
        b"((",
        b"))",
        b'"',
        b'"/"',
        b'"a\\"b"',
        b"\\Noselect",
        b"0",
        b"1",
        b"7",
        b"4294967296",
        b"9" * 30,
        b"1" * 5000,
        b"\xb2",
        b"\xff\xfe",
        b"\x00",
        b"\r",
        b"\n",
        b"{0}",
        b"{1}",
        b"{5}",
        b"{3+}",
        b"{10737418240}",
        b"{" + b"9" * 5000 + b"}",
        b"{",
        b"}",
        b"Suggested Backoff Time: 5 milliseconds",
    ]
)
_raw_piece = st.binary(max_size=40)


@st.composite
def _line(draw) -> bytes:
    """One near-valid response line, perhaps followed by a literal's bytes
    (of the right length or not)."""
    parts = [draw(_tags)]
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from([b"1", b"5", b"17", b"0", b"9" * 30, b"1" * 5000])))
    parts += draw(st.lists(st.one_of(_words, _raw_piece), max_size=8))
    line = b" ".join(parts)
    ending = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b""]))
    size = draw(st.one_of(st.none(), st.integers(0, 30)))
    if size is None:
        return line + ending
    declared = size + draw(st.sampled_from([0, 0, 0, -1, 1, 1000]))
    return line + b" {%d}\r\n" % max(declared, 0) + b"x" * size + ending


_good_lines = st.sampled_from(
    [
        b"* 3 EXISTS\r\n",
        b"* SEARCH 5 9 12\r\n",
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
        b'* LIST () "/" {5}\r\nA\xffB C\r\n',
        b"* OK [UIDVALIDITY 7] ok\r\n",
        b"* OK [UIDNEXT 12] ok\r\n",
        b'* 1 FETCH (UID 5 RFC822.SIZE 12 INTERNALDATE "1-Jan-2020 00:00:00 +0000"'
        b' BODYSTRUCTURE ("TEXT" "PLAIN" NIL NIL NIL "7BIT" 3 1)'
        b" BODY[HEADER] {4}\r\nA: b)\r\n",
        b"* 2 FETCH (UID 9 BODY[1] {3}\r\nabc BODY[2]<0> {2}\r\nxy)\r\n",
        b"* CAPABILITY IMAP4rev1 IDLE\r\n",
        b"+ go on\r\n",
        b"+ eyJzdGF0dXMiOiI0MDAifQ==\r\n",
        b"0001 OK done\r\n",
        b"0001 OK [READ-WRITE] done\r\n",
        b"0001 NO [THROTTLED] slow down\r\n",
        b"0001 BAD what\r\n",
        b"0002 OK [CAPABILITY IMAP4rev1] done\r\n",
        b"* BYE going away\r\n",
        b"\r\n",
    ]
)

_numbers = st.sampled_from(
    [b"1", b"5", b"9", b"0", b"01", b"-1", b"4294967296", b"9" * 30, b"1" * 5000, b"\xb2", b"x"]
)
_strings = st.one_of(
    st.sampled_from([b"NIL", b'""', b'"a b"', b"()", b"(a (b))", b"((", b"atom", b"\xff\xfe"]),
    _numbers,
    st.binary(max_size=12).map(lambda b: b"{%d}\r\n" % len(b) + b),
)
_fetch_item = st.one_of(
    st.tuples(st.just(b"UID"), _numbers),
    st.tuples(st.just(b"RFC822.SIZE"), _numbers),
    st.tuples(st.just(b"INTERNALDATE"), _strings),
    st.tuples(st.just(b"BODYSTRUCTURE"), _strings),
    st.tuples(st.just(b"BODY[HEADER]"), _strings),
    st.tuples(_numbers.map(lambda n: b"BODY[1]<" + n + b">"), _strings),
    st.tuples(
        st.sampled_from([b"BODY[1]", b"BODY[2]<0>", b"body[]", b"BODY[", b"FLAGS"]), _strings
    ),
).map(b" ".join)


@st.composite
def _structured(draw) -> bytes:
    """A plausible response whose numbers, strings and nesting go wrong."""
    kind = draw(st.integers(0, 6))
    if kind == 0:
        items = draw(st.lists(_fetch_item, max_size=6))
        body = b"(" + b" ".join(items) + draw(st.sampled_from([b")", b")", b"", b"))"]))
        return b"* " + draw(_numbers) + b" FETCH " + body + b"\r\n"
    if kind == 1:
        return (
            b"* "
            + draw(_numbers)
            + b" "
            + draw(st.sampled_from([b"EXISTS", b"RECENT", b"EXPUNGE"]))
            + b"\r\n"
        )
    if kind == 2:
        return b"* SEARCH " + b" ".join(draw(st.lists(_numbers, max_size=5))) + b"\r\n"
    if kind == 3:
        return b"* LIST " + b" ".join(draw(st.lists(_strings, min_size=0, max_size=4))) + b"\r\n"
    if kind == 4:
        code = draw(st.sampled_from([b"UIDVALIDITY", b"UIDNEXT", b"CAPABILITY", b"THROTTLED", b""]))
        return b"* OK [" + code + b" " + draw(_numbers) + b"] x\r\n"
    if kind == 5:
        return (
            draw(st.sampled_from([b"0001", b"0002", b"0003"]))
            + b" "
            + draw(
                st.sampled_from(
                    [b"OK", b"OK [READ-WRITE]", b"OK [CAPABILITY IDLE]", b"NO", b"BAD", b"OK ["]
                )
            )
            + b" done\r\n"
        )
    return draw(st.sampled_from([b"+ go\r\n", b"+\r\n", b"* BYE bye\r\n", b"\r\n"]))


server_bytes = st.one_of(
    st.lists(_structured(), max_size=8).map(b"".join),
    st.lists(st.one_of(_structured(), _good_lines), max_size=8).map(b"".join),
    st.binary(max_size=600),
    st.lists(st.one_of(_line(), _good_lines), max_size=12).map(b"".join),
    st.lists(st.one_of(_line(), _good_lines, st.binary(max_size=20)), max_size=12).map(b"".join),
)


@st.composite
def chunked(draw, data_strategy=server_bytes) -> list[bytes]:
    """``data`` cut at random points (every byte alone, sometimes)."""
    data = draw(data_strategy)
    if not data:
        return [data]
    if draw(st.integers(0, 9)) == 0:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    out, start = [], 0
    for cut in cuts + [len(data)]:
        out.append(data[start:cut])
        start = cut
    return out


# -- the client under test ------------------------------------------------


def _caps_shape(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, bytes)
        and (v is None or (isinstance(v, list) and all(isinstance(i, bytes) for i in v)))
        for key, v in value.items()
    )


def _meta_shape(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(uid, int)
        and set(item) == {"size", "internaldate", "bodystructure", "header"}
        and isinstance(item["size"], int)
        and (item["internaldate"] is None or isinstance(item["internaldate"], str))
        and (item["bodystructure"] is None or isinstance(item["bodystructure"], list))
        and isinstance(item["header"], bytes)
        for uid, item in value.items()
    )


def _sections_shape(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(uid, int)
        and isinstance(item, dict)
        and all(isinstance(k, str) and isinstance(v, bytes) for k, v in item.items())
        for uid, item in value.items()
    )


def _search_shape(value) -> bool:
    # A list, or the UidArray (array('Q')) the client gives to save memory.
    return (
        isinstance(value, (list, array))
        and all(isinstance(uid, int) and uid >= 5 for uid in value)
        and list(value) == sorted(set(value))
    )


def _examine_shape(value) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("uidvalidity"), int)
        and (value.get("uidnext") is None or isinstance(value["uidnext"], int))
        and isinstance(value.get("exists"), int)
        and isinstance(value.get("read_only"), bool)
    )


def _list_shape(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, tuple)
        and len(item) == 3
        and isinstance(item[0], tuple)
        and all(isinstance(flag, str) for flag in item[0])
        and (item[1] is None or isinstance(item[1], str))
        and isinstance(item[2], str)
        for item in value
    )


#: state name -> (start the command, check the shape of its result)
COMMANDS: dict[str, tuple[Any, Any]] = {
    "fetch_meta": (lambda c: c.fetch_meta([5, 9]), _meta_shape),
    "fetch_sections": (
        lambda c: c.fetch_sections({5: [("1", None), ("2", 10)], 9: [("1", None)]}),
        _sections_shape,
    ),
    "uid_search_from": (lambda c: c.uid_search_from(5), _search_shape),
    "examine_folder": (lambda c: c.examine_folder("INBOX"), _examine_shape),
    "list_folders": (lambda c: c.list_folders(), _list_shape),
    "authenticate_xoauth2": (
        lambda c: c.authenticate_with(Credentials("xoauth2", "u@example.com", "tok")),
        _caps_shape,
    ),
    "idle": (lambda c: c.idle(lambda n: None), lambda v: v is None),
    "noop": (lambda c: c.noop(), lambda v: v is None or isinstance(v, int)),
}


class Harness:
    """One client on a TLS-looking string transport with lowered caps."""

    def __init__(self, state: str) -> None:
        self.clock = Clock()
        self.client = FolderIMAPClient(self.clock, 30.0, inactivity_timeout=300.0)
        self.client.MAX_LENGTH = SMALL_LINE
        self.client.max_literal_bytes = SMALL_LITERAL
        self.client.max_response_bytes = SMALL_RESPONSE
        self.transport = StringTransport()
        directlyProvides(self.transport, ISSLTransport)
        self.client.makeConnection(self.transport)
        self.outcomes: list[tuple[str, Any, list]] = []
        self.watch("greeted", self.client.greeted, _caps_shape)
        if state == "pre_greeting":
            return
        self.client.dataReceived(GREETING)
        assert self.client.greeted.called and not self.client._closed
        if state == "idling":
            self.watch("idle", self.client.idle(lambda n: None), lambda v: v is None)
            self.client.dataReceived(b"+ idling\r\n")
            assert self.client.idling
        else:
            start, shape = COMMANDS[state]
            self.watch(state, start(self.client), shape)
            # A second command queued behind it must fail cleanly too.
            self.watch("queued_noop", self.client.noop(), COMMANDS["noop"][1])
        self.transport.clear()

    def watch(self, name: str, d, shape) -> None:
        box: list = []
        self.outcomes.append((name, shape, box))
        d.addBoth(box.append)

    def feed(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.client.dataReceived(chunk)
            self.check_bounds()

    def check_bounds(self) -> None:
        client = self.client
        assert len(client._buffer) <= SMALL_LINE + 2 or client._closed, len(client._buffer)
        literal = sum(len(part) for part in client._literal_chunks)
        assert literal <= SMALL_LITERAL, literal
        assert client._literal_left <= SMALL_LITERAL, client._literal_left
        # A response being read: its lines and literals, whatever their count.
        held = sum(map(len, client._texts or ())) + sum(map(len, client._literals))
        assert held + literal <= SMALL_RESPONSE + SMALL_LINE, held

    def check(self, case: SynchronousTestCase, lost: bool = False) -> None:
        for name, shape, box in self.outcomes:
            if not box:
                continue
            (result,) = box
            if isinstance(result, Failure):
                case.assertIsInstance(
                    result.value,
                    IMAPError,
                    f"{name} failed with {result.value!r}:\n{result.getTraceback()}",
                )
            else:
                case.assertTrue(shape(result), f"{name} gave {result!r}")
        if self.client._closed and not lost:
            case.assertTrue(self.transport.disconnecting, "gave up but left the connection open")
        untrusted = any(
            box and isinstance(box[0], Failure) and box[0].check(ProtocolViolation, CommandTimeout)
            for _name, _shape, box in self.outcomes
        )
        if untrusted and not lost:
            # Nothing more may be read from a stream we cannot parse.
            case.assertTrue(self.transport.disconnected, "unparseable stream not aborted")
        failed_badly = any(
            box and isinstance(box[0], Failure) and not isinstance(box[0].value, ConnectionGone)
            for name, shape, box in self.outcomes
            if name != "greeted"
        )
        if failed_badly:
            case.assertTrue(self.client._closed, "a command failed but the client carried on")

    def close(self, case: SynchronousTestCase) -> None:
        if not self.client._closed:
            self.client.connectionLost(Failure(ConnectionGone("test over")))
        # Everything is settled once the connection is gone.
        for name, _shape, box in self.outcomes:
            case.assertTrue(box, f"{name} still pending after connectionLost")
        self.check(case, lost=True)
        case.assertEqual(self.clock.getDelayedCalls(), [], "timers left behind")


STATES = ["pre_greeting", "idling", *COMMANDS]


class ClientFuzzTests(SynchronousTestCase):
    """Random server bytes in every client state."""

    def run_state(self, state: str, chunks: list[bytes]) -> None:
        harness = Harness(state)
        harness.feed(chunks)
        harness.check(self)
        # Time passing must not turn a half-read stream into a crash either.
        harness.clock.advance(31)
        harness.check(self)
        harness.close(self)


_BIG = b"1" * 5000
#: Inputs that once broke the client, run in every state on top of the
#: generated ones (each as one chunk).
HOSTILE = [
    b"* " + _BIG + b" EXISTS\r\n",
    b"* " + _BIG + b" FETCH (UID 5)\r\n0001 OK done\r\n",
    b"* 1 FETCH (UID 5 RFC822.SIZE \xb2)\r\n0001 OK done\r\n",
    b"* 1 FETCH (UID 5 RFC822.SIZE " + _BIG + b")\r\n0001 OK done\r\n",
    b"* 1 FETCH (UID 5 INTERNALDATE (a))\r\n0001 OK done\r\n",
    b"* 1 FETCH (UID 5 BODY[HEADER] {" + _BIG + b"}\r\n",
    b"* 1 FETCH (UID 5 BODY[1]<" + _BIG + b'> "x")\r\n0001 OK done\r\n',
    b"* SEARCH 7 " + _BIG + b"\r\n0001 OK done\r\n",
    b"* 1 FETCH (UID 5" + (b" BODY[1] {150}\r\n" + b"x" * 150) * 8 + b")\r\n",
]


def _make_test(state: str):
    @FUZZ
    @given(chunks=chunked())
    def test(self, chunks):
        self.run_state(state, chunks)

    for hostile in HOSTILE:
        test = example(chunks=[hostile])(test)

    test.__name__ = f"test_{state}"
    test.__doc__ = f"Arbitrary server bytes in state {state!r}."
    return test


for _state in STATES:
    setattr(ClientFuzzTests, f"test_{_state}", _make_test(_state))
del _state


class LiteralCapTests(SynchronousTestCase):
    """A declared literal far above the cap is refused before any bytes of
    it are buffered."""

    def test_huge_literal_refused(self):
        for announcement in (b"{10737418240}", b"{10737418240+}", b"{" + b"9" * 40 + b"}"):
            harness = Harness("fetch_meta")
            harness.feed([b"* 1 FETCH (UID 5 BODY[HEADER] " + announcement + b"\r\n", b"x" * 100])
            self.assertTrue(harness.client._closed)
            self.assertTrue(harness.transport.disconnecting)
            self.assertEqual(harness.client._literal_chunks, [])
            harness.close(self)

    def test_chained_literals_refused(self):
        # Each literal is under the cap, the response as a whole is not.
        harness = Harness("fetch_sections")
        piece = b" BODY[1] {%d}\r\n" % SMALL_LITERAL + b"x" * SMALL_LITERAL
        harness.feed([b"* 1 FETCH (UID 5" + piece * 10])
        self.assertTrue(harness.client._closed)
        self.assertTrue(harness.transport.disconnecting)
        harness.close(self)

    @FUZZ
    @given(size=st.integers(SMALL_LITERAL + 1, 2**80))
    def test_any_literal_above_cap_refused(self, size):
        harness = Harness("fetch_sections")
        harness.feed([b"* 1 FETCH (UID 5 BODY[1] {%d}\r\n" % size])
        self.assertTrue(harness.client._closed)
        self.assertTrue(harness.transport.disconnecting)
        harness.close(self)


# -- pure parsers ---------------------------------------------------------

_segment = st.one_of(
    st.binary(max_size=80),
    st.lists(st.one_of(_words, _raw_piece), max_size=10).map(b" ".join),
)


def _parse(case: SynchronousTestCase, function, *args):
    """``function(*args)``, or ``None`` when it raised ResponseParseError."""
    try:
        return function(*args)
    except ResponseParseError:
        return None


class ResponsesDigitLimitTests(SynchronousTestCase):
    """A number of more than 4300 digits made ``int()`` raise a bare
    ``ValueError``; every parser now refuses over-long numbers with
    :class:`ResponseParseError`."""

    BIG = b"9" * 5000

    def test_parse_search(self):
        self.assertRaises(ResponseParseError, responses.parse_search, b"1 " + self.BIG)


    def test_literal_size(self):
        self.assertRaises(
            ResponseParseError, responses.literal_size, b"* 1 FETCH (BODY[] {" + self.BIG + b"}"
        )


    def test_tokenize(self):
        self.assertRaises(
            ResponseParseError, responses.tokenize, [b"(A {" + self.BIG + b"}", b")"], [b"x"]
        )


    def test_body_section_key(self):
        key = "BODY[1]<" + self.BIG.decode() + ">"
        self.assertRaises(ResponseParseError, responses.body_section_key, key)



class ParserFuzzTests(SynchronousTestCase):
    """``responses``' parsers raise nothing but :class:`ResponseParseError`."""

    @FUZZ
    @given(
        texts=st.lists(_segment, min_size=1, max_size=4),
        literals=st.lists(st.binary(max_size=20), max_size=4),
    )
    def test_tokenize(self, texts, literals):
        tokens = _parse(self, responses.tokenize, texts, literals)
        if tokens is None:
            return
        self.assertIsInstance(tokens, list)
        tree = responses.to_text_tree(tokens)
        self.assertIsInstance(tree, list)
        if tokens and isinstance(tokens[0], list):
            try:
                pairs = responses.fetch_pairs(tokens[0])
            except ResponseParseError:
                return
            for key in pairs:
                self.body_section_key(key)

    def body_section_key(self, key):
        section = _parse(self, responses.body_section_key, key)
        self.assertTrue(section is None or isinstance(section, tuple))

    @FUZZ
    @given(texts=st.lists(_segment, min_size=1, max_size=4))
    def test_tokenize_consistent_literals(self, texts):
        # Right-sized literals after each segment: only syntax can fail.
        literals = [b"L" * (i + 1) for i in range(len(texts) - 1)]
        texts = [t + b" {%d}" % len(lit) for t, lit in zip(texts, literals)] + texts[-1:]
        _parse(self, responses.tokenize, texts, literals)

    @FUZZ
    @given(data=_segment)
    def test_parse_status(self, data):
        status = responses.parse_status(data)
        if status is not None:
            kind, code, args, text = status
            self.assertIn(kind, ("OK", "NO", "BAD", "BYE", "PREAUTH"))
            self.assertTrue(code is None or isinstance(code, str))
            self.assertIsInstance(args, str)
            self.assertIsInstance(text, str)
            responses.throttle_delay(code, text)

    @FUZZ
    @given(data=_segment)
    def test_parse_search(self, data):
        numbers = _parse(self, responses.parse_search, data)
        if numbers is None:
            return
        self.assertTrue(all(isinstance(n, int) and n >= 0 for n in numbers))

    @FUZZ
    @given(words=st.lists(st.text(max_size=12), max_size=8))
    def test_parse_capabilities(self, words):
        caps = responses.parse_capabilities(words)
        self.assertTrue(_caps_shape(caps))
        self.assertIsInstance(responses.capability_strings(caps), list)

    @FUZZ
    @given(
        items=st.lists(st.one_of(st.none(), st.text(max_size=8), st.binary(max_size=8)), max_size=8)
    )
    def test_fetch_pairs(self, items):
        try:
            pairs = responses.fetch_pairs(items)
        except ResponseParseError:
            return
        self.assertTrue(all(isinstance(key, str) for key in pairs))

    @FUZZ
    @given(key=st.one_of(st.text(max_size=20), _segment.map(lambda b: b.decode("latin-1"))))
    def test_body_section_key(self, key):
        self.body_section_key(key)

    @FUZZ
    @given(data=_segment)
    def test_literal_size(self, data):
        size = _parse(self, responses.literal_size, data)
        self.assertTrue(size is None or (isinstance(size, int) and size >= 0))

    @FUZZ
    @given(
        texts=st.lists(_segment, min_size=1, max_size=3),
        literals=st.lists(st.binary(max_size=10), max_size=3),
    )
    def test_salvage_fetch(self, texts, literals):
        out = responses.salvage_fetch(texts, literals)
        self.assertIsInstance(out, dict)

    @FUZZ
    @given(
        value=st.one_of(
            st.none(),
            st.binary(max_size=10),
            # Atoms are decoded as latin-1, so that is the only text it sees.
            st.text(st.characters(max_codepoint=255), max_size=10),
            st.lists(st.none(), max_size=2),
        )
    )
    def test_as_bytes(self, value):
        try:
            self.assertIsInstance(responses.as_bytes(value), bytes)
        except ResponseParseError:
            self.assertIsInstance(value, list)
