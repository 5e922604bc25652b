"""`python -m orchestrator.search`: the command lives in `orchestrator.cli.search`."""
import sys

from orchestrator.cli.search import main

if __name__ == "__main__":
    sys.exit(main())
