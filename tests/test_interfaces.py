"""The interface lookup: longest-prefix match over the routes, local
addresses, the mark/zone map, the block form against the object form, and
the correlator filling in_if/out_if with it."""

import ipaddress

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfflowd import ctblocks as C
from nfflowd.conntrack import EV_DESTROY, CtEvent, CtTuple
from nfflowd.correlate import Correlator, flows_of, flows_of_block
from nfflowd.interfaces import (RT_TABLE_LOCAL, RT_TABLE_MAIN, RTN_BROADCAST, RTN_LOCAL,
                                RTN_UNICAST, Address, Interfaces, Link, Reset, Route)

S = 1_000_000_000
BLACKHOLE = 6


def a(text):
    return ipaddress.ip_address(text).packed


def route(prefix, oif, add=True, table=RT_TABLE_MAIN, kind=RTN_UNICAST, priority=0,
          replace=False):
    net = ipaddress.ip_network(prefix)
    dst = net.network_address.packed if net.prefixlen else b""
    return Route(add, net.version, table, kind, dst, net.prefixlen, oif, priority, 0, replace)


def local(addr, oif=1):
    ip = ipaddress.ip_address(addr)
    return route(f"{addr}/{ip.max_prefixlen}", oif, table=RT_TABLE_LOCAL, kind=RTN_LOCAL)


def firewall():
    """lan0 (2) 198.51.100.0/26, lan1 (3) 198.51.100.64/26, wan0 (4) default."""
    ifs = Interfaces()
    ifs.update([
        Link(True, 1, "lo"), Link(True, 2, "lan0", "inside"), Link(True, 3, "lan1"),
        Link(True, 4, "wan0", "uplink"),
        route("198.51.100.0/26", 2), route("198.51.100.64/26", 3),
        route("203.0.113.0/24", 4), route("0.0.0.0/0", 4),
        route("2001:db8:1::/64", 2), route("2001:db8:3::/64", 3), route("::/0", 4),
        route("2001:db8:2::/64", 4),
        local("198.51.100.1"), local("198.51.100.65"), local("203.0.113.1"),
        route("198.51.100.63/32", 2, table=RT_TABLE_LOCAL, kind=RTN_BROADCAST),
        Address(True, 6, 2, a("2001:db8:1::1")),
    ])
    return ifs


@pytest.mark.parametrize("addr, want", [
    ("198.51.100.2", 2), ("198.51.100.70", 3), ("203.0.113.9", 4), ("192.0.2.1", 4),
    ("198.51.100.1", 0), ("203.0.113.1", 0), ("198.51.100.63", 0),
    ("2001:db8:1::2", 2), ("2001:db8:3::9", 3), ("2001:db8:2::2", 4), ("2001:db8:9::1", 4),
    ("2001:db8:1::1", 0),
])
def test_lookup(addr, want):
    assert firewall().lookup(a(addr)) == want


def test_longest_prefix_wins_and_no_default_gives_zero():
    ifs = Interfaces()
    ifs.update([route("10.0.0.0/8", 2), route("10.1.0.0/16", 3), route("10.1.2.0/24", 4),
                route("10.1.2.128/25", 5)])
    assert [ifs.lookup(a(x)) for x in ("10.9.9.9", "10.1.9.9", "10.1.2.3", "10.1.2.200",
                                       "11.0.0.1")] == [2, 3, 4, 5, 0]


def test_blackhole_and_priority():
    ifs = Interfaces()
    ifs.update([route("0.0.0.0/0", 2), route("10.0.0.0/8", 0, kind=BLACKHOLE),
                route("172.16.0.0/12", 3, priority=200), route("172.16.0.0/12", 4, priority=100)])
    assert ifs.lookup(a("10.1.1.1")) == 0
    assert ifs.lookup(a("172.16.1.1")) == 4     # the lower metric
    ifs.update([route("172.16.0.0/12", 4, add=False, priority=100)])
    assert ifs.lookup(a("172.16.1.1")) == 3


def test_other_tables_are_not_consulted():
    ifs = Interfaces()
    ifs.update([route("0.0.0.0/0", 2), route("10.0.0.0/8", 3, table=100)])
    assert ifs.lookup(a("10.1.1.1")) == 2


