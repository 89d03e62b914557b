"""The correlator: connections (two tuples) into directional flows."""

import ipaddress

import pytest

from nfflowd.conntrack import EV_DESTROY, EV_DUMP, EV_NEW, CtEvent, CtTuple
from nfflowd.correlate import Correlator, flows_of, nat_event_of
from nfflowd.record import END_OF_FLOW, ORIGINAL, REPLY, Flow

S = 1_000_000_000  # ns per second


def a(text):
    return ipaddress.ip_address(text).packed


def ev(kind, orig, reply, ct_id=7, counters=(10, 1000, 8, 4000), start=0, stop=0, family=None,
       mark=0, zone=0, event=0):
    o = CtTuple(a(orig[0]), a(orig[1]), orig[2], orig[3], orig[4])
    r = CtTuple(a(reply[0]), a(reply[1]), reply[2], reply[3], reply[4])
    fam = family or (6 if len(o.src) == 16 else 4)
    return CtEvent(kind, fam, ct_id, 0, o, r, *counters, start, stop, mark, zone, event)


SNAT = (("198.51.100.2", "203.0.113.2", 6, 40000, 80),
        ("203.0.113.2", "203.0.113.1", 6, 80, 61000))
DNAT = (("203.0.113.2", "203.0.113.1", 6, 50000, 8080),
        ("198.51.100.2", "203.0.113.2", 6, 80, 50000))
ROUTED = (("198.51.100.2", "203.0.113.2", 17, 5353, 53),
          ("203.0.113.2", "198.51.100.2", 17, 53, 5353))
ICMP = (("198.51.100.2", "203.0.113.2", 1, 4037, 8 * 256),
        ("203.0.113.2", "203.0.113.1", 1, 4037, 0))
GRE = (("198.51.100.2", "203.0.113.2", 47, 0, 0),
       ("203.0.113.2", "203.0.113.1", 47, 0, 0))
NAT66 = (("2001:db8:1::2", "2001:db8:2::2", 17, 33000, 8080),
         ("2001:db8:2::2", "2001:db8:2::1", 17, 8080, 33000))


def view(f):
    """(pre src, pre dst, sport, dport, post src, post dst, sport, dport)"""
    ip = lambda b: str(ipaddress.ip_address(b))  # noqa: E731
    return (ip(f.src), ip(f.dst), f.sport, f.dport,
            ip(f.post_src), ip(f.post_dst), f.post_sport, f.post_dport)


@pytest.mark.parametrize("conn, orig_view, reply_view, translated", [
    (SNAT,
     ("198.51.100.2", "203.0.113.2", 40000, 80, "203.0.113.1", "203.0.113.2", 61000, 80),
     ("203.0.113.2", "203.0.113.1", 80, 61000, "203.0.113.2", "198.51.100.2", 80, 40000),
     True),
    (DNAT,
     ("203.0.113.2", "203.0.113.1", 50000, 8080, "203.0.113.2", "198.51.100.2", 50000, 80),
     ("198.51.100.2", "203.0.113.2", 80, 50000, "203.0.113.1", "203.0.113.2", 8080, 50000),
     True),
    (ROUTED,
     ("198.51.100.2", "203.0.113.2", 5353, 53, "198.51.100.2", "203.0.113.2", 5353, 53),
     ("203.0.113.2", "198.51.100.2", 53, 5353, "203.0.113.2", "198.51.100.2", 53, 5353),
     False),
    # ICMP: sport 0, dport type*256+code; the id is not a port
    (ICMP,
     ("198.51.100.2", "203.0.113.2", 0, 2048, "203.0.113.1", "203.0.113.2", 0, 2048),
     ("203.0.113.2", "203.0.113.1", 0, 0, "203.0.113.2", "198.51.100.2", 0, 0),
     True),
    (GRE,
     ("198.51.100.2", "203.0.113.2", 0, 0, "203.0.113.1", "203.0.113.2", 0, 0),
     ("203.0.113.2", "203.0.113.1", 0, 0, "203.0.113.2", "198.51.100.2", 0, 0),
     True),
    (NAT66,
     ("2001:db8:1::2", "2001:db8:2::2", 33000, 8080, "2001:db8:2::1", "2001:db8:2::2", 33000, 8080),
     ("2001:db8:2::2", "2001:db8:2::1", 8080, 33000, "2001:db8:2::2", "2001:db8:1::2", 8080, 33000),
     True),
])
def test_flows_of_every_nat_kind(conn, orig_view, reply_view, translated):
    o, r = flows_of(ev(EV_DESTROY, *conn), 5 * S, 9 * S)
    assert view(o) == orig_view
    assert view(r) == reply_view
    assert o.translated is translated
    assert (o.direction, r.direction) == (ORIGINAL, REPLY)
    assert (o.packets, o.octets, r.packets, r.octets) == (10, 1000, 8, 4000)
    assert (o.start_ms, o.end_ms) == (5000, 9000)
    assert o.end_reason == END_OF_FLOW and o.conn_id == 7
    assert o.family == r.family == (6 if ":" in orig_view[0] else 4)


