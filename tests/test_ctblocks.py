"""The columnar fast path (nfflowd/ctblocks.py) against the object path.

Every stage of the fast path must give what the object path gives, byte for
byte: decoding (over the recorded real messages and mutants of them, with the
plain walker as oracle), correlating (over generated event sequences that
reach every per-connection state: NEW times, the live cache, early exports,
start-up dumps, poll exports, a resync in flight), and encoding (v5, the
flow-tools CSV lines, NetFlow v9, IPFIX, over the replayed real messages and
generated records).
"""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfflowd import ctblocks as C
from nfflowd import conntrack as ct
from nfflowd.ctcache import pack4, pack6
from nfflowd.conntrack import EV_DESTROY, EV_DUMP, EV_NEW, CtEvent, CtTuple
from nfflowd.correlate import Correlator, flows_of, flows_of_block
from nfflowd.flowtools import R_DSTPORT, R_SRCPORT, csv_lines, expand
from nfflowd.ipfix import IpfixEncoder
from nfflowd.netflow5 import V5Encoder
from nfflowd.netflow9 import NetflowV9Encoder
from nfflowd.record import END_OF_FLOW, ORIGINAL, REPLY, Flow, FlowBatch, FlowBatchBuilder
from test_conntrack import (CT_MSGS, DUMP_DGRAMS, EVENT_DGRAMS, NLHDR, with_attrs,
                             without_event_time)

DESTROY_MSGS = [m for m in CT_MSGS if NLHDR.unpack_from(m)[1] == ct.MSG_CT_DELETE]
NEW_MSGS = [m for m in CT_MSGS if ct.decode_walk(m).events[0].kind == EV_NEW]
NOW_NS = 1_763_900_000_123_456_789
BOOT_MS = NOW_NS // 1_000_000 - 7_200_000


def flatten(events):
    out = []
    for e in events:
        if isinstance(e, C.DestroyBlock):
            out.extend(e.events())
        else:
            out.append(e)
    return out


def concat(datagrams):
    """One receive buffer as ConntrackSocket.recv fills it."""
    buf, starts, ends, off = b"", [], [], 0
    for d in datagrams:
        starts.append(off)
        ends.append(off + len(d))
        pad = -len(d) % 4
        buf += d + bytes(pad)
        off += len(d) + pad
    return buf, starts, ends


def renumbered(msg, i):
    """``msg`` with another CTA_ID (a distinct connection of the same shape)."""
    r = ct.decode_walk(msg).events[0]
    m = bytearray(msg)
    at = bytes(m).find(struct.pack(">I", r.ct_id), 20)
    struct.pack_into(">I", m, at, (r.ct_id + 7919 * i) & 0xFFFFFFFF)
    return bytes(m)


def test_recorded_messages_have_destroy_shapes():
    assert len(DESTROY_MSGS) >= 10
    fams = {ct.decode_walk(m).events[0].family for m in DESTROY_MSGS}
    assert fams == {4, 6}


def test_blocks_decode_like_the_walker_over_recorded_datagrams():
    ct.clear_layout_cache()
    # all recorded datagrams (NEW, UPDATE, DESTROY, dump multi-part, DONE),
    # then many DESTROY copies: the first pass learns the shapes
    dgrams = EVENT_DGRAMS + DUMP_DGRAMS + [renumbered(m, i) for i in range(8)
                                          for m in DESTROY_MSGS]
    buf, starts, ends = concat(dgrams)
    want = ct.decode_walk(buf)
    for _ in range(2):
        got = C.decode_blocks(buf, starts, ends)
        assert flatten(got.events) == want.events
        assert got[1:] == want[1:]
    assert any(isinstance(e, C.DestroyBlock) for e in got.events)
    # without datagram boundaries (framed here), the same
    got = C.decode_blocks(buf)
    assert flatten(got.events) == want.events and got[1:] == want[1:]


def test_a_run_of_destroys_is_one_block():
    ct.clear_layout_cache()
    msgs = [renumbered(m, i) for i in range(4) for m in DESTROY_MSGS]
    buf, starts, ends = concat(msgs)
    ct.decode(buf)
    got = C.decode_blocks(buf, starts, ends)
    assert len(got.events) == 1 and isinstance(got.events[0], C.DestroyBlock)
    assert got.events[0].events() == ct.decode_walk(buf).events


def test_a_run_of_news_is_one_new_block():
    assert len({ct.decode_walk(m).events[0].family for m in NEW_MSGS}) == 2
    ct.clear_layout_cache()
    msgs = [renumbered(m, i) for i in range(C.NEW_MIN_ROWS) for m in NEW_MSGS]
    buf, starts, ends = concat(msgs)
    ct.decode(buf)
    got = C.decode_blocks(buf, starts, ends)
    assert len(got.events) == 1 and isinstance(got.events[0], C.NewBlock)
    assert got.events[0][0] == C.EV_NEW_BLOCK
    assert got.events[0].events() == ct.decode_walk(buf).events


