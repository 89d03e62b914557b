"""The pcap meter's vectorised path: a chunk of records at a time, with numpy.

Strategy: ``FlowTable.meter_frames`` costs a dictionary lookup and a dozen
bytecodes per packet; a capture file has millions.  Here a chunk of a classic
pcap file (``pcapfile.RecordChunk``: one buffer, the record offsets) is
metered whole, through the table's batch interface (``nfflowd.meter``):

1. parse: the header fields of the common case (Ethernet, at most one 802.1Q
   tag, IPv4 without options and not a fragment or IPv6 without extension
   headers, a complete TCP or UDP header) are gathered for every record at
   once, as key words (two 64-bit words an IPv4 key, five an IPv6 one, the
   bytes of ``packet.flow_key``); every other frame goes through
   ``PacketParser.parse`` one by one, in file order, so the parser's counters
   and fragment memory are what the per-packet path leaves;
2. group, per address family: packets are sorted by (hash of the flow key,
   position), which puts each flow's packets together in file order; neighbours with equal hashes
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
     (``meter.flow_columns``); only the others enter the table (``add``);
   - in Python, one flow (or FIN/RST pair, ``_pairs``) at a time: flows that
     continue an entry of the table, under the same conditions, walking only
     the FIN/RST packets; plain flows with gaps as long as the idle timeout
     are cut into their stretches (``_stretches``), each a flow, all but
     the last records at once;
   - the rest (FIN/RST flows with long gaps, an active timeout inside the
     chunk, a stale reverse flow, a reverse entry) is replayed packet by packet, in file order, in a
     side table (``FlowTable.split``) that also gets the ``expire`` calls of
     every ``batch_size`` frames: what a TCP end does to the reverse flow
     depends on whether that one was already expired.  Then it goes back
     (``merge``).

   The tiers never share a flow or a reverse pair, nor do the two families
   (an IPv4 key is never the reverse of an IPv6 one), so their order does not
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


def _reverse_words(kb):
    """The key words of the other direction (``packet.reverse_flow_key``):
    addresses swapped, and the ports in the last word."""
    u = np.uint64
    w = kb.shape[1]
    r = np.empty_like(kb)
    if w == 2:
        r[:, 0] = (kb[:, 0] >> u(32)) | (kb[:, 0] << u(32))
    else:
        r[:, 0:2] = kb[:, 2:4]
        r[:, 2:4] = kb[:, 0:2]
    t = kb[:, w - 1]
    r[:, w - 1] = ((t & ~u(0xFFFFFFFF)) | ((t & u(0xFFFF)) << u(16)) | ((t >> u(16)) & u(0xFFFF)))
    return r


def _rows_differ(a, b):
    """Which rows of two (n, words) arrays differ, a column at a time (a
    comparison of whole rows is several times slower)."""
    d = a[:, 0] != b[:, 0]
    for j in range(1, a.shape[1]):
        d |= a[:, j] != b[:, j]
    return d


class _Groups:
    """One family's packets of a chunk grouped by flow key (``_group``)."""


