"""Registers ``twistd imapsvc``.

There is deliberately no ``__init__.py`` in ``twisted/`` or
``twisted/plugins/``: Twisted scans every ``twisted/plugins`` directory on
``sys.path`` for plugin modules. Keep this file tiny; the options and the
service live in :mod:`imapsvc.tap`, imported only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

imapsvc = ServiceMaker(
    "imapsvc",
    "imapsvc.tap",
    "Watch IMAP folders and publish INBOUND_EMAIL_RECEIVED events",
    "imapsvc",
)
