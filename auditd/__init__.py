"""neo-auditd: an access-audit daemon for customers' personal information."""

__version__ = "0.1.0"
