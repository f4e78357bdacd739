"""`python -m optitrust_py` is the `otp` command."""
from .cli import entry

entry()
