"""`python -m orchestrator.generate`: the command lives in `orchestrator.cli.generate`."""
import sys

from orchestrator.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
