"""Log output with credentials taken out.

Every event goes through :func:`redact_event` before any observer here
writes it: fields named like a secret are masked, and the formatted message
and failure text go through :func:`redact`, which knows the shapes in which
credentials leak in an IMAP/OAuth service (``LOGIN user pass``, SASL
payloads, bearer headers, OAuth query parameters, URL passwords).

Two observer factories for ``twistd --logger``, both writing to stdout:

- ``twistd --logger imapsvc.log_output.json_observer``: one JSON object a line.
- ``twistd --logger imapsvc.log_output.text_observer``: Twisted's text format.

Without ``--logger``, ``twistd imapsvc`` picks one of them by
``IMAPSVC_LOG_FORMAT`` (see :mod:`imapsvc.tap`).

This module is named ``logging`` inside the package; it does not shadow the
standard library for absolute imports.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any, Callable, Optional

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

MASK = "***"

# Field names whose values are never written. Matched against the whole key,
# lower-cased: "password", "client_secret", "access_token", "admin_token",
# "secret_key", "Authorization"... but not "token_expires_at".
_SENSITIVE_KEY = re.compile(
    r"(?:^|[_\-.])(?:pass|passwd|password|pwd|secret|secrets|secret_key|secret_keys|token|"
    r"authorization|auth_header|cookie|credential|credentials|api_key|apikey|sasl)$",
    re.IGNORECASE,
)


def is_sensitive_key(key: str) -> bool:
    """Whether a field or mapping key names a secret."""
    return bool(_SENSITIVE_KEY.search(key.strip()))


_B64_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=])([A-Za-z0-9+/]{16,}={0,2})(?![A-Za-z0-9+/=])")
_QUOTED_OR_ATOM = r'(?:"(?:[^"\\]|\\.)*"|\{\d+\+?\}|[^\s"]+)'

_RULES: list[tuple[re.Pattern[str], Any]] = [
    # URL userinfo: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s/]+(@)"), rf"\g<1>{MASK}\g<2>"),
    # Authorization: Bearer|Basic|<anything> value (header or repr of headers)
    (
        re.compile(
            r"""(?i)(\bauthorization['"]?\s*[:=,]\s*['"]?\[?(?:b(?=['"]))?['"]?)(?:(bearer|basic)\s+)?[^\s'"\],]+"""
        ),
        lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{MASK}",
    ),
    # Bearer tokens anywhere, also inside an XOAUTH2 payload "auth=Bearer x\x01"
    (re.compile(r"""(?i)\b(bearer\s+)(?!\*\*\*)[^\s'"\\\x01,;]+"""), rf"\g<1>{MASK}"),
    # IMAP LOGIN: upper-case anywhere, any case after a tag at a line start
    (
        re.compile(rf"(\bLOGIN\s+){_QUOTED_OR_ATOM}(\s+){_QUOTED_OR_ATOM}"),
        rf"\g<1>{MASK}\g<2>{MASK}",
    ),
    (
        re.compile(
            rf"(?im)(^\s*(?:b['\"])?[A-Za-z0-9.]+\s+login\s+){_QUOTED_OR_ATOM}(\s+){_QUOTED_OR_ATOM}"
        ),
        rf"\g<1>{MASK}\g<2>{MASK}",
    ),
    # AUTHENTICATE <mechanism> <initial response>
    (
        re.compile(r"(?i)(\bAUTHENTICATE\s+[A-Z0-9_\-]+\s+)(?!\*\*\*)[A-Za-z0-9+/=]+"),
        rf"\g<1>{MASK}",
    ),
    # OAuth / form / query parameters: code=, access_token=, client_secret=, ...
    (
        re.compile(
            r"(?i)(\b(?:code|access_token|refresh_token|id_token|client_secret|password|"
            r"passwd|token|code_verifier|assertion)=)[^&\s'\"#]+"
        ),
        rf"\g<1>{MASK}",
    ),
    # JSON / repr of mappings: "access_token": "..." or 'password': '...'
    (
        re.compile(
            r"""(?i)(['"](?:[a-z0-9_\-]*_)?(?:password|passwd|secret|token|access_token|"""
            r"""refresh_token|client_secret|secret_key|authorization)['"]\s*:\s*b?)(['"])"""
            r"""(?:(?!\2)[^\\]|\\.)*\2"""
        ),
        rf"\g<1>\g<2>{MASK}\g<2>",
    ),
    # user=...\x01auth=... (XOAUTH2 decoded; the Bearer rule masks the token,
    # this one catches other auth schemes)
    (re.compile(r"(?i)(\\x01|\x01)(auth=)(?!Bearer)[^\x01\\\s'\"]+"), rf"\g<1>\g<2>{MASK}"),
]