def test_destroy_with_kernel_timestamps_keeps_no_state():
    c = Correlator(kernel_timestamps=True)
    assert c.handle(ev(EV_NEW, *SNAT), 1 * S) == []
    assert c.tracked == 0
    flows = c.handle(ev(EV_DESTROY, *SNAT, start=2 * S + 5_000_000, stop=3 * S), 4 * S)
    assert [(f.start_ms, f.end_ms) for f in flows] == [(2005, 3000), (2005, 3000)]
    assert c.counters["connections_exported"] == 1


def test_without_kernel_timestamps_new_time_is_remembered():
    c = Correlator(kernel_timestamps=False)
    c.handle(ev(EV_NEW, *SNAT, ct_id=1), 10 * S)
    assert c.tracked == 1
    flows = c.handle(ev(EV_DESTROY, *SNAT, ct_id=1), 25 * S)
    assert [(f.start_ms, f.end_ms) for f in flows] == [(10_000, 25_000)] * 2
    assert c.tracked == 0


def test_destroy_of_unknown_connection_without_times_starts_at_its_end():
    c = Correlator(kernel_timestamps=False)
    flows = c.handle(ev(EV_DESTROY, *ROUTED, ct_id=99), 25 * S)
    assert [(f.start_ms, f.end_ms) for f in flows] == [(25_000, 25_000)] * 2


def test_the_kernels_event_time_stands_in_for_the_receive_clock():
    """CTA_TIMESTAMP_EVENT: a NEW's time is when the kernel made the event
    (NEW time kept, cache entry, NAT create event), a DESTROY without a stop
    time ends then; the receive clock only where the kernel sent none."""
    c = Correlator(kernel_timestamps=False, nat_events=True)
    c.handle(ev(EV_NEW, *SNAT, ct_id=1, event=10 * S + 250_000_000), 11 * S)
    c.handle(ev(EV_NEW, *DNAT, ct_id=2), 11 * S)
    flows = c.handle(ev(EV_DESTROY, *SNAT, ct_id=1, event=20 * S + 125_000_000), 21 * S)
    assert [(f.start_ms, f.end_ms) for f in flows] == [(10_250, 20_125)] * 2
    flows = c.handle(ev(EV_DESTROY, *DNAT, ct_id=2), 22 * S)
    assert [(f.start_ms, f.end_ms) for f in flows] == [(11_000, 22_000)] * 2
    nats = c.take_nat_events()
    assert [(n.conn_id, n.created, n.time_ms) for n in nats] == [
        (1, True, 10_250), (2, True, 11_000), (1, False, 20_125), (2, False, 22_000)]
    # the kernel's stop time, when sent, comes first
    flows = c.handle(ev(EV_DESTROY, *SNAT, ct_id=3, start=5 * S, stop=6 * S,
                        event=6 * S + 70), 30 * S)
    assert [(f.start_ms, f.end_ms) for f in flows] == [(5_000, 6_000)] * 2


def test_a_vanished_connection_starts_at_its_new_events_kernel_time():
    """The cache entry keeps the kernel's NEW time: a connection that
    vanished during an overrun is exported from then."""
    c = Correlator()
    c.handle(ev(EV_NEW, *SNAT, ct_id=1, event=3 * S), 4 * S)
    c.begin_sync()
    out = c.resync([], 9 * S, 8 * S)
    assert [(f.start_ms, f.end_ms) for f in out] == [(3_000, 8_000)] * 2


def test_ttl_purge_forgets_and_counts_unfinished_connections():
    c = Correlator(ttl=100, kernel_timestamps=False)
    c.handle(ev(EV_NEW, *SNAT, ct_id=1), 0)
    c.handle(ev(EV_NEW, *DNAT, ct_id=2), 50 * S)
    assert c.purge(120 * S) == 1          # id 1 is 120 s old, id 2 is 70 s
    assert c.tracked == 1 and c.counters["purged_ttl"] == 1
    assert c.purge(151 * S) == 1
    assert c.tracked == 0 and c.counters["purged_ttl"] == 2


def test_connections_from_the_start_dump_are_exported_when_they_vanish():
    c = Correlator(kernel_timestamps=True)
    old = ev(EV_DUMP, *SNAT, ct_id=5, counters=(1, 60, 1, 60), start=1 * S)
    other = ev(EV_DUMP, *ROUTED, ct_id=6, counters=(2, 100, 2, 100), start=1 * S)
    assert c.add_dumped([old, other], 10 * S) == 2
    # first poll: both still there, counters grew on one
    grown = old._replace(orig_packets=4, orig_bytes=400)
    assert c.reconcile([grown, other], 20 * S) == []
    # second poll: the SNAT one is gone -> exported with the last counters
    flows = c.reconcile([other], 30 * S)
    assert [f.conn_id for f in flows] == [5, 5]
    assert (flows[0].packets, flows[0].octets) == (4, 400)
    assert (flows[0].start_ms, flows[0].end_ms) == (1000, 20_000)  # last seen at 20 s
    assert c.dumped_pending == 1
    assert c.counters["exported_by_poll"] == 1
    # a late DESTROY for the one the poll exported is a duplicate, not a second export
    assert c.handle(ev(EV_DESTROY, *SNAT, ct_id=5), 31 * S) == []
    assert c.counters["duplicate_destroy"] == 1
    # a DESTROY for the other ends it normally and stops it being polled
    flows = c.handle(ev(EV_DESTROY, *ROUTED, ct_id=6, counters=(3, 150, 3, 150)), 32 * S)
    assert flows[0].start_ms == 1000 and flows[0].packets == 3
    assert c.dumped_pending == 0
    assert c.counters["connections_exported"] == 2


