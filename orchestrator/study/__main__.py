import sys

from orchestrator.study.cli import main

sys.exit(main())
