"""`python -m engine …`: see engine/cli.py."""

import sys

from engine.cli import run

sys.exit(run())
