"""The pcap meter's vectorised path: a chunk of records at a time, with numpy.

Strategy: ``FlowTable.meter_frames`` costs a dictionary lookup and a dozen
bytecodes per packet; a capture file has millions.  Here a chunk of a classic
pcap file (``pcapfile.RecordChunk``: one buffer, the record offsets) is
metered whole, through the table's batch interface (``nfflowd.meter``):

1. parse: the header fields of the common case (Ethernet, at most one 802.1Q
   tag, IPv4 without options, not a fragment, a complete TCP or UDP header)
   are gathered for every record at once; every other frame goes through
   ``PacketParser.parse`` one by one, in file order, so the parser's counters
   and fragment memory are what the per-packet path leaves;
2. group: packets are sorted by (hash of the flow key, position), which puts
   each flow's packets together in file order; neighbours with equal hashes
   and different keys (a collision) send the chunk to the per-packet path;
3. account, per flow of the chunk (a group), in three tiers:

   - ``_vector``, all at once with numpy: flows with no entry in the table
     whose packets nothing else can split -- plain flows (no FIN/RST in them
     or in their reverse) with no gap as long as the idle timeout, and TCP
     pairs (both directions new, or the reverse with no flow at all) with no
     gap as long as the shortest FIN/RST timeout, the reverse alive whenever
     a FIN/RST reaches it, their end of connection computed as the table
     does.  The flows whose deadline falls at or before the chunk's last
     batch boundary become records at once, a ``FlowBatch`` block
     (``_records``); only the others enter the table (``add``);
   - in Python, one flow (or FIN/RST pair, ``_pairs``) at a time: flows that
     continue an entry of the table, under the same conditions, walking only
     the FIN/RST packets;
   - the rest (long gaps, timeouts inside the chunk, a stale reverse flow, a
     reverse entry, IPv6) is replayed packet by packet, in file order, in a
     side table (``FlowTable.split``) that also gets the ``expire`` calls of
     every ``batch_size`` frames: what a TCP end does to the reverse flow
     depends on whether that one was already expired.  Then it goes back
     (``merge``).

   The tiers never share a flow or a reverse pair, so their order does not
   matter; flows that ended inside the chunk would only have been expired
   earlier by the per-packet path, with the same contents and end reason
   (``meter.end_reason`` decides it for both).

``meter`` refuses a chunk (the caller meters it batch by batch, ``batches``)
when its timestamps go backwards or when the table could fill up inside it
(eviction order depends on everything before it); a chunk with more flows
than the table may hold is refused before a Python object is made per flow.
So the records held at once are a batch's, or on the vectorised path no more
than the table holds.  The cyclic garbage collector is off while a chunk is
metered (it would walk the new entries again and again).
tests/test_meterfast.py checks the records and counters against the
per-packet path for every sample capture and for hypothesis-made captures.
"""

from __future__ import annotations

import gc
import struct
from dataclasses import dataclass

import numpy as np

from itertools import repeat
from operator import is_not

from nfflowd.meter import (CLOSING, FIN, FLAGS, IDLE, LAST, OCTETS, PKTS, START, STATE,
                           end_reason, flow_columns)
from nfflowd.packet import KEY_PROTO, flow_key, reverse_flow_key
from nfflowd.record import FlowBatchBuilder

__all__ = ["ChunkMeter"]

_IDX_BITS = 22                      # packets per chunk < 4M: index in the sort word
_IDX_MASK = (1 << _IDX_BITS) - 1
_QQ = struct.Struct("<QQ").unpack
# the multipliers of the flow key hash that groups a chunk's packets
KEY_HASH = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)


def _view(buf, dtype, skip):
    """``dtype`` values at every byte offset of ``buf`` from ``skip`` on."""
    dt = np.dtype(dtype)
    n = len(buf) - skip - dt.itemsize + 1
    if n <= 0:
        return np.zeros(0, dt)
    return np.ndarray((n,), dtype=dt, buffer=buf, offset=skip, strides=(1,))


def _last_of_runs(a):
    """Mask of the last element of each run of equal values in ``a``."""
    m = np.ones(len(a), bool)
    m[:-1] = a[1:] != a[:-1]
    return m


