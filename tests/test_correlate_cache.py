"""The correlator's live cache: overrun resync and active-timeout deltas (sans-IO)."""

import itertools

import pytest

from nfflowd.ctblocks import DestroyBlock
from nfflowd.record import FlowBatchBuilder
from nfflowd.conntrack import EV_DESTROY, EV_DUMP, EV_NEW
from nfflowd.correlate import Correlator
from nfflowd.record import END_ACTIVE_TIMEOUT, END_LACK_OF_RESOURCES, END_OF_FLOW

from test_correlate import ICMP, NAT66, ROUTED, SNAT, S, ev, view

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


@pytest.mark.parametrize("blocks", [False, True])
def test_a_connection_lost_in_an_overrun_keeps_its_zone_and_mark(blocks):
    """Exported from its cache entry alone (its DESTROY lost), a connection
    keeps the zone and mark its NEW event had; one without keeps the small
    entry."""
    from nfflowd.ctblocks import NewBlock
    news = [ev(EV_NEW, *SNAT, ct_id=1, zone=2, mark=0x10),
            ev(EV_NEW, *SNAT, ct_id=2, zone=3),
            ev(EV_NEW, *ROUTED, ct_id=3)]
    c = Correlator()
    c.handle_batch([NewBlock.from_events(news)] if blocks else news, 1 * S, [])
    assert len(c.cache.entries[3]) == 33 and len(c.cache.entries[1]) == 39
    c.begin_sync()
    out = c.resync([], 3 * S, 2 * S)
    assert sorted((f.conn_id, f.direction, f.zone, f.mark) for f in out) == [
        (1, 0, 2, 0x10), (1, 1, 2, 0x10), (2, 0, 3, 0), (2, 1, 3, 0), (3, 0, 0, 0), (3, 1, 0, 0)]
    assert {f.end_reason for f in out} == {END_LACK_OF_RESOURCES}


def test_every_entry_layout_round_trips_through_active_export_and_destroy():
    """The compact layouts (IPv6 without the reply source, 32-bit bases) and
    the full ones, each with and without a zone and mark: an entry of each
    gives the same tuples (and zone and mark) back, and the records of an
    early export plus the DESTROY add up to the totals."""
    from nfflowd.conntrack import CtEvent, CtTuple
    from nfflowd.ctcache import SIZES, entry_event

    def mk(kind, fam, o, r, counters, start=0, stop=0):
        return CtEvent(kind, fam, 7, 0, o, r, *counters, start, stop, mark, zone)
    v6 = [bytes.fromhex("20010db8000100000000000000000002"),
          bytes.fromhex("20010db8000200000000000000000009"),
          bytes.fromhex("20010db8000200000000000000000001"),
          bytes.fromhex("20010db8000100000000000000000007")]
    v4 = [bytes([198, 51, 100, 2]), bytes([203, 0, 113, 9]), bytes([203, 0, 113, 1]),
          bytes([198, 51, 100, 7])]
    seen = set()
    for (fam, (a, b, c, d)), (zone, mark), reply_i, big in itertools.product(
            ((4, v4), (6, v6)), ((0, 0), (3, 0x2A), (0, 2**32 - 1), (65535, 0)), (0, 1),
            (0, 2**40)):
        reply_src = (b, d)[reply_i]                 # d: destination NAT
        o = CtTuple(a, b, 6, 40000, 443)
        r = CtTuple(reply_src, c, 6, 443, 50000)
        corr = Correlator()
        corr.handle(mk(EV_NEW, fam, o, r, NOCOUNT), 1 * S)
        seen.add(len(corr.cache.entries[7]))
        assert entry_event(7, corr.cache.entries[7])[0][4:6] == (o, r)
        assert entry_event(7, corr.cache.entries[7])[0][12:14] == (mark, zone)
        mid = (5 + big, 500 + big, 4, 400)
        corr.begin_sync()
        out = corr.active_export([mk(EV_DUMP, fam, o, r, mid, 1 * S)], 3 * S, 3 * S)
        assert [f.end_reason for f in out] == [END_ACTIVE_TIMEOUT] * 2
        seen.add(len(corr.cache.entries[7]))
        assert entry_event(7, corr.cache.entries[7])[0][4:6] == (o, r)
        assert entry_event(7, corr.cache.entries[7])[0][12:14] == (mark, zone)
        total = (9 + big, 900 + big, 6, 600)
        out += corr.handle(mk(EV_DESTROY, fam, o, r, total, 1 * S, 5 * S), 5 * S)
        assert sum(f.packets for f in out) == total[0] + total[2]
        assert sum(f.octets for f in out) == total[1] + total[3]
        assert {(f.src, f.post_dst) for f in out if f.direction == 1} == {(reply_src, a)}
        assert {(f.zone, f.mark) for f in out} == {(zone, mark)}
    assert seen == SIZES


