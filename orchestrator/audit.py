"""`python -m orchestrator.audit`: the command lives in `orchestrator.cli.audit`."""
import sys

from orchestrator.cli.audit import main

if __name__ == "__main__":
    sys.exit(main())
