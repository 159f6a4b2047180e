"""`python -m bench <benchmark> [options]` (through `./dev bench …`)."""

from __future__ import annotations

import argparse
import sys

import uvloop

from . import broadcast, ingest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench", description="wabus benchmarks (see bench/README.md)")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    ingest_parser = sub.add_parser(
        "ingest", help="webhook ingest: fixed rate and max rate, wabus vs a Celery + Flask baseline")
    ingest.add_arguments(ingest_parser)
    broadcast_parser = sub.add_parser(
        "broadcast", help="a 10,000-recipient broadcast: API answer time and one notifier's sends per second")
    broadcast.add_arguments(broadcast_parser)
    args = parser.parse_args(argv)
    # The services' event loop: the load generator shares the machine with them, so it costs what it must.
    if args.benchmark == "ingest":
        return uvloop.run(ingest.run(args, argv))
    if args.benchmark == "broadcast":
        return uvloop.run(broadcast.run(args))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