# A line that is nothing but one long base64 token (optionally as a bytes
# repr): a SASL continuation answer.
_LONE_B64_LINE = re.compile(
    r"(?m)^(\s*(?:[A-Z]:\s*)?(?:b?['\"])?)[A-Za-z0-9+/]{16,}={0,2}(['\"]?\s*)$"
)


def _looks_base64(token: str) -> bool:
    # Real base64 is padded to a multiple of 4 and mixes cases and digits;
    # file paths and identifiers usually do not.
    body = token.rstrip("=")
    return (
        len(token) % 4 == 0
        and any(c.isupper() for c in body)
        and any(c.islower() for c in body)
        and any(c.isdigit() or c in "+/" for c in body)
    )


def _mask_lone_line(match: re.Match[str]) -> str:
    token = match.group(0)[len(match.group(1)) : len(match.group(0)) - len(match.group(2))]
    if not _looks_base64(token):
        return match.group(0)
    return f"{match.group(1)}{MASK}{match.group(2)}"


def _decoded_is_sasl(token: str) -> bool:
    padded = token + "=" * (-len(token) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return (
        b"\x01auth=" in raw
        or b"auth=Bearer" in raw
        or raw.count(b"\x00") >= 2
        or (
            raw.startswith(b"n,") and b"\x01" in raw  # OAUTHBEARER gs2 header
        )
    )


def redact(text: str) -> str:
    """Return ``text`` with credentials replaced by ``***``.

    Pure and idempotent. It errs towards masking too much: a log line that
    loses a word is cheap, a leaked token is an incident.
    """
    if not text:
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    text = _LONE_B64_LINE.sub(_mask_lone_line, text)
    # Base64 anywhere else that decodes to a SASL PLAIN/XOAUTH2/OAUTHBEARER payload.
    return _B64_TOKEN.sub(lambda m: MASK if _decoded_is_sasl(m.group(1)) else m.group(1), text)


def redact_value(value: Any, depth: int = 0) -> Any:
    """Mask sensitive keys inside mappings and sequences and :func:`redact`
    strings; other values are returned as they are."""
    if depth > 8:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {
            k: (
                _mask(v)
                if isinstance(k, str) and is_sensitive_key(k)
                else redact_value(v, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v, depth + 1) for v in value)
    return value


def _sensitive(key: Any) -> bool:
    return isinstance(key, str) and is_sensitive_key(key)


def _mask(value: Any) -> Any:
    return value if value is None or value == "" else MASK


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of a :mod:`twisted.logger` event that is safe to write.

    Sensitive fields are masked, other fields redacted. The message is
    formatted from the masked fields, redacted again (an object's ``repr``
    may hold a credential) and stored pre-formatted as ``log_format``, so any
    observer downstream renders the safe text. A failure becomes its
    redacted traceback in ``log_failure_text``.
    """
    safe: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_"):
            safe[key] = value
        elif is_sensitive_key(key):
            safe[key] = _mask(value)
        else:
            safe[key] = redact_value(value)
    # Legacy events (twisted.python.log) carry their text in these keys.
    for key in ("log_text", "message", "format"):
        if isinstance(safe.get(key), str):
            safe[key] = redact(safe[key])
    if isinstance(safe.get("message"), tuple):
        safe["message"] = tuple(redact(str(m)) for m in safe["message"])
    failure = safe.pop("log_failure", None)
    try:
        text = formatEvent(safe)
    except Exception:  # formatEvent already swallows most errors; be sure
        text = "Unable to format event"
    message = redact(text)
    if failure is not None:
        try:
            safe["log_failure_text"] = redact(failure.getTraceback())
        except Exception:
            safe["log_failure_text"] = redact(repr(failure))
        safe["log_failure_type"] = getattr(getattr(failure, "type", None), "__name__", None)
    safe["log_format"] = message.replace("{", "{{").replace("}", "}}")
    safe["log_message"] = message
    return safe


@implementer(ILogObserver)
class RedactingObserver:
    """Passes every event through :func:`redact_event` to ``wrapped``."""

    def __init__(self, wrapped: Callable[[dict[str, Any]], None]) -> None:
        self.wrapped = wrapped

    def __call__(self, event: dict[str, Any]) -> None:
        self.wrapped(redact_event(dict(event)))


def _iso(ts: Optional[float]) -> str:
    when = datetime.fromtimestamp(ts if ts is not None else 0.0, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return redact(repr(value))


def event_as_json_line(event: dict[str, Any]) -> str:
    """One already-redacted event as a compact JSON line: ``ts``, ``level``,
    ``ns`` (logger namespace), ``msg``, the event's own fields, and
    ``failure``/``exc_type`` when it carries a failure."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "ts": _iso(event.get("log_time")),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "ns": event.get("log_namespace") or "",
        "msg": event.get("log_message", ""),
    }
    if event.get("isError") and record["level"] == "info":  # legacy log.err
        record["level"] = "error"
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in _LEGACY_KEYS:
            continue
        record[key] = _jsonable(value)
    if "log_failure_text" in event:
        record["failure"] = event["log_failure_text"]
        record["exc_type"] = event.get("log_failure_type")
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


_LEGACY_KEYS = frozenset({"message", "format", "isError", "system", "time", "why", "failure"})


def json_observer_for(out: IO[str]) -> RedactingObserver:
    """A redacting JSON-lines observer writing to ``out``."""
    return RedactingObserver(FileLogObserver(out, event_as_json_line))


def text_observer_for(out: IO[str]) -> RedactingObserver:
    """A redacting observer in Twisted's classic text format writing to ``out``."""

    def fmt(event: dict[str, Any]) -> Optional[str]:
        text = formatEventAsClassicLogText(event)
        if text and "log_failure_text" in event:
            text += event["log_failure_text"].rstrip("\n") + "\n"
        return text

    return RedactingObserver(FileLogObserver(out, fmt))


def json_observer() -> RedactingObserver:
    """Factory for ``twistd --logger imapsvc.log_output.json_observer`` (stdout)."""
    return json_observer_for(sys.stdout)


def text_observer() -> RedactingObserver:
    """Factory for ``twistd --logger imapsvc.log_output.text_observer`` (stdout)."""
    return text_observer_for(sys.stdout)


def observer_for_format(log_format: str, out: IO[str]) -> RedactingObserver:
    """The observer for an ``IMAPSVC_LOG_FORMAT`` value."""
    return text_observer_for(out) if log_format == "text" else json_observer_for(out)


# twistd takes its --logger as a dotted name and calls it without arguments,
# so the choice made while parsing ``twistd imapsvc`` options (format, log
# file) is parked here for :func:`twistd_observer`.
_twistd_target = {"format": "json", "logfile": "-"}


def set_twistd_target(log_format: str, logfile: str) -> None:
    """Choose what :func:`twistd_observer` builds (``logfile`` ``-`` = stdout)."""
    _twistd_target.update(format=log_format, logfile=logfile)


def twistd_observer() -> RedactingObserver:
    """Factory ``twistd imapsvc`` installs as ``--logger`` when none is given:
    the observer of ``IMAPSVC_LOG_FORMAT``, writing to ``--logfile`` or stdout."""
    logfile = _twistd_target["logfile"]
    if logfile == "-":
        out: IO[str] = sys.stdout
    else:
        out = open(logfile, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    return observer_for_format(_twistd_target["format"], out)