def test_local_before_main_whatever_the_length():
    ifs = Interfaces()
    ifs.update([route("10.0.0.0/8", 3, table=RT_TABLE_LOCAL, kind=RTN_LOCAL),   # AnyIP
                route("10.1.0.0/16", 2)])
    assert ifs.lookup(a("10.1.2.3")) == 0


def test_cache_invalidated_on_route_and_address_change():
    ifs = firewall()
    x = a("198.51.100.70")
    assert ifs.lookup(x) == 3
    ifs.update([route("198.51.100.64/26", 3, add=False), route("198.51.100.64/26", 2)])
    assert ifs.lookup(x) == 2
    ifs.update([route("198.51.100.64/26", 4, replace=True)])
    assert ifs.lookup(x) == 4
    ifs.update([Address(True, 4, 2, x)])
    assert ifs.lookup(x) == 0
    ifs.update([Address(False, 4, 2, x)])
    assert ifs.lookup(x) == 4
    assert ifs.update([Reset()]) is True
    assert ifs.lookup(x) == 0 and ifs.links == {}


def test_links_changes_reported():
    ifs = firewall()
    assert ifs.links[2] == ("lan0", "inside")
    assert ifs.update([Link(True, 2, "lan0", "inside")]) is False
    assert ifs.update([Link(True, 2, "lan0", "inner")]) is True
    assert ifs.update([Link(False, 3, "lan1")]) is True and 3 not in ifs.links
    assert ifs.update([route("10.0.0.0/8", 2)]) is False


def test_ipv6_link_local_on_each_interface_and_replace():
    ifs = Interfaces()
    ifs.update([route("fe80::/64", 2), route("fe80::/64", 3), route("2001:db8:5::/64", 2)])
    assert ifs.lookup(a("fe80::1")) in (2, 3)
    ifs.update([route("fe80::/64", 2, add=False)])
    assert ifs.lookup(a("fe80::1")) == 3
    ifs.update([route("2001:db8:5::/64", 3, replace=True)])
    assert ifs.lookup(a("2001:db8:5::1")) == 3
    assert ifs.sizes()["routes6"] == 2


def conn_event(o, r, mark=0, zone=0, ct_id=1):
    fam = 6 if ":" in o[0] else 4
    return CtEvent(EV_DESTROY, fam, ct_id, 0, CtTuple(a(o[0]), a(o[1]), 6, 1000, 80),
                   CtTuple(a(r[0]), a(r[1]), 6, 80, 1000), 1, 60, 1, 60, S, 2 * S, mark, zone)


def test_pair_snat_dnat_routed_local():
    ifs = firewall()
    snat = conn_event(("198.51.100.2", "203.0.113.9"), ("203.0.113.9", "203.0.113.1"))
    dnat = conn_event(("203.0.113.9", "203.0.113.1"), ("198.51.100.70", "203.0.113.9"))
    routed = conn_event(("2001:db8:1::2", "2001:db8:3::2"), ("2001:db8:3::2", "2001:db8:1::2"))
    outbound = conn_event(("203.0.113.1", "203.0.113.9"), ("203.0.113.9", "203.0.113.1"))
    inbound = conn_event(("203.0.113.9", "203.0.113.1"), ("203.0.113.1", "203.0.113.9"))
    assert ifs.pair(snat) == (2, 4)
    assert ifs.pair(dnat) == (4, 3)
    assert ifs.pair(routed) == (2, 3)
    assert ifs.pair(outbound) == (0, 4)
    assert ifs.pair(inbound) == (4, 0)


def test_flows_of_fills_both_directions():
    ifs = firewall()
    dnat = conn_event(("203.0.113.9", "203.0.113.1"), ("198.51.100.70", "203.0.113.9"))
    o, r = flows_of(dnat, S, 2 * S, 3, ifs.pair)
    assert (o.in_if, o.out_if, r.in_if, r.out_if) == (4, 3, 3, 4)
    o, r = flows_of(dnat, S, 2 * S)
    assert (o.in_if, o.out_if, r.in_if, r.out_if) == (0, 0, 0, 0)


