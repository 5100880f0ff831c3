"""`python -m auditd.cli`: the same as the `neo-auditd` command."""

import sys

from auditd.cli import main

sys.exit(main())
