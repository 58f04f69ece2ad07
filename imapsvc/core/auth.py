"""Login outcomes and the OAuth2 SASL mechanism choice. Pure code.

Only a server's *refusal* of the credentials counts towards the auto-pause
(``IMAP_AUTH_FAILURE_PAUSE_AFTER``): ``NO [AUTHENTICATIONFAILED]``, the other
RFC 5530 codes that say the credentials themselves were refused
(``AUTHORIZATIONFAILED``, ``EXPIRED``) and a plain ``NO`` with no code (or
only ``[ALERT]``, which carries a message but no classification). Anything
else the server answers to LOGIN/AUTHENTICATE (``[UNAVAILABLE]``,
``[SERVERBUG]``, an unknown code, ``BAD``) says the login could not be
checked now: the folder reconnects with back-off and nothing is counted.
``[THROTTLED]``/``[LIMIT]`` are recognised before this (``Throttled``).
"""

from __future__ import annotations

from typing import Iterable, Optional

#: Response codes of a NO that refuse the credentials.
REFUSAL_CODES = frozenset({"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED"})
#: Codes that decorate a NO without classifying it: such a NO is a plain NO.
NEUTRAL_CODES = frozenset({"ALERT"})

MECH_AUTO = "auto"
MECH_XOAUTH2 = "xoauth2"
MECH_OAUTHBEARER = "oauthbearer"
#: ``IMAP_OAUTH_AUTH_MECHANISM`` values (the app's chart names them so).
OAUTH_MECHANISM_SETTINGS = (MECH_AUTO, MECH_XOAUTH2, MECH_OAUTHBEARER)
OAUTH_MECHANISMS = frozenset({MECH_XOAUTH2, MECH_OAUTHBEARER})


def is_refusal(kind: str, code: Optional[str]) -> bool:
    """Whether a tagged answer ``kind`` (``"NO"``/``"BAD"``) with response
    ``code`` to LOGIN/AUTHENTICATE refuses the credentials."""
    if kind.upper() != "NO":
        return False
    if code is None or not code.strip():
        return True
    name = code.strip().upper()
    return name in REFUSAL_CODES or name in NEUTRAL_CODES


def choose_oauth_mechanism(setting: str, offered: Optional[Iterable[str]]) -> str:
    """The SASL mechanism for an OAuth2 login.

    :param setting: ``IMAP_OAUTH_AUTH_MECHANISM`` (``auto``, ``xoauth2``,
        ``oauthbearer``).
    :param offered: the server's ``AUTH=`` mechanisms (any case), or
        ``None`` when its capabilities are not known.
    :return: ``"xoauth2"`` or ``"oauthbearer"``. ``auto`` takes XOAUTH2
        unless the server offers OAUTHBEARER and not XOAUTH2 (XOAUTH2 is what
        Gmail and Microsoft 365 speak; OAUTHBEARER is the standard one).
    """
    setting = (setting or MECH_AUTO).strip().lower()
    if setting in OAUTH_MECHANISMS:
        return setting
    if offered is None:
        return MECH_XOAUTH2
    names = {str(m).strip().upper() for m in offered}
    if "XOAUTH2" not in names and "OAUTHBEARER" in names:
        return MECH_OAUTHBEARER
    return MECH_XOAUTH2
