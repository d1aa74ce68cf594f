"""Run ``polyprune slim`` / ``slim-curve`` before the main CLI is wired (the lead wires
``polyprune.slimming.cli.add_parsers`` into ``polyprune``): ``python tests/benchmarks/slim_cli.py slim ...``."""
import argparse
import sys

from polyprune.errors import PolypruneError
from polyprune.slimming.cli import add_parsers

ap = argparse.ArgumentParser(prog="polyprune")
add_parsers(ap.add_subparsers(dest="cmd", required=True))
a = ap.parse_args()
try:
    sys.exit(a.func(a))
except PolypruneError as e:
    print(f"polyprune: error: {e.problem}\n  fix: {e.fix}", file=sys.stderr)
    sys.exit(2)
