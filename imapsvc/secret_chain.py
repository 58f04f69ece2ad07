"""Where credentials are looked up: the service's own sealed store, then the
main app's secret providers (CONTRACT section 3).

The app keeps tenant secrets in its *secret providers*, named in
``SECRET_READ_CHAIN`` (tried in order) and ``SECRET_WRITE_PROVIDER``:

- ``filesystem``: ``<SECRET_FS_BASE_PATH>/tenants/<tenantId>/<name>``, one
  file per secret (app-wide secrets: ``<SECRET_FS_BASE_PATH>/<name>``);
- ``vault``: HashiCorp Vault KV v2, one document per tenant at
  ``VAULT_TENANT_SECRET_PATH_TEMPLATE`` (app-wide: ``VAULT_APP_SECRET_PATH``),
  the secret is ``data.data[<name>]``;
- ``env``: environment variables ``[<SECRET_ENV_PREFIX>_]TENANT_<tenantId>_<name>``
  (app-wide: ``[<SECRET_ENV_PREFIX>_]<name>``), as the app spells them, then
  the same upper-cased.

:class:`SecretChain` asks the service's own store first (the mounted
``IMAPSVC_SECRETS_DIR`` files and the sealed ``imap_secrets`` table, see
:class:`imapsvc.secrets.SecretStore`), then each provider of the chain, and
caches answers briefly; :meth:`SecretChain.invalidate` drops a provider's
answers after the IMAP server refused them, so a password changed in the app
is used at the next login without a restart.

Nothing here logs or raises with a secret value; errors name secrets, paths
and variables only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import treq
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from imapsvc.interfaces import ISecretStore

FILESYSTEM = "filesystem"
VAULT = "vault"
ENV = "env"
PROVIDER_NAMES = (FILESYSTEM, VAULT, ENV)
#: How the service's own store is named in messages.
OWN_STORE = "imapsvc sealed store"

DOCKER_SECRETS_PATH = "/run/secrets"
LOCAL_SECRETS_PATH = "../secrets"
DEFAULT_TENANT_TEMPLATE = "kv/data/tenants/{tenantId}/secrets"
DEFAULT_APP_PATH = "kv/data/app/secrets"

#: A secret file or a Vault answer larger than this is refused (a secret is
#: a few KiB at most; a runaway answer must not exhaust memory).
MAX_SECRET_FILE_BYTES = 64 * 1024
MAX_VAULT_RESPONSE_BYTES = 1024 * 1024
#: Read-merge-write attempts when another writer changed the Vault document
#: between our read and our write (check-and-set conflict).
VAULT_CAS_ATTEMPTS = 5

_COMPONENT = re.compile(r"^[0-9A-Za-z_.@-]{1,200}$")


def default_fs_base_path() -> str:
    """The app's default: ``/run/secrets`` when that folder exists (Docker
    and Kubernetes secrets), else ``../secrets``."""
    return DOCKER_SECRETS_PATH if os.path.isdir(DOCKER_SECRETS_PATH) else LOCAL_SECRETS_PATH


class SecretBackendUnavailable(Exception):
    """A secret provider could not answer (Vault down, slow, refusing, an
    oversized or malformed answer, an unreadable file). Transient: neither
    an authentication failure nor a missing credential."""

    auth_failure = False
    code = "secret_backend_unavailable"


class NoSecretStore(Exception):
    """A secret must be written (a rotated refresh token) but neither
    ``SECRET_WRITE_PROVIDER`` nor ``IMAPSVC_SECRET_KEY`` is configured."""

    auth_failure = False
    code = "no_secret_store"


class CredentialsMissing(Exception):
    """A credential was found nowhere: a configuration problem of the
    provider, not an authentication failure (it never counts towards the
    auto-pause). ``looked_up`` holds ``(secret name, places)`` pairs; the
    message names them, never a value."""

    auth_failure = False
    code = "missing_credentials"

    def __init__(
        self,
        looked_up: Sequence[tuple[str, Sequence[str]]],
        lead: str = "no credentials found",
    ):
        self.looked_up = tuple((name, tuple(places)) for name, places in looked_up)
        parts = [f"{name} (looked up in: {', '.join(places)})" for name, places in self.looked_up]
        super().__init__(f"{lead}: " + "; ".join(parts) if parts else lead)


def _component(text: str, what: str) -> str:
    # Tenant ids and names become path segments and URL parts: keep them tame.
    if not _COMPONENT.match(text) or text in (".", ".."):
        raise ValueError(f"{what} is not a safe identifier")
    return text


def _strip_newline(text: str) -> str:
    # The file's content is the secret; a trailing newline (editors add
    # one) is not part of it.
    return text.rstrip("\r\n")


# -- filesystem ------------------------------------------------------------------


class FilesystemSecrets:
    """The app's ``filesystem`` provider (reads and writes)."""

    name = FILESYSTEM

    def __init__(self, base_path: str):
        self.base = Path(base_path)

    def tenant_path(self, tenant: str, name: str) -> Path:
        return self.base / "tenants" / _component(tenant, "tenant") / _component(name, "name")

    def app_path(self, name: str) -> Path:
        return self.base / _component(name, "name")

    def where(self, tenant: str, name: str) -> str:
        return f"filesystem {self.tenant_path(tenant, name)}"

    def where_app(self, name: str) -> str:
        return f"filesystem {self.app_path(name)}"

    def read(self, tenant: str, name: str) -> Optional[str]:
        return _read_file(self.tenant_path(tenant, name))

    def read_app(self, name: str) -> Optional[str]:
        return _read_file(self.app_path(name))

    def get(self, tenant: str, name: str) -> defer.Deferred:
        return defer.maybeDeferred(self.read, tenant, name)

    def write(self, tenant: str, name: str, value: str) -> None:
        """Atomically replace the file (a reader never sees half a secret),
        readable by this user only, as the app's own files should be."""
        path = self.tenant_path(tenant, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".imapsvc-", dir=str(path.parent))
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(value)
                os.chmod(tmp, 0o600)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as e:
            raise SecretBackendUnavailable(
                f"filesystem: cannot write {path}: {e.strerror or type(e).__name__}"
            ) from None

    def put(self, tenant: str, name: str, value: str) -> defer.Deferred:
        return defer.maybeDeferred(self.write, tenant, name, value)


