"""Run the synthetic accuracy suite from a source tree.

Usage: ``python benchmarks/accuracy.py [--sheets N] [--seed S]``; the same
as ``omr-desktop accuracy``.
"""

from __future__ import annotations

import argparse
import sys

from omr_desktop.cli_engine import add_accuracy_arguments, run_accuracy


def main() -> int:
    """Parse the command line and run the suite."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_accuracy_arguments(parser)
    return run_accuracy(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
