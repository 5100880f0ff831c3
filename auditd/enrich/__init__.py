"""The enrich stage: directory facts as of each event's time, and keyed pseudonyms."""

from auditd.enrich.enricher import (
    CUSTOMER_RESOURCE_TYPES, DEFAULT_SENSITIVE_CATEGORIES, ActorFacts, Enricher,
)
from auditd.enrich.pseudonym import Pseudonymiser, create_key_file, load_key

__all__ = [
    "CUSTOMER_RESOURCE_TYPES", "DEFAULT_SENSITIVE_CATEGORIES", "ActorFacts", "Enricher", "Pseudonymiser",
    "create_key_file", "load_key",
]