def test_news_and_destroys_interleaved_are_blocks_of_each_kind():
    ct.clear_layout_cache()
    news = [renumbered(m, i) for i in range(C.NEW_MIN_ROWS) for m in NEW_MSGS]
    ends_ = [renumbered(m, i) for i in range(8) for m in DESTROY_MSGS]
    msgs = news + ends_ + news
    buf, starts, ends = concat(msgs)
    ct.decode(buf)
    got = C.decode_blocks(buf, starts, ends)
    assert [type(e) for e in got.events] == [C.NewBlock, C.DestroyBlock, C.NewBlock]
    assert flatten(got.events) == ct.decode_walk(buf).events


def churn(n, news_per_run=(1, 2, 3), ends_per_run=(2, 1, 3)):
    """NEW and DESTROY messages of distinct connections alternating in short
    runs (a steady churn), ``n`` of each."""
    news = [renumbered(m, i) for i in range(n) for m in NEW_MSGS][:n]
    ends_ = [renumbered(m, 1000 + i) for i in range(n) for m in DESTROY_MSGS][:n]
    msgs, k = [], 0
    while news or ends_:
        a, b = news_per_run[k % 3], ends_per_run[k % 3]
        msgs += news[:a] + ends_[:b]
        news, ends_ = news[a:], ends_[b:]
        k += 1
    return msgs


def test_a_churn_batch_is_its_news_then_its_destroys():
    ct.clear_layout_cache()
    msgs = churn(C.NEW_MIN_ROWS)
    buf, starts, ends = concat(msgs)
    ct.decode(buf)
    got = C.decode_blocks(buf, starts, ends)
    # one block of each kind, not a block (or an object call) per short run
    assert [type(e) for e in got.events] == [C.NewBlock, C.DestroyBlock]
    want = ct.decode_walk(buf).events
    assert flatten(got.events) == ([e for e in want if e.kind == EV_NEW]
                                   + [e for e in want if e.kind == EV_DESTROY])
    assert got[1:] == (0, 0, False, [])
    # too few NEW messages for a block: they come first as objects
    msgs = churn(C.NEW_MIN_ROWS // 2)
    buf, starts, ends = concat(msgs)
    got = C.decode_blocks(buf, starts, ends)
    want = ct.decode_walk(buf).events
    assert isinstance(got.events[-1], C.DestroyBlock)
    assert not any(isinstance(e, C.DestroyBlock) for e in got.events[:-1])
    assert flatten(got.events) == ([e for e in want if e.kind == EV_NEW]
                                   + [e for e in want if e.kind == EV_DESTROY])


def test_a_destroy_before_a_new_of_its_id_keeps_message_order():
    ct.clear_layout_cache()
    msgs = churn(C.NEW_MIN_ROWS)
    # a connection ends, and its id comes again in a NEW after it
    reused = next(e for e in (ct.decode_walk(m).events[0] for m in msgs)
                  if e.kind == EV_DESTROY)
    again = next(m for m in NEW_MSGS if ct.decode_walk(m).events[0].family == reused.family)
    m = bytearray(again)
    at = bytes(m).find(struct.pack(">I", ct.decode_walk(again).events[0].ct_id), 20)
    struct.pack_into(">I", m, at, reused.ct_id)
    msgs = msgs + [bytes(m)]
    buf, starts, ends = concat(msgs)
    ct.decode(buf)
    got = C.decode_blocks(buf, starts, ends)
    assert flatten(got.events) == ct.decode_walk(buf).events
    # and the correlator keeps the new connection's entry, as in order
    corr_a, corr_b = Correlator(), Correlator()
    fa, fb = [], FlowBatchBuilder()
    corr_a.handle_batch(ct.decode_walk(buf).events, NOW_NS, fa)
    corr_b.handle_batch(got.events, NOW_NS, fb)
    corr_b.reap()
    assert fb.batch().flows() == fa and reused.ct_id in corr_b.cache.entries
    assert corr_b.cache.entries == corr_a.cache.entries


def test_short_destroy_runs_between_refused_rows_take_the_object_path():
    ct.clear_layout_cache()
    msgs = churn(C.NEW_MIN_ROWS)
    bad = bytearray(msgs[5])
    bad[16:20] = b"\xff\xff\xff\xff"       # a header word no shape has: refused
    msgs = msgs[:5] + [bytes(bad)] + msgs[6:]
    buf, starts, ends = concat(msgs)
    ct.decode(buf)
    got = C.decode_blocks(buf, starts, ends)
    # in message order; runs of fewer than MIN_ROWS DESTROY messages (all
    # of them here) are objects, not blocks
    assert not any(isinstance(e, C.DestroyBlock) for e in got.events)
    assert flatten(got.events) == ct.decode_walk(buf).events
    assert got[1:] == ct.decode_walk(buf)[1:]


def test_unlearnt_shapes_and_small_batches_take_the_object_path():
    ct.clear_layout_cache()
    msgs = [renumbered(m, i) for i in range(4) for m in DESTROY_MSGS]
    buf, starts, ends = concat(msgs)
    got = C.decode_blocks(buf, starts, ends)        # nothing learnt yet
    assert not any(isinstance(e, C.DestroyBlock) for e in got.events)
    assert got == ct.decode_walk(buf)
    few = concat(msgs[:C.MIN_ROWS - 1])
    assert C.decode_blocks(*few) == ct.decode_walk(few[0])


DESTROY_BATCHES = st.lists(st.sampled_from(DESTROY_MSGS), min_size=C.MIN_ROWS, max_size=80)
BYTE_EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(4, 400),
                                st.integers(0, 255)), max_size=8)


