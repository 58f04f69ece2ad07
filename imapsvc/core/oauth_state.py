"""OAuth2 pieces without I/O: signed ``state``, PKCE, authorize URLs,
redirect allowlist, provider presets.

The ``state`` carries tenant, provider, return URL, a nonce and an expiry,
signed with HMAC-SHA256. Signature and expiry are checked here; single use
is the store's job (the nonce is consumed there, with the PKCE verifier that
never leaves the server).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any, Iterable, Optional
from urllib.parse import urlencode, urlsplit

import attr

STATE_TTL_S = 600

GOOGLE = {
    "authorize_url": "https://accounts.google.com/o/oauth2/v2/auth",
    "token_url": "https://oauth2.googleapis.com/token",
    "scopes": "https://mail.google.com/",
}
MICROSOFT = {
    "authorize_url": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
    "token_url": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
    "scopes": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
}
_PRESET_HOSTS = {
    "imap.gmail.com": GOOGLE,
    "imap.googlemail.com": GOOGLE,
    "outlook.office365.com": MICROSOFT,
    "imap-mail.outlook.com": MICROSOFT,
    "outlook.office.com": MICROSOFT,
}


class StateError(Exception):
    """The ``state`` is malformed, tampered with, expired or for another tenant."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def state_key(secret_setting: str) -> bytes:
    """Derive the state-signing key from the service secret (a separate
    purpose from sealing secrets, so one never doubles as the other)."""
    return hashlib.sha256(b"imapsvc oauth state\x00" + secret_setting.encode("utf-8")).digest()


@attr.s(frozen=True, auto_attribs=True)
class StateClaims:
    tenant: str
    provider_id: str
    nonce: str
    expires_at: int
    return_url: Optional[str] = None


def sign_state(key: bytes, claims: StateClaims) -> str:
    body = json.dumps(
        {
            "t": claims.tenant,
            "p": claims.provider_id,
            "n": claims.nonce,
            "e": claims.expires_at,
            "r": claims.return_url,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode("utf-8")
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return _b64(body) + "." + _b64(mac)


def verify_state(key: bytes, token: str, now: float) -> StateClaims:
    """Check signature and expiry; return the claims."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
        raise StateError("state is malformed")
    body_text, mac_text = token.split(".")
    try:
        body = _unb64(body_text)
        mac = _unb64(mac_text)
    except (ValueError, TypeError) as e:
        raise StateError("state is malformed") from e
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise StateError("state signature is invalid")
    try:
        data = json.loads(body)
        claims = StateClaims(
            tenant=str(data["t"]),
            provider_id=str(data["p"]),
            nonce=str(data["n"]),
            expires_at=int(data["e"]),
            return_url=data.get("r"),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise StateError("state is malformed") from e
    if now >= claims.expires_at:
        raise StateError("state has expired")
    return claims


def new_nonce() -> str:
    return _b64(os.urandom(24))


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier (43+ url-safe characters) and its S256 challenge."""
    verifier = _b64(os.urandom(48))
    return verifier, pkce_challenge(verifier)


def pkce_challenge(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def preset_for(host: str) -> Optional[dict[str, str]]:
    return _PRESET_HOSTS.get((host or "").lower().rstrip("."))


def endpoints(
    host: str,
    authorize_url: Optional[str],
    token_url: Optional[str],
    scopes: Optional[str],
) -> tuple[str, str, str]:
    """The provider's own URLs and scopes, filled from a preset when empty."""
    preset = preset_for(host) or {}
    auth = authorize_url or preset.get("authorize_url")
    token = token_url or preset.get("token_url")
    scope = scopes or preset.get("scopes") or ""
    if not auth or not token:
        raise ValueError("provider has no OAuth authorize/token URL and no preset for its host")
    return auth, token, scope


def authorize_url(
    base: str, client_id: str, redirect_uri: str, scopes: str, state: str, challenge: str,
    login_hint: Optional[str] = None,
) -> str:
    params: dict[str, Any] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scopes,
        "state": state,
        "access_type": "offline",
        "prompt": "consent",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if login_hint:
        params["login_hint"] = login_hint
    sep = "&" if urlsplit(base).query else "?"
    return base + sep + urlencode(params)


def redirect_allowed(url: str, allowlist: Iterable[str]) -> bool:
    """``url`` matches an allowlist entry: same scheme and host (and port),
    and its path starts at the entry's path on a segment boundary.

    Parsed, not string-prefixed: ``https://app.example.com.evil.net`` and
    ``https://app.example.com@evil.net`` do not match ``https://app.example.com``.
    """
    try:
        target = urlsplit(url)
        target_port = target.port
    except ValueError:
        return False
    if target.scheme not in ("https", "http") or not target.hostname or target.username:
        return False
    for entry in allowlist:
        entry = entry.strip()
        if not entry:
            continue
        try:
            allowed = urlsplit(entry)
            allowed_port = allowed.port
        except ValueError:
            continue
        if (target.scheme, target.hostname, target_port) != (
            allowed.scheme,
            allowed.hostname,
            allowed_port,
        ):
            continue
        prefix = allowed.path.rstrip("/")
        path = target.path or "/"
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return True
    return False
