"""Checks that several settings types share, as `check()` generators use them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence


def check_countries_and_networks(countries: Sequence[str], networks: Sequence[str]) -> Iterator[tuple[tuple, str]]:
    """ISO 3166-1 alpha-2 country codes and IP networks, each problem with its key."""
    for i, code in enumerate(countries):
        if not (len(code) == 2 and code.isalpha() and code.isupper()):
            yield ("countries", i), f"expected an ISO country code such as 'CN', got {code!r}"
    for i, net in enumerate(networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            yield ("networks", i), f"bad network {net!r}: {exc}"
