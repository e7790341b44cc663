"""`python -m asvp.cli`: the same as the `asvp` console script."""
import sys

from asvp.cli import main

sys.exit(main())
