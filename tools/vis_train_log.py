#!/usr/bin/env python
"""Replot a training log: figures and summary numbers in seconds.

    python tools/vis_train_log.py --log-file outputs/exp/log.txt
    python tools/vis_train_log.py --log-file outputs/a/metrics.json --compare outputs/b/metrics.json
    python tools/vis_train_log.py --list outputs          # python tools/vis_train_log.py --latest --quick

All logic lives in events.plotting.cli (see --help); this file only runs it.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from events.plotting.cli import main

    sys.exit(main())
