"""`python -m client …` is the same as the `stillmoving` console script."""

import sys

from client.main import main

sys.exit(main())