def mutated(msgs, edits) -> list[bytes]:
    """``msgs`` with the byte ``edits`` (which message, where, what; never to
    nlmsg_len), the real shapes learnt first."""
    msgs = [bytearray(m) for m in msgs]
    for which, pos, val in edits:
        m = msgs[which % len(msgs)]
        m[pos % (len(m) - 4) + 4] = val
    for m in DESTROY_MSGS:
        ct.decode(m)
    return [bytes(m) for m in msgs]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DESTROY_BATCHES, BYTE_EDITS)
def test_fuzz_mutated_destroys_decode_like_the_walker(msgs, edits):
    """Byte edits (not to nlmsg_len, so that datagram and message framing
    agree) to real DESTROY messages in a batch: the columnar reader, warmed
    with the real shapes, gives what the plain walker gives."""
    buf, starts, ends = concat(mutated(msgs, edits))
    got = C.decode_blocks(buf, starts, ends)
    want = ct.decode_walk(buf)
    assert flatten(got.events) == want.events
    assert got[1:] == want[1:]


# -- correlating ------------------------------------------------------------------

V4 = [bytes([198, 51, 100, 2]), bytes([198, 51, 100, 3]), bytes([203, 0, 113, 1]),
      bytes([203, 0, 113, 9])]
V6 = [bytes.fromhex("20010db8000100000000000000000002"),
      bytes.fromhex("20010db8000200000000000000000001"),
      bytes.fromhex("20010db8000200000000000000000009")]


@st.composite
def connection(draw, ct_id):
    fam = draw(st.sampled_from([4, 6]))
    pool = V4 if fam == 4 else V6
    proto = draw(st.sampled_from([6, 17, 1 if fam == 4 else 58, 253]))
    a, b, c = (draw(st.sampled_from(pool)) for _ in range(3))
    port = st.integers(0, 65535)
    sp, dp, nat = draw(port), draw(port), draw(port)
    if proto == 253:
        sp = dp = nat = 0
    d = draw(st.sampled_from([b, b, draw(st.sampled_from(pool))]))   # DNAT: reply src != b
    orig = CtTuple(a, b, proto, sp, dp)
    reply = CtTuple(d, c, proto, dp, nat)
    if proto in (1, 58):
        reply = CtTuple(d, c, proto, nat, draw(st.integers(0, 65535)))
    return fam, orig, reply


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(connection(0), min_size=1, max_size=12), st.data())
def test_flows_of_block_is_flows_of_over_arrays(conns, data):
    """The rules of a connection's two flows (post-NAT side mirrored from the
    other tuple, the ICMP port convention) over a block give, row by row,
    what ``flows_of`` gives each event."""
    u64 = st.integers(0, 2**64 - 1)
    evs = [CtEvent(EV_DESTROY, fam, 1000 + i, 0, o, r, *data.draw(st.tuples(u64, u64, u64, u64)),
                   0, 0) for i, (fam, o, r) in enumerate(conns)]
    start = data.draw(st.lists(u64, min_size=len(evs), max_size=len(evs)))
    end = data.draw(st.lists(u64, min_size=len(evs), max_size=len(evs)))
    reason = data.draw(st.sampled_from([END_OF_FLOW, 2, 5]))
    got = flows_of_block(C.DestroyBlock.from_events(evs), np.array(start, dtype=np.uint64),
                         np.array(end, dtype=np.uint64), reason).flows()
    assert got == [f for ev, s, e in zip(evs, start, end) for f in flows_of(ev, s, e, reason)]


