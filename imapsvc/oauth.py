"""OAuth2 authorization-code flow for IMAP mailboxes, and the credential
source the folders log in with. The token endpoint client and token
storage are in :mod:`imapsvc.oauth_tokens`.

HTTP goes through an injected treq-style client (``treq`` itself, an
``HTTPClient``, or ``StubTreq`` in tests). Secrets go through the secret
store, normally a :class:`imapsvc.secret_chain.SecretChain` (the service's
sealed store, then the main app's providers); the row's plaintext columns
(``oauth_client_secret``, ``refresh_token``, ``access_token``), which the
main app writes, are the last place looked. The service's own access token
is kept sealed in ``access_token`` (recognisable by its prefix), and never
over an access token the app wrote there. Nothing here logs a token, a
code, a verifier or a client secret.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlencode

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core import oauth_state as o
from imapsvc.core.netguard import InsecureURL, check_https_url
from imapsvc.interfaces import ICredentialSource, ISecretStore, IStore
from imapsvc.model import Credentials, ProviderConfig
from imapsvc.oauth_tokens import (
    AUTH_FAILURE_CODES,
    MAX_TOKEN_RESPONSE_BYTES,
    TokenClient,
    TokenEndpointError,
    access_token_name,
    row_token_is_apps,
    store_tokens,
    utc,
)
from imapsvc.sealed_secrets import (
    TEXT_UNOPENABLE,
    SecretBox,
    classify_text,
    client_secret_name,
    password_name,
    refresh_token_name,
)
from imapsvc.secret_chain import OWN_STORE, CredentialsMissing, NoSecretStore

CALLBACK_PATH = "/api/email/oauth/imap/callback"
#: Where ``initiate``'s ``authUrl`` points: this service sets the browser
#: binding cookie there and redirects to the provider (see OAuthFlow.start).
START_PATH = "/api/email/oauth/imap/start"
#: Refresh before connecting when the token expires within this margin.
REFRESH_MARGIN_S = 300

#: Callers and tests import the token names from here too.
__all__ = [
    "AUTH_FAILURE_CODES",
    "AWAITING_CONSENT",
    "CALLBACK_PATH",
    "REFRESH_MARGIN_S",
    "START_PATH",
    "MAX_TOKEN_RESPONSE_BYTES",
    "AwaitingConsent",
    "CredentialSource",
    "MissingCredentials",
    "NoSecretKey",
    "OAuthError",
    "OAuthFlow",
    "TokenClient",
    "TokenEndpointError",
    "access_token_name",
    "row_token_is_apps",
    "store_tokens",
]

#: The auth-failure code of a provider still waiting for its first consent.
AWAITING_CONSENT = "awaiting_consent"


class OAuthError(Exception):
    """A flow step failed; ``status`` is the HTTP status to answer with and
    the message is safe to show (no secrets)."""

    def __init__(self, status: int, message: str, code: str = "oauth_error"):
        super().__init__(message)
        self.status = status
        self.code = code


#: The former name of :class:`~imapsvc.secret_chain.CredentialsMissing`: a
#: credential found nowhere (not an authentication failure).
MissingCredentials = CredentialsMissing

#: How the row's plaintext columns are named in "looked up in" messages.
ROW = "imap_email_provider_config"


class NoSecretKey(Exception):
    """``IMAPSVC_SECRET_KEY`` is not configured: no stored credential can be
    opened. A configuration problem, not an authentication failure."""

    auth_failure = False
    code = "no_secret_key"


class AwaitingConsent(CredentialsMissing):
    """An OAuth2 provider that was never consented to (no token of any kind
    yet): it waits for the operator, and does not count towards the
    auto-pause for repeated authentication failures."""

    code = AWAITING_CONSENT


def _places(secret_store: Any, tenant: str, name: str) -> list[str]:
    places = getattr(secret_store, "places", None)
    return list(places(tenant, name)) if places is not None else [OWN_STORE]


class OAuthFlow:
    """Initiate and callback of the authorization-code flow with PKCE."""

    log = Logger()

    def __init__(
        self,
        store,
        secret_store,
        box: SecretBox,
        http: Any,
        clock,
        state_key: bytes,
        public_base_url: str,
        redirect_allowlist: Sequence[str],
        on_connected: Optional[Callable[[str, str], Any]] = None,
        allow_http_loopback: bool = False,
    ):
        self._store = store
        self._secrets = secret_store
        self._box = box
        self._allow_http_loopback = allow_http_loopback
        self._tokens = TokenClient(http, clock=clock, allow_http_loopback=allow_http_loopback)
        self._clock = clock
        self._key = state_key
        self._base = public_base_url.rstrip("/")
        self._allow = list(redirect_allowlist)
        self._on_connected = on_connected

    @property
    def redirect_uri(self) -> str:
        return self._base + CALLBACK_PATH

    @defer.inlineCallbacks
    def _oauth_provider(self, tenant: str, provider_id: str):
        provider = yield self._store.get_provider(tenant, provider_id)
        if provider is None:
            raise OAuthError(404, "unknown provider", "unknown_provider")
        if provider.auth_type != "oauth2":
            raise OAuthError(400, "provider does not use OAuth2", "not_oauth2")
        if not provider.oauth_client_id:
            raise OAuthError(400, "provider has no OAuth client id", "no_client_id")
        try:
            urls = o.endpoints(
                provider.host,
                provider.oauth_authorize_url,
                provider.oauth_token_url,
                provider.oauth_scopes,
            )
        except ValueError as e:
            raise OAuthError(400, str(e), "no_endpoints") from e
        for url, what in ((urls[0], "authorize URL"), (urls[1], "token URL")):
            try:
                check_https_url(url, "the provider's OAuth " + what, self._allow_http_loopback)
            except InsecureURL as e:
                raise OAuthError(400, str(e), "insecure_endpoint") from e
        return provider, urls

    def _return_allowed(self, url: str) -> bool:
        return o.redirect_allowed(url, self._allow, self._allow_http_loopback)

    @defer.inlineCallbacks
    def initiate(self, tenant: str, provider_id: str, return_url: Optional[str] = None):
        """Start a flow. ``authUrl`` is this service's start route (which
        binds the flow to the browser that opens it, then redirects to the
        provider); ``state`` is the unbound state it carries."""
        if return_url and not self._return_allowed(return_url):
            raise OAuthError(400, "redirect URL is not in the allowlist", "redirect_refused")
        yield self._oauth_provider(tenant, provider_id)  # refuse unusable providers now
        nonce = o.new_nonce()
        verifier, challenge = o.pkce_pair()
        expires = int(self._clock.seconds()) + o.STATE_TTL_S
        yield self._store.put_oauth_state(tenant, nonce, verifier, utc(expires))
        state = o.sign_state(
            self._key,
            o.StateClaims(tenant, provider_id, nonce, expires, return_url or None, challenge),
        )
        url = self._base + START_PATH + "?" + urlencode({"state": state})
        return {"success": True, "authUrl": url, "provider": "imap", "state": state}

    @defer.inlineCallbacks
    def start(self, state: Optional[str]):
        """The browser opens ``authUrl``: bind the flow to it.

        Returns ``(provider_url, cookie_name, cookie_value)``: the caller
        sets the cookie (HttpOnly, Secure, SameSite=Lax) and redirects. The
        provider sees a new state carrying the cookie's hash; the callback
        accepts only that one, and only with the cookie.
        """
        claims = self._verified(state)
        if claims.binding is not None or not claims.challenge:
            raise OAuthError(400, "state cannot start a flow", "invalid_state")
        provider, (auth_url, _token_url, scopes) = yield self._oauth_provider(
            claims.tenant, claims.provider_id
        )
        secret = o.new_binding()
        bound = o.sign_state(self._key, attr.evolve(claims, binding=o.binding_hash(secret)))
        url = o.authorize_url(
            auth_url,
            provider.oauth_client_id,
            self.redirect_uri,
            scopes,
            bound,
            claims.challenge,
            login_hint=o.consenting_account(provider) or None,
        )
        return url, o.binding_cookie_name(claims.nonce), secret

    def _check_identity(self, provider: ProviderConfig, tokens: dict) -> None:
        """Consent given by another account than the one expected (the row's
        ``username``, or the shared mailbox's ``oauth_delegate``), where the
        provider says whose it is: nothing is stored. The login name is never
        taken from the token: a shared mailbox logs in as ``username``."""
        identity = o.granted_identity(tokens)
        if not o.identity_matches(identity, o.consenting_account(provider)):
            self.log.warn(
                "OAuth consent for {tenant}/{provider} was given for another account",
                tenant=provider.tenant, provider=provider.provider_id,
            )
            raise OAuthError(
                400, "the account that granted access is not this mailbox's user",
                "identity_mismatch",
            )

    def _verified(self, state: Optional[str], tenant: Optional[str] = None) -> o.StateClaims:
        try:
            claims = o.verify_state(self._key, state or "", self._clock.seconds())
        except o.StateError as e:
            raise OAuthError(400, str(e), "invalid_state") from e
        if tenant is not None and tenant != claims.tenant:
            raise OAuthError(400, "state belongs to another tenant", "invalid_state")
        return claims

    @defer.inlineCallbacks
    def callback(
        self,
        code: Optional[str],
        state: Optional[str],
        error: Optional[str] = None,
        tenant: Optional[str] = None,
        iss: Optional[str] = None,
        cookie: Callable[[str], Optional[str]] = lambda name: None,
    ):
        """Finish the flow. Returns the URL to redirect to, or ``None`` when
        no return URL was given (answer with a plain success page).

        Refusals that a third party can cause (tampered or foreign state, a
        browser without the binding cookie, a mixed-up issuer) change
        nothing: they come before the state is consumed.
        """
        claims = self._verified(state, tenant)
        if not o.binding_matches(claims, cookie(o.binding_cookie_name(claims.nonce))):
            raise OAuthError(
                400, "this sign-in was started in another browser (or its cookie is gone): "
                "start it again", "invalid_state",
            )
        provider, (auth_url, token_url, _scopes) = yield self._oauth_provider(
            claims.tenant, claims.provider_id
        )
        if iss is not None and not o.issuer_matches(iss, auth_url):
            # RFC 9207: the answer comes from another authorization server.
            raise OAuthError(400, "authorization response from an unexpected issuer",
                             "issuer_mismatch")
        if claims.return_url and not self._return_allowed(claims.return_url):
            raise OAuthError(400, "redirect URL is not in the allowlist", "redirect_refused")
        # Single use: consumed before anything else can fail, so a replayed
        # state is refused even when the first attempt did not finish.
        verifier = yield self._store.take_oauth_state(claims.tenant, claims.nonce)
        if verifier is None:
            raise OAuthError(400, "state was already used or is unknown", "invalid_state")
        if error:
            raise OAuthError(400, "authorization was not granted", "access_denied")
        if not code:
            raise OAuthError(400, "missing authorization code", "missing_code")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": provider.oauth_client_id,
            "code_verifier": verifier,
        }
        client_secret = yield self._secrets.get(
            provider.tenant, client_secret_name(provider.provider_id)
        )
        client_secret = client_secret or provider.oauth_client_secret  # the app's column
        if client_secret:
            form["client_secret"] = client_secret
        try:
            tokens = yield self._tokens.post(token_url, form)
        except TokenEndpointError as e:
            raise OAuthError(502, f"token exchange failed: {e.code}", "token_exchange") from e
        except Exception as e:
            raise OAuthError(502, "token endpoint unreachable", "token_exchange") from e
        self._check_identity(provider, tokens)
        yield store_tokens(self._store, self._secrets, self._box, self._clock, provider, tokens)
        yield self._store.reset_auth_failures(provider.tenant, provider.provider_id)
        yield self._store.set_provider_status(provider.tenant, provider.provider_id, "connected")
        if self._on_connected is not None:
            self._on_connected(provider.tenant, provider.provider_id)
        self.log.info(
            "OAuth tokens stored for provider {tenant}/{provider}",
            tenant=provider.tenant,
            provider=provider.provider_id,
        )
        return claims.return_url


@implementer(ICredentialSource)
class CredentialSource:
    """Passwords from the secret store; OAuth2 access tokens refreshed when
    they expire within :data:`REFRESH_MARGIN_S`, one refresh at a time per
    provider."""

    log = Logger()

    def __init__(
        self, store: IStore, secret_store: ISecretStore, box: Optional[SecretBox], http: Any,
        clock,
        allow_http_loopback: bool = False, owner: Optional[str] = None,
    ):
        self._store = store
        #: This worker's lease owner id: refreshed tokens are written fenced.
        self._owner = owner
        self._secrets = secret_store
        self._box = box
        self._tokens = TokenClient(http, clock=clock, allow_http_loopback=allow_http_loopback)
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._inflight: dict[tuple[str, str], list[defer.Deferred]] = {}

    def token_expiry(self, provider: ProviderConfig) -> Optional[float]:
        """When the access token handed out last expires (for refresh-ahead)."""
        cached = self._cache.get(provider.key)
        return cached[1] if cached else None

    def invalidate(self, tenant: str, provider_id: str) -> None:
        """The server refused this provider's credentials (or they were
        missing): forget what was cached, so the next login reads the
        password or tokens again (a password changed in the app is used
        without a restart)."""
        forget = getattr(self._secrets, "invalidate", None)
        if forget is not None:
            forget(tenant, provider_id)
        self._cache.pop((tenant, provider_id), None)

    @defer.inlineCallbacks
    def credentials(self, provider: ProviderConfig, force_refresh: bool = False):
        """The login; ``force_refresh`` (after the server refused an access
        token) refreshes the OAuth2 token whatever its expiry says. The
        mechanism is ``xoauth2`` for any token: the IMAP client picks
        XOAUTH2 or OAUTHBEARER from ``IMAP_OAUTH_AUTH_MECHANISM``."""
        if self._secrets is None:
            raise NoSecretKey("IMAPSVC_SECRET_KEY is not set: stored credentials cannot be read")
        if provider.auth_type == "oauth2":
            token = yield self.access_token(provider, force_refresh=force_refresh)
            return Credentials("xoauth2", provider.username, token)
        name = password_name(provider.provider_id)
        password = yield self._secrets.get(provider.tenant, name)
        if not password:
            raise CredentialsMissing(
                [(name, _places(self._secrets, provider.tenant, name))], "no password found"
            )
        return Credentials("password", provider.username, password)

    def access_token(self, provider: ProviderConfig, force_refresh: bool = False):
        now = self._clock.seconds()
        if not force_refresh:
            # The later-expiring of this process's cache and the stored row:
            # the row is newer after a re-consent, the cache after a refresh
            # (the row in ``provider`` may be a discovery pass behind).
            known = [c for c in (self._cache.get(provider.key), self._from_row(provider)) if c]
            cached = max(known, key=lambda c: c[1]) if known else None
            if cached and cached[1] - now > REFRESH_MARGIN_S:
                # Remember it so token_expiry() answers for this token too.
                self._cache[provider.key] = cached
                return defer.succeed(cached[0])
        waiter: defer.Deferred = defer.Deferred()
        waiters = self._inflight.get(provider.key)
        if waiters is not None:
            # A refresh is already running for this provider: share it.
            waiters.append(waiter)
            return waiter
        self._inflight[provider.key] = [waiter]

        def done(result):
            for w in self._inflight.pop(provider.key, []):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        self._refresh(provider).addBoth(done)
        return waiter

    @defer.inlineCallbacks
    def _apps_refresh_token(self, provider: ProviderConfig, refused: str):
        """A refresh token from the app's providers or row other than
        ``refused``, or ``None``."""
        alternative = None
        outside = getattr(self._secrets, "find_in_providers", None)
        if outside is not None:
            found = yield outside(provider.tenant, refresh_token_name(provider.provider_id))
            alternative = found[0] if found else None
        alternative = alternative or provider.refresh_token
        return alternative if alternative and alternative != refused else None

    def _from_row(self, provider: ProviderConfig) -> Optional[tuple[str, float]]:
        if not provider.access_token or provider.token_expires_at is None:
            return None
        kind, token = classify_text(
            self._box, provider.tenant, access_token_name(provider.provider_id),
            provider.access_token,
        )
        if kind == TEXT_UNOPENABLE or token is None:
            # Sealed by the service under a key no longer configured: refresh.
            return None
        # Ours (sealed), or the app's plaintext token: used as it is while valid.
        return token, provider.token_expires_at.timestamp()

    @defer.inlineCallbacks
    def _refresh(self, provider: ProviderConfig):
        if self._secrets is None:
            raise NoSecretKey("IMAPSVC_SECRET_KEY is not set: tokens cannot be stored")
        tenant, name = provider.tenant, refresh_token_name(provider.provider_id)
        find = getattr(self._secrets, "find", None)
        if find is not None:
            found = yield find(tenant, name)
            refresh, source = found if found else (None, None)
        else:
            refresh, source = (yield self._secrets.get(tenant, name)), OWN_STORE
        if not refresh:
            # Last resort: the plaintext column the app writes after its consent.
            refresh = provider.refresh_token
        if not refresh:
            places = _places(self._secrets, tenant, name) + [f"{ROW}.refresh_token"]
            if not provider.access_token:
                raise AwaitingConsent(
                    [(name, places), ("access_token", [f"{ROW}.access_token"])],
                    "waiting for the mailbox owner's OAuth consent",
                )
            raise CredentialsMissing(
                [(name, places)], "the access token expired and no refresh token was found"
            )
        if not getattr(self._secrets, "writable", self._box is not None):
            # The endpoint may rotate the refresh token; with nowhere to keep
            # the new one the grant would be lost: do not refresh at all.
            raise NoSecretStore(
                f"cannot store a rotated {name}: set SECRET_WRITE_PROVIDER or IMAPSVC_SECRET_KEY"
            )
        _a, token_url, _s = o.endpoints(
            provider.host,
            provider.oauth_authorize_url,
            provider.oauth_token_url,
            provider.oauth_scopes,
        )
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": provider.oauth_client_id or "",
        }
        secret = yield self._secrets.get(provider.tenant, client_secret_name(provider.provider_id))
        secret = secret or provider.oauth_client_secret  # the app's plaintext column
        if secret:
            form["client_secret"] = secret
        try:
            tokens = yield self._tokens.post(token_url, form)
        except TokenEndpointError as e:
            # The service's own (sealed) refresh token is read first; after
            # a re-consent in the app it may be stale while the app's store
            # or row holds the live one. Try that one once before failing.
            alternative = None
            if e.auth_failure and source == OWN_STORE:
                alternative = yield self._apps_refresh_token(provider, refresh)
            if alternative is None:
                raise
            form["refresh_token"] = alternative
            tokens = yield self._tokens.post(token_url, form)
            if not tokens.get("refresh_token"):
                # Not rotated: the app's token is the live one; drop the
                # stale sealed copy that would shadow it.
                yield self._secrets.delete(tenant, name)
            self.log.info(
                "{tenant}/{provider}: the sealed refresh token was refused; the app's worked",
                tenant=tenant,
                provider=provider.provider_id,
            )
        access, expires = yield store_tokens(
            self._store, self._secrets, self._box, self._clock, provider, tokens, self._owner
        )
        self._cache[provider.key] = (access, expires)
        self.log.info(
            "access token refreshed for {tenant}/{provider}, valid {seconds}s",
            tenant=provider.tenant,
            provider=provider.provider_id,
            seconds=int(expires - self._clock.seconds()),
        )
        return access
