#!/usr/bin/env bash
# The quick start: install what is missing (Debian packages, .venv with the
# package), then hand over to demo/run.py, which runs a private Dovecot, the
# service on its embedded store and sink, and prints each event as it arrives.
#   bash demo/run.sh                  run until Ctrl-C
#   DEMO_SMOKE=1 bash demo/run.sh     send one message, wait for its event, stop
#   DEMO_SKIP_INSTALL=1               skip the installation (a venv is in place)
#   DEMO_VENV=/path/to/venv           the venv to use (default: .venv)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${DEMO_VENV:-.venv}"

if [ "${DEMO_SKIP_INSTALL:-0}" != 1 ]; then
    # Only what the demo needs: no Postgres, no Redis, no test extras.
    INSTALL_APT_PACKAGES="dovecot-imapd openssl" INSTALL_PIP_TARGETS="." VENV="$VENV" \
        bash .ci/install
fi
if [ ! -x "$VENV/bin/twistd" ]; then
    echo "demo: no twistd in $VENV (run without DEMO_SKIP_INSTALL, or set DEMO_VENV)" >&2
    exit 2
fi
# exec: Ctrl-C and the test's signals reach run.py directly.
exec "$VENV/bin/python" demo/run.py "$@"
