"""The `te` command line: `main.py` wires the command groups; each group lives in its own module."""