@st.composite
def scenario(draw):
    n = draw(st.integers(1, 12))
    conns = [draw(connection(1000 + i)) for i in range(n)]
    # (mark, zone) of each connection: most have neither
    tags = [draw(st.sampled_from([(0, 0), (0, 0), (0, 2), (7, 0), (5, 9)])) for _ in range(n)]
    big = st.integers(0, 2**64 - 1)
    small = st.integers(0, 5000)
    steps = []
    for _ in range(draw(st.integers(1, 40))):
        i = draw(st.integers(0, n - 1))
        fam, o, r = conns[i]
        what = draw(st.sampled_from(["new", "destroy", "destroy", "dump"]))
        cnt = tuple(draw(st.one_of(small, big)) for _ in range(4))
        t0 = draw(st.sampled_from([0, NOW_NS - 5_000_000_000, NOW_NS - 1]))
        t1 = draw(st.sampled_from([0, NOW_NS - 1_000_000, NOW_NS]))
        te = draw(st.sampled_from([0, 0, NOW_NS - 3_000_000_000, NOW_NS - 7]))  # event time
        kind = {"new": EV_NEW, "destroy": EV_DESTROY, "dump": EV_DUMP}[what]
        steps.append(CtEvent(kind, fam, 1000 + i, 0, o, r, *cnt, t0, t1, *tags[i], te))
    return steps


def new_first_safe(batch) -> bool:
    """No DESTROY in ``batch`` before a NEW of its id (as decode_blocks may order a batch)."""
    ended = set()
    for ev in batch:
        if ev.kind == EV_DESTROY:
            ended.add(ev.ct_id)
        elif ev.kind == EV_NEW and ev.ct_id in ended:
            return False
    return True


def run_correlator(steps, kernel_ts, nat, setup, blocks, new_first=False):
    corr = Correlator(kernel_timestamps=kernel_ts, nat_events=nat)
    out = FlowBatchBuilder() if blocks else []
    setup(corr)
    now = NOW_NS - 10_000_000_000
    batch: list = []

    def flush():
        if blocks and new_first and batch and new_first_safe(batch):
            # the batch's NEW events, then its DESTROY events, a block each,
            # as decode_blocks gives a batch of the two kinds (_new_first)
            news = [ev for ev in batch if ev.kind == EV_NEW]
            ends = [ev for ev in batch if ev.kind == EV_DESTROY]
            items = ([C.NewBlock.from_events(news)] if news else []) + \
                ([C.DestroyBlock.from_events(ends)] if ends else [])
            corr.handle_batch(items, now, out)
        elif blocks:
            # runs of DESTROY and of NEW as blocks, as decode_blocks gives them
            items, run = [], []
            block_of = {EV_DESTROY: C.DestroyBlock, EV_NEW: C.NewBlock}
            for ev in batch:
                if run and ev.kind != run[0].kind:
                    items.append(block_of[run[0].kind].from_events(run))
                    run = []
                if ev.kind in block_of:
                    run.append(ev)
                else:
                    items.append(ev)
            if run:
                items.append(block_of[run[0].kind].from_events(run))
            corr.handle_batch(items, now, out)
        else:
            corr.handle_batch(batch, now, out)
        batch.clear()

    for ev in steps:
        if ev.kind == EV_DUMP:
            flush()
            corr.begin_sync()
            corr.active_export([ev], now, now - 1)
            now += 1_000_000_000
            continue
        batch.append(ev)
    flush()
    flows = flows_in(out)
    corr.reap()             # the removals the blocks left pending (daemon: when idle)
    return flows, corr.state()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.booleans(), st.booleans(), st.sampled_from(["none", "dump", "sync"]))
def test_blocks_correlate_like_events(steps, kernel_ts, nat, pre):
    def setup(corr):
        if pre == "dump":
            # some connections known from the start-up dump
            corr.add_dumped([ev._replace(kind=EV_DUMP) for ev in steps[::3]], NOW_NS - 1)
        elif pre == "sync":
            corr.begin_sync()
    a = run_correlator(steps, kernel_ts, nat, setup, blocks=False)
    b = run_correlator(steps, kernel_ts, nat, setup, blocks=True)
    assert a == b
    # a batch's NEW events first (where no DESTROY comes before a NEW of its
    # id): the same flows and state; the NAT events of one batch come out in
    # another order (its creations first), each the same
    (fa, sa), (fc, sc) = a, run_correlator(steps, kernel_ts, nat, setup, blocks=True,
                                            new_first=True)
    assert fc == fa and sc[:5] == sa[:5]
    assert sorted(sc[5]) == sorted(sa[5])


