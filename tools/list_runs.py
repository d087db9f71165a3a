#!/usr/bin/env python
"""List the training runs under a directory (default: outputs/) with their status, last
iteration and final losses, read from each run's train_history.json.

    python tools/list_runs.py [outputs]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.run_history import format_runs, list_runs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="outputs", help="directory holding run directories")
    root = parser.parse_args().root
    if not os.path.isdir(root):
        print(f"error: no such directory: {root}", file=sys.stderr)
        return 2
    runs = list_runs(root)
    if not runs:
        print(f"no runs (train_history.json) under {root}")
        return 0
    print(format_runs(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
