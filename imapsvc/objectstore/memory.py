"""The in-memory :class:`~imapsvc.objectstore.IObjectStore` (tests)."""

from __future__ import annotations

from typing import Iterable, Optional

from twisted.internet import defer
from zope.interface import implementer

from imapsvc.objectstore import IObjectStore, ObjectStoreError


@implementer(IObjectStore)
class MemoryObjectStore:
    """Objects in a dict.

    :ivar fail_after: when set, every ``put`` after that many successful
        ones fails (a crash of the object store in the middle of a message).
    :ivar puts: the keys written, in order (repeats included).
    """

    def __init__(self, fail_after: Optional[int] = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.fail_after = fail_after
        self.puts: list[str] = []

    def put(self, key: str, chunks: Iterable[bytes], content_type: str) -> defer.Deferred[None]:
        if self.fail_after is not None and len(self.puts) >= self.fail_after:
            return defer.fail(ObjectStoreError("object store unavailable (test)"))
        try:
            data = b"".join(chunks)
        except Exception as e:
            return defer.fail(ObjectStoreError(f"reading the object failed: {type(e).__name__}"))
        self.objects[key] = data
        self.content_types[key] = content_type
        self.puts.append(key)
        return defer.succeed(None)

    def get(self, key: str) -> defer.Deferred[Optional[bytes]]:
        return defer.succeed(self.objects.get(key))

    def describe(self) -> str:
        return "memory"
