"""The correlator's live cache: overrun resync and active-timeout deltas (sans-IO)."""

from nfflowd.conntrack import EV_DESTROY, EV_DUMP, EV_NEW
from nfflowd.correlate import Correlator
from nfflowd.record import END_ACTIVE_TIMEOUT, END_LACK_OF_RESOURCES, END_OF_FLOW

from test_correlate import ICMP, NAT66, SNAT, S, ev, view

NOCOUNT = (0, 0, 0, 0)


def test_new_and_destroy_keep_the_cache_in_step():
    c = Correlator()
    c.handle(ev(EV_NEW, *SNAT, ct_id=1, counters=NOCOUNT), 1 * S)
    c.handle(ev(EV_NEW, *NAT66, ct_id=2, counters=NOCOUNT), 1 * S)
    assert c.cached == 2
    out = c.handle(ev(EV_DESTROY, *SNAT, ct_id=1, start=1 * S, stop=2 * S), 2 * S)
    assert [f.end_reason for f in out] == [END_OF_FLOW] * 2
    assert c.cached == 1


def test_resync_exports_the_vanished_once_and_adopts_the_unknown():
    c = Correlator()
    c.handle(ev(EV_NEW, *SNAT, ct_id=1, counters=NOCOUNT), 1 * S)
    c.handle(ev(EV_NEW, *NAT66, ct_id=2, counters=NOCOUNT), 1 * S)
    c.handle(ev(EV_NEW, *ICMP, ct_id=3, counters=NOCOUNT), 1 * S)
    c.begin_sync()
    # made after the dump began: not in it, not vanished
    c.handle(ev(EV_NEW, *SNAT, ct_id=4, counters=NOCOUNT), 6 * S)
    # ended after the dump saw it: not to be adopted
    c.handle(ev(EV_DESTROY, *SNAT, ct_id=9, start=1 * S, stop=6 * S), 6 * S)
    table = [ev(EV_DUMP, *NAT66, ct_id=2, start=1 * S),
             ev(EV_DUMP, *SNAT, ct_id=5, start=3 * S),        # NEW lost: adopted
             ev(EV_DUMP, *SNAT, ct_id=9, start=1 * S)]        # already ended
    out = c.resync(table, 7 * S, 5 * S)
    # 1 and 3 vanished: exported with lack of resources, no counters seen
    assert sorted(f.conn_id for f in out) == [1, 1, 3, 3]
    assert {f.end_reason for f in out} == {END_LACK_OF_RESOURCES}
    assert {(f.packets, f.octets) for f in out} == {(0, 0)}
    f = next(f for f in out if f.conn_id == 1)
    assert view(f) == ("198.51.100.2", "203.0.113.2", 40000, 80,
                       "203.0.113.1", "203.0.113.2", 61000, 80)
    assert (f.start_ms, f.end_ms) == (1000, 5000)
    assert c.counters["exported_by_resync"] == 2
    assert c.counters["adopted_by_resync"] == 1
    assert c.counters["resyncs"] == 1
    assert c.cached == 3            # 2, 4 and the adopted 5
    # the kernel redelivers the DESTROY of 1 later: a duplicate, not exported
    assert c.handle(ev(EV_DESTROY, *SNAT, ct_id=1, start=1 * S, stop=4 * S), 8 * S) == []
    assert c.counters["duplicate_destroy"] == 1
    # the adopted one ends normally
    out = c.handle(ev(EV_DESTROY, *SNAT, ct_id=5, start=3 * S, stop=9 * S), 9 * S)
    assert len(out) == 2 and c.counters["connections_exported"] == 4


def test_active_timeout_deltas_add_up_to_the_totals():
    c = Correlator()
    c.handle(ev(EV_NEW, *SNAT, ct_id=1, counters=NOCOUNT), 1 * S)
    records = []
    totals = [(10, 1000, 8, 4000), (10, 1000, 8, 4000), (25, 2500, 20, 9000),
              (40, 4000, 31, 15000)]
    for i, counters in enumerate(totals[:-1]):
        t = (2 + 2 * i) * S
        c.begin_sync()
        records += c.active_export([ev(EV_DUMP, *SNAT, ct_id=1, counters=counters,
                                       start=1 * S)], t, t)
    # the second period was idle: no record for it
    assert [f.end_reason for f in records] == [END_ACTIVE_TIMEOUT] * 4
    assert c.counters["active_exports"] == 2
    records += c.handle(ev(EV_DESTROY, *SNAT, ct_id=1, counters=totals[-1],
                           start=1 * S, stop=9 * S), 9 * S)
    assert records[-1].end_reason == END_OF_FLOW
    orig = [f for f in records if f.direction == 0]
    reply = [f for f in records if f.direction == 1]
    assert sum(f.packets for f in orig) == 40 and sum(f.octets for f in orig) == 4000
    assert sum(f.packets for f in reply) == 31 and sum(f.octets for f in reply) == 15000
    # back to back in time
    assert [(f.start_ms, f.end_ms) for f in orig] == [(1000, 2000), (2000, 6000),
                                                      (6000, 9000)]


