"""Recovering a folder's session: OAuth2 token refresh-ahead, a refused
token's one retry, credentials refused or missing, quarantine after
repeated protocol violations, and how a failed session ends."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from imapsvc.core import folder_machine as M
from imapsvc.core.session_attempt import BYE, SessionAttempt
from imapsvc.folder.base import FolderBase, Stopping
from imapsvc.folder.options import FolderNotFound, describe
from imapsvc.interfaces import LeaseLost
from imapsvc.oauth import REFRESH_MARGIN_S
from imapsvc.secret_chain import CredentialsMissing

#: When an access token's lifetime is already inside the refresh margin at
#: login (a token endpoint handing out very short tokens), reconnect after
#: this long rather than at once: every login would refresh again.
TOKEN_RETRY_S = 60.0
#: Codes of credential-source errors that mean "there is nothing to refresh
#: the access token with": after the server refused the token, the refusal
#: then stands and counts.
NO_REFRESH_CODES = ("missing_credentials", "awaiting_consent")


class TokenRefreshDue(Exception):
    """The OAuth2 access token of this session expires soon: log out and
    log in again at once (the next login refreshes the token)."""


class SessionRecovery(FolderBase):
    """The recovery paths of :class:`imapsvc.folder.FolderService`."""

    violations: int
    quarantines: int
    _token_timer: Any
    attempt: SessionAttempt

    # -- OAuth2 refresh-ahead ----------------------------------------------------

    def _schedule_token_refresh(self, creds: Any) -> None:
        """After an OAuth2 login, plan a reconnect at ``expiry -
        REFRESH_MARGIN_S``: an IDLE session must not outlive its token (some
        servers drop it then, others stop delivering), and the next login's
        ``credentials()`` refreshes a token that is inside the margin."""
        if getattr(creds, "mechanism", None) not in ("xoauth2", "oauthbearer"):
            return
        expiry_of = getattr(self.credentials, "token_expiry", None)
        if expiry_of is None:
            return
        try:
            expiry = expiry_of(self.provider)
        except Exception:
            self.log.failure("{label}: reading the token expiry failed", label=self.label)
            return
        if expiry is None:
            return
        delay = float(expiry) - REFRESH_MARGIN_S - self.reactor.seconds()
        if delay <= 0:
            delay = TOKEN_RETRY_S
        if self._token_timer is not None and self._token_timer.active():
            self._token_timer.cancel()
        self._token_timer = self.reactor.callLater(delay, self._token_expiring)
        self.log.debug(
            "{label}: reconnecting for a token refresh in {delay:.0f}s",
            label=self.label,
            delay=delay,
        )

    def _token_expiring(self) -> None:
        self._token_timer = None
        if self._proto is None or self.machine.stopping:
            return
        self.log.info(
            "{label}: access token expires within {margin}s; reconnecting to refresh it",
            label=self.label,
            margin=REFRESH_MARGIN_S,
        )
        # Leave IDLE / the poll wait; a sync in progress finishes first (the
        # loop checks the flag before the next one).
        self._fire(M.TOKEN_EXPIRING)

    @defer.inlineCallbacks
    def _end_for_token_refresh(self, proto: Any):  # type: ignore[no-untyped-def]
        self._fire(M.PLAN_RECONNECT, why=M.TOKEN_REFRESH)
        # Reconnect at once, whichever way this connection ends.
        self.factory.set_next_delay(0)
        try:
            yield proto.logout()
        except Exception:
            pass  # closing anyway
        raise TokenRefreshDue()

    def _quarantine(self, why: str) -> str:
        """This server broke protocol limits ``quarantine_after`` sessions in
        a row: leave it alone for ``quarantine_ms`` (one hostile tenant must
        not cost the others CPU and memory on every reconnect)."""
        from datetime import UTC, datetime

        delay = self.options.quarantine_ms / 1000.0
        self.quarantined_until = self.reactor.seconds() + delay
        self.quarantines += 1
        self.factory.set_next_delay(delay, capped=False)
        self.attempt.quarantined()
        until = datetime.fromtimestamp(self.quarantined_until, tz=UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        text = f"quarantined until {until} after {self.violations} protocol violations: {why}"
        self.last_error = text
        self.log.error("{label}: {text}", label=self.label, text=text)
        self._hook("quarantined", self.quarantined_until, text)
        return text

    @defer.inlineCallbacks
    def _login_credentials(self):  # type: ignore[no-untyped-def]
        """This login's credentials; after the server refused an access
        token, a freshly refreshed one (once)."""
        if not self.attempt.force_token_refresh:
            creds = yield self.credentials.credentials(self.provider)
            return creds
        try:
            creds = yield self.credentials.credentials(self.provider, force_refresh=True)
        except Exception as e:
            # No refresh token to get a new access token with: the server's
            # refusal of the one we have stands.
            refusal = (
                self.attempt.refusal_stands()
                if getattr(e, "code", None) in NO_REFRESH_CODES else None
            )
            if refusal is not None:
                raise refusal from e
            raise  # e.g. token endpoint unreachable: retried, forced again
        self.attempt.token_refreshed()
        return creds

    def _forget_credentials(self) -> None:
        forget = getattr(self.credentials, "invalidate", None) or _noop
        try:
            forget(self.provider.tenant, self.provider.provider_id)
        except Exception:
            self.log.failure("{label}: dropping cached credentials failed", label=self.label)

    def _session_failed(self, failure: Failure, proto: Any) -> None:
        from imapsvc.imap import errors

        current = proto is self._proto
        if failure.check(Stopping) or self.machine.stopping:
            if current:
                self._lose(proto)
            return
        if failure.check(TokenRefreshDue):
            if current:
                self._lose(proto)
            return
        err = failure.value
        if not failure.check(errors.ConnectionGone, ConnectionDone, ConnectionLost):
            # Named by the error class (secret-free) for the reconnect metric;
            # a plain lost connection is counted as such when it ends.
            self.attempt.cause(type(err).__name__)
        text = describe(err)
        self.last_error = text
        if current:
            self.attempt.failed(text)
        if failure.check(CredentialsMissing):
            # Found nowhere: a configuration problem, not a refusal. Wait for
            # the supervisor's next discovery pass (which retries the login)
            # and never count it towards the auto-pause. The whole message
            # (names and places, bounded by construction) is the operator's
            # answer to "why": not cut like other errors.
            text = describe(err, limit=2000)
            self.last_error = text
            if current:
                self.attempt.failed(text)
            self._forget_credentials()
            self.factory.stopTrying()
            self._fire(M.REAUTH, "credentials missing", error=text)
            self._hook("credentials_missing", text)
        elif failure.check(errors.AuthenticationFailed) and self.attempt.retry_refused_token(err):
            # The token may have been revoked or rotated before its expiry:
            # one forced refresh and one retry before the refusal counts.
            self._forget_credentials()
            self._fire(M.PLAN_RECONNECT, why=M.TOKEN_REFUSED)
            self.factory.set_next_delay(0)
            self.log.info(
                "{label}: access token refused ({error}); refreshing it and retrying once",
                label=self.label,
                error=text,
            )
        elif failure.check(errors.AuthenticationFailed) or getattr(err, "auth_failure", False):
            # Read the credentials again at the next login: the app may have
            # changed the password meanwhile.
            self._forget_credentials()
            # Retrying bad credentials only locks the account: wait for the
            # supervisor (a new login attempt) instead. Credential-source
            # refusals (invalid_grant) count the same way.
            self.factory.stopTrying()
            self._fire(M.REAUTH, "authentication failed", error=text)
            code = getattr(err, "code", None) or "AUTHENTICATIONFAILED"
            self._hook("auth_failed", code, getattr(err, "text", "") or "")
        elif failure.check(LeaseLost):
            self.factory.stopTrying()
            self._fire(M.STOPPED_EVENT, "lease lost", error=text)
            self._hook("lease_lost")
        else:
            if failure.check(errors.ProtocolViolation) and (
                not getattr(err, "imapsvc_poison", False)
                or getattr(err, "imapsvc_poison_skipped", False)
            ):
                self.violations += 1
                if self.violations >= self.options.quarantine_after:
                    text = self._quarantine(text)
                    if current:
                        self.attempt.failed(text)
            if self.quarantined():
                pass  # the quarantine delay is already set
            elif failure.check(errors.Throttled) and err.retry_after is not None:
                self.factory.set_next_delay(err.retry_after)
            elif failure.check(
                errors.CleartextRefused,
                errors.TLSRequired,
                errors.MechanismUnsupported,
                FolderNotFound,
            ):
                # Configuration problems: do not hammer the server.
                self.factory.set_next_delay(self.options.reconnect_max_ms / 1000.0)
            if self.attempt.reconnect_reason == BYE and failure.check(
                errors.ConnectionGone, ConnectionDone, ConnectionLost
            ):
                # The server said BYE and closed (a restart, a shutdown): an
                # expected reconnect, not a warning per folder in a storm.
                self.log.info("{label}: session ended after BYE ({bye}): {error}",
                              label=self.label, bye=getattr(proto, "bye_text", None),
                              error=text)
            else:
                self.log.warn("{label}: session failed: {error}", label=self.label, error=text)
        if current:
            self._lose(proto)


def _noop(*_args: Any) -> None:
    return None
