"""The full chaos run of issue 11, one JSON line of figures on stdout.

    python -m bench.chaos [--short] [--seed N]

5,000 messages over 150 s into 4 folders of 2 providers, two replicas (lease
TTL 15 s), 20 SIGKILLs of a replica, 3 Dovecot session cuts, 3 Redis and 2
Postgres restarts (the last one a crash), all on private servers on their own
ports (needs root: Dovecot's mail user and Postgres's system user). See
tests/rig/chaos.py for what is counted and docs/reliability.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import sys

from twisted.internet import defer, task

from tests.rig import chaos


def main(reactor, argv):
    parser = argparse.ArgumentParser(prog="python -m bench.chaos")
    parser.add_argument("--short", action="store_true", help="the CI plan instead of the full one")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    plan = chaos.SHORT if args.short else chaos.FULL
    run = chaos.ChaosRun(reactor, plan, seed=args.seed,
                         log=lambda line: print(line, file=sys.stderr, flush=True))
    d = run.run()
    d.addCallback(lambda figures: print(json.dumps(figures, sort_keys=True), flush=True))
    return d


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