def test_active_timeout_of_a_connection_older_than_the_daemon():
    c = Correlator()
    c.add_dumped([ev(EV_DUMP, *NAT66, ct_id=7, counters=(1, 100, 1, 100), start=1 * S)], 2 * S)
    c.begin_sync()
    first = c.active_export([ev(EV_DUMP, *NAT66, ct_id=7, counters=(5, 500, 4, 400),
                                start=1 * S)], 3 * S, 3 * S)
    assert [(f.packets, f.octets) for f in first] == [(5, 500), (4, 400)]
    # it ends unseen (nf_conntrack_events=2): the poll exports the rest
    rest = c.reconcile([], 5 * S)
    assert [(f.packets, f.octets) for f in rest] == [(0, 0), (0, 0)]
    c2 = Correlator()
    c2.add_dumped([ev(EV_DUMP, *NAT66, ct_id=7, counters=(1, 100, 1, 100), start=1 * S)], 2 * S)
    c2.begin_sync()
    c2.active_export([ev(EV_DUMP, *NAT66, ct_id=7, counters=(5, 500, 4, 400), start=1 * S)],
                     3 * S, 3 * S)
    # or a DESTROY ends it: the rest only
    rest = c2.handle(ev(EV_DESTROY, *NAT66, ct_id=7, counters=(9, 900, 6, 600),
                        start=1 * S, stop=4 * S), 4 * S)
    assert [(f.packets, f.octets, f.start_ms) for f in rest] == [(4, 400, 3000), (2, 200, 3000)]


def test_without_cache_resync_is_the_poll():
    c = Correlator(cache=False)
    c.handle(ev(EV_NEW, *SNAT, ct_id=1, counters=NOCOUNT), 1 * S)
    assert c.cached == 0
    c.begin_sync()
    assert c.resync([], 2 * S, 2 * S) == []


def test_every_entry_layout_round_trips_through_active_export_and_destroy():
    """The compact layouts (IPv6 without the reply source, 32-bit bases) and
    the full ones: an entry of each gives the same tuples back, and the
    records of an early export plus the DESTROY add up to the totals."""
    from nfflowd.conntrack import CtEvent, CtTuple
    from nfflowd.correlate import _LAYOUT, _entry_event

    def mk(kind, fam, o, r, counters, start=0, stop=0):
        return CtEvent(kind, fam, 7, 0, o, r, *counters, start, stop)
    v6 = [bytes.fromhex("20010db8000100000000000000000002"),
          bytes.fromhex("20010db8000200000000000000000009"),
          bytes.fromhex("20010db8000200000000000000000001"),
          bytes.fromhex("20010db8000100000000000000000007")]
    v4 = [bytes([198, 51, 100, 2]), bytes([203, 0, 113, 9]), bytes([203, 0, 113, 1]),
          bytes([198, 51, 100, 7])]
    seen = set()
    for fam, (a, b, c, d) in ((4, v4), (6, v6)):
        for reply_src in (b, d):                    # d: destination NAT
            for big in (0, 2**40):
                o = CtTuple(a, b, 6, 40000, 443)
                r = CtTuple(reply_src, c, 6, 443, 50000)
                corr = Correlator()
                corr.handle(mk(EV_NEW, fam, o, r, NOCOUNT), 1 * S)
                seen.add(len(corr._live[7]))
                assert _entry_event(7, corr._live[7])[0][4:6] == (o, r)
                mid = (5 + big, 500 + big, 4, 400)
                corr.begin_sync()
                out = corr.active_export([mk(EV_DUMP, fam, o, r, mid, 1 * S)], 3 * S, 3 * S)
                assert [f.end_reason for f in out] == [END_ACTIVE_TIMEOUT] * 2
                seen.add(len(corr._live[7]))
                assert _entry_event(7, corr._live[7])[0][4:6] == (o, r)
                total = (9 + big, 900 + big, 6, 600)
                out += corr.handle(mk(EV_DESTROY, fam, o, r, total, 1 * S, 5 * S), 5 * S)
                assert sum(f.packets for f in out) == total[0] + total[2]
                assert sum(f.octets for f in out) == total[1] + total[3]
                assert {(f.src, f.post_dst) for f in out if f.direction == 1} == {(reply_src, a)}
    assert seen == set(_LAYOUT)
