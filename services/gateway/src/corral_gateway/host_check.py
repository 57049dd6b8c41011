"""DNS-rebinding protection: Ollama's `allowedHostsMiddleware`, reproduced.

A web page on `http://evil.example` can make its own name resolve to 127.0.0.1 and then talk to
a loopback-only server as a *same-origin* page: the browser's CORS checks never apply. What
gives it away is the `Host` header, which still says `evil.example`. So while the gateway is
bound to a loopback address, a request whose `Host` is not a local name or address is refused
with Ollama's answer: 403 with an empty body. Bound to any other address (0.0.0.0 in a
container, a LAN address), the operator has chosen to be reachable under any name, and there
is no check, as in Ollama.

The rule, from ollama/ollama `server/routes.go` (`allowedHostsMiddleware`, `allowedHost`,
`isLocalIP`):
- the host part of `Host` (the port dropped) is allowed when it is an IP address that is
  loopback, private (RFC 1918, fc00::/7: Go's `IsPrivate`), unspecified, or one of this
  machine's interface addresses;
- or when it is empty, `localhost`, this machine's hostname, or a name ending in
  `.localhost`, `.local` or `.internal` (case-insensitive); for such a name an `OPTIONS`
  request is answered 204 at once (Ollama does this too);
- Corral adds `CORRAL_ALLOWED_HOSTS`: comma-separated names or addresses, `*.example.com`
  (or `.example.com`) for a domain's subdomains.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

# Go's netip.Addr.IsPrivate: RFC 1918 and RFC 4193 only (Python's `is_private` is much wider:
# documentation ranges, link-local, 0.0.0.0/8 ...).
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
# Interfaces come and go (a VPN, a DHCP lease); Ollama lists them on every request, we at most
# this often, and only for a Host that is an address no other rule allowed.
_INTERFACE_TTL_S = 10.0
_SIOCGIFADDR = 0x8915

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def bound_to_loopback(bind_host: str) -> bool:
    """Whether the gateway listens on loopback only (`CORRAL_GATEWAY_HOST`).

    A name is resolved as the listener does; an empty host or one that resolves to nothing
    binds everywhere or nowhere, so only names resolving to loopback addresses alone count.
    """
    host = bind_host.strip().strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    return bool(addresses) and all(a.is_loopback for a in addresses)


def host_part(host_header: str) -> str:
    """The host of a `Host` header without its port, lower-cased (Go's `net.SplitHostPort`,
    falling back to the whole value when it has no port)."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _interface_addresses() -> set[IPAddress]:
    """This machine's interface addresses (stdlib only: psutil is not a gateway dependency)."""
    found: set[IPAddress] = set()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            with contextlib.suppress(ValueError):
                found.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
    # IPv4: the address of each interface, as the kernel reports it (Linux).
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):
                reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
                found.add(ipaddress.IPv4Address(reply[20:24]))
    # IPv6: every address of every interface (Linux).
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(ipaddress.IPv6Address(int(raw, 16)))
    return found


class AllowedHosts:
    """Decides whether a `Host` may reach a loopback-bound gateway."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._hostname = socket.gethostname().lower()
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        self._addresses: set[IPAddress] = set()
        for entry in extra:
            value = entry.strip().lower()
            if not value:
                continue
            if value.startswith(("*.", ".")):
                self._suffixes.append("." + value.lstrip("*."))
                continue
            value = host_part(value)
            try:
                self._addresses.add(ipaddress.ip_address(value))
            except ValueError:
                self._names.add(value)
        self._interfaces: set[IPAddress] = set()
        self._interfaces_at = float("-inf")

    def _is_interface_address(self, address: IPAddress) -> bool:
        now = time.monotonic()
        if now - self._interfaces_at > _INTERFACE_TTL_S:
            self._interfaces = _interface_addresses()
            self._interfaces_at = now
        return address in self._interfaces

    def address_allowed(self, address: IPAddress) -> bool:
        # Go's netip judges an IPv4-mapped address (`[::ffff:127.0.0.1]`) as its IPv4 address
        # for loopback and private ranges; Python 3.11's ipaddress does not.
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        unmapped = mapped or address
        return (
            unmapped.is_loopback
            or address.is_unspecified
            or any(unmapped in network for network in _PRIVATE_NETWORKS)
            or address in self._addresses
            or self._is_interface_address(address)
        )

    def name_allowed(self, name: str) -> bool:
        return (
            name in ("", "localhost", self._hostname)
            or name.endswith(_LOCAL_SUFFIXES)
            or name in self._names
            or any(name.endswith(suffix) for suffix in self._suffixes)
        )


def host_check_middleware(bind_host: str, extra_hosts: Iterable[str] = ()) -> Middleware | None:
    """The Host-header guard for a gateway bound to `bind_host`; None when it is not loopback."""
    if not bound_to_loopback(bind_host):
        return None
    allowed = AllowedHosts(extra_hosts)

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = host_part(request.headers.get(hdrs.HOST, ""))
        try:
            address: IPAddress | None = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            address = None
        if address is not None and allowed.address_allowed(address):
            return await handler(request)
        if address is None and allowed.name_allowed(host):
            if request.method == hdrs.METH_OPTIONS:
                return web.Response(status=204)
            return await handler(request)
        return web.Response(status=403)

    return host_check