# -- removals a DESTROY block leaves for later (Correlator.reap) ------------------

def _block_of(events):
    from nfflowd.ctblocks import DestroyBlock
    return DestroyBlock.from_events(events)


def _news_and_ends(ids, first=1 * S, end=4 * S):
    from nfflowd.conntrack import CtTuple
    news, ends = [], []
    for i in ids:
        o = CtTuple(bytes([198, 51, 100, 2]), bytes([203, 0, 113, 2]), 6, 1024 + i, 443)
        r = CtTuple(bytes([203, 0, 113, 2]), bytes([203, 0, 113, 1]), 6, 443, 40000 + i)
        e = ev(EV_NEW, o, r, ct_id=i, counters=NOCOUNT)
        news.append(e)
        ends.append(e._replace(kind=EV_DESTROY, orig_packets=3, orig_bytes=300,
                               reply_packets=2, reply_bytes=200, start_ns=first, stop_ns=end))
    return news, ends


def test_a_destroy_block_leaves_its_removals_to_reap():
    from nfflowd.record import FlowBatchBuilder
    c = Correlator()
    news, ends = _news_and_ends(range(100, 150))
    c.handle_batch(news, 1 * S, [])
    out = FlowBatchBuilder()
    c.handle_batch([_block_of(ends[:40])], 5 * S, out)
    assert len(out.batch().flows()) == 80
    # the 40 ended entries are still there, waiting
    assert (c.cached, c.reap_pending) == (50, 40)
    assert c.reap(15) == 15 and (c.cached, c.reap_pending) == (35, 25)
    assert c.reap() == 25 and (c.cached, c.reap_pending) == (10, 0)
    assert c.reap() == 0


def test_a_new_connection_reusing_an_ended_id_keeps_its_entry():
    """Conntrack ids are reused: a NEW for an id whose removal is pending
    leaves the removals pending (a NEW must not pay for a burst's), but the
    later reap does not take the new entry (a resync then finds it, neither
    vanished nor adopted)."""
    from nfflowd.record import FlowBatchBuilder
    c = Correlator()
    news, ends = _news_and_ends(range(100, 140))
    c.handle_batch(news, 1 * S, [])
    c.handle_batch([_block_of(ends)], 5 * S, FlowBatchBuilder())
    again = news[7]._replace(orig=news[7].orig._replace(sport=5555))
    c.handle_batch([again], 6 * S, [])
    assert c.reap_pending == 40
    assert c.reap(25) == 25 and c.reap() == 15
    assert c.cached == 1
    c.begin_sync()
    assert c.resync([again._replace(kind=EV_DUMP)], 7 * S, 6 * S + 1) == []
    assert (c.counters["exported_by_resync"], c.counters["adopted_by_resync"]) == (0, 0)


def test_an_id_reused_and_ended_again_before_the_reap_is_removed_once_each():
    """DESTROY (removal left pending), NEW with the same id, its DESTROY in
    a block before the reap, NEW again: each DESTROY exports its own
    connection's records, and the cache ends with the last one only."""
    from nfflowd.record import FlowBatchBuilder
    c = Correlator()
    news, ends = _news_and_ends(range(100, 140))
    c.handle_batch(news, 1 * S, [])
    c.handle_batch([_block_of(ends)], 5 * S, FlowBatchBuilder())
    second = [n._replace(orig=n.orig._replace(sport=6000 + i)) for i, n in enumerate(news)]
    c.handle_batch(second, 6 * S, [])
    out = FlowBatchBuilder()
    c.handle_batch([_block_of([e._replace(orig=s.orig) for e, s in zip(ends, second)])],
                   7 * S, out)
    assert {f.sport for f in out.batch().flows() if f.direction == 0} == {6000 + i for i in range(40)}
    assert c.cached == 40 - 40              # the second ones popped by the block itself
    third = news[3]._replace(orig=news[3].orig._replace(sport=7777))
    c.handle_batch([third], 8 * S, [])
    c.reap()
    assert c.cached == 1 and c.reap_pending == 0
    c.begin_sync()
    assert c.resync([third._replace(kind=EV_DUMP)], 9 * S, 8 * S + 1) == []
    assert (c.counters["exported_by_resync"], c.counters["adopted_by_resync"]) == (0, 0)


