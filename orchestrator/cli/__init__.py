"""The commands: argparse -> `main(argv)`; `python -m orchestrator.<command>` runs them."""
