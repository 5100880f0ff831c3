"""`python -m auditd.cli`: the same as the `neo-auditd` command."""

import sys

from auditd.cli import main

if __name__ == "__main__":  # not when a spawned job process imports the parent's main module
    sys.exit(main())