def test_mark_and_zone_maps():
    ifs = firewall()
    ifs.configure("mark", {1: ("lan0", "wan0"), 2: (3, 4), 3: ("nosuch", "wan0")})
    assert ifs.pair(conn_event(("1.1.1.1", "2.2.2.2"), ("2.2.2.2", "1.1.1.1"), mark=1)) == (2, 4)
    assert ifs.pair(conn_event(("1.1.1.1", "2.2.2.2"), ("2.2.2.2", "1.1.1.1"), mark=2)) == (3, 4)
    assert ifs.pair(conn_event(("1.1.1.1", "2.2.2.2"), ("2.2.2.2", "1.1.1.1"), mark=3)) == (0, 4)
    assert ifs.pair(conn_event(("1.1.1.1", "2.2.2.2"), ("2.2.2.2", "1.1.1.1"), mark=9)) == (0, 0)
    # a renamed link: names resolved again
    ifs.update([Link(True, 5, "nosuch")])
    assert ifs.pair(conn_event(("1.1.1.1", "2.2.2.2"), ("2.2.2.2", "1.1.1.1"), mark=3)) == (5, 4)
    ifs.configure("zone", {7: ("lan1", "lan0")})
    assert ifs.pair(conn_event(("1.1.1.1", "2.2.2.2"), ("2.2.2.2", "1.1.1.1"), zone=7)) == (3, 2)
    with pytest.raises(ValueError, match="unknown interfaces method"):
        ifs.configure("vrf")


# -- the block form against the object form --------------------------------------------

PREFIX4 = st.builds(lambda n, p: ipaddress.ip_network((n, p), strict=False),
                    st.integers(0, 2**32 - 1), st.integers(0, 32))
PREFIX6 = st.builds(lambda n, p: ipaddress.ip_network((n, p), strict=False),
                    st.integers(0, 2**128 - 1)
                    | st.integers(0x20010db8 << 96, (0x20010db9 << 96) - 1),
                    st.integers(0, 128))


@st.composite
def tables_and_addresses(draw):
    msgs = []
    nets = draw(st.lists(PREFIX4 | PREFIX6, max_size=25))
    for net in nets:
        kind = draw(st.sampled_from([RTN_UNICAST, RTN_UNICAST, BLACKHOLE, RTN_LOCAL]))
        table = RT_TABLE_LOCAL if kind == RTN_LOCAL else RT_TABLE_MAIN
        msgs.append(route(str(net), draw(st.integers(1, 9)), table=table, kind=kind,
                          priority=draw(st.integers(0, 3))))
    # addresses near the prefixes (inside, at their ends, just past) and random ones
    addrs = []
    for net in nets:
        for ip in (net.network_address, net.broadcast_address):
            addrs.append(ip.packed)
            if int(ip) + 1 <= (2**ip.max_prefixlen - 1):
                addrs.append((ip + 1).packed)
    addrs += draw(st.lists(st.integers(0, 2**32 - 1).map(lambda x: x.to_bytes(4, "big"))
                           | st.integers(0, 2**128 - 1).map(lambda x: x.to_bytes(16, "big")),
                           max_size=10))
    return msgs, addrs


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables_and_addresses())
def test_block_lookup_equals_scalar(case):
    msgs, addrs = case
    if not addrs:
        return
    ifs = Interfaces()
    ifs.update(msgs)
    family = np.array([4 if len(x) == 4 else 6 for x in addrs], dtype=np.uint64)
    cols = np.frombuffer(b"".join(x.ljust(16, b"\0") for x in addrs),
                         dtype=np.uint8).reshape(len(addrs), 16)
    got = ifs.lookup_many(family, cols).tolist()
    # the scalar lookup, against a plain reading of the rules
    assert got == [ifs.lookup(x) for x in addrs]
    assert got == [reference(msgs, x) for x in addrs]