@dataclass(slots=True)
class _Side:
    """One direction of a FIN/RST pair while ``_pairs`` walks its events:
    its group in the chunk (None: no packet here), its table entry (None:
    new), start time, FIN and CLOSING bits, idle timeout, file positions of
    its first and last packet here (-1: none)."""
    group: int | None
    entry: list | None
    start: int
    fin: int
    closing: int
    idle: int
    first: int
    last: int

    def close(self, idle_ns) -> None:
        """The table's closing (FIN both ways, a RST) on this direction."""
        if self.closing and self.idle <= idle_ns:
            return
        self.closing = CLOSING
        self.idle = idle_ns


class ChunkMeter:
    """Meters ``RecordChunk``s into ``table`` as ``meter_file`` would with
    ``batch_size`` frames per batch and ``table.expire(last)`` after each."""

    def __init__(self, table, parser, batch_size: int, key_hash=KEY_HASH):
        self.m1, self.m2 = (np.uint64(m) for m in key_hash)
        self.table = table
        self.parser = parser
        self.bs = int(batch_size)
        self.frames = 0                 # frames before the current chunk
        self.last_ts = None
        self.bulk: list = []            # FlowBatch blocks made by _vector, not yet out

    # ------------------------------------------------------------------
    def meter(self, chunk, out: FlowBatchBuilder) -> bool:
        """Meter one chunk, or return False when it must go batch by batch
        (``batches``).  ``out`` gets what ``table.expire`` would have
        returned at the batch boundaries inside it, as of the last one:
        flows that ended earlier wait in the table until then, and the
        records made at once (blocks of columns) come first."""
        # the chunk allocates some 100k lists and tuples that all live on:
        # the cyclic collector would walk them again and again for nothing
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._meter(chunk, out)
        finally:
            if enabled:
                gc.enable()

    def _meter(self, chunk, out: FlowBatchBuilder) -> bool:
        ts, cap, orig = chunk.fields()
        n = len(ts)
        if n == 0:
            return True
        g0 = self.frames
        mono = bool((ts[1:] >= ts[:-1]).all()) and (self.last_ts is None or ts[0] >= self.last_ts)
        if not (mono and n <= _IDX_MASK and self._fast(chunk, ts, cap, orig, g0)):
            return False
        last_b = (g0 + n) // self.bs * self.bs - 1
        for block in self.bulk:
            out.add_block(block)
        self.bulk = []
        if last_b >= g0:
            self._expire(int(ts[last_b - g0]), out)
        self.frames = g0 + n
        self.last_ts = int(ts[-1])
        return True

    def batches(self, chunk):
        """The frames of a chunk ``meter`` refused, as the batches the reader
        would have cut: (frames, whether a batch ends there and is expired)."""
        g0 = self.frames
        bs = self.bs
        i = 0
        n = len(chunk)
        while i < n:
            j = min(n, (g0 + i) // bs * bs + bs - g0)
            frames = chunk.frames(i, j)
            self.frames = g0 + j
            self.last_ts = frames[-1][0]
            yield frames, (g0 + j) % bs == 0
            i = j

    def _fast(self, chunk, ts, cap, orig, g0) -> bool:
        table = self.table
        buf = chunk.buf
        offs = chunk.offsets
        n = len(offs)
        blen = len(buf)
        room = chunk.room
        if len(room) < blen + 128:       # no slack after the buffer: reads are clipped
            room = buf
        rlen = len(room)

        def at(dtype, skip):
            """``dtype`` at ``index + skip`` for an index array (a view)."""
            return _view(room, dtype, skip)

        fast = np.zeros(n, bool)
        u = np.uint64
        if chunk.linktype == 1 and blen >= 64:
            # reads beyond a short frame stay inside ``room`` (clipped if need
            # be) and are discarded by the length test
            o = offs if rlen > blen + 64 else np.minimum(offs, rlen - 64)
            tag = at(">u2", 28)[o] == 0x8100         # frame + 12
            hl = 14 + 4 * tag.astype(np.int64) if tag.any() else 14
            base = offs + 14 + hl                    # IPv4 header - 2
            if rlen < blen + 128:
                base = np.minimum(base, rlen - 64)
            # narrow reads (the arrays are memory-bound): ethertype, version/IHL
            hdr = at("<u4", 0)[base]
            frag = at("<u2", 8)[base]          # flags/offset, bytes swapped
            proto = at(np.uint8, 11)[base]
            tot = at(">u2", 4)[base]
            # the IP length, never above what the frame held (packet.py)
            wire = np.maximum(orig, cap) - hl
            tcp = proto == 6
            fast = (((hdr & 0xFFFFFF) == 0x450008) & ((frag & 0xFF3F) == 0)
                    & (tcp | (proto == 17)) & (cap >= hl + 24 + 10 * tcp) & (tot >= 20))
            del hdr, frag
        fidx = np.flatnonzero(fast)
        # rare frames: the parser, in file order
        rare = np.flatnonzero(~fast)
        parse = self.parser.parse
        lt = chunk.linktype
        r_idx, r_k0, r_k1, r_o, r_tos, r_fl = [], [], [], [], [], []
        v6 = []                                    # (frame index, key, octets, flags, tos)
        pa = self.parser
        saved = pa.snapshot()
        if len(rare):
            ro = offs[rare].tolist()
            rc = cap[rare].tolist()
            rg = orig[rare].tolist()
            for i, o, c, ol in zip(rare.tolist(), ro, rc, rg):
                data = bytes(buf[o + 16:o + 16 + c])
                p = parse(lt, data, ol)
                if p is None:
                    continue
                key = flow_key(p)
                if len(key) == 16:
                    k0, k1 = _QQ(key)
                    r_idx.append(i)
                    r_k0.append(k0)
                    r_k1.append(k1)
                    r_o.append(p.octets)
                    r_tos.append(p.tos)
                    r_fl.append(p.tcp_flags)
                else:
                    v6.append((i, key, p.octets, p.tcp_flags, p.tos))
        # per packet arrays (IPv4), file order
        if len(fidx):
            allf = len(fidx) == n
            if not allf:
                base = base[fidx]
                proto = proto[fidx]
                tot = tot[fidx]
                tcp = tcp[fidx]
                wire = wire[fidx]
            over = tot > wire
            if over.any():
                tot = np.where(over, wire, tot)
                pa.length_mismatch += int(np.count_nonzero(over))
            del wire, over
            k0 = at("<u8", 14)[base]
            k1 = at("<u4", 22)[base].astype(np.uint64)
            k1 |= proto.astype(np.uint64) << u(32)
            if tag.any():
                tg = tag if allf else tag[fidx]
                vl = np.where(tg, at(">u2", 0)[base - 2] & 0x0FFF, 0).astype(np.uint64)
                k1 |= ((vl & u(0xFF)) << u(56)) | ((vl >> u(8)) << u(48))
            oc = tot                           # uint16: summed as int64
            tos = at(np.uint8, 3)[base]
            fl = at(np.uint8, 35)[base]
            fl[~tcp] = 0
            del base, proto, tcp
        else:
            k0 = k1 = np.zeros(0, np.uint64)
            oc = tos = fl = np.zeros(0, np.int64)
        if r_idx:
            pidx = np.concatenate((fidx, np.array(r_idx, np.int64)))
            order = np.argsort(pidx, kind="stable")
            pidx = pidx[order]
            k0 = np.concatenate((k0, np.array(r_k0, np.uint64)))[order]
            k1 = np.concatenate((k1, np.array(r_k1, np.uint64)))[order]
            oc = np.concatenate((oc, np.array(r_o, np.int64)))[order]
            tos = np.concatenate((tos, np.array(r_tos, np.int64)))[order]
            fl = np.concatenate((fl, np.array(r_fl, np.int64)))[order]
        else:
            pidx = fidx
        m = len(pidx)
        pts = ts if len(pidx) == n else ts[pidx]
        # -- group by key -------------------------------------------------
        if m:
            h = (k0 * self.m1) ^ (k1 * self.m2)
            sv = (h & ~np.uint64(_IDX_MASK)) | np.arange(m, dtype=np.uint64)
            sv.sort()
            srt = (sv & np.uint64(_IDX_MASK)).view(np.int64)
            hs = sv >> np.uint64(_IDX_BITS)
            sk0 = k0[srt]
            sk1 = k1[srt]
            newk = (sk0[1:] != sk0[:-1]) | (sk1[1:] != sk1[:-1])
            if (newk & (hs[1:] == hs[:-1])).any():          # a hash collision
                pa.restore(saved)
                return False
            starts = np.concatenate(([0], np.flatnonzero(newk) + 1))
            del h, sv, newk
            if len(starts) > table.max_flows:
                # more flows than the table may hold (some must be evicted,
                # in an order only the per-packet path knows): stop here,
                # before a Python object is made per flow
                pa.restore(saved)
                return False
        else:
            srt = np.zeros(0, np.int64)
            starts = np.zeros(0, np.int64)
            sk0 = sk1 = np.zeros(0, np.uint64)
        G = len(starts)
        ends = np.append(starts[1:], m)
        cnt = ends - starts
        st = pts[srt]
        if m:
            soc = np.add.reduceat(oc[srt], starts, dtype=np.int64)
            fs = fl[srt]
            ps = srt if len(pidx) == n else pidx[srt]
            sfl = np.bitwise_or.reduceat(fs, starts)
            gap = np.empty(m, np.int64)
            gap[0] = 0
            gap[1:] = st[1:] - st[:-1]
            gap[starts] = 0
            mgap = np.maximum.reduceat(gap, starts)
            del gap
            t1 = st[starts]
            tl = st[ends - 1]
            tos1 = tos[srt[starts]]
        kb = np.empty((G, 2), np.uint64)
        kb[:, 0] = sk0[starts] if m else sk0
        kb[:, 1] = sk1[starts] if m else sk1
        del sk0, sk1, k0, k1
        keys = kb.view("V16").ravel().tolist()          # the FlowTable keys, as bytes
        ents = table.lookup(keys)
        new = ents.count(None)
        if v6:
            v6keys = {k for _i, k, _o, _f, _t in v6}
            new += sum(1 for k in v6keys if k not in table)
        if len(table) + new > table.max_flows:
            # the per-packet path parses these frames again: undo
            pa.restore(saved)
            return False
        bs = self.bs
        last_b = (g0 + n) // bs * bs - 1
        bound = int(ts[last_b - g0]) if last_b >= g0 else None
        vec = np.zeros(G, bool)
        if m:
            vec = self._vector(kb, keys, ents, hs[starts], starts, srt, ps, st, fs, cnt, soc,
                               sfl, mgap, t1, tl, tos1, bound)
        # -- the rest: FIN/RST pairs with entries, then plain flows with entries
        evg = np.flatnonzero(((sfl & 5) != 0) & ~vec) if m else np.zeros(0, np.int64)
        X = set()
        H = set()
        if len(evg):
            X, H = self._pairs(keys, ents, evg, starts, ends, srt, ps, st, fs, cnt, soc, sfl,
                               mgap, t1, tl, tos1)
        # -- bulk accounting ----------------------------------------------
        active = table.active_ns
        inactive = table.inactive_ns
        end = table.end
        created = []
        replay = []
        if m:
            rest = np.flatnonzero(~vec)
            L = zip([keys[i] for i in rest.tolist()], [ents[i] for i in rest.tolist()],
                    cnt[rest].tolist(), soc[rest].tolist(), sfl[rest].tolist(),
                    mgap[rest].tolist(), t1[rest].tolist(), tl[rest].tolist(),
                    tos1[rest].tolist(), rest.tolist())
            for key, e, c, o, f, mg, a, z, tq, gi in L:
                if key in X:
                    replay.append(gi)
                    continue
                if key in H:
                    continue
                if e is not None:
                    if a - e[LAST] < e[IDLE] and a - e[START] < active:
                        if mg < e[IDLE] and z - e[START] < active:
                            e[LAST] = z
                            e[PKTS] += c
                            e[OCTETS] += o
                            e[FLAGS] |= f
                            continue
                        replay.append(gi)
                        continue
                    if mg < inactive and z - a < active:
                        end(key, e, a)
                    else:
                        replay.append(gi)
                        continue
                elif not (mg < inactive and z - a < active):
                    replay.append(gi)
                    continue
                created.append((key, a, z, c, o, f, tq, inactive, 0, min(z + inactive, a + active)))
        if created:
            table.add(*zip(*created))
        table.flows_created += len(created)
        table.packets += m + len(v6)
        table.octets += int(oc.sum(dtype=np.int64)) + sum(o for _i, _k, o, _f, _t in v6)
        # -- replay, in file order, in a side table -------------------------
        if replay or v6:
            rp = []
            for gi in replay:
                s0 = int(starts[gi])
                s1 = int(ends[gi])
                key = keys[gi]
                sel = srt[s0:s1]
                rp.extend(zip(pidx[sel].tolist(), [key] * (s1 - s0), oc[sel].tolist(),
                              fl[sel].tolist(), tos[sel].tolist()))
            rp.extend(v6)
            rp.sort(key=lambda r: r[0])                  # file order
            self._replay(rp, ts, g0)
        return True

    def _vector(self, kb, keys, ents, gh, starts, srt, pidx, st, fl, cnt, soc, sfl, mgap, t1,
                tl, tos1, bound):
        """The flows of the chunk that start in it and that nothing outside
        it touches, all at once: plain flows (no FIN/RST in them or in their
        reverse) with no gap as long as the idle timeout, and TCP pairs whose
        directions both start here (or whose reverse has no flow at all),
        with no gap as long as the shortest of the FIN/RST timeouts, the
        reverse alive whenever a FIN/RST reaches it.  Their end of
        connection follows the table's TCP end (``nfflowd.meter``): a RST closes its flow and
        the reverse if that one has started, FINs both ways close both; the
        idle timeout is the smallest that applied.  Those whose deadline is
        at or before ``bound`` (the expire after the chunk) become records
        now; the others go into the table.  Returns the mask of groups done."""
        table = self.table
        active = table.active_ns
        inactive = table.inactive_ns
        fin_ns = table.fin_ns
        rst_ns = table.rst_ns
        minidle = min(fin_ns, rst_ns)
        G = len(keys)
        u = np.uint64
        ex = np.fromiter(map(is_not, ents, repeat(None)), bool, G)
        gk0 = kb[:, 0]
        gk1 = kb[:, 1]
        proto = ((gk1 >> u(32)) & u(0xFF)).astype(np.int64)
        tcp = proto == 6
        ev = tcp & ((sfl & 5) != 0)
        # the reverse direction's group, where it has packets here
        rk0 = (gk0 >> u(32)) | (gk0 << u(32))
        rk1 = ((gk1 & ~u(0xFFFFFFFF)) | ((gk1 & u(0xFFFF)) << u(16))
               | ((gk1 >> u(16)) & u(0xFFFF)))
        rh = (rk0 * self.m1) ^ (rk1 * self.m2)
        rh >>= u(_IDX_BITS)
        ri = np.minimum(np.searchsorted(gh, rh), G - 1)
        match = tcp & (gh[ri] == rh) & (gk0[ri] == rk0) & (gk1[ri] == rk1)
        rev = np.where(match, ri, 0)
        self._rev = np.where(match, ri, -1)      # for _pairs
        pev = ev | (match & ev[rev])
        # plain flows new here
        vn = ~pev & ~ex & (mgap < inactive) & (tl - t1 < active)
        # TCP pairs
        cand = pev & ~ex & (mgap < minidle) & (tl - t1 < active)
        lone = cand & ~match
        if lone.any():                 # the reverse has no packet here: it must have no flow
            li = np.flatnonzero(lone)
            rb = np.empty((len(li), 2), np.uint64)
            rb[:, 0] = rk0[li]
            rb[:, 1] = rk1[li]
            has = np.fromiter(map(table.__contains__, rb.view("V16").ravel().tolist()),
                              bool, len(li))
            cand[li[has]] = False
        big = np.iinfo(np.int64).max
        f_s = fl                      # already in group order (see _fast)
        p_s = pidx
        # per group, from its FIN/RST packets only: first pure FIN, last RST,
        # last FIN/RST (position and time); in a group they are in file order
        fin_pos = np.full(G, big, np.int64)
        last_rst = np.full(G, -1, np.int64)
        last_ev = np.full(G, -1, np.int64)
        last_evt = np.full(G, -1, np.int64)
        ev_at = np.flatnonzero(f_s & 5)
        if len(ev_at):
            gi = np.searchsorted(starts, ev_at, side="right") - 1
            ef = f_s[ev_at]
            ep = p_s[ev_at]
            lastm = _last_of_runs(gi)
            last_ev[gi[lastm]] = ep[lastm]
            last_evt[gi[lastm]] = st[ev_at[lastm]]
            r = (ef & 4) != 0
            rg = gi[r]
            rl = _last_of_runs(rg)
            last_rst[rg[rl]] = ep[r][rl]
            pf = (ef & 5) == 1
            fg = gi[pf]
            ff = np.ones(len(fg), bool)             # first of each run
            ff[1:] = fg[1:] != fg[:-1]
            fin_pos[fg[ff]] = ep[pf][ff]
        ifirst = p_s[starts]
        ilast = p_s[np.append(starts[1:], len(p_s)) - 1]
        # a FIN/RST of this direction reaching the reverse: it is alive then
        alive = (~match | (last_ev <= ifirst[rev]) | (ilast[rev] > last_ev)
                 | ((last_evt - tl[rev] < minidle) & (last_evt - t1[rev] < active)))
        ok = cand & alive
        pair = ok & np.where(match, ok[rev], True)
        vec = vn | pair
        if not vec.any():
            return vec
        rst_p = match & (last_rst[rev] > ifirst)
        fin_both = match & (fin_pos < big) & (fin_pos[rev] < big)
        rstc = (last_rst >= 0) | rst_p
        closing = pair & (rstc | fin_both)
        idle = np.full(G, inactive, np.int64)
        idle = np.where(pair & fin_both, np.minimum(idle, fin_ns), idle)
        idle = np.where(pair & rstc, np.minimum(idle, rst_ns), idle)
        state = np.where(pair, (fin_pos < big).astype(np.int64) | (closing * 2), 0)
        dl = np.minimum(tl + idle, t1 + active)
        table.flows_created += int(vec.sum())
        if bound is not None:
            now = vec & (dl <= bound)
        else:
            now = np.zeros(G, bool)
        keep = np.flatnonzero(vec & ~now)
        # survivors into the table
        table.add([keys[i] for i in keep.tolist()], t1[keep].tolist(), tl[keep].tolist(),
                  cnt[keep].tolist(), soc[keep].tolist(), sfl[keep].tolist(),
                  tos1[keep].tolist(), idle[keep].tolist(), state[keep].tolist(),
                  dl[keep].tolist())
        # the others are records now
        idx = np.flatnonzero(now)
        if len(idx):
            reason = end_reason(t1[idx], tl[idx], idle[idx], state[idx], active)
            table.count_reasons(dict(enumerate(np.bincount(reason).tolist())))
            self.bulk.append(flow_columns(kb[idx].view(np.uint8).reshape(len(idx), 16),
                                          cnt[idx], soc[idx], t1[idx], tl[idx], reason,
                                          tos1[idx], sfl[idx], table.in_if))
        return vec

    def _expire(self, now: int, out: FlowBatchBuilder) -> None:
        """``table.expire(now)`` into ``out``, as blocks of columns."""
        self.table.expire_into(now, out, scan=True)

    def _pairs(self, keys, ents, evg, starts, ends, srt, pidx, st, fl, cnt, soc, sfl, mgap,
               t1, tl, tos1):
        """The TCP flows with a FIN or RST in the chunk, with their reverse
        flows.  A pair is applied at once when neither direction can end
        inside the chunk: each continues its entry (alive at its first
        packet even if a closing shortened its idle timeout) or starts one,
        with no gap as long as the shortest idle timeout and no active
        timeout; then only its FIN/RST packets are walked, in file order, as
        the table's TCP end would, checking that the reverse flow each one
        reaches is alive then.  Returns (keys to replay, keys done)."""
        table = self.table
        get = table.get
        active = table.active_ns
        inactive = table.inactive_ns
        fin_ns = table.fin_ns
        rst_ns = table.rst_ns
        minidle = min(fin_ns, rst_ns)
        # the groups in evg and their reverse groups (where they have packets here)
        revg = self._rev
        rv = revg[evg]
        inv = np.unique(np.concatenate((evg, rv[rv >= 0])))
        want = np.zeros(len(keys), bool)
        want[inv] = True
        # their FIN/RST packets: (file position, time, flags) per group
        sfl_p = fl                    # in group order, as pidx (see _fast)
        evpos = np.flatnonzero(sfl_p & 5)
        evg_of = np.searchsorted(starts, evpos, side="right") - 1
        sel = want[evg_of]
        evpos = evpos[sel]
        evg_of = evg_of[sel]
        events: dict = {}
        for gi, pos, t, f in zip(evg_of.tolist(), pidx[evpos].tolist(), st[evpos].tolist(),
                                 sfl_p[evpos].tolist()):
            lst = events.get(gi)
            if lst is None:
                events[gi] = [(pos, t, f)]
            else:
                lst.append((pos, t, f))
        il = inv.tolist()
        cnt = dict(zip(il, cnt[inv].tolist()))
        soc = dict(zip(il, soc[inv].tolist()))
        sfl = dict(zip(il, sfl[inv].tolist()))
        mgap = dict(zip(il, mgap[inv].tolist()))
        t1 = dict(zip(il, t1[inv].tolist()))
        tl = dict(zip(il, tl[inv].tolist()))
        tos1 = dict(zip(il, tos1[inv].tolist()))
        ifirst = dict(zip(il, pidx[starts[inv]].tolist()))
        ilast = dict(zip(il, pidx[ends[inv] - 1].tolist()))
        revl = dict(zip(evg.tolist(), rv.tolist()))
        X = set()
        H = set()
        created = []
        for gk in evg.tolist():
            k = keys[gk]
            if k in H or k in X or k[KEY_PROTO] != 6:
                continue
            r = reverse_flow_key(k)
            gr = revl[gk]
            if gr < 0:
                gr = None
            ek = ents[gk]
            er = ents[gr] if gr is not None else get(r)
            # per direction (see _Side)
            st_ = []
            ok = True
            for g, e in ((gk, ek), (gr, er)):
                if g is None:
                    if e is None:
                        st_.append(None)
                        continue
                    st_.append(_Side(None, e, e[START], e[STATE] & FIN, e[STATE] & CLOSING,
                                     e[IDLE], -1, -1))
                    continue
                a = t1[g]
                if e is not None:
                    if not (a - e[LAST] < e[IDLE] and a - e[LAST] < minidle
                            and a - e[START] < active):
                        ok = False
                        break
                    start = e[START]
                    st_.append(_Side(g, e, start, e[STATE] & FIN, e[STATE] & CLOSING, e[IDLE],
                                     ifirst[g], ilast[g]))
                else:
                    start = a
                    st_.append(_Side(g, None, start, 0, 0, inactive, ifirst[g], ilast[g]))
                if not (mgap[g] < minidle and tl[g] - start < active):
                    ok = False
                    break
            if ok:
                evs = [(pos, t, f, 0) for pos, t, f in events.get(gk, ())]
                if gr is not None and gr in events:
                    evs += [(pos, t, f, 1) for pos, t, f in events[gr]]
                    evs.sort()
                for pos, t, f, side in evs:
                    x = st_[side]
                    y = st_[1 - side]
                    if y is not None and (y.entry is not None or y.first < pos):
                        # the reverse flow exists: it must be alive now
                        if y.group is None or y.first > pos:    # no packet of it before
                            last = y.entry[LAST]
                        elif y.last < pos:                      # its last packet is before
                            last = tl[y.group]
                        else:                                   # packets around: alive
                            last = None
                        if last is not None and not (t - last < y.idle and t - y.start < active):
                            ok = False
                            break
                        yp = True
                    else:
                        yp = False
                    if f & 4:
                        x.close(rst_ns)
                        if yp:
                            y.close(rst_ns)
                    elif not x.fin:
                        x.fin = FIN
                        if yp and y.fin:
                            x.close(fin_ns)
                            y.close(fin_ns)
            if not ok:
                X.add(k)
                X.add(r)
                continue
            H.add(k)
            H.add(r)
            for key, x in ((k, st_[0]), (r, st_[1])):
                if x is None:
                    continue
                g, e = x.group, x.entry
                state = x.fin | x.closing
                idle = x.idle
                if g is None:                       # no packet here: the reverse's end reached it
                    e[IDLE] = idle
                    e[STATE] = state
                    table.rearm(key, e)
                    continue
                z = tl[g]
                if e is not None:
                    e[LAST] = z
                    e[PKTS] += cnt[g]
                    e[OCTETS] += soc[g]
                    e[FLAGS] |= sfl[g]
                    e[IDLE] = idle
                    e[STATE] = state
                    table.rearm(key, e)
                else:
                    created.append((key, t1[g], z, cnt[g], soc[g], sfl[g], tos1[g], idle, state,
                                    min(z + idle, t1[g] + active)))
        if created:
            table.add(*zip(*created))
        table.flows_created += len(created)
        return X, H

    def _replay(self, rp, ts, g0) -> None:
        """Account ``rp`` ((frame index, key, octets, flags, tos), in file
        order) packet by packet in a side table holding those flows (and
        their reverse ones), with the expire calls of every batch boundary,
        then give it back to the table."""
        table = self.table
        side = table.split([key for _i, key, _o, _f, _t in rp])
        bs = self.bs
        nb = (g0 // bs + 1) * bs - 1                 # next batch boundary (frame index)
        account = side.account
        for i, key, o, f, tos in rp:
            g = g0 + i
            while nb < g:
                side.end_due(int(ts[nb - g0]))
                nb += bs
            account(key, int(ts[i]), o, f, tos)
        table.merge(side)
