"""`python -m shoal.worker`."""
import sys

from .cli import main

sys.exit(main())
