"""``python -m poolcast.cli``."""

from poolcast.cli import main

main()
