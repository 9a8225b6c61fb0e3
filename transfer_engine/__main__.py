"""`python -m transfer_engine` is `te`."""

from transfer_engine.cli.main import entry

entry()
