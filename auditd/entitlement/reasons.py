"""Why an access was not entitled: a stable machine code and a human detail.

`neo.entitlement.reason` holds ``"<code>: <detail>"``, e.g. ``"out_of_scope: own_store
grant; the record's store is S021 (R-QJ), the actor's S011 (R-KM)"``. Rules and
dashboards select on the code (the text before the first ':'); people read the detail.

A detail never holds a raw customer identifier: the only identifiers it names are
staff ids, roles, stores, regions, partners, field names, countries and destination
addresses, and any order, ticket or customer id it must mention is a pseudonym. Titles
may show the reason (it is among the fields `render.SAFE_FIELDS` allows).
"""

from __future__ import annotations

# the access was judged and is not entitled (neo.entitlement.granted = false)
CATEGORY_NOT_GRANTED = "category_not_granted"  # no role of the actor grants the category at all
ACTION_NOT_GRANTED = "action_not_granted"  # the category is granted, for other actions
OUT_OF_SCOPE = "out_of_scope"  # the record is outside every covering grant's scope
PURPOSE_MISSING = "purpose_missing"  # the covering grants require a ticket or purpose
UNMASKED_WITHOUT_GRANT = "unmasked_without_grant"  # sensitive fields shown unmasked, or unmask, without an unmask grant
SHARE_FIELDS_BEYOND_ALLOWANCE = "share_fields_beyond_allowance"  # a partner got fields it may not receive
DESTINATION_NOT_ALLOWED = "destination_not_allowed"  # export/share outside allowed countries or networks
UNKNOWN_ACTOR = "unknown_actor"  # the employee id is not in the directory
DEPARTED = "departed"  # the employee had left at that moment
ACTOR_INACTIVE = "actor_inactive"  # suspended, or not yet hired, at that moment
# the access could not be judged (neo.entitlement.granted stays unset)
SCOPE_UNVERIFIED = "scope_unverified"  # the assignment lookup did not answer

DENIALS = (
    CATEGORY_NOT_GRANTED, ACTION_NOT_GRANTED, OUT_OF_SCOPE, PURPOSE_MISSING, UNMASKED_WITHOUT_GRANT,
    SHARE_FIELDS_BEYOND_ALLOWANCE, DESTINATION_NOT_ALLOWED, UNKNOWN_ACTOR, DEPARTED, ACTOR_INACTIVE,
)
REASON_CODES = DENIALS + (SCOPE_UNVERIFIED,)


def reason(code: str, detail: str) -> str:
    return f"{code}: {detail}"


def reason_code(text: str | None) -> str | None:
    """The machine code of a reason text ('out_of_scope: …' -> 'out_of_scope')."""
    if text is None:
        return None
    return text.partition(":")[0]
