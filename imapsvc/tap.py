"""``twistd imapsvc``: options and the service tree.

This is wiring only, and the one module that imports the global reactor
(inside :func:`makeService`, so importing it for ``--help`` or tests does not
install one).

Settings are validated while the options are parsed (:meth:`Options.postOptions`):
a bad value prints ``imapsvc: <one line>`` on stderr and exits with status 2,
before twistd daemonizes or writes a pid file, and without a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Optional

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from imapsvc import log_output as imapsvc_logging
from imapsvc.config import SETTINGS, ConfigError, Settings, load_settings

log = Logger(namespace="imapsvc.tap")

#: Exit status for a configuration error (as argparse uses for usage errors).
EXIT_CONFIG = 2


def _option_help(setting: Any) -> str:
    secret = " Secret: prefer the environment." if setting.sensitive else ""
    return f"[{setting.env}, default {setting.default_text()}] {setting.help}.{secret}"


class Options(usage.Options):
    """One ``--option`` per setting (``--provider-refresh-ms`` for
    ``IMAP_PROVIDER_REFRESH_MS``); an option given wins over the environment.

    No option has a default here: an unset option means "use the
    environment", and ``--help`` never shows a current (possibly secret) value.
    """

    synopsis = "[options]"
    longdesc = (
        "Watches IMAP folders and publishes INBOUND_EMAIL_RECEIVED events. Every option "
        "is also an environment variable, named in its help; options win. Without "
        "DATABASE_URL / REDIS_URL they are built from DB_HOST... / REDIS_HOST... when set "
        "(`python -m imapsvc config` and the start-up log say which one won)."
    )
    optParameters = [[s.option, None, None, _option_help(s)] for s in SETTINGS]

    #: The validated settings, set by :meth:`postOptions`.
    settings: Optional[Settings] = None

    #: Where errors go and which environment is read; tests replace them.
    environ: Optional[Mapping[str, str]] = None
    stderr: Any = None

    def overrides(self) -> dict[str, Optional[str]]:
        """The options given on the command line, keyed by variable name."""
        return {s.env: self[s.option] for s in SETTINGS}

    def postOptions(self) -> None:
        self.settings = settings_or_exit(self.environ, self.overrides(), self.stderr)
        self._choose_logger(self.settings)

    def _choose_logger(self, settings: Settings) -> None:
        """Make twistd log through the redacting observer of
        ``IMAPSVC_LOG_FORMAT`` unless ``--logger`` was given.

        twistd builds its log observer from ``--logger`` after parsing the
        options and before :func:`makeService`, so setting it on the parent
        twistd options here is the point where the choice still counts.
        """
        parent = getattr(self, "parent", None)
        if parent is None or parent.get("logger"):
            return
        logfile = parent.get("logfile")
        if not logfile:
            logfile = "-" if parent.get("nodaemon") else "twistd.log"
        imapsvc_logging.set_twistd_target(settings.log_format, logfile)
        # twistd resolves the dotted name itself after this method returns.
        parent["logger"] = "imapsvc.log_output.twistd_observer"


def settings_or_exit(
    environ: Optional[Mapping[str, str]],
    overrides: Mapping[str, Optional[str]],
    stderr: Any = None,
) -> Settings:
    """:func:`load_settings`, or one line on stderr and ``SystemExit(2)``.

    twistd prints a traceback for most exceptions escaping plugin code, but
    lets ``SystemExit`` through untouched.
    """
    try:
        return load_settings(os.environ if environ is None else environ, overrides)
    except ConfigError as e:
        out = stderr if stderr is not None else sys.stderr
        out.write(f"imapsvc: {e}\n")
        out.flush()
        raise SystemExit(EXIT_CONFIG) from None


def makeService(options: Options) -> MultiService:
    """The ``twistd imapsvc`` service tree (see :func:`build_service`)."""
    settings = options.settings
    if settings is None:  # Options built by hand, postOptions not run
        settings = settings_or_exit(options.environ, options.overrides(), options.stderr)
    from twisted.internet import reactor

    reactor.callWhenRunning(_graceful_sigterm, reactor)
    try:
        return build_service(settings, reactor)
    except ConfigError as e:  # e.g. IMAP_OBJECT_STORE_URL without AWS credentials
        out = options.stderr if options.stderr is not None else sys.stderr
        out.write(f"imapsvc: {e}\n")
        out.flush()
        raise SystemExit(EXIT_CONFIG) from None


def _graceful_sigterm(reactor: Any) -> None:
    """Make SIGTERM a normal stop that exits 0 once the services drained.

    twistd's own handler re-raises the signal after shutdown (exit status
    143), which Kubernetes and supervisors read as a crash. Installed once
    the reactor runs, i.e. after the reactor's own handlers.
    """
    import signal

    def on_term(signum: int, frame: Any) -> None:
        log.info("SIGTERM received: stopping")
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, on_term)


# -- the tree --------------------------------------------------------------


def make_sink(settings: Settings, reactor: Any) -> Any:
    """The :class:`~imapsvc.interfaces.ISink`: a Redis stream when
    ``REDIS_URL`` is set, else JSON Lines in ``IMAPSVC_EVENTS_FILE``."""
    from imapsvc.runtime import build_sink

    return build_sink(settings, reactor)


def build_service(settings: Settings, reactor: Any) -> MultiService:
    """``MultiService("imapsvc")``: the web service, then the runtime (store,
    sink, relay, supervisor), see :mod:`imapsvc.runtime`."""
    from imapsvc.runtime import build_tree

    return build_tree(settings, reactor)
