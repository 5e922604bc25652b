"""`python -m orchestrator.report`: the command lives in `orchestrator.cli.report`."""
import sys

from orchestrator.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