def _read_file(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise SecretBackendUnavailable(
            f"filesystem: {path} unreadable: {e.strerror or type(e).__name__}"
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretBackendUnavailable(
            f"filesystem: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )
    try:
        text = _strip_newline(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SecretBackendUnavailable(f"filesystem: {path} is not UTF-8") from None
    # An empty file holds no secret (logging in with "" only fails).
    return text or None


# -- env -----------------------------------------------------------------------


class EnvSecrets:
    """The app's ``env`` provider (read-only)."""

    name = ENV

    def __init__(self, environ: Mapping[str, str], prefix: str = ""):
        self._environ = environ
        self._prefix = prefix + "_" if prefix and not prefix.endswith("_") else prefix

    def _spellings(self, key: str) -> list[str]:
        # The app's own spelling first, then the upper-cased one.
        exact = self._prefix + key
        return [exact] if exact.upper() == exact else [exact, exact.upper()]

    def variables(self, tenant: str, name: str) -> list[str]:
        return self._spellings(f"TENANT_{tenant}_{name}")

    def app_variables(self, name: str) -> list[str]:
        return self._spellings(name)

    @staticmethod
    def _where(keys: Sequence[str]) -> str:
        return "env " + keys[0] + (" (or upper-cased)" if len(keys) > 1 else "")

    def where(self, tenant: str, name: str) -> str:
        return self._where(self.variables(tenant, name))

    def where_app(self, name: str) -> str:
        return self._where(self.app_variables(name))

    def _first(self, keys: Sequence[str]) -> Optional[str]:
        for key in keys:
            value = self._environ.get(key)
            if value:
                return value
        return None

    def read(self, tenant: str, name: str) -> Optional[str]:
        return self._first(self.variables(tenant, name))

    def read_app(self, name: str) -> Optional[str]:
        return self._first(self.app_variables(name))

    def get(self, tenant: str, name: str) -> defer.Deferred:
        return defer.succeed(self.read(tenant, name))


# -- vault ---------------------------------------------------------------------


def parse_kv2(body: bytes) -> tuple[dict[str, Any], Optional[int]]:
    """``(data.data, data.metadata.version)`` of a KV v2 read answer; a
    deleted version has ``data.data = null`` (an empty mapping here).

    :raises SecretBackendUnavailable: the body is not a KV v2 answer.
    """
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SecretBackendUnavailable("vault: the answer is not JSON") from None
    outer = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(outer, dict):
        raise SecretBackendUnavailable("vault: the answer has no data (is the path KV v2?)")
    inner = outer.get("data")
    if inner is not None and not isinstance(inner, dict):
        raise SecretBackendUnavailable("vault: data.data is not an object")
    metadata = outer.get("metadata")
    version = metadata.get("version") if isinstance(metadata, dict) else None
    return dict(inner or {}), version if isinstance(version, int) else None


def _vault_errors(body: bytes) -> str:
    try:
        errors = json.loads(body.decode("utf-8")).get("errors")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return ""
    if not isinstance(errors, list):
        return ""
    return "; ".join(str(e) for e in errors)[:200]


class _TooLarge(Exception):
    pass


class VaultSecrets:
    """The app's ``vault`` provider: KV v2 over HTTP (treq), reads and
    check-and-set writes.

    :param http: a treq-like client (``treq`` itself, ``HTTPClient``).
    :param clock: ``callLater``/``seconds``, for the deadline of each call.
    :param timeout_s: each HTTP exchange (connect, headers and body) must
        finish within this, or the provider is unavailable for this lookup.
    """

    name = VAULT

    def __init__(
        self,
        http: Any,
        clock: Any,
        addr: str,
        token: str,
        tenant_template: str = DEFAULT_TENANT_TEMPLATE,
        app_path: str = DEFAULT_APP_PATH,
        timeout_s: float = 5.0,
        max_bytes: int = MAX_VAULT_RESPONSE_BYTES,
        cas_attempts: int = VAULT_CAS_ATTEMPTS,
    ):
        self._http = http
        self._clock = clock
        self._addr = addr.rstrip("/")
        self._token = token
        self._template = tenant_template
        self._app_path = app_path.strip("/")
        self._timeout = timeout_s
        self._max = max_bytes
        self._cas_attempts = cas_attempts

    def tenant_path(self, tenant: str) -> str:
        return self._template.replace("{tenantId}", _component(tenant, "tenant")).strip("/")

    def where(self, tenant: str, name: str) -> str:
        return f"vault {self.tenant_path(tenant)} key {name}"

    def where_app(self, name: str) -> str:
        return f"vault {self._app_path} key {name}"

    def _url(self, path: str) -> str:
        return f"{self._addr}/v1/{path}"

    def _request(self, method: str, path: str, body: Optional[dict] = None) -> defer.Deferred:
        """``(status, body bytes)``, within the deadline and the size bound;
        every failure becomes :class:`SecretBackendUnavailable`."""
        headers = {"X-Vault-Token": [self._token], "Accept": ["application/json"]}
        data = None
        if body is not None:
            headers["Content-Type"] = ["application/json"]
            data = json.dumps(body).encode("utf-8")

        @defer.inlineCallbacks
        def exchange():  # type: ignore[no-untyped-def]
            response = yield self._http.request(method, self._url(path), headers=headers, data=data)
            # The collector drops the connection as soon as the answer
            # exceeds the bound (a Content-Length is not trusted either way).
            chunks: list[bytes] = []
            size = [0]

            def collector(chunk: bytes) -> None:
                size[0] += len(chunk)
                if size[0] > self._max:
                    raise _TooLarge()
                chunks.append(chunk)

            yield treq.collect(response, collector)
            return response.code, b"".join(chunks)

        def timed_out(_result: Any, _timeout: float) -> None:
            # Cancelling surfaces as whatever the HTTP layer was waiting on
            # (ResponseNeverReceived, CancelledError...): name the cause here.
            raise SecretBackendUnavailable(
                f"vault: {method} {path}: no complete answer within {self._timeout:g}s"
            )

        d = exchange()
        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=timed_out)

        def failed(f):  # type: ignore[no-untyped-def]
            if f.check(SecretBackendUnavailable):
                return f
            if f.check(_TooLarge):
                why = f"the answer is larger than {self._max} bytes"
            else:
                why = type(f.value).__name__
            raise SecretBackendUnavailable(f"vault: {method} {path}: {why}")

        return d.addErrback(failed)

    @defer.inlineCallbacks
    def read_document(self, path: str):  # type: ignore[no-untyped-def]
        """``(data, version)`` of the document at ``path``, or ``None`` when
        there is none (404). ``version`` is that of a deleted document too
        (check-and-set needs it)."""
        status, body = yield self._request("GET", path)
        if status == 404:
            try:
                _data, version = parse_kv2(body)
            except SecretBackendUnavailable:
                version = None
            return None if version is None else ({}, version)
        if status != 200:
            detail = _vault_errors(body)
            raise SecretBackendUnavailable(
                f"vault: GET {path} answered HTTP {status}" + (f" ({detail})" if detail else "")
            )
        return parse_kv2(body)

    @defer.inlineCallbacks
    def get(self, tenant: str, name: str):  # type: ignore[no-untyped-def]
        doc = yield self.read_document(self.tenant_path(tenant))
        if doc is None:
            return None
        value = doc[0].get(name)
        return value if isinstance(value, str) and value else None

    @defer.inlineCallbacks
    def put(self, tenant: str, name: str, value: str):  # type: ignore[no-untyped-def]
        """Read-merge-write the tenant's document with check-and-set, so a
        key another writer added meanwhile is never lost."""
        path = self.tenant_path(tenant)
        for _attempt in range(self._cas_attempts):
            doc = yield self.read_document(path)
            data, version = doc if doc is not None else ({}, 0)
            merged = dict(data)
            merged[name] = value
            status, body = yield self._request(
                "POST", path, {"data": merged, "options": {"cas": version or 0}}
            )
            if status in (200, 204):
                return
            detail = _vault_errors(body)
            if status == 400 and "check-and-set" in detail:
                continue  # someone else wrote in between: read again
            raise SecretBackendUnavailable(
                f"vault: POST {path} answered HTTP {status}" + (f" ({detail})" if detail else "")
            )
        raise SecretBackendUnavailable(
            f"vault: POST {path}: check-and-set conflicted {self._cas_attempts} times"
        )


def vault_read_app_sync(
    addr: str, token: str, path: str, name: str, timeout_s: float
) -> Optional[str]:
    """One app-wide secret from Vault, synchronously (start-up, before the
    reactor runs: the database password). Same rules as :class:`VaultSecrets`."""
    request = urllib.request.Request(
        f"{addr.rstrip('/')}/v1/{path.strip('/')}",
        headers={"X-Vault-Token": token, "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(MAX_VAULT_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise SecretBackendUnavailable(f"vault: GET {path} answered HTTP {e.code}") from None
    except (OSError, ValueError) as e:
        raise SecretBackendUnavailable(f"vault: GET {path}: {type(e).__name__}") from None
    if len(body) > MAX_VAULT_RESPONSE_BYTES:
        raise SecretBackendUnavailable(
            f"vault: GET {path}: the answer is larger than {MAX_VAULT_RESPONSE_BYTES} bytes"
        )
    value = parse_kv2(body)[0].get(name)
    return value if isinstance(value, str) and value else None


# -- the chain -----------------------------------------------------------------


@implementer(ISecretStore)
class SecretChain:
    """The service's own store, then the app's providers, cached.

    :param own: the service's :class:`~imapsvc.secrets.SecretStore`, or
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

    @property
    def writable(self) -> bool:
        return self.writer is not None or self.own is not None

    def places(self, tenant: str, name: str) -> list[str]:
        """Where :meth:`find` looks, in order (for error messages)."""
        out = [OWN_STORE] if self.own is not None else []
        return out + [p.where(tenant, name) for p in self.providers]

    @defer.inlineCallbacks
    def find(self, tenant: str, name: str):  # type: ignore[no-untyped-def]
        """``(value, source)`` of the first place holding ``name``, or
        ``None``.

        :raises SecretBackendUnavailable: found nowhere, and a provider could
            not answer (it might have held it: not "missing").
        """
        key = (tenant, name)
        now = self._clock.seconds()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
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
        for key in list(self._cache):
            if key[0] == tenant and (provider_id is None or key[1].endswith("_" + provider_id)):
                del self._cache[key]

    @defer.inlineCallbacks
    def put(self, tenant: str, name: str, value: str):  # type: ignore[no-untyped-def]
        """Write to ``SECRET_WRITE_PROVIDER`` (so the app sees it too) and
        drop the service's own copy, which would otherwise shadow it (the
        own store is read first); without a write provider, to the own store.

        :raises NoSecretStore: nowhere to write.
        """
        self._cache.pop((tenant, name), None)
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
