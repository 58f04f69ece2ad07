"""In-memory fakes for tests, verified by the same contract tests as the real
parts.

- :class:`FakeMailbox` (:mod:`.mailbox`): an IMAP server's folders and
  messages, with scripted failures;
- :class:`FakeIMAPSession` (:mod:`.session`): an
  :class:`~imapsvc.interfaces.IIMAPSession` over a mailbox, results shaped
  exactly like :class:`~imapsvc.imap.protocol.FolderIMAPClient`'s; both pass
  ``tests/session_contract.py``;
- :mod:`.mime`: ``BODY[section]`` and ``BODYSTRUCTURE`` of a message, as a
  server computes them.
"""

from imapsvc.testing.mailbox import (
    DEFAULT_CAPABILITIES,
    DEFAULT_INTERNALDATE,
    FakeFolder,
    FakeMailbox,
    FakeMessage,
)
from imapsvc.testing.mime import bodystructure_of, section_bytes, split_header
from imapsvc.testing.session import FakeIMAPSession
from imapsvc.testing.wire import FakeSessionTransport

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_INTERNALDATE",
    "FakeFolder",
    "FakeIMAPSession",
    "FakeMailbox",
    "FakeMessage",
    "FakeSessionTransport",
    "bodystructure_of",
    "section_bytes",
    "split_header",
]