def test_dumped_connection_without_timestamps_starts_when_first_seen():
    c = Correlator(kernel_timestamps=False)
    c.add_dumped([ev(EV_DUMP, *SNAT, ct_id=5)], 10 * S)
    flows = c.reconcile([], 15 * S)
    assert (flows[0].start_ms, flows[0].end_ms) == (10_000, 10_000)


def test_a_reused_id_with_another_tuple_is_a_different_connection():
    c = Correlator()
    c.add_dumped([ev(EV_DUMP, *SNAT, ct_id=5)], 10 * S)
    c.handle(ev(EV_DESTROY, *DNAT, ct_id=5), 11 * S)
    assert c.dumped_pending == 1


def test_nat_events_for_translated_connections_only():
    c = Correlator(nat_events=True)
    c.handle(ev(EV_NEW, *SNAT, ct_id=1), 10 * S)
    c.handle(ev(EV_NEW, *ROUTED, ct_id=2), 10 * S)
    c.handle(ev(EV_DESTROY, *SNAT, ct_id=1, stop=12 * S), 12 * S)
    nats = c.take_nat_events()
    assert [(n.created, n.time_ms, n.sport, n.post_sport) for n in nats] == [
        (True, 10_000, 40000, 61000), (False, 12_000, 40000, 61000)]
    assert c.take_nat_events() == []
    assert nat_event_of(ev(EV_NEW, *ROUTED), 0, True) is None


def test_event_field_positions_used_by_the_hot_path():
    # handle_batch indexes events by position for speed
    assert CtEvent._fields[:15] == (
        "kind", "family", "ct_id", "status", "orig", "reply", "orig_packets",
        "orig_bytes", "reply_packets", "reply_bytes", "start_ns", "stop_ns", "mark", "zone",
        "event_ns")


def test_flow_field_positions_used_by_the_hot_path():
    # flows_of builds Flow with tuple.__new__ (every field, by position) and
    # flowtools.expand unpacks it by position: both must follow Flow exactly
    assert Flow._fields == (
        "family", "proto", "src", "dst", "sport", "dport", "post_src", "post_dst",
        "post_sport", "post_dport", "packets", "octets", "start_ms", "end_ms",
        "direction", "end_reason", "tos", "tcp_flags", "conn_id", "vlan", "in_if", "out_if",
        "zone", "mark")
    for conn in (SNAT, ICMP):
        o, r = flows_of(ev(EV_DESTROY, *conn, start=2 * S, stop=5 * S, mark=0x2a, zone=3),
                        2 * S, 5 * S)
        for f, direction, pk_by in ((o, ORIGINAL, (10, 1000)), (r, REPLY, (8, 4000))):
            assert type(f) is Flow and len(f) == len(Flow._fields)
            assert (f.family, f.proto) == (4, conn[0][2])
            assert (f.packets, f.octets) == pk_by
            assert (f.start_ms, f.end_ms, f.direction, f.end_reason) == (
                2000, 5000, direction, END_OF_FLOW)
            assert (f.tos, f.tcp_flags, f.conn_id, f.vlan) == (0, 0, 7, 0)
            assert (f.in_if, f.out_if, f.zone, f.mark) == (0, 0, 3, 0x2a)
            assert f[-1] == 0x2a and f[-2] == 3 and f[-5] == 0 and f[-6] == 7


def test_batch_counts_event_kinds():
    c = Correlator()
    out = []
    c.handle_batch([ev(EV_NEW, *SNAT), ev(EV_DUMP, *SNAT), ev(EV_DESTROY, *SNAT),
                    ev(EV_DESTROY, *DNAT, ct_id=8)], 5 * S, out)
    assert len(out) == 4
    assert [c.counters[k] for k in ("events_new", "events_destroy", "events_other",
                                    "connections_exported")] == [1, 2, 1, 2]


def test_nat_events_of_icmp_carry_the_query_id_and_its_translation():
    icmp = (("198.51.100.2", "203.0.113.2", 1, 4037, 8 * 256),
            ("203.0.113.2", "203.0.113.1", 1, 9999, 0))    # NAT rewrote the id
    nat = nat_event_of(ev(EV_NEW, *icmp), 0, True)
    assert (nat.sport, nat.dport, nat.post_sport, nat.post_dport) == (4037, 2048, 9999, 2048)
