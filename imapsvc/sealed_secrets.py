"""Per-provider secrets (CONTRACT section 3), encrypted at rest.

A secret is sealed with AES-256-GCM under the first key of
``IMAPSVC_SECRET_KEY``; any key in that list can open it, which is how keys
rotate (add the new key in front, re-seal at leisure, drop the old one). The
tenant and the secret's name are bound in as associated data, so a ciphertext
copied into another tenant's or provider's slot does not open.

Sealed layout: ``b"v1" | key id (8 bytes) | nonce (12 bytes) | ciphertext+tag``.

Sealed *text* (the access token in ``imap_email_provider_config.access_token``,
a column the main app also writes, in plaintext) starts with
:data:`SEALED_TEXT_PREFIX`, so a value the service wrote is told from the
app's by its first bytes. Values sealed before the prefix existed are
recognised only by opening with the right associated data (never by their
looks): see :meth:`SecretBox.classify_text`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Iterable, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from imapsvc.interfaces import ICiphertextStore, ISecretStore

VERSION = b"v1"
_KEY_ID_LEN = 8
_NONCE_LEN = 12

#: Marks text sealed by :meth:`SecretBox.seal_text`. ``:`` is not in the
#: base64 alphabet, and no OAuth access token the app stores starts with it.
SEALED_TEXT_PREFIX = "imapsvc-sealed:v1:"

#: :meth:`SecretBox.classify_text` answers.
TEXT_SEALED = "sealed"  # ours, opened
TEXT_PLAINTEXT = "plaintext"  # the app's, use as it is
TEXT_UNOPENABLE = "unopenable"  # ours (prefix), but no configured key opens it

_PROVIDER_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")


def password_name(provider_id: str) -> str:
    return "imap_password_" + _checked(provider_id)


def client_secret_name(provider_id: str) -> str:
    return "imap_oauth_client_secret_" + _checked(provider_id)


def refresh_token_name(provider_id: str) -> str:
    return "imap_refresh_token_" + _checked(provider_id)


def _checked(provider_id: str) -> str:
    # Names end up as file names in a mounted secrets directory: keep them tame.
    if not _PROVIDER_ID.match(provider_id):
        raise ValueError("provider id is not a uuid-like identifier")
    return provider_id


class SecretKeyError(ValueError):
    """A configured key is not 32 bytes of url-safe base64 (or hex)."""


class SecretDecryptError(Exception):
    """A sealed secret did not open with any configured key (wrong key,
    tampering, or the ciphertext belongs to another slot)."""


def parse_key(text: str) -> bytes:
    """Accept 32 raw bytes as url-safe base64 (44 chars) or 64 hex digits."""
    text = text.strip()
    raw: Optional[bytes] = None
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raw = bytes.fromhex(text)
    else:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (ValueError, TypeError):
            raw = None
    if raw is None or len(raw) != 32:
        raise SecretKeyError("a secret key must be 32 bytes, url-safe base64 or hex")
    return raw


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


class SecretBox:
    """Seal and open byte strings with a list of keys (first one seals)."""

    def __init__(self, keys: Iterable[bytes]):
        self._keys = [(hashlib.sha256(k).digest()[:_KEY_ID_LEN], AESGCM(k)) for k in keys]
        if not self._keys:
            raise SecretKeyError("at least one secret key is required")

    @classmethod
    def from_setting(cls, value: str) -> SecretBox:
        return cls(parse_key(part) for part in value.split(",") if part.strip())

    @staticmethod
    def _aad(tenant: str, name: str) -> bytes:
        return b"imapsvc-secret\x00" + tenant.encode("utf-8") + b"\x00" + name.encode("utf-8")

    def seal(self, tenant: str, name: str, plaintext: bytes) -> bytes:
        key_id, aead = self._keys[0]
        nonce = os.urandom(_NONCE_LEN)
        return VERSION + key_id + nonce + aead.encrypt(nonce, plaintext, self._aad(tenant, name))

    def open(self, tenant: str, name: str, sealed: bytes) -> bytes:
        sealed = bytes(sealed)
        head = len(VERSION) + _KEY_ID_LEN + _NONCE_LEN
        if len(sealed) < head + 16 or not sealed.startswith(VERSION):
            raise SecretDecryptError("sealed secret has an unknown layout")
        key_id = sealed[len(VERSION) : len(VERSION) + _KEY_ID_LEN]
        nonce = sealed[len(VERSION) + _KEY_ID_LEN : head]
        for candidate_id, aead in self._keys:
            if candidate_id != key_id:
                continue
            try:
                return aead.decrypt(nonce, sealed[head:], self._aad(tenant, name))
            except InvalidTag:
                break
        raise SecretDecryptError("sealed secret does not open with the configured keys")

    def needs_reseal(self, sealed: bytes) -> bool:
        """True when ``sealed`` was made with a key other than the first."""
        start = len(VERSION)
        return bytes(sealed)[start : start + _KEY_ID_LEN] != self._keys[0][0]

    # Text helpers, for columns of type text (the access token).
    def seal_text(self, tenant: str, name: str, text: str) -> str:
        sealed = base64.b64encode(self.seal(tenant, name, text.encode("utf-8"))).decode("ascii")
        return SEALED_TEXT_PREFIX + sealed

    def open_text(self, tenant: str, name: str, sealed: str) -> str:
        """Open :meth:`seal_text` output, with or without the prefix (values
        sealed before the prefix existed have none)."""
        if sealed.startswith(SEALED_TEXT_PREFIX):
            sealed = sealed[len(SEALED_TEXT_PREFIX) :]
        try:
            raw = base64.b64decode(sealed.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as e:
            raise SecretDecryptError("sealed text is not base64") from e
        return self.open(tenant, name, raw).decode("utf-8")

    def classify_text(self, tenant: str, name: str, value: str) -> tuple[str, Optional[str]]:
        """Whose is a text column value: ``(TEXT_SEALED, plaintext)`` when
        the service sealed it (the prefix, or a legacy value that opens
        with this slot's associated data), ``(TEXT_UNOPENABLE, None)`` for a
        prefixed value no configured key opens, else ``(TEXT_PLAINTEXT,
        value)``: the main app's own plaintext."""
        return classify_text(self, tenant, name, value)


def classify_text(
    box: Optional[SecretBox], tenant: str, name: str, value: str
) -> tuple[str, Optional[str]]:
    """:meth:`SecretBox.classify_text`, also without a box (no key
    configured): then only the prefix tells, and a prefixed value cannot be
    opened."""
    if value.startswith(SEALED_TEXT_PREFIX):
        if box is None:
            return TEXT_UNOPENABLE, None
        try:
            return TEXT_SEALED, box.open_text(tenant, name, value)
        except SecretDecryptError:
            return TEXT_UNOPENABLE, None
    if box is not None:
        # A legacy (unprefixed) sealed value authenticates under this slot's
        # tenant and name: a forgery or a plaintext token cannot.
        try:
            return TEXT_SEALED, box.open_text(tenant, name, value)
        except (SecretDecryptError, UnicodeDecodeError):
            pass
    return TEXT_PLAINTEXT, value


@implementer(ISecretStore)
class SecretStore:
    """Secrets in the store, sealed by a :class:`SecretBox`; optionally a
    directory of mounted files (Kubernetes secrets) that takes precedence.

    A mounted file is looked up as ``<dir>/<tenant>/<name>`` then
    ``<dir>/<name>``; files are plaintext (the cluster encrypts them).
    """

    log = Logger()

    def __init__(self, store: ICiphertextStore, box: SecretBox, secrets_dir: Optional[str] = None):
        self._store = store
        self._box = box
        self._dir = Path(secrets_dir) if secrets_dir else None

    def _mounted(self, tenant: str, name: str) -> Optional[str]:
        if self._dir is None:
            return None
        for path in (self._dir / tenant / name, self._dir / name):
            try:
                return path.read_text("utf-8").strip("\r\n")
            except FileNotFoundError:
                continue
            except OSError as e:
                self.log.warn("secret file {name} unreadable: {err}", name=name, err=e.strerror)
        return None

    @defer.inlineCallbacks
    def get(self, tenant: str, name: str):
        mounted = self._mounted(tenant, name)
        if mounted is not None:
            return mounted
        sealed = yield self._store.get_secret(tenant, name)
        if sealed is None:
            return None
        plaintext = self._box.open(tenant, name, sealed)
        if self._box.needs_reseal(sealed):
            # Rotation: move the secret to the current key on first read.
            yield self._store.put_secret(tenant, name, self._box.seal(tenant, name, plaintext))
        return plaintext.decode("utf-8")

    def put(self, tenant: str, name: str, value: str):
        sealed = self._box.seal(tenant, name, value.encode("utf-8"))
        return self._store.put_secret(tenant, name, sealed)

    def delete(self, tenant: str, name: str):
        return self._store.delete_secret(tenant, name)
