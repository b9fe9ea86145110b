"""``python -m s1fast.projection`` (same as ``python -m s1fast.project``)."""
import sys

from .cli import main

sys.exit(main())
