"""`python -m webapp` is the same as `tabwrite`."""
import sys

from .cli import main

sys.exit(main())
