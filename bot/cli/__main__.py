"""`python -m bot.cli`: the same as the `dreambot` script."""

from bot.cli.main import main

main()