def _merge_family(a, b):
    """Two parts of a family's packets (common frames, parsed ones) as one, in file order."""
    idx = np.concatenate((a[1], b[1]))
    order = np.argsort(idx, kind="stable")
    return (a[0], idx[order], np.concatenate((a[2], b[2]))[order],
            *(np.concatenate((x.astype(np.int64), y))[order] for x, y in zip(a[3:], b[3:])))


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
        m1, m2 = key_hash
        # one odd multiplier a key word (two for IPv4 keys, five for IPv6)
        self.mult = [np.uint64((m1 if j % 2 == 0 else m2) * (2 * j + 1) % (1 << 64) if j > 1
                               else (m1, m2)[j]) for j in range(5)]
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

        fast = fast6 = np.zeros(n, bool)
        tag = None
        fams = []                       # per family: (words, frame index, key words, oc, tos, fl)
        pa = self.parser
        saved = pa.snapshot()
        if chunk.linktype == 1 and blen >= 64:
            # reads beyond a short frame stay inside ``room`` (clipped if need
            # be) and are discarded by the length test
            o = offs if rlen > blen + 64 else np.minimum(offs, rlen - 64)
            tag = at(">u2", 28)[o] == 0x8100         # frame + 12
            if not tag.any():
                tag = None
            hl = 14 + 4 * tag.astype(np.int64) if tag is not None else 14
            base = offs + 14 + hl                    # IP header - 2
            if rlen < blen + 128:
                base = np.minimum(base, rlen - 64)
            # narrow reads (the arrays are memory-bound): ethertype, version/IHL
            hdr = at("<u4", 0)[base]
            # the IP length, never above what the frame held (packet.py)
            wire = np.maximum(orig, cap) - hl
            proto = at(np.uint8, 11)[base]
            frag = at("<u2", 8)[base]          # flags/offset, bytes swapped
            tot = at(">u2", 4)[base]
            tcp = proto == 6
            fast = (((hdr & 0xFFFFFF) == 0x450008) & ((frag & 0xFF3F) == 0)
                    & (tcp | (proto == 17)) & (cap >= hl + 24 + 10 * tcp) & (tot >= 20))
            del frag
            # IPv6 without extension headers, TCP or UDP (packet.py ipv6)
            v6 = (hdr & 0xF0FFFF) == 0x60DD86
            if v6.any():
                nh = at(np.uint8, 8)[base]
                tcp6 = nh == 6
                fast6 = v6 & (tcp6 | (nh == 17)) & (cap >= hl + 44 + 10 * tcp6)
            del hdr, v6
            if fast.any():
                fams.append(self._gather4(at, np.flatnonzero(fast), n, base, proto, tot, tcp,
                                          wire, hl, tag))
            if fast6.any():
                fams.append(self._gather6(at, np.flatnonzero(fast6), base, wire, hl, tag))
            del base, proto, tot, tcp, wire
        # rare frames: the parser, in file order
        rare = np.flatnonzero(~(fast | fast6))
        parse = pa.parse
        lt = chunk.linktype
        if len(rare):
            r4 = ([], [], [], [], [])            # frame index, key, octets, tos, flags
            r6 = ([], [], [], [], [])
            ro = offs[rare].tolist()
            rc = cap[rare].tolist()
            rg = orig[rare].tolist()
            for i, o, c, ol in zip(rare.tolist(), ro, rc, rg):
                p = parse(lt, bytes(buf[o + 16:o + 16 + c]), ol)
                if p is None:
                    continue
                key = flow_key(p)
                r = r4 if len(key) == 16 else r6
                r[0].append(i)
                r[1].append(key)
                r[2].append(p.octets)
                r[3].append(p.tos)
                r[4].append(p.tcp_flags)
            for r, w in ((r4, 2), (r6, 5)):
                if not r[0]:
                    continue
                kw = np.frombuffer(b"".join(r[1]), "<u8").reshape(len(r[1]), w)
                fam = (w, np.array(r[0], np.int64), kw, np.array(r[2], np.int64),
                       np.array(r[3], np.int64), np.array(r[4], np.int64))
                have = [f for f in fams if f[0] == w]
                if have:
                    fams.remove(have[0])
                    fam = _merge_family(have[0], fam)
                fams.append(fam)
        # -- group by key, per family ---------------------------------------
        groups = []
        new = 0
        for fam in fams:
            g = self._group(fam, ts, n)
            if g is None or g.G > table.max_flows:
                # a hash collision, or more flows than the table may hold
                # (some must be evicted, in an order only the per-packet path
                # knows): stop here, before a Python object is made per flow
                pa.restore(saved)
                return False
            g.ents = table.lookup(g.keys)
            new += g.ents.count(None)
            groups.append(g)
        if len(table) + new > table.max_flows:
            # the per-packet path parses these frames again: undo
            pa.restore(saved)
            return False
        bs = self.bs
        last_b = (g0 + n) // bs * bs - 1
        bound = int(ts[last_b - g0]) if last_b >= g0 else None
        replay = []
        for g in groups:
            table.packets += g.m
            table.octets += int(g.oc.sum(dtype=np.int64))
            replay += self._account(g, bound)
        # -- replay, in file order, in a side table -------------------------
        if replay:
            replay.sort(key=lambda r: r[0])              # file order
            self._replay(replay, ts, g0)
        return True

    def _gather4(self, at, fidx, n, base, proto, tot, tcp, wire, hl, tag):
        """The IPv4 family of the chunk's common frames ``fidx``: (2, frame
        index, key words, octets, tos, flags)."""
        u = np.uint64
        if len(fidx) != n:
            base = base[fidx]
            proto = proto[fidx]
            tot = tot[fidx]
            tcp = tcp[fidx]
            wire = wire[fidx]
        over = tot > wire
        if over.any():
            tot = np.where(over, wire, tot)
            self.parser.length_mismatch += int(np.count_nonzero(over))
        kw = np.empty((len(fidx), 2), u)
        kw[:, 0] = at("<u8", 14)[base]
        k1 = at("<u4", 22)[base].astype(u)
        k1 |= proto.astype(u) << u(32)
        if tag is not None:
            k1 |= self._vlan_bits(at, base, tag if len(fidx) == n else tag[fidx])
        kw[:, 1] = k1
        fl = at(np.uint8, 35)[base]
        fl[~tcp] = 0
        return 2, fidx, kw, tot, at(np.uint8, 3)[base], fl

    def _gather6(self, at, fidx, base, wire, hl, tag):
        """The IPv6 family: as ``packet.PacketParser.ipv6`` without extension
        headers (payload length 0: the frame's length; above the frame's:
        the frame's, counted)."""
        u = np.uint64
        base = base[fidx]
        wire = wire[fidx]
        plen = at(">u2", 6)[base].astype(np.int64)
        tot = plen + 40
        zero = plen == 0
        over = ~zero & (tot > wire)
        if over.any():
            self.parser.length_mismatch += int(np.count_nonzero(over))
        tot = np.where(zero | over, wire, tot)
        kw = np.empty((len(fidx), 5), u)
        for j in range(4):
            kw[:, j] = at("<u8", 10 + 8 * j)[base]
        k4 = at("<u4", 42)[base].astype(u)
        proto = at(np.uint8, 8)[base]
        k4 |= proto.astype(u) << u(32)
        if tag is not None:
            k4 |= self._vlan_bits(at, base, tag[fidx])
        kw[:, 4] = k4
        tos = (at(">u2", 2)[base] >> 4) & 0xFF
        fl = at(np.uint8, 55)[base]
        fl[proto != 6] = 0
        return 5, fidx, kw, tot, tos, fl

    @staticmethod
    def _vlan_bits(at, base, tg):
        """The key's VLAN bytes (the outer id, big-endian, in the last two
        bytes of the key) of the frames whose IP header starts 2 bytes after
        ``base``: a tagged one's tag ends there."""
        u = np.uint64
        vl = np.where(tg, at(">u2", 0)[base - 2] & 0x0FFF, 0).astype(u)
        return ((vl & u(0xFF)) << u(56)) | ((vl >> u(8)) << u(48))

    def _group(self, fam, ts, n):
        """One family's packets grouped by flow (see the module doc), or None
        on a hash collision."""
        w, pidx, kw, oc, tos, fl = fam
        m = len(pidx)
        pts = ts if m == n else ts[pidx]
        h = self._hash(kw)
        sv = (h & ~np.uint64(_IDX_MASK)) | np.arange(m, dtype=np.uint64)
        sv.sort()
        srt = (sv & np.uint64(_IDX_MASK)).view(np.int64)
        hs = sv >> np.uint64(_IDX_BITS)
        sk = np.take(kw, srt, axis=0)          # (np.take: rows at once, not element-wise)
        newk = _rows_differ(sk[1:], sk[:-1])
        if (newk & (hs[1:] == hs[:-1])).any():          # a hash collision
            return None
        starts = np.concatenate(([0], np.flatnonzero(newk) + 1))
        del h, sv, newk
        g = _Groups()
        g.w, g.m, g.G = w, m, len(starts)
        g.pidx, g.oc, g.tos, g.fl = pidx, oc, tos, fl
        g.srt, g.starts = srt, starts
        g.ends = ends = np.append(starts[1:], m)
        g.cnt = ends - starts
        g.st = st = pts[srt]
        g.soc = np.add.reduceat(oc[srt], starts, dtype=np.int64)
        g.fs = fs = fl[srt]
        g.ps = srt if m == n else pidx[srt]
        g.sfl = np.bitwise_or.reduceat(fs, starts)
        gap = np.empty(m, np.int64)
        gap[0] = 0
        gap[1:] = st[1:] - st[:-1]
        gap[starts] = 0
        g.mgap = np.maximum.reduceat(gap, starts)
        del gap
        g.t1 = st[starts]
        g.tl = st[ends - 1]
        g.tos1 = tos[srt[starts]]
        g.kb = np.take(sk, starts, axis=0)
        g.hs = hs[starts]
        g.keys = g.kb.view(f"V{8 * w}").ravel().tolist()   # the FlowTable keys, as bytes
        return g

    def _hash(self, kw):
        """The grouping hash of key words ``kw`` ((n, words) uint64)."""
        mult = self.mult
        h = kw[:, 0] * mult[0]
        for j in range(1, kw.shape[1]):
            # fold the high bits down before the next word: the words of an
            # IPv6 key vary in a few bits each, which a product alone keeps apart
            h ^= h >> np.uint64(31)
            h ^= kw[:, j]
            h *= mult[j]
        return h

    def _account(self, g, bound) -> list:
        """Account one family's groups (the tiers of the module doc); returns
        the packets to replay: (frame index, key, octets, flags, tos)."""
        table = self.table
        (kb, keys, ents, starts, ends, srt, ps, st, fs, cnt, soc, sfl, mgap, t1, tl,
         tos1) = (g.kb, g.keys, g.ents, g.starts, g.ends, g.srt, g.ps, g.st, g.fs, g.cnt, g.soc,
                  g.sfl, g.mgap, g.t1, g.tl, g.tos1)
        pidx, oc, fl, tos = g.pidx, g.oc, g.fl, g.tos
        vec = self._vector(kb, keys, ents, g.hs, starts, srt, ps, st, fs, cnt, soc, sfl, mgap,
                           t1, tl, tos1, bound)
        # -- the rest: FIN/RST pairs with entries, then plain flows with entries
        evg = np.flatnonzero(((sfl & 5) != 0) & ~vec)
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
        gapped = []                 # (group, how it starts): flows with idle gaps
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
                    if mg >= inactive and e[IDLE] == inactive:
                        gapped.append((gi, 1))          # ends after its first stretch
                    else:
                        replay.append(gi)
                    continue
                if mg < inactive and z - a < active:
                    end(key, e, a)
                elif mg >= inactive:
                    gapped.append((gi, 2))              # ended before its first packet
                    continue
                else:
                    replay.append(gi)
                    continue
            elif not (mg < inactive and z - a < active):
                if mg >= inactive:
                    gapped.append((gi, 0))
                else:
                    replay.append(gi)
                continue
            created.append((key, a, z, c, o, f, tq, inactive, 0, min(z + inactive, a + active)))
        if gapped:
            replay += self._stretches(g, gapped, created)
        if created:
            table.add(*zip(*created))
        table.flows_created += len(created)
        rp = []
        for gi in replay:
            s0 = int(starts[gi])
            s1 = int(ends[gi])
            key = keys[gi]
            sel = srt[s0:s1]
            rp.extend(zip(pidx[sel].tolist(), [key] * (s1 - s0), oc[sel].tolist(),
                          fl[sel].tolist(), tos[sel].tolist()))
        return rp

    def _stretches(self, g, gapped, created) -> list:
        """Plain flows (no FIN/RST on either side in the chunk) with gaps as
        long as the idle timeout: each stretch between such gaps is a flow
        of its own, as the per-packet path cuts them (a packet after the
        idle timeout ends the flow and starts the next).  ``gapped``:
        (group, 0 no entry / 1 its first stretch continues the entry / 2 the
        entry ended before); every stretch but the last becomes a record
        now, the last one goes to ``created``.  A stretch as long as the
        active timeout sends its group to the replay (returned)."""
        table = self.table
        active = table.active_ns
        inactive = table.inactive_ns
        st, starts, ends, srt = g.st, g.starts, g.ends, g.srt
        m = g.m
        cut = np.zeros(m, bool)
        cut[1:] = (st[1:] - st[:-1]) >= inactive
        cut[starts] = True
        s0 = np.flatnonzero(cut)
        s1 = np.append(s0[1:], m)
        t1 = st[s0]
        tl = st[s1 - 1]
        long_ = np.concatenate(([0], np.cumsum(tl - t1 >= active)))
        gs = np.array([gi for gi, _h in gapped], np.int64)
        lo = np.searchsorted(s0, starts[gs]).tolist()
        hi = np.searchsorted(s0, ends[gs]).tolist()
        ll = long_.tolist()
        keys, ents = g.keys, g.ents
        end = table.end
        replay = []
        done_g = []                 # (group, first stretch, end): stretches ended here
        cont = []                   # (group, stretch) continuing an entry
        for (gi, how), a, b in zip(gapped, lo, hi):
            e = ents[gi]
            first = a + 1 if how == 1 else a
            if ll[b] - ll[first] or (how == 1 and int(tl[a]) - e[START] >= active):
                replay.append(gi)
                continue
            if how == 1:
                cont.append((gi, a))
            elif how == 2:
                end(keys[gi], e, int(t1[a]))
            done_g.append((gi, first, b - 1))
        if cont:
            cnt = s1 - s0
            soc = np.add.reduceat(g.oc[srt], s0, dtype=np.int64)
            sfl = np.bitwise_or.reduceat(g.fs, s0)
            for gi, a in cont:
                e = ents[gi]
                e[LAST] = int(tl[a])
                e[PKTS] += int(cnt[a])
                e[OCTETS] += int(soc[a])
                e[FLAGS] |= int(sfl[a])
                end(keys[gi], e, e[LAST])
        if not done_g:
            return replay
        # the stretches: the last of each group into the table, the others records
        dg = np.array(done_g, np.int64)
        n_of = dg[:, 2] - dg[:, 1] + 1
        grp = np.repeat(dg[:, 0], n_of)
        idx = np.repeat(dg[:, 1] - np.cumsum(n_of) + n_of, n_of) + np.arange(int(n_of.sum()))
        last = np.zeros(len(idx), bool)
        last[np.cumsum(n_of) - 1] = True
        a0 = s0[idx]
        a1 = s1[idx]
        cnt = a1 - a0
        soc = np.add.reduceat(g.oc[srt], s0, dtype=np.int64)[idx]
        sfl = np.bitwise_or.reduceat(g.fs, s0)[idx]
        tos = g.tos[srt[a0]]
        x1 = t1[idx]
        xl = tl[idx]
        k = np.flatnonzero(last)
        for gi, a, z, c, o, f, tq in zip(grp[k].tolist(), x1[k].tolist(), xl[k].tolist(),
                                         cnt[k].tolist(), soc[k].tolist(), sfl[k].tolist(),
                                         tos[k].tolist()):
            created.append((keys[gi], a, z, c, o, f, tq, inactive, 0,
                            min(z + inactive, a + active)))
        r = np.flatnonzero(~last)
        if len(r):
            idle = np.full(len(r), inactive, np.int64)
            reason = end_reason(x1[r], xl[r], idle, 0, active)
            table.count_reasons(dict(enumerate(np.bincount(reason).tolist())))
            table.flows_created += len(r)
            kb = g.kb[grp[r]]
            self.bulk.append(flow_columns(kb.view(np.uint8).reshape(len(r), 8 * g.w), cnt[r],
                                          soc[r], x1[r], xl[r], reason, tos[r], sfl[r],
                                          table.in_if))
        return replay

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
        w = kb.shape[1]
        tail = kb[:, w - 1]
        proto = ((tail >> u(32)) & u(0xFF)).astype(np.int64)
        tcp = proto == 6
        ev = tcp & ((sfl & 5) != 0)
        # the reverse direction's group, where it has packets here
        rkb = _reverse_words(kb)
        rh = self._hash(rkb)
        rh >>= u(_IDX_BITS)
        ri = np.minimum(np.searchsorted(gh, rh), G - 1)
        match = tcp & (gh[ri] == rh) & ~_rows_differ(np.take(kb, ri, axis=0), rkb)
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
            rb = np.ascontiguousarray(rkb[li])
            has = np.fromiter(map(table.__contains__, rb.view(f"V{8 * w}").ravel().tolist()),
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
            self.bulk.append(flow_columns(kb[idx].view(np.uint8).reshape(len(idx), 8 * w),
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
