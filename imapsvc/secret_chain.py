"""Where credentials are looked up: the service's own sealed store, then the
main app's secret providers (CONTRACT section 3; the providers themselves
are in :mod:`imapsvc.secret_providers`).

:class:`SecretChain` asks the service's own store first (the mounted
``IMAPSVC_SECRETS_DIR`` files and the sealed ``imap_secrets`` table, see
:class:`imapsvc.sealed_secrets.SecretStore`), then each provider of
``SECRET_READ_CHAIN``, and caches answers briefly;
:meth:`SecretChain.invalidate` drops a provider's answers after the IMAP
server refused them, so a password changed in the app is used at the next
login without a restart.

Nothing here logs or raises with a secret value; errors name secrets, paths
and variables only.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.interfaces import ISecretStore
from imapsvc.secret_providers import (
    DEFAULT_APP_PATH,
    DEFAULT_TENANT_TEMPLATE,
    ENV,
    FILESYSTEM,
    OWN_STORE,
    PROVIDER_NAMES,
    VAULT,
    CredentialsMissing,
    EnvSecrets,
    FilesystemSecrets,
    NoSecretStore,
    SecretBackendUnavailable,
    VaultSecrets,
    default_fs_base_path,
    vault_read_app_sync,
)

#: The provider names stay importable from here (callers met them here).
__all__ = [
    "DEFAULT_APP_PATH",
    "DEFAULT_TENANT_TEMPLATE",
    "ENV",
    "FILESYSTEM",
    "OWN_STORE",
    "PROVIDER_NAMES",
    "VAULT",
    "CredentialsMissing",
    "EnvSecrets",
    "FilesystemSecrets",
    "NoSecretStore",
    "SecretBackendUnavailable",
    "SecretChain",
    "VaultSecrets",
    "build_providers",
    "default_fs_base_path",
    "lookup_app_secret_sync",
    "vault_read_app_sync",
]


# -- the chain -----------------------------------------------------------------


@implementer(ISecretStore)
class SecretChain:
    """The service's own store, then the app's providers, cached.

    :param own: the service's :class:`~imapsvc.sealed_secrets.SecretStore`, or
        ``None`` without ``IMAPSVC_SECRET_KEY``.
    :param providers: the app's providers in ``SECRET_READ_CHAIN`` order.
    :param writer: the ``SECRET_WRITE_PROVIDER`` provider, or ``None`` (then
        writes go to ``own``).
    :param cache_s: how long an answer (also "not there") is reused.
    """

    log = Logger()

    def __init__(
        self,
        own: Any,
        providers: Sequence[Any],
        clock: Any,
        cache_s: float = 30.0,
        writer: Any = None,
    ):
        self.own = own
        self.providers = tuple(providers)
        self.writer = writer
        self._clock = clock
        self._cache_s = cache_s
        self._cache: dict[tuple[str, str], tuple[float, Optional[tuple[str, str]]]] = {}
        #: Lookups under way: the Deferreds waiting for each one's answer.
        self._finding: dict[tuple[str, str], list[defer.Deferred[Any]]] = {}

    @property
    def writable(self) -> bool:
        return self.writer is not None or self.own is not None

    def places(self, tenant: str, name: str) -> list[str]:
        """Where :meth:`find` looks, in order (for error messages)."""
        out = [OWN_STORE] if self.own is not None else []
        return out + [p.where(tenant, name) for p in self.providers]

    def find(self, tenant: str, name: str) -> defer.Deferred[Optional[tuple[str, str]]]:
        """``(value, source)`` of the first place holding ``name``, or
        ``None``. Lookups of one name while one is under way share its
        answer: the folders of a provider log in together (a reconnect
        storm), and each would otherwise read the same secret.

        :raises SecretBackendUnavailable: found nowhere, and a provider could
            not answer (it might have held it: not "missing").
        """
        key = (tenant, name)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self._clock.seconds():
            return defer.succeed(hit[1])
        d: defer.Deferred[Optional[tuple[str, str]]] = defer.Deferred()
        waiters = self._finding.get(key)
        if waiters is not None:
            waiters.append(d)
            return d
        waiters = self._finding[key] = [d]
        self._lookup(tenant, name).addBoth(self._found, key, waiters)
        return d

    def _found(self, result: Any, key: tuple[str, str], waiters: list[defer.Deferred[Any]]) -> None:
        if self._finding.get(key) is waiters:
            del self._finding[key]
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    @defer.inlineCallbacks
    def _lookup(self, tenant: str, name: str):  # type: ignore[no-untyped-def]
        key = (tenant, name)
        now = self._clock.seconds()
        found: Optional[tuple[str, str]] = None
        if self.own is not None:
            value = yield self.own.get(tenant, name)
            if value:
                found = (value, OWN_STORE)
        unavailable = []
        for provider in self.providers if found is None else ():
            try:
                value = yield provider.get(tenant, name)
            except SecretBackendUnavailable as e:
                # Like the app: go on down the chain; a later provider may have it.
                unavailable.append(str(e))
                self.log.warn("secret provider unavailable: {err}", err=str(e))
                continue
            if value:
                found = (value, provider.name)
                break
        if found is None and unavailable:
            raise SecretBackendUnavailable("; ".join(unavailable))
        if self._cache_s > 0:
            self._cache[key] = (now + self._cache_s, found)
        return found

    @defer.inlineCallbacks
    def find_in_providers(self, tenant: str, name: str):  # type: ignore[no-untyped-def]
        """``(value, source)`` from the app's providers only (not the own
        store, not cached), or ``None``; unavailable providers are skipped."""
        for provider in self.providers:
            try:
                value = yield provider.get(tenant, name)
            except SecretBackendUnavailable:
                continue
            if value:
                return value, provider.name
        return None

    def get(self, tenant: str, name: str) -> defer.Deferred:
        d = self.find(tenant, name)
        d.addCallback(lambda found: found[0] if found else None)
        return d

    def invalidate(self, tenant: str, provider_id: Optional[str] = None) -> None:
        """Forget cached answers of a tenant (of one provider's secrets when
        ``provider_id`` is given): the next lookup reads them again."""
        for cached in (self._cache, self._finding):
            for key in list(cached):
                if key[0] == tenant and (
                    provider_id is None or key[1].endswith("_" + provider_id)
                ):
                    # a lookup under way answers those already waiting only
                    del cached[key]

    @defer.inlineCallbacks
    def put(self, tenant: str, name: str, value: str):  # type: ignore[no-untyped-def]
        """Write to ``SECRET_WRITE_PROVIDER`` (so the app sees it too) and
        drop the service's own copy, which would otherwise shadow it (the
        own store is read first); without a write provider, to the own store.

        :raises NoSecretStore: nowhere to write.
        """
        self._cache.pop((tenant, name), None)
        self._finding.pop((tenant, name), None)
        if self.writer is not None:
            try:
                yield self.writer.put(tenant, name, value)
            except SecretBackendUnavailable as e:
                if self.own is None:
                    raise
                # A rotated refresh token must not be lost (the old one is
                # already revoked): keep it sealed; the own store is read
                # first, so the service goes on working; the app sees it at
                # the next rotation.
                self.log.warn(
                    "writing {name} to {writer} failed ({err}); sealed in the imapsvc store",
                    name=name,
                    writer=self.writer.name,
                    err=str(e),
                )
                yield self.own.put(tenant, name, value)
                return
            if self.own is not None:
                try:
                    yield self.own.delete(tenant, name)
                except Exception as e:
                    self.log.warn(
                        "dropping the superseded sealed copy of {name} failed: {err}",
                        name=name,
                        err=type(e).__name__,
                    )
            return
        if self.own is None:
            raise NoSecretStore(
                f"cannot store {name}: set SECRET_WRITE_PROVIDER or IMAPSVC_SECRET_KEY"
            )
        yield self.own.put(tenant, name, value)

    def delete(self, tenant: str, name: str) -> defer.Deferred:
        """Remove the service's own copy (the app's providers are the app's)."""
        self._cache.pop((tenant, name), None)
        if self.own is None:
            return defer.succeed(None)
        return defer.maybeDeferred(self.own.delete, tenant, name)


