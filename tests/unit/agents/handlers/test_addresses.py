"""The webhook's address policy: the same answer on every Python version (3.11-3.13).

CPython's own ``is_private``/``is_global`` tables changed in 3.13 (``2002::/16`` became private
as a whole); :mod:`jobstream.agents.handlers.addresses` keeps a table of its own, and these
answers pin it. CI checks them on its interpreter (3.11); the module imports nothing but
``ipaddress``, so the same rows were also checked by loading it alone under 3.12 and 3.13.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobstream.agents.handlers.addresses import embedded_ipv4, is_forbidden_address

ANSWERS = {
    # public unicast, and the IPv6 forms that carry a public IPv4 address
    "8.8.8.8": False,
    "1.1.1.1": False,
    "192.31.196.1": False,
    "2606:4700:4700::1111": False,
    "2620:4f:8000::1": False,
    "::ffff:8.8.8.8": False,
    "2002:808:808::": False,  # 6to4 of 8.8.8.8: private on 3.13's table, public on 3.11's
    "2002:808:808:1:2:3:4:5": False,
    "64:ff9b::808:808": False,  # NAT64 of 8.8.8.8
    # IPv4 special-purpose ranges
    "0.0.0.0": True,
    "10.1.2.3": True,
    "100.64.0.1": True,
    "127.0.0.1": True,
    "169.254.169.254": True,
    "172.31.255.255": True,
    "192.0.0.9": True,
    "192.0.2.1": True,
    "192.88.99.1": True,
    "192.168.0.1": True,
    "198.18.0.1": True,
    "198.51.100.1": True,
    "203.0.113.1": True,
    "224.0.0.1": True,
    "240.0.0.1": True,
    "255.255.255.255": True,
    # IPv6 forms that carry an internal IPv4 address
    "::ffff:127.0.0.1": True,
    "2002:7f00:1::": True,  # 6to4 of 127.0.0.1
    "2002:a00:1::": True,  # 6to4 of 10.0.0.1
    "2002::": True,  # 6to4 of 0.0.0.0
    "64:ff9b::a00:1": True,  # NAT64 of 10.0.0.1
    # IPv6 special-purpose ranges
    "::": True,
    "::1": True,
    "::8.8.8.8": True,  # IPv4-compatible (deprecated)
    "64:ff9b:1::1": True,  # local-use NAT64
    "100::1": True,  # discard-only
    "2001::1": True,  # Teredo
    "2001:2::1": True,  # benchmarking
    "2001:3::1": True,  # AMT: reachable, but inside the IETF block, refused whole
    "2001:20::1": True,  # ORCHIDv2
    "2001:db8::1": True,  # documentation
    "3fff::1": True,  # documentation (2024)
    "5f00::1": True,  # SRv6 SIDs (2024)
    "fc00::1": True,
    "fd12:3456::1": True,
    "fe80::1": True,
    "fe80::1%eth0": True,
    "fec0::1": True,
    "ff02::1": True,
    "4000::1": True,  # not allocated for unicast
}


@pytest.mark.parametrize(("address", "forbidden"), ANSWERS.items())
def test_the_same_answer_on_every_python(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address)) is forbidden


@given(st.ip_addresses(v=4))
def test_every_embedding_is_judged_by_its_ipv4_address(ip: ipaddress.IPv4Address) -> None:
    n = int(ip)
    forms = [
        ipaddress.IPv6Address(f"::ffff:{ip}"),
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 0xABCD),
        ipaddress.IPv6Address((0x64FF9B << 96) | n),
    ]
    for form in forms:
        assert embedded_ipv4(form) == ip
        assert is_forbidden_address(form) == is_forbidden_address(ip)


@given(st.ip_addresses(v=6))
def test_outside_global_unicast_everything_is_forbidden(ip: ipaddress.IPv6Address) -> None:
    if embedded_ipv4(ip) is None and not 0x2000 <= int(ip) >> 112 <= 0x3FFF:
        assert is_forbidden_address(ip)
