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
from typing import Any, Iterable, Mapping, Optional
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
    #: The PKCE challenge (public), so the start route can build the
    #: provider's authorize URL without the verifier.
    challenge: Optional[str] = None
    #: Hash of the browser-binding cookie (set by the start route); a state
    #: without it is not accepted by the callback.
    binding: Optional[str] = None


def sign_state(key: bytes, claims: StateClaims) -> str:
    fields: dict[str, Any] = {
        "t": claims.tenant,
        "p": claims.provider_id,
        "n": claims.nonce,
        "e": claims.expires_at,
        "r": claims.return_url,
    }
    if claims.challenge is not None:
        fields["c"] = claims.challenge
    if claims.binding is not None:
        fields["b"] = claims.binding
    body = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode("utf-8")
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
            challenge=data.get("c"),
            binding=data.get("b"),
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


# -- browser binding (RFC 9700 section 4.7) -----------------------------------

#: Cookie name prefix; the name carries part of the flow's nonce, so two
#: flows started in one browser do not overwrite each other's cookie.
BINDING_COOKIE_PREFIX = "imapsvc_oauth_"


def new_binding() -> str:
    """A random secret for the browser-binding cookie."""
    return _b64(os.urandom(32))


def binding_hash(secret: str) -> str:
    return _b64(hashlib.sha256(b"imapsvc oauth binding\x00" + secret.encode("utf-8")).digest())


def binding_cookie_name(nonce: str) -> str:
    safe = "".join(c for c in nonce if c.isalnum())[:16]
    return BINDING_COOKIE_PREFIX + safe


def binding_matches(claims: StateClaims, cookie: Optional[str]) -> bool:
    if not claims.binding or not cookie:
        return False
    return hmac.compare_digest(claims.binding, binding_hash(cookie))


# -- issuer (RFC 9207) ------------------------------------------------------------


def _origin(url: str) -> Optional[tuple[str, str, Optional[int]]]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return parts.scheme.lower(), parts.hostname.lower().rstrip("."), port or default


def issuer_matches(iss: str, authorize_url: str) -> bool:
    """``iss`` of an authorization response names the server the flow was
    started with: the same origin as its authorize URL (the service has no
    separate issuer setting; Microsoft's issuers carry a tenant path)."""
    got, want = _origin(iss), _origin(authorize_url)
    return got is not None and got == want


# -- return URL -----------------------------------------------------------------------

_BAD_PATH_MARKERS = ("%2e", "%2f", "%5c", "\\", "//")


def _clean_path(path: str) -> Optional[str]:
    """The path with a trailing slash dropped, or ``None`` when it has dot
    segments, encoded dots/slashes or doubled slashes (ambiguous: browsers,
    proxies and apps resolve them differently)."""
    lowered = path.lower()
    if any(m in lowered for m in _BAD_PATH_MARKERS):
        return None
    if any(seg in (".", "..") for seg in path.split("/")):
        return None
    return path.rstrip("/") or "/"


def redirect_allowed(url: str, allowlist: Iterable[str], allow_http_loopback: bool = False) -> bool:
    """``url`` is an allowlist entry: the same scheme, host, port and path,
    after normalisation; a query is allowed (the app's own context), a
    fragment, user info, dot segments or encoded slashes are not. https only
    (http to a loopback host with ``allow_http_loopback``: tests).

    Parsed, never string-prefixed: ``https://app.example.com.evil.net``,
    ``https://app.example.com@evil.net`` and ``/allowed/../x`` do not match.
    """
    from imapsvc.core.netguard import is_loopback_host

    try:
        target = urlsplit(url)
        target_port = target.port
    except ValueError:
        return False
    if not target.hostname or target.username is not None or target.fragment or "#" in url:
        return False
    scheme = target.scheme.lower()
    if scheme != "https" and not (
        scheme == "http" and allow_http_loopback and is_loopback_host(target.hostname)
    ):
        return False
    path = _clean_path(target.path or "/")
    if path is None:
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
        if (scheme, target.hostname.lower(), target_port) != (
            allowed.scheme.lower(),
            (allowed.hostname or "").lower(),
            allowed_port,
        ):
            continue
        if path == _clean_path(allowed.path or "/"):
            return True
    return False


# -- granted identity -----------------------------------------------------------------

#: id_token claims naming the account, in order of preference (Google and
#: most providers: email; Microsoft: preferred_username / upn).
_IDENTITY_CLAIMS = ("email", "preferred_username", "upn")


def granted_identity(tokens: Mapping[str, Any]) -> Optional[str]:
    """The account the grant is for, from the token response's ``id_token``
    (payload only: it came straight from the token endpoint over TLS, OpenID
    Connect Core 3.1.3.7), or ``None`` when there is none or it is unreadable."""
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str) or id_token.count(".") != 2 or len(id_token) > 16384:
        return None
    try:
        claims = json.loads(_unb64(id_token.split(".")[1]))
    except (ValueError, TypeError):
        return None
    if not isinstance(claims, dict):
        return None
    for name in _IDENTITY_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and "@" in value:
            return value
    return None


def consenting_account(provider: Any) -> str:
    """Who signs in to give the consent: for a Microsoft 365 shared mailbox
    the delegate (``oauth_delegate``), whose token then opens the mailbox
    named by ``username``; otherwise the mailbox's own ``username``."""
    delegate = (getattr(provider, "oauth_delegate", None) or "").strip()
    return delegate or str(provider.username or "")


def identity_matches(identity: Optional[str], username: Optional[str]) -> bool:
    """True unless both are known e-mail addresses and differ (case-insensitive):
    consent given for another mailbox than the row's ``username``."""
    if not identity or not username or "@" not in username:
        return True
    return identity.strip().lower() == username.strip().lower()
