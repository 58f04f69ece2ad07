"""The main app's secret providers (CONTRACT section 3), one class each.

The app keeps tenant secrets in its *secret providers*, named in
``SECRET_READ_CHAIN`` (tried in order) and ``SECRET_WRITE_PROVIDER``:

- ``filesystem``: ``<SECRET_FS_BASE_PATH>/tenants/<tenantId>/<name>``, one
  file per secret (app-wide secrets: ``<SECRET_FS_BASE_PATH>/<name>``)
  (:class:`FilesystemSecrets`);
- ``vault``: HashiCorp Vault KV v2, one document per tenant at
  ``VAULT_TENANT_SECRET_PATH_TEMPLATE`` (app-wide: ``VAULT_APP_SECRET_PATH``),
  the secret is ``data.data[<name>]`` (:class:`VaultSecrets`);
- ``env``: environment variables ``[<SECRET_ENV_PREFIX>_]TENANT_<tenantId>_<name>``
  (app-wide: ``[<SECRET_ENV_PREFIX>_]<name>``), as the app spells them, then
  the same upper-cased (:class:`EnvSecrets`).

:mod:`imapsvc.secret_chain` puts them in order behind the service's own
store. Nothing here logs or raises with a secret value; errors name secrets,
paths and variables only.
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
