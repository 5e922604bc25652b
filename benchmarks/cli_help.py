"""How long each command's `--help` takes, as a user starts it (a fresh interpreter).

    python benchmarks/cli_help.py [--repeat 5] [--commands search rank report generate study audit]

Runs `python -m orchestrator.<command> --help` --repeat times per command and prints the
median and the fastest wall time and the median's ratio to the 2 s target (issue 24: no
torch, Ray, MLflow or Optuna before the options have parsed).  The time includes Python's own
start-up (~0.05 s); on a shared machine, take the fastest.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("search", "rank", "report", "generate", "study", "audit")
TARGET_S = 2.0


def help_seconds(command: str) -> float:
    """Wall time of one `python -m orchestrator.<command> --help`."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"orchestrator.{command}", "--help"], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="runs per command")
    p.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    args = p.parse_args(argv)
    worst = 0.0
    for command in args.commands:
        times = [help_seconds(command) for _ in range(args.repeat)]
        median = statistics.median(times)
        worst = max(worst, median)
        print(f"{command:9s} --help: median {median:.2f} s, fastest {min(times):.2f} s "
              f"({args.repeat} runs), ratio to {TARGET_S:g} s: {median / TARGET_S:.2f}")
    print(f"slowest median / target: {worst / TARGET_S:.2f} ({'met' if worst < TARGET_S else 'missed'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
