"""Operational glue: service-manager notifications and error reporting."""