def test_resync_order_does_not_depend_on_deferred_removals():
    # sequences hypothesis found: an id NEW again (or twice) while the
    # removal a DESTROY block left for it is pending, then syncs that find
    # connections vanished; both paths must export them in the same order
    o = CtTuple(V4[0], V4[0], 6, 0, 0)
    r, r0 = CtTuple(V4[0], V4[0], 6, 0, 1), CtTuple(V4[0], V4[0], 6, 0, 0)

    def ev(kind, ct_id, reply=r):
        return CtEvent(kind, 4, ct_id, 0, o, reply, 0, 0, 0, 0, 0, 0)
    cases = [
        [ev(EV_NEW, 1002), *[ev(EV_NEW, 1000)] * 4, ev(EV_DESTROY, 1002), ev(EV_NEW, 1000),
         ev(EV_NEW, 1002), ev(EV_DUMP, 1000), ev(EV_DUMP, 1001, r0)],
        [ev(EV_NEW, 1000, r0), ev(EV_DESTROY, 1000, r0), ev(EV_NEW, 1005), ev(EV_NEW, 1006),
         ev(EV_NEW, 1005), ev(EV_DUMP, 1000, r0), ev(EV_DUMP, 1000, r0)],
    ]
    for steps in cases:
        a = run_correlator(steps, False, True, lambda corr: None, blocks=False)
        b = run_correlator(steps, False, True, lambda corr: None, blocks=True)
        assert a[1][0]["exported_by_resync"] == 2
        assert a == b


def test_a_new_block_reusing_an_id_whose_removal_is_pending_keeps_its_entry():
    # ids are reused: a connection made again (a NEW block) while the
    # removal a DESTROY block left for its id is pending must keep the new
    # entry when the removals run; and every entry is what pack4/pack6 make
    def ev(kind, ct_id, fam, i):
        a = V4 if fam == 4 else V6
        o = CtTuple(a[0], a[2], 17, 1024 + i, 53)
        r = CtTuple(a[1] if i % 2 else a[2], a[0], 17, 53, 40000 + i)
        return CtEvent(kind, fam, ct_id, 0, o, r, 0, 0, 0, 0, 0, 0)
    news = [ev(EV_NEW, 7000 + i, 4 if i % 3 else 6, i) for i in range(60)]
    corr = Correlator(kernel_timestamps=True)
    corr.handle_batch([C.NewBlock.from_events(news)], NOW_NS, [])
    out = FlowBatchBuilder()
    corr.handle_batch([C.DestroyBlock.from_events([e._replace(kind=EV_DESTROY)
                                                   for e in news])], NOW_NS, out)
    assert len(out) == 120 and corr.reap_pending == 60
    again = news[:10]
    corr.handle_batch([C.NewBlock.from_events(again)], NOW_NS + 1, [])
    corr.reap()
    assert sorted(corr.cache.entries) == [e.ct_id for e in again]
    for e in again:
        pack = pack4 if e.family == 4 else pack6
        o, r = e.orig, e.reply
        assert corr.cache.entries[e.ct_id] == pack(o.proto, o.src, o.dst, o.sport, o.dport,
                                           r.src, r.dst, r.sport, r.dport, NOW_NS + 1)
    assert corr.counters["events_new"] == 70


def test_block_of_known_connections_correlates_like_events():
    # a block big enough to be worth it, every connection NEW first, one of
    # them exported early by the active timeout
    evs = []
    for i in range(200):
        o = CtTuple(V4[0], V4[2], 6, 1024 + i, 443)
        r = CtTuple(V4[2], V4[3], 6, 443, 40000 + i)
        evs.append(CtEvent(EV_NEW, 4, 5000 + i, 0, o, r, 0, 0, 0, 0, 0, 0))
    ends = [e._replace(kind=EV_DESTROY, orig_packets=3, orig_bytes=300, reply_packets=2,
                       reply_bytes=200, start_ns=NOW_NS - 10**9, stop_ns=NOW_NS)
            for e in evs]
    results = []
    for blocks in (False, True):
        corr = Correlator()
        out = FlowBatchBuilder() if blocks else []
        corr.handle_batch(evs, NOW_NS - 2 * 10**9, out)
        corr.begin_sync()
        corr.active_export([ends[7]._replace(kind=EV_DUMP, orig_packets=1)], NOW_NS - 10**9,
                           NOW_NS - 10**9)
        items = [C.DestroyBlock.from_events(ends)] if blocks else ends
        corr.handle_batch(items, NOW_NS, out)
        corr.reap()
        results.append((flows_in(out), corr.counters, corr.cache.entries))
    assert results[0] == results[1]
    assert results[1][1]["connections_exported"] == 200