def build_providers(
    chain: Sequence[str],
    *,
    environ: Mapping[str, str],
    fs_base_path: str,
    env_prefix: str,
    vault: Optional[VaultSecrets],
) -> list[Any]:
    """The providers of ``SECRET_READ_CHAIN`` in order."""
    out: list[Any] = []
    for name in chain:
        if name == FILESYSTEM:
            out.append(FilesystemSecrets(fs_base_path))
        elif name == ENV:
            out.append(EnvSecrets(environ, env_prefix))
        elif name == VAULT:
            if vault is None:
                raise ValueError("vault is in the read chain but not configured")
            out.append(vault)
        else:
            raise ValueError(f"unknown secret provider {name!r}")
    return out


def lookup_app_secret_sync(
    name: str,
    chain: Sequence[str],
    *,
    environ: Mapping[str, str],
    fs_base_path: str,
    env_prefix: str,
    vault_addr: str = "",
    vault_token: str = "",
    vault_app_path: str = DEFAULT_APP_PATH,
    timeout_s: float = 5.0,
) -> tuple[Optional[str], str, list[str]]:
    """An app-wide secret (``db_password_server``, ``redis_password``) from
    the read chain, as the app's ``getAppSecret``: ``(value, where it was
    found, every place looked)``. Synchronous: used while loading settings.

    :raises SecretBackendUnavailable: a provider could not answer and no
        later one had the secret.
    """
    places: list[str] = []
    unavailable: list[str] = []
    for provider in chain:
        try:
            if provider == ENV:
                env = EnvSecrets(environ, env_prefix)
                where = env.where_app(name)
                value = env.read_app(name)
            elif provider == FILESYSTEM:
                fs = FilesystemSecrets(fs_base_path)
                where = fs.where_app(name)
                value = fs.read_app(name)
            elif provider == VAULT:
                where = f"vault {vault_app_path.strip('/')} key {name}"
                value = vault_read_app_sync(
                    vault_addr, vault_token, vault_app_path, name, timeout_s
                )
            else:
                continue
        except SecretBackendUnavailable as e:
            unavailable.append(str(e))
            places.append(where)
            continue
        places.append(where)
        if value:
            return value, where, places
    if unavailable:
        raise SecretBackendUnavailable("; ".join(unavailable))
    return None, "", places
