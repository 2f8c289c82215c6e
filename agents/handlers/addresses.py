"""Which IP addresses the ``http.webhook`` job may send to: plainly public unicast ones only.

The policy is a table of its own, not the ``is_private``/``is_global`` flags of :mod:`ipaddress`:
those flags follow IANA's special-purpose registries, and CPython updates them between minor
versions (3.13 counts all of ``2002::/16`` as private, so the 6to4 form of 8.8.8.8 was refused
on 3.13 and allowed on 3.11). A webhook must get the same answer whatever Python runs it, so
the ranges below are written out once (from the IANA IPv4 and IPv6 special-purpose address
registries, 2024), and a test pins the answers for every range on each supported version.

The table is deliberately coarser than the registries where that only refuses more: all of
``192.0.0.0/24`` and ``2001::/23`` (a few anycast services inside them are reachable, but no
webhook receiver lives there), and every IPv6 address outside ``2000::/3``, the only block
IANA allocates for global unicast.

IPv6 forms that embed an IPv4 address are judged by that address, since that is where the
packets end up: IPv4-mapped (``::ffff:0:0/96``), 6to4 (``2002::/16``, the address in bits
16-47) and the NAT64 well-known prefix (``64:ff9b::/96``, the last 32 bits).
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

FORBIDDEN_V4: tuple[ipaddress.IPv4Network, ...] = (
    _V4("0.0.0.0/8"),  # "this network"
    _V4("10.0.0.0/8"),  # private
    _V4("100.64.0.0/10"),  # carrier-grade NAT (shared address space)
    _V4("127.0.0.0/8"),  # loopback
    _V4("169.254.0.0/16"),  # link-local, cloud metadata services
    _V4("172.16.0.0/12"),  # private
    _V4("192.0.0.0/24"),  # IETF protocol assignments
    _V4("192.0.2.0/24"),  # documentation (TEST-NET-1)
    _V4("192.88.99.0/24"),  # 6to4 relay anycast (deprecated)
    _V4("192.168.0.0/16"),  # private
    _V4("198.18.0.0/15"),  # benchmarking
    _V4("198.51.100.0/24"),  # documentation (TEST-NET-2)
    _V4("203.0.113.0/24"),  # documentation (TEST-NET-3)
    _V4("224.0.0.0/4"),  # multicast
    _V4("240.0.0.0/4"),  # reserved, and the limited broadcast 255.255.255.255
)
GLOBAL_UNICAST_V6 = _V6("2000::/3")
FORBIDDEN_V6: tuple[ipaddress.IPv6Network, ...] = (
    _V6("2001::/23"),  # IETF protocol assignments: Teredo, benchmarking, ORCHID, ...
    _V6("2001:db8::/32"),  # documentation
    _V6("3fff::/20"),  # documentation
)
"""Inside ``2000::/3``; everything outside it (loopback, ULA ``fc00::/7``, link-local,
multicast, the IPv4-compatible ``::/96``, discard-only ``100::/64``, local-use NAT64
``64:ff9b:1::/48``, SRv6 ``5f00::/16``, unallocated space) is refused as a whole."""
MAPPED = _V6("::ffff:0:0/96")
SIX_TO_FOUR = _V6("2002::/16")
NAT64 = _V6("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a mapped, 6to4 or NAT64 address carries, else None."""
    if ip in MAPPED or ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return None


def is_forbidden_address(ip: IPAddress) -> bool:
    """True for any address that is not plainly a public unicast one (see the module doc)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in FORBIDDEN_V4)
    if ip.scope_id:
        return True  # fe80::1%eth0: scoped addresses are link-local by definition
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        return is_forbidden_address(embedded)
    return ip not in GLOBAL_UNICAST_V6 or any(ip in net for net in FORBIDDEN_V6)
