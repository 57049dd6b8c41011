"""The client's address: the connection's peer, or, behind a trusted proxy, the address that
proxy saw.

`X-Forwarded-For` is a list every proxy appends its peer to, so only its right end is written
by proxies we run; anything to the left of the first address we do not trust may be a lie the
client told. The client is therefore the right-most address that is not a trusted proxy
(`CORRAL_TRUSTED_PROXIES`: addresses or networks), and the header counts only when the
connection itself comes from a trusted proxy. The address is what anonymous callers' limits,
failed authentications and the audit log are keyed by.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it: bare, `[v6]` or with a port (`1.2.3.4:80`,
    `[::1]:80`); an IPv4-mapped IPv6 address is taken as its IPv4 address."""
    value = text.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The proxies whose `X-Forwarded-For` is believed."""

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, setting: str) -> TrustedProxies:
        """From `CORRAL_TRUSTED_PROXIES` (comma-separated addresses or CIDR networks); a
        ValueError names an entry that is neither."""
        networks: list[IPNetwork] = []
        for entry in (part.strip() for part in setting.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"CORRAL_TRUSTED_PROXIES: {entry!r} is not an address or a network"
                ) from None
        return cls(networks)

    def trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def client_address(self, peer: str | None, forwarded_for: Iterable[str] = ()) -> str:
        """The client's address, as text: the peer's, or with a trusted peer the right-most
        `X-Forwarded-For` address that is not a trusted proxy (every header, in order).
        An entry that is not an address ends the walk at the last proxy that forwarded it."""
        if peer is None:
            return UNKNOWN
        current = parse_address(peer)
        if current is None:
            return peer
        if not self.networks or not self.trusts(current):
            return str(current)
        hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                break
            current = address
            if not self.trusts(address):
                break
        return str(current)
