"""``python -m dev.run``: see the package's text."""

from dev.run.devrun import main

main()
