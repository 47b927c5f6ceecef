"""`python -m aftercalld`: the same as the `aftercalld` command."""
import sys

from .cli import main

sys.exit(main())
