"""The value parsers of the settings table (:mod:`imapsvc.settings_table`):
each turns the non-empty text of one variable into its value, or raises
:class:`InvalidValue` with a message that does not repeat the value (the
loader in :mod:`imapsvc.config` adds it back for non-sensitive settings).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Callable
from urllib.parse import urlsplit

MASK = "***"


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent. ``str(error)`` is one
    line that names the variable and never contains a sensitive value."""


class InvalidValue(ValueError):
    """Raised by parsers; the loader turns it into a :class:`ConfigError`."""




def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InvalidValue("is not an integer") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise InvalidValue("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise InvalidValue("must be zero or a positive integer")
    return value


def connection_budget(text: str) -> int:
    value = _int(text)
    if value < 0 or value == 1:
        raise InvalidValue("must be 0 (off) or at least 2 (one shared connection and one more)")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise InvalidValue("is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise InvalidValue("must be between 0 and 1 (a fraction, e.g. 0.1 for 10%)")
    return value


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidValue("must be one of true/false/1/0/yes/no")


def port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise InvalidValue("must be a port number between 1 and 65535")
    return value


def string(text: str) -> str:
    return text.strip()


def _url(schemes: tuple[str, ...], need_host: bool) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise InvalidValue("is not a valid URL") from None
        if parts.scheme.lower() not in schemes:
            starts = " or ".join(s + "://" for s in schemes)
            raise InvalidValue("must be a URL starting with " + starts)
        if need_host and not parts.hostname:
            raise InvalidValue("must name a host")
        return text

    return parse


postgres_url = _url(("postgres", "postgresql"), need_host=False)
redis_url = _url(("redis", "rediss"), need_host=False)
http_url = _url(("http", "https"), need_host=True)


def comma_list(item: Callable[[str], str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        out = []
        for piece in text.split(","):
            piece = piece.strip()
            if piece:
                out.append(item(piece))
        return tuple(out)

    return parse


def host_name(text: str) -> str:
    if any(c.isspace() for c in text) or "/" in text:
        raise InvalidValue("must be a comma-separated list of host names")
    return text.lower()


def tenant_uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidValue("must be a comma-separated list of tenant UUIDs") from None


def secret_key_text(text: str) -> str:
    # Checked here so a bad key stops start-up rather than the first secret
    # write; the key itself never reaches the message.
    from imapsvc.sealed_secrets import SecretKeyError, parse_key

    try:
        parse_key(text)
    except SecretKeyError:
        raise InvalidValue(
            "each key must be 32 bytes as url-safe base64 (44 chars) or hex"
        ) from None
    return text


#: Admin tokens that are examples, not secrets (compared case-insensitively,
#: ignoring "-" and "_"): start-up refuses them whatever their length.
_PLACEHOLDER_TOKENS = frozenset(
    {"replaceme", "changeme", "changeit", "secret", "password", "token", "admin", "example",
     "xxx", "todo", "dev", "devtoken", "test", "testtoken", "admintoken", "default"}
)
MIN_ADMIN_TOKEN = 32


def admin_token(text: str) -> str:
    text = text.strip()
    squashed = text.lower().replace("-", "").replace("_", "")
    if any(p in squashed for p in ("replaceme", "changeme", "changeit", "placeholder")) or (
        squashed in _PLACEHOLDER_TOKENS or len(set(squashed)) <= 2
    ):
        raise InvalidValue("is a placeholder, not a secret: generate one, e.g. "
                       "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if len(text) < MIN_ADMIN_TOKEN:
        raise InvalidValue(f"must be at least {MIN_ADMIN_TOKEN} characters (a random secret)")
    return text


def cidr_or_host(text: str) -> str:
    from imapsvc.core.netguard import parse_allow_entry

    try:
        parse_allow_entry(text)
    except ValueError:
        raise InvalidValue("must be a comma-separated list of CIDRs (10.0.0.0/8), addresses "
                       "or host names") from None
    return text.strip().lower()


def object_store_url(text: str) -> str:
    """An http(s) S3 endpoint without credentials in it (they come from the
    AWS variables, which are never printed)."""
    text = http_url(text)
    if "@" in urlsplit(text).netloc:
        raise InvalidValue(
            "must not carry credentials (use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        )
    return text


def object_prefix(text: str) -> str:
    """An object key prefix: ``/``-separated segments, none ``.`` or ``..``."""
    text = text.strip().strip("/")
    if any(seg in (".", "..", "") for seg in text.split("/")) and text:
        raise InvalidValue("must not contain empty, '.' or '..' segments")
    return text


def choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in values:
            raise InvalidValue("must be one of " + ", ".join(values))
        return lowered

    return parse


def write_back_mode(text: str) -> str:
    """``none`` | ``seen`` | ``delete`` | ``move:<folder>`` (issue 13 item 3)."""
    from imapsvc.core.write_back import parse_mode

    try:
        return str(parse_mode(text))
    except ValueError as e:
        raise InvalidValue(str(e)) from None


def existing_file(text: str) -> str:
    text = text.strip()
    if not os.path.isfile(text):
        raise InvalidValue("names a file that does not exist")
    return text


def existing_dir(text: str) -> str:
    text = text.strip()
    if not os.path.isdir(text):
        raise InvalidValue("names a directory that does not exist")
    return text


def fs_base_path_default() -> str:
    from imapsvc.secret_chain import default_fs_base_path

    return default_fs_base_path()


def worker_id(text: str) -> str:
    text = text.strip()
    if len(text) > 255:  # lease_owner is varchar(255)
        raise InvalidValue("must be at most 255 characters")
    return text


def default_worker_id() -> str:
    """``<hostname>-<pid>``: unique per process, readable in ``lease_owner``."""
    return f"{socket.gethostname()}-{os.getpid()}"
