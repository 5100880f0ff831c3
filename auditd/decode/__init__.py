"""Decode and normalise: raw records -> AccessEvents, through declarative formats."""

from auditd.decode.formats import Format, load_format, shipped_format_names
from auditd.decode.normalise import Normaliser

__all__ = ["Format", "Normaliser", "load_format", "shipped_format_names"]
