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

# What the installed copy was built from: the tracked sources and any local edits.
# The same stamp as last time (and Dovecot present) means nothing to install,
# which saves the ~15 s of a pip reinstall on every `make run`.
source_stamp() {
    { git ls-files -s -- imapsvc twisted setup.py && git diff HEAD -- imapsvc twisted setup.py
    } 2>/dev/null | sha256sum | cut -d' ' -f1
}
stamp_file="$VENV/.imapsvc-demo-install"
if [ "${DEMO_SKIP_INSTALL:-0}" != 1 ]; then
    stamp="$(source_stamp)"
    if git rev-parse --git-dir >/dev/null 2>&1 && [ -x "$VENV/bin/twistd" ] \
            && command -v dovecot >/dev/null 2>&1 \
            && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
        echo "==> the package in $VENV is up to date (delete $stamp_file to reinstall)"
    else
        # Only what the demo needs: no Postgres, no Redis, no test extras.
        INSTALL_APT_PACKAGES="dovecot-imapd openssl" INSTALL_PIP_TARGETS="." VENV="$VENV" \
            bash .ci/install
        printf '%s\n' "$stamp" >"$stamp_file"
    fi
fi
if [ ! -x "$VENV/bin/twistd" ]; then
    echo "demo: no twistd in $VENV (run without DEMO_SKIP_INSTALL, or set DEMO_VENV)" >&2
    exit 2
fi
# exec: Ctrl-C and the test's signals reach run.py directly.
exec "$VENV/bin/python" demo/run.py "$@"