def test_resync_after_a_block_does_not_export_its_connections_again():
    """The removals a block left pending are done before a resync compares
    the cache with the table: the block's connections are not 'vanished'."""
    from nfflowd.record import FlowBatchBuilder
    c = Correlator()
    news, ends = _news_and_ends(range(100, 140))
    c.handle_batch(news, 1 * S, [])
    c.handle_batch([_block_of(ends)], 5 * S, FlowBatchBuilder())
    assert c.reap_pending == 40
    c.begin_sync()
    assert c.resync([], 7 * S, 6 * S) == []
    assert c.counters["exported_by_resync"] == 0 and c.cached == 0


def test_removals_pending_stay_bounded():
    from nfflowd.record import FlowBatchBuilder
    c = Correlator()
    c.cache.dead_max = 50
    news, ends = _news_and_ends(range(1000, 1120))
    c.handle_batch(news, 1 * S, [])
    for k in range(0, 120, 40):
        c.handle_batch([_block_of(ends[k:k + 40])], 5 * S, FlowBatchBuilder())
        assert c.reap_pending <= 50
    assert c.cached == 120 - 120 + c.reap_pending


def test_a_block_exports_only_the_rest_of_a_connection_the_active_timeout_exported():
    """The entries that may carry an earlier export (the hint kept by the
    active timeout) are looked at by the block itself, not left to reap."""
    from nfflowd.record import FlowBatchBuilder
    c = Correlator()
    news, ends = _news_and_ends(range(100, 140))
    c.handle_batch(news, 1 * S, [])
    c.begin_sync()
    table = [e._replace(kind=EV_DUMP) for e in news]         # all idle ...
    table[5] = ends[5]._replace(kind=EV_DUMP, orig_packets=1, orig_bytes=100,
                                reply_packets=1, reply_bytes=50)   # ... but one
    assert len(c.active_export(table, 3 * S, 3 * S)) == 2
    out = FlowBatchBuilder()
    c.handle_batch([_block_of(ends)], 5 * S, out)
    got = {(f.conn_id, f.direction): (f.packets, f.octets) for f in out.batch().flows()}
    assert got[(105, 0)] == (2, 200) and got[(105, 1)] == (1, 150)
    assert got[(106, 0)] == (3, 300) and got[(106, 1)] == (2, 200)
    assert c.reap_pending == 39


def test_many_revived_ids_are_found_in_a_block_too():
    """Past 64 revived ids the block looks them up by the ids list: the
    revived connections' DESTROYs still pop their own entries at once."""
    from nfflowd.record import FlowBatchBuilder
    c = Correlator()
    news, ends = _news_and_ends(range(100, 200))
    c.handle_batch(news, 1 * S, [])
    c.handle_batch([_block_of(ends)], 5 * S, FlowBatchBuilder())      # 100 removals pending
    c.handle_batch(news, 6 * S, [])                             # the same ids again
    assert len(c.cache.revived) == 100
    c.handle_batch([_block_of(ends[:40])], 7 * S, FlowBatchBuilder())
    c.reap()
    assert c.cached == 60 and c.reap_pending == 0


# -- NAT create events of connections whose NEW event was lost (#15 item 6) ----------

def nat_log(nats) -> dict:
    """conn id -> [(created, time_ms), ...] in order."""
    log: dict = {}
    for n in nats:
        log.setdefault(n.conn_id, []).append((n.created, n.time_ms))
    return log


@pytest.mark.parametrize("kernel_ts", [True, False])
def test_resync_sends_the_create_event_of_an_adopted_connection(kernel_ts):
    c = Correlator(nat_events=True, kernel_timestamps=kernel_ts)
    c.handle(ev(EV_NEW, *SNAT, ct_id=1, counters=NOCOUNT), 1 * S)
    c.begin_sync()
    start = 3 * S if kernel_ts else 0       # the dump carries it when stamped
    table = [ev(EV_DUMP, *SNAT, ct_id=1, start=start),
             ev(EV_DUMP, *NAT66, ct_id=5, start=start),      # NEW lost: adopted
             ev(EV_DUMP, *ROUTED, ct_id=6, start=start)]     # adopted, no translation
    c.resync(table, 7 * S, 5 * S)
    c.handle(ev(EV_DESTROY, *NAT66, ct_id=5, start=start, stop=9 * S), 9 * S)
    created = 3000 if kernel_ts else 7000   # its start, else when the resync found it
    assert nat_log(c.take_nat_events()) == {1: [(True, 1000)],
                                            5: [(True, created), (False, 9000)]}
    assert c.counters["adopted_by_resync"] == 2
    assert c.counters["nat_creates_late"] == 1


