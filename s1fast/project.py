"""``python -m s1fast.project``: the command of the projection package :mod:`s1fast.projection`."""
import sys

from s1fast.projection.cli import main

if __name__ == "__main__":
    sys.exit(main())
