"""The embedded :class:`~imapsvc.objectstore.IObjectStore`: a local folder.

An object ``a/b/c`` is the file ``<root>/a/b/c``. It is written to a
temporary file beside it chunk by chunk, flushed to disk and renamed over
the key, so a crash never leaves a half-written object under its key and a
retry simply writes the same file again. The file work runs in the
reactor's thread pool.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable, Optional

from twisted.internet import defer, threads
from zope.interface import implementer

from imapsvc.objectstore import IObjectStore, ObjectStoreError


def _path(root: str, key: str) -> str:
    parts = [p for p in key.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ObjectStoreError("object key is empty or climbs out of the store")
    return os.path.join(root, *parts)


@implementer(IObjectStore)
class LocalFolderStore:
    def __init__(self, reactor: Any, root: str) -> None:
        self._reactor = reactor
        self.root = os.path.abspath(root)

    def _defer(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def put(self, key: str, chunks: Iterable[bytes], content_type: str) -> defer.Deferred[None]:
        return self._defer(self._put, key, chunks)

    def _put(self, key: str, chunks: Iterable[bytes]) -> None:
        path = _path(self.root, key)
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=folder)
        except OSError as e:
            raise ObjectStoreError(f"cannot write under {self.root}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise ObjectStoreError(f"cannot write {key}: {e.strerror}") from None
            raise

    def get(self, key: str) -> defer.Deferred[Optional[bytes]]:
        return self._defer(self._get, key)

    def _get(self, key: str) -> Optional[bytes]:
        try:
            with open(_path(self.root, key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def describe(self) -> str:
        return f"folder {self.root}"