def destroy_burst(n=48):
    """``n`` translated connections (IPv4 and IPv6): their NEW and DESTROY
    events; the even ids' NEW events are the ones lost."""
    news, ends = [], []
    for i in range(n):
        base = SNAT if i % 3 else NAT66
        o, r = base
        o = (*o[:3], 20000 + i, o[4])
        r = (*r[:4], 30000 + i)
        news.append(ev(EV_NEW, o, r, ct_id=100 + i, counters=NOCOUNT))
        ends.append(ev(EV_DESTROY, o, r, ct_id=100 + i, start=(2 + i % 2) * S, stop=8 * S))
    return news, ends


@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize("kernel_ts", [True, False])
def test_destroy_of_a_connection_never_seen_sends_create_then_delete(blocks, kernel_ts):
    news, ends = destroy_burst()
    if not kernel_ts:
        ends = [e._replace(start_ns=0, stop_ns=0) for e in ends]
    ended = 8000 if kernel_ts else 9000
    seen = [e for e in news if e.ct_id % 2]
    c = Correlator(nat_events=True, kernel_timestamps=kernel_ts)
    c.handle_batch(seen, 1 * S, [])
    out = FlowBatchBuilder() if blocks else []
    c.handle_batch([DestroyBlock.from_events(ends)] if blocks else ends, 9 * S, out)
    assert len(out) == 2 * len(ends)
    log = nat_log(c.take_nat_events())
    assert sorted(log) == [e.ct_id for e in ends]
    for e in ends:
        if e.ct_id % 2:
            want_create = 1000                          # at its NEW
        else:
            # never seen: its create with its delete, at its start if known
            want_create = e.start_ns // 1_000_000 if kernel_ts else 9000
        assert log[e.ct_id] == [(True, want_create), (False, ended)], e.ct_id
    assert c.counters["nat_creates_late"] == len(ends) // 2


def test_destroy_blocks_and_objects_agree_on_unseen_connections():
    # the columnar path, with early-exported and start-up rows mixed in
    # (those go the object way in their place), gives what the objects give
    news, ends = destroy_burst()

    def run(blocks):
        c = Correlator(nat_events=True, kernel_timestamps=False)
        c.add_dumped([e._replace(kind=EV_DUMP) for e in news[40:44]], 1 * S)
        c.handle_batch([e for e in news[:40] if e.ct_id % 2], 1 * S, [])
        c.begin_sync()
        c.active_export([e._replace(kind=EV_DUMP, orig_packets=1, reply_packets=1)
                         for e in news[:10]], 2 * S, 2 * S)
        out = FlowBatchBuilder() if blocks else []
        c.handle_batch([DestroyBlock.from_events(ends)] if blocks else ends, 9 * S, out)
        c.reap()
        flows = out.batch().flows() if blocks else out
        return flows, c.counters, c.take_nat_events(), c.cached
    a, b = run(False), run(True)
    assert a == b
    log = nat_log(a[2])
    assert all([k for k, _t in log[e.ct_id]] == [True, False] for e in ends)
    # adopted by the active-timeout sync: the 5 even ids of 0..9; never seen
    # before their DESTROY: the 15 even ones of 10..39 and 44..47
    assert a[1]["nat_creates_late"] == 5 + 15 + 4


def test_start_up_dump_sends_the_create_events_of_the_connections_it_finds():
    # made before the daemon: a create event each, as for one made while it
    # runs, at the kernel's start time (else when found); a NEW that raced
    # the dump (subscribed first, then dumped) does not send a second
    c = Correlator(nat_events=True)
    c.add_dumped([ev(EV_DUMP, *SNAT, ct_id=1, start=2 * S),
                  ev(EV_DUMP, *NAT66, ct_id=2, start=0),
                  ev(EV_DUMP, *ROUTED, ct_id=3, start=2 * S)], 5 * S)
    c.handle(ev(EV_NEW, *NAT66, ct_id=2, counters=NOCOUNT), 6 * S)
    c.handle(ev(EV_DESTROY, *SNAT, ct_id=1, start=2 * S, stop=7 * S), 7 * S)
    c.handle(ev(EV_DESTROY, *NAT66, ct_id=2, start=4 * S, stop=8 * S), 8 * S)
    assert nat_log(c.take_nat_events()) == {1: [(True, 2000), (False, 7000)],
                                            2: [(True, 5000), (False, 8000)]}
    assert c.counters["nat_creates_late"] == 0