# -- encoding ---------------------------------------------------------------------

def flows_in(out) -> list:
    """The flows a correlator appended to ``out`` (a list or a builder)."""
    return out.batch().flows() if isinstance(out, FlowBatchBuilder) else out


def replay_flows(copies=6):
    """The flows of real DESTROY messages: through the object path (a list)
    and the block path (a builder holding blocks)."""
    ct.clear_layout_cache()
    msgs = [renumbered(m, i) for i in range(copies) for m in DESTROY_MSGS]
    buf, starts, ends = concat(msgs)
    ct.decode(buf)
    res = C.decode_blocks(buf, starts, ends)
    assert isinstance(res.events[0], C.DestroyBlock)
    objs, cols = [], FlowBatchBuilder()
    Correlator().handle_batch(ct.decode(buf).events, NOW_NS, objs)
    Correlator().handle_batch(res.events, NOW_NS, cols)
    return objs, cols


def encode_all(batch, now_ns=NOW_NS, boot_ms=BOOT_MS, exaddr="203.0.113.1", rounds=3):
    """Every encoder's output for ``batch``, several batches in a row
    (sequence numbers, template refresh)."""
    v5, ipfix, v9 = V5Encoder(3, 4), IpfixEncoder(7, template_refresh_packets=3), \
        NetflowV9Encoder(9, template_refresh_packets=2, max_size=600)
    vlan = IpfixEncoder(1, vlan=True, max_size=700)
    out = []
    for k in range(rounds):
        now = now_ns + k * 10**9
        ft = expand(batch, now, boot_ms, exaddr)
        out.append(("v5", v5.encode(ft), v5.invalid, v5.skipped_ipv6))
        out.append(("csv", csv_lines(ft, "x: "), ft.records))
        out.append(("ipfix", ipfix.encode(batch, [], now // 10**6), list(ipfix.last_counts),
                    ipfix.invalid, dict(ipfix.invalid_reasons)))
        out.append(("v9", v9.encode(batch, [], now // 10**6, boot_ms), list(v9.last_counts)))
        out.append(("vlan", vlan.encode(batch, [], now // 10**6)))
    return out


def test_replayed_flows_encode_the_same_as_blocks_and_as_objects():
    objs, buf = replay_flows()
    cols = buf.batch()
    assert cols.flows() == objs
    assert encode_all(cols) == encode_all(FlowBatch.from_flows(objs))


def test_builder_keeps_the_order_of_flows_and_blocks():
    objs, buf = replay_flows(3)
    extra = objs[:3]
    buf.extend(extra)
    buf.add_block(FlowBatch.from_flows(objs[3:5]))
    assert len(buf) == len(objs) + 5
    assert buf.batch().flows() == objs + extra + objs[3:5]
    buf.clear()
    assert not buf and len(buf) == 0 and buf.batch().flows() == []


addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def flow(draw, wide=False):
    fam = draw(st.sampled_from([4, 6]))
    a = addr4 if fam == 4 else addr6
    port = st.integers(0, 70000 if wide else 65535)
    src, dst = draw(a), draw(a)
    same = draw(st.booleans())
    psrc, pdst = (src, dst) if same else (draw(a), draw(a))
    sp, dp = draw(port), draw(port)
    psp, pdp = (sp, dp) if same or draw(st.booleans()) else (draw(port), draw(port))
    start = draw(st.integers(0, 2**45))
    return Flow(fam, draw(st.sampled_from([1, 6, 17, 58, 0, 255])), src, dst, sp, dp, psrc, pdst,
                psp, pdp, draw(st.one_of(st.integers(0, 10**6), u64)),
                draw(st.one_of(st.integers(0, 10**9), u64)), start,
                start + draw(st.integers(0, 10**7)), draw(st.sampled_from([ORIGINAL, REPLY])),
                draw(st.sampled_from([END_OF_FLOW, 1, 2, 5])), draw(st.integers(0, 255)),
                draw(st.integers(0, 255)), draw(st.integers(0, 2**32 - 1)),
                draw(st.integers(0, 4094)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(flow(), max_size=90), st.integers(-10**6, 2**44))
def test_generated_flows_encode_the_same_from_rows_and_from_columns(flows, boot_ms):
    rows = FlowBatch.from_flows(flows)
    assert rows.flows() == flows
    cols = rows.as_columns()
    assert cols.flows() == flows
    assert encode_all(cols, boot_ms=boot_ms, rounds=2) == encode_all(rows, boot_ms=boot_ms,
                                                                      rounds=2)


def _template_ports(f: Flow) -> tuple:
    """The ports a v9/IPFIX flow template carries (ICMP: type and code only)."""
    if (f.family, f.proto) in ((4, 1), (6, 58)):
        return (f.dport,)
    return (f.sport, f.dport, f.post_sport, f.post_dport)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(flow(wide=True), min_size=1, max_size=40))
def test_values_too_wide_are_skipped_and_counted_per_record(flows):
    """Ports beyond 16 bits: each record that carries one is counted as
    invalid and the others go out, whatever the batch is made of."""
    batch = FlowBatch.from_flows(flows)
    wide = sum(any(p > 65535 for p in _template_ports(f)) for f in flows)
    ipfix = IpfixEncoder(records=("flows",))
    ipfix.encode(batch, [], NOW_NS // 10**6)
    assert (ipfix.invalid, ipfix.records_sent) == (wide, len(flows) - wide)
    ft = expand(batch, NOW_NS, BOOT_MS)
    v4 = [r for r in ft.records if len(r[0]) == 4]
    wide4 = sum(r[R_SRCPORT] > 65535 or r[R_DSTPORT] > 65535 for r in v4)
    v5 = V5Encoder()
    v5.encode(ft)
    assert (v5.invalid, v5.records_encoded, v5.skipped_ipv6) == (wide4, len(v4) - wide4,
                                                                 len(ft) - len(v4))
    assert encode_all(batch.as_columns(), rounds=1) == encode_all(batch, rounds=1)


def test_values_a_uint64_cannot_hold_are_kept_as_they_are():
    f = Flow(4, 6, bytes(4), bytes(4), 1, 2, bytes(4), bytes(4), 1, 2, 1, 1, 1, 1)
    odd = [f._replace(packets=-1), f._replace(octets=2**64), f._replace(start_ms=-5)]
    for bad in odd:
        assert FlowBatch.from_flows([f, bad]).flows() == [f, bad]
    buf = FlowBatchBuilder()
    buf.extend([f])
    buf.add_block(FlowBatch.from_flows(odd))
    buf.extend([f])
    assert buf.batch().flows() == [f, *odd, f]


# -- the recvmmsg layout: datagrams in fixed-size slots ---------------------------

def slots(datagrams, stride=512, gaps=(), fill=0xA5):
    """The datagrams in slots of ``stride`` bytes as io.netlink.MultiRecv
    leaves them (the rest of each slot holds what an earlier batch left:
    ``fill``); slots in ``gaps`` are skipped (a datagram dropped as cut
    short).  Returns (buffer up to the end of the last slot, starts, ends)."""
    buf, starts, ends, slot = bytearray(), [], [], 0
    for i, d in enumerate(datagrams):
        while slot in gaps:
            buf += bytes([fill]) * stride
            slot += 1
        assert len(d) <= stride
        starts.append(slot * stride)
        ends.append(slot * stride + len(d))
        buf += d + bytes([fill]) * (stride - len(d))
        slot += 1
    return bytes(buf), starts, ends


def test_slots_decode_like_the_walker_over_recorded_datagrams():
    ct.clear_layout_cache()
    dgrams = [d for d in EVENT_DGRAMS + DUMP_DGRAMS if len(d) <= 512]
    dgrams += [renumbered(m, i) for i in range(8) for m in DESTROY_MSGS]
    want = ct.decode_walk(concat(dgrams)[0])
    for gaps in ((), (0, 5, 6, len(dgrams) // 2)):
        buf, starts, ends = slots(dgrams, gaps=gaps)
        for _ in range(2):
            got = C.decode_blocks(buf, starts, ends, stride=512)
            assert flatten(got.events) == want.events
            assert got[1:] == want[1:]
        assert any(isinstance(e, C.DestroyBlock) for e in got.events)


def test_a_run_of_destroys_in_slots_is_one_block_of_many_shapes():
    ct.clear_layout_cache()
    msgs = [renumbered(m, i) for i in range(4) for m in DESTROY_MSGS]
    ct.decode(concat(msgs)[0])
    for fill in (0, 0xFF):
        got = C.decode_blocks(*slots(msgs, fill=fill), stride=512)
        assert len(got.events) == 1 and isinstance(got.events[0], C.DestroyBlock)
        assert got.events[0].events() == ct.decode_walk(concat(msgs)[0]).events
    # one shape only: the same
    one = [renumbered(DESTROY_MSGS[0], i) for i in range(40)]
    got = C.decode_blocks(*slots(one), stride=512)
    assert len(got.events) == 1
    assert got.events[0].events() == ct.decode_walk(concat(one)[0]).events


def test_slots_not_as_promised_are_read_with_word_indexes():
    """A stride the batch does not keep (a datagram longer than its slot, a
    start off the grid, a buffer short of the last slot) is not trusted: the
    result is still the walker's."""
    ct.clear_layout_cache()
    msgs = [renumbered(m, i) for i in range(4) for m in DESTROY_MSGS]
    ct.decode(concat(msgs)[0])
    want = ct.decode_walk(concat(msgs)[0])
    buf, starts, ends = slots(msgs)
    for args in ((buf, starts, ends, 128),                      # shorter than messages
                 (buf[:-4], starts, ends, 512),                 # last slot cut
                 (buf, starts, ends, 1024)):                    # starts off the grid
        got = C.decode_blocks(*args[:3], stride=args[3])
        assert flatten(got.events) == want.events and got[1:] == want[1:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DESTROY_BATCHES, BYTE_EDITS, st.sets(st.integers(0, 90), max_size=4),
       st.integers(0, 255))
def test_fuzz_mutated_destroys_in_slots_decode_like_the_walker(msgs, edits, gaps, fill):
    """As test_fuzz_mutated_destroys_decode_like_the_walker, the batch laid
    out in slots (some skipped, the slack filled with any byte)."""
    msgs = mutated(msgs, edits)
    got = C.decode_blocks(*slots(msgs, gaps=gaps, fill=fill), stride=512)
    want = ct.decode_walk(concat(msgs)[0])
    assert flatten(got.events) == want.events
    assert got[1:] == want[1:]


def test_news_and_destroys_in_slots_are_blocks_of_each_kind():
    # the daemon's receive layout (recvmmsg slots): NEW and DESTROY shapes
    # in one matrix, read shape by shape
    ct.clear_layout_cache()
    news = [renumbered(m, i) for i in range(C.NEW_MIN_ROWS) for m in NEW_MSGS]
    ends_ = [renumbered(m, i) for i in range(8) for m in DESTROY_MSGS]
    msgs = news + ends_ + news
    ct.decode(concat(msgs)[0])
    got = C.decode_blocks(*slots(msgs), stride=512)
    assert [type(e) for e in got.events] == [C.NewBlock, C.DestroyBlock, C.NewBlock]
    assert flatten(got.events) == ct.decode_walk(concat(msgs)[0]).events


def test_a_short_run_of_news_takes_the_object_path():
    ct.clear_layout_cache()
    news = [renumbered(m, i) for i in range(C.NEW_MIN_ROWS) for m in NEW_MSGS]
    ends_ = [renumbered(m, i) for i in range(8) for m in DESTROY_MSGS]
    short = news[:C.NEW_MIN_ROWS - 1]
    msgs = ends_ + short + ends_
    buf, starts, ends = concat(msgs)
    ct.decode(concat(news + ends_)[0])
    got = C.decode_blocks(buf, starts, ends)
    assert not any(isinstance(e, C.NewBlock) for e in got.events)
    assert [type(e) for e in got.events].count(C.DestroyBlock) == 2
    assert flatten(got.events) == ct.decode_walk(buf).events
    alone = concat(short)
    assert C.decode_blocks(*alone) == ct.decode_walk(alone[0])


def with_event_time(msg, t):
    """``msg`` with its CTA_TIMESTAMP_EVENT set to ``t`` (added if absent)."""
    return with_attrs(without_event_time(msg), (ct.CTA_TIMESTAMP_EVENT, struct.pack(">Q", t)))


def test_event_times_decode_as_columns_like_the_walker():
    """Runs of NEW and DESTROY messages, each with its own event time, as
    blocks: the ``event_ns`` column is the walker's, row by row; and the
    same shapes without the attribute read 0."""
    ct.clear_layout_cache()
    t0 = 1_795_452_592_000_000_000
    news = [with_event_time(renumbered(m, i), t0 + 1000 * i + k)
            for i in range(C.NEW_MIN_ROWS) for k, m in enumerate(NEW_MSGS)]
    ends_ = [with_event_time(renumbered(m, i), t0 + 7 * i + k + 2**63)
             for i in range(8) for k, m in enumerate(DESTROY_MSGS)]
    bare = [renumbered(without_event_time(m), 100 + i) for i in range(8)
            for m in DESTROY_MSGS]
    buf, starts, ends = concat(news + ends_ + bare)
    want = ct.decode_walk(buf)
    assert len({e.event_ns for e in want.events}) > C.NEW_MIN_ROWS
    ct.decode(buf)
    got = C.decode_blocks(buf, starts, ends)
    assert [type(e) for e in got.events] == [C.NewBlock, C.DestroyBlock]
    assert flatten(got.events) == want.events
    assert got.events[1].event_ns[-len(bare):].tolist() == [0] * len(bare)
