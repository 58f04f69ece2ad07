"""The seams of one watched folder: the IMAP session it drives, the owner it
reports to, and the reconnecting factory's events (re-exported by
:mod:`imapsvc.interfaces`, the index of every seam).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IIMAPSession(Interface):
    """One IMAP connection as the folder engine (:mod:`imapsvc.folder`)
    drives it: greeting, TLS, login, LIST, EXAMINE, UID SEARCH, UID FETCH,
    IDLE, LOGOUT; with write-back SELECT, UID STORE/MOVE/COPY/EXPUNGE; with
    CONDSTORE/QRESYNC (RFC 7162) ENABLE and EXAMINE/SELECT with parameters.
    :class:`imapsvc.imap.protocol.FolderIMAPClient` is the real one,
    :class:`imapsvc.testing.FakeIMAPSession` the in-memory one; both pass
    ``tests/session_contract.py``.

    Capability dicts have Twisted's shape: ``{b"IDLE": None, b"AUTH":
    [b"PLAIN"]}``. Commands run one at a time in submission order. A command
    the server refuses (NO/BAD) fails with an
    :class:`imapsvc.imap.errors.IMAPError` subclass and ends the session:
    every later command fails with
    :class:`~imapsvc.imap.errors.ConnectionGone`. Errors never carry secrets.
    """

    greeted = Attribute(
        "Deferred firing with the capability dict once the server greeted "
        "(failing when it refused or went away first)"
    )
    capabilities = Attribute("the latest capability dict, or None before the greeting")
    last_exists = Attribute(
        "the last '* n EXISTS' count seen during any command (int), or None"
    )
    on_bye = Attribute(
        "callable(text) or None: called once when the server says BYE outside LOGOUT"
    )
    idle_ending = Attribute(
        "read-only bool: done() was called for the IDLE still running (DONE is "
        "out, or follows the server's '+'); False outside IDLE. The session is "
        "the one place that knows whether an IDLE is ending"
    )
    transport = Attribute(
        "the connection's transport: the engine closes the session with "
        "its loseConnection()/abortConnection()"
    )
    utf8_accept = Attribute(
        "read-only bool: the server enabled UTF8=ACCEPT (after enable_utf8())"
    )
    compressing = Attribute(
        "read-only bool: COMPRESS=DEFLATE is in force both ways (after "
        "maybe_compress() fired True)"
    )
    modseq_mode = Attribute(
        "read-only: 'QRESYNC', 'CONDSTORE' or None, the mod-sequence mode in "
        "effect (set by enable_condstore(); None before)"
    )

    def start_tls(context_factory):
        """``STARTTLS`` and ``CAPABILITY`` over TLS.

        :rtype: Deferred[dict]: the capabilities after the upgrade.
        :raises TLSRequired: the server does not offer STARTTLS (nothing sent).
        """

    def authenticate_with(credentials, oauth_mechanism=None, host=None, port=None):
        """Log in with :class:`imapsvc.model.Credentials` (LOGIN, or
        AUTHENTICATE XOAUTH2/OAUTHBEARER for a token).

        :param oauth_mechanism: ``auto``/``xoauth2``/``oauthbearer``: picks the
            SASL mechanism for a token from the server's ``AUTH=``; ``None``
            uses ``credentials.mechanism``.
        :param host: the server's host and ``port`` (OAUTHBEARER's keys).
        :rtype: Deferred[dict]: the capabilities after login.
        :raises AuthenticationFailed: the server refused the credentials
            (``.code`` is its response code, e.g. ``"AUTHENTICATIONFAILED"``).
        :raises AuthenticationUnavailable: it answered without refusing them.
        """

    def maybe_compress(mode="auto"):
        """``COMPRESS DEFLATE`` (RFC 4978) right after login, when ``mode``
        (``IMAP_COMPRESS``: ``off``, ``auto``, ``always``; see
        :func:`imapsvc.imap.compress.worth_compressing`) and the server's
        ``COMPRESS=DEFLATE`` allow it. Nothing is sent otherwise.

        :rtype: Deferred[bool]: whether the session is compressed now
            (``True`` at once when it already was). A refusal (``NO``/``BAD``)
            fires ``False`` and keeps the session as it was.
        """

    def send_id(fields):
        """``ID`` (RFC 2971) with ``fields`` (``(name, value)`` pairs) when
        the server offers ``ID``; nothing is sent otherwise.

        :rtype: Deferred[Optional[dict[str, str]]]: the server's ID fields,
            or ``None`` (not offered, ``NIL``, refused; a refusal keeps the
            session).
        """

    def enable_utf8():
        """``ENABLE UTF8=ACCEPT`` (RFC 6855) after login, when the server
        offers ``ENABLE`` and ``UTF8=ACCEPT`` (or ``UTF8=ONLY``); nothing is
        sent otherwise. Folder names keep their modified UTF-7 spelling above
        the session either way.

        :rtype: Deferred[bool]: whether it got enabled (:attr:`utf8_accept`).
        """

    def enable_condstore(qresync=True):
        """Pick the mod-sequence mode after login (RFC 7162,
        :mod:`imapsvc.imap.condstore`): ``ENABLE QRESYNC`` when ``qresync``
        and the server offers ``ENABLE`` and ``QRESYNC``; else CONDSTORE
        when offered, which needs no command (opening a folder with
        ``(CONDSTORE)`` enables it); else nothing is sent.

        :rtype: Deferred[Optional[str]]: the mode now in effect
            (:attr:`modseq_mode`): ``"QRESYNC"``, ``"CONDSTORE"`` (also when
            the server confirmed only CONDSTORE) or ``None`` (not offered, or
            ENABLE refused: a refusal keeps the session).
        """

    def examine_modseq(name, known=None, select=False):
        """``EXAMINE name`` (``SELECT`` when ``select``) with the parameters
        of :attr:`modseq_mode`: ``(QRESYNC (uidvalidity modseq))`` when
        QRESYNC is in effect and ``known`` (a
        :class:`~imapsvc.imap.condstore.KnownState`) holds a mod-sequence,
        else ``(CONDSTORE)``; none without a mode.

        :rtype: Deferred[dict]: as :meth:`examine_folder`; with a mode also
            ``"modseq"``: an :class:`~imapsvc.imap.condstore.OpenState`
            (HIGHESTMODSEQ, NOMODSEQ, how many UIDs ``VANISHED (EARLIER)``
            named).
        :raises CommandFailed: no such folder.
        """

    def list_folders(pattern="*"):
        """``LIST "" pattern`` (a mailbox name, modified UTF-7; ``*`` and
        ``%`` are LIST wildcards).

        :rtype: Deferred[list[tuple[tuple[str, ...], Optional[str], str]]]:
            ``(flags, delimiter, name)``, names as the server spells them.
        """

    def examine_folder(name):
        """``EXAMINE name`` (read-only).

        :rtype: Deferred[dict]: ``{"uidvalidity": int, "uidnext":
            Optional[int], "exists": int, "read_only": bool}``.
        :raises CommandFailed: no such folder.
        """

    def status_folder(name):
        """``STATUS name (UIDNEXT UIDVALIDITY MESSAGES)``, without selecting
        it (the shared polling connection of a provider over its connection
        budget).

        :rtype: Deferred[dict]: ``{"uidnext", "uidvalidity", "messages"}``,
            each an ``int`` or ``None`` when the server left it out.
        :raises CommandFailed: no such folder (the session goes on).
        """

    def unselect():
        """``UNSELECT`` (RFC 3691) when the server offers it; nothing
        otherwise.

        :rtype: Deferred[bool]: whether it was sent.
        """

    def select_folder(name):
        """``SELECT name`` (read-write): only with write-back on.

        :rtype: Deferred[dict]: as :meth:`examine_folder`.
        :raises CommandFailed: no such folder.
        """

    def uid_store_flags(uids, flags):
        """``UID STORE uids +FLAGS.SILENT (flags)``.

        :rtype: Deferred[None]. :raises CommandFailed: ``NO``/``BAD``
            (the session stays usable).
        """

    def uid_move(uids, folder):
        """``UID MOVE uids folder`` (RFC 6851; only when MOVE is offered).

        :rtype: Deferred[None]. :raises CommandFailed: refused (session kept).
        """

    def uid_copy(uids, folder):
        """``UID COPY uids folder``.

        :rtype: Deferred[None]. :raises CommandFailed: refused (session kept).
        """

    def uid_expunge(uids):
        """``UID EXPUNGE uids`` (RFC 4315; only when UIDPLUS is offered).

        :rtype: Deferred[None]. :raises CommandFailed: refused (session kept).
        """

    def uid_search_from(first_uid):
        """``UID SEARCH UID first:*``.

        :rtype: Deferred[list[int]]: sorted UIDs ``>= first_uid``.
        """

    def uid_search_since(since):
        """``UID SEARCH SINCE since`` (``since``: RFC 3501 date, ``1-Jan-2026``).

        :rtype: Deferred[list[int]]: sorted UIDs whose INTERNALDATE (its day,
            time and zone disregarded) is on or after ``since``.
        """

    def fetch_meta(uids):
        """Size, INTERNALDATE, BODYSTRUCTURE and header of each UID.

        :rtype: Deferred[dict[int, dict]]: ``{uid: {"size": int,
            "internaldate": Optional[str], "bodystructure": nested list of
            str/None or None, "header": bytes}}``; UIDs gone from the folder
            are absent.
        :raises CommandFailed: the server answered NO/BAD.
        """

    def fetch_sections(requests):
        """``BODY.PEEK[section]<0.N>`` per UID.

        :param requests: ``{uid: [(section, length or None), ...]}``.
        :rtype: Deferred[dict[int, dict[str, bytes]]]: exact bytes keyed by
            the requested section (``length`` caps them).
        """

    def fetch_full(uids):
        """``BODY.PEEK[]``.

        :rtype: Deferred[dict[int, bytes]]: each message's exact bytes.
        """

    def idle(on_exists):
        """``IDLE``: ``on_exists(n)`` for every ``* n EXISTS`` meanwhile.

        :rtype: Deferred[None]: fires once the server ended IDLE (after
            :meth:`done`).
        """

    def done():
        """End IDLE: ``DONE`` once, also when called before the server
        accepted IDLE. Returns nothing; a no-op outside IDLE."""

    def logout():
        """``LOGOUT``, then close. :rtype: Deferred[None]"""


class IFolderHooks(Interface):
    """What a folder (:class:`imapsvc.folder.FolderService`) reports to its
    provider (:class:`imapsvc.provider_service.FolderHooks`). Every method is
    called from the reactor and must not raise."""

    def state_changed(state, reason="", error=None):
        """The folder entered ``state`` (a name of :mod:`imapsvc.core.folder_machine`)
        because of ``reason``; ``error`` is its secret-free last error."""

    def auth_failed(code, text=""):
        """The server refused the login (``code`` like
        ``"AUTHENTICATIONFAILED"``); the folder stopped reconnecting."""

    def logged_in():
        """A login succeeded."""

    def synced():
        """A sync pass completed."""

    def lease_lost():
        """A fenced write found the provider's lease gone; the folder stopped."""


class IConnectionEvents(Interface):
    """What a folder's reconnecting factory
    (:class:`imapsvc.imap.factory.FolderClientFactory`) reports to the folder
    (:class:`imapsvc.folder.FolderService`). Events go this one way; the
    folder in turn only commands the factory (start, stop, next delay)."""

    def factory_connecting():
        """A connection attempt starts."""

    def factory_protocol(protocol):
        """A session (an :class:`IIMAPSession`) was built for a new
        connection, not yet greeted."""

    def factory_connection_ended(reason, connected):
        """The attempt failed (``connected=False``) or an established
        connection was lost (a ``Failure``). Called before the retry is
        scheduled, so the folder may stop the factory or set its next delay."""

    def factory_retry_scheduled(delay):
        """The next attempt is due in ``delay`` seconds."""