def reference(msgs, addr):
    """The rules written the slow way: a local prefix holding the address
    gives 0; else the main table's longest prefix, the lowest priority among
    equal ones, the last message among equal priorities."""
    ip = ipaddress.ip_address(addr)
    if any(m.kind == RTN_LOCAL and ip in _net(m) for m in msgs):
        return 0
    best = None
    for m in msgs:
        if m.kind != RTN_LOCAL and ip in _net(m):
            k = (m.dst_len, -m.priority)
            if best is None or k >= best[0]:
                best = (k, m.oif if m.kind == RTN_UNICAST else 0)
    return best[1] if best else 0


def _net(m):
    net = int.from_bytes(m.dst, "big") if m.dst else 0
    cls = ipaddress.IPv4Network if m.family == 4 else ipaddress.IPv6Network
    return cls((net, m.dst_len), strict=False)


@pytest.mark.parametrize("method", ["route", "mark", "zone", "none"])
def test_correlator_block_path_equals_object_path(method):
    ifs = firewall()
    ifs.configure(method, {1: ("lan0", "wan0"), 2: ("wan0", "lan1")} if method in ("mark", "zone")
                  else None)
    evs = [conn_event(("198.51.100.2", "203.0.113.9"), ("203.0.113.9", "203.0.113.1"),
                      mark=1, zone=2, ct_id=1),
           conn_event(("203.0.113.9", "203.0.113.1"), ("198.51.100.70", "203.0.113.9"),
                      mark=2, zone=1, ct_id=2),
           conn_event(("2001:db8:1::2", "2001:db8:3::2"), ("2001:db8:3::2", "2001:db8:1::2"),
                      mark=5, ct_id=3),
           conn_event(("203.0.113.1", "203.0.113.9"), ("203.0.113.9", "203.0.113.1"), ct_id=4)]
    objects, blocks = [], []
    Correlator(cache=False, interfaces=ifs).handle_batch(evs, 3 * S, objects)
    corr = Correlator(cache=False)
    corr.interfaces = ifs
    corr.handle_batch([C.DestroyBlock.from_events(evs)], 3 * S, blocks)
    assert blocks == objects
    start = np.full(len(evs), S, dtype=np.uint64)
    assert flows_of_block(C.DestroyBlock.from_events(evs), start, start * 2, 3, ifs).flows() \
        == [f for e in evs for f in flows_of(e, S, 2 * S, 3, ifs.pair)]
    if method == "route":
        assert [(f.in_if, f.out_if) for f in objects] == [
            (2, 4), (4, 2), (4, 3), (3, 4), (2, 3), (3, 2), (0, 4), (4, 0)]
    elif method == "mark":
        assert [(f.in_if, f.out_if) for f in objects][:4] == [(2, 4), (4, 2), (4, 3), (3, 4)]
    elif method == "none":
        assert all(f.in_if == f.out_if == 0 for f in objects)


# -- configuration -----------------------------------------------------------------------

def test_config_interfaces_section():
    from nfflowd.app.config import loads
    assert loads("").interfaces.method == "route"
    cfg = loads("interfaces: {method: mark, map: {0x10: [lan0, wan0], 2: [3, 4]}}")
    assert cfg.interfaces.map == ((2, (3, 4)), (16, ("lan0", "wan0")))
    assert loads("interfaces: {method: none}").interfaces.map == ()


@pytest.mark.parametrize("text, message", [
    ("interfaces: {method: vrf}", "interfaces.method: expected one of: route, mark, zone, none"),
    ("interfaces: {method: mark}", "interfaces.map: method mark needs a map"),
    ("interfaces: {map: {1: [a, b]}}", "interfaces.map: a map is for method mark or zone"),
    ("interfaces: {method: zone, map: {70000: [a, b]}}",
     "interfaces.map.70000: expected a zone value, an integer from 0 to 65535"),
    ("interfaces: {method: mark, map: {1: [a]}}", "interfaces.map.1: expected [ingress, egress]"),
    ("interfaces: {method: mark, map: {1: [a, 'b/c']}}",
     "interfaces.map.1: egress: expected an interface name"),
    ("interfaces: {method: mark, map: []}", "interfaces.map: expected a mapping"),
    ("interfaces: {methods: route}", "interfaces.methods: unknown key"),
])
def test_config_interfaces_errors(text, message):
    from nfflowd.app.config import loads
    from nfflowd.errors import ConfigError
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        loads(text)
