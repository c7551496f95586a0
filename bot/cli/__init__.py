"""The `dreambot` command line: `python -m bot.cli` or the `dreambot` script (main.py)."""
