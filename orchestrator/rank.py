"""`python -m orchestrator.rank`: the command lives in `orchestrator.cli.rank`."""
import sys

from orchestrator.cli.rank import main

if __name__ == "__main__":
    sys.exit(main())
