"""Object storage for ``IMAP_ATTACHMENT_MODE=store`` (CONTRACT section 2).

:class:`IObjectStore` is the seam; three implementations pass the same
contract tests (``tests/objectstore_contract.py``):

- :class:`~imapsvc.objectstore.local.LocalFolderStore`: the embedded default,
  a folder (``IMAP_OBJECT_STORE_DIR``), written through a temporary file and
  an atomic rename;
- :class:`~imapsvc.objectstore.s3.S3ObjectStore`: any S3-compatible server
  (``IMAP_OBJECT_STORE_URL``), path-style, SigV4-signed by botocore, requests
  through treq; a single PUT for small objects, a multipart upload for big
  ones;
- :class:`~imapsvc.objectstore.memory.MemoryObjectStore`: the fake.

:class:`~imapsvc.objectstore.upload.ObjectUploader` is what the pipeline
calls before a batch is recorded.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from twisted.internet import defer, threads
from zope.interface import Interface


class ObjectStoreError(Exception):
    """A write or read failed. The message never carries a credential."""


class IObjectStore(Interface):
    """Where attachment (and raw message) bytes go."""

    def put(key: str, chunks: Iterable[bytes], content_type: str) -> defer.Deferred[None]:  # type: ignore[misc]  # noqa: N805
        """Write the object ``key`` from ``chunks`` (consumed once, in order;
        none is kept longer than one upload part). Overwrites an existing
        object of that key, so a retry after a crash writes the same key
        again. Fires when the object is durable and complete; fails with
        :class:`ObjectStoreError` otherwise, leaving no partial object
        visible under ``key``."""

    def get(key: str) -> defer.Deferred[Optional[bytes]]:  # type: ignore[misc]  # noqa: N805
        """The object's bytes, or ``None`` when there is none."""

    def describe() -> str:  # type: ignore[misc]
        """Where the objects go, for the log (no credentials)."""


def from_settings(settings: Any, reactor: Any, environ: Optional[dict[str, str]] = None) -> Any:
    """The :class:`IObjectStore` the settings describe: S3 when
    ``IMAP_OBJECT_STORE_URL`` is set, else the local folder."""
    if settings.object_store_url:
        from imapsvc.objectstore.s3 import (
            AWS_VARIABLES,
            S3ObjectStore,
            credentials_from_env,
            region_from_env,
        )

        env = dict(os.environ if environ is None else environ)
        if getattr(settings, "secrets_dir", ""):
            # Like imapsvc's own settings: an unset variable is read from the
            # file of that name in IMAPSVC_SECRETS_DIR (a mounted Secret).
            from imapsvc.config import read_secret_file

            for name in AWS_VARIABLES:
                if not env.get(name):
                    value = read_secret_file(settings.secrets_dir, name)
                    if value:
                        env[name] = value
        creds = credentials_from_env(env)
        return S3ObjectStore(
            reactor,
            settings.object_store_url,
            settings.object_store_bucket,
            creds,
            settings.object_store_region or region_from_env(env),
            part_bytes=settings.object_store_part_bytes,
            runner=lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a),
        )
    from imapsvc.objectstore.local import LocalFolderStore

    return LocalFolderStore(reactor, settings.object_store_dir)
