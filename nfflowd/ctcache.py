"""The correlator's per-connection cache: one packed ``bytes`` per connection.

Strategy: a dict keyed by conntrack id holds, per open connection, its two
tuples and the time of its NEW event, packed little-endian (the bytes per
connection: bench/bench_cache_memory.py); once the active timeout has
exported a connection early, the counters exported so far and the time of
that export (the base) follow; a connection's conntrack zone and mark, where
not 0, come between.  The entry's length tells its layout.  A
DESTROY block leaves its removals for later (``reap``, when the daemon is
idle): at 200k entries a pop misses the CPU caches a few times.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from itertools import repeat

import numpy as np

from nfflowd.conntrack import EV_DESTROY, CtEvent, CtTuple

# proto, orig src dst sport dport, reply src dst sport dport, NEW time (ns).
# An IPv6 entry whose reply source is the original destination (no
# destination NAT: nearly every IPv6 connection) leaves the reply source out;
# a base whose counters all fit 32 bits stores them so.  A connection with a
# conntrack zone or mark (not 0) has them after the head (the records of a
# connection exported from its entry alone, by a resync, keep them); most
# have neither and spend no byte on them.  The full IPv6 heads take only the
# full base, so that no two layouts have one length: 33/57/73 bytes IPv4,
# 65/89/105 or 81/121 IPv6; with zone and mark 6 more.
_HEAD4 = struct.Struct("<B4s4sHH4s4sHHq")
_HEAD6 = struct.Struct("<B16s16sHH16s16sHHq")
_HEAD6S = struct.Struct("<B16s16sHH16sHHq")      # reply src == orig dst, not stored
_ZM = struct.Struct("<HI")                       # zone, mark
_HEAD4Z, _HEAD6Z, _HEAD6SZ = (struct.Struct(h.format + "HI") for h in (_HEAD4, _HEAD6, _HEAD6S))
_ZONED = frozenset((_HEAD4Z, _HEAD6Z, _HEAD6SZ))
_SHORT = frozenset((_HEAD6S, _HEAD6SZ))
_FULL6 = frozenset((_HEAD6, _HEAD6Z))
_BASE = struct.Struct("<QQQQq")
_BASE32 = struct.Struct("<IIIIq")
_LAYOUT = {}
for _fam, _head, _bases in ((4, _HEAD4, (None, _BASE32, _BASE)),
                            (6, _HEAD6S, (None, _BASE32, _BASE)), (6, _HEAD6, (None, _BASE)),
                            (4, _HEAD4Z, (None, _BASE32, _BASE)),
                            (6, _HEAD6SZ, (None, _BASE32, _BASE)), (6, _HEAD6Z, (None, _BASE))):
    for _base in _bases:
        _n = _head.size + (_base.size if _base else 0)
        assert _n not in _LAYOUT
        _LAYOUT[_n] = (_fam, _head, _base)
SIZES = frozenset(_LAYOUT)          # the lengths an entry can have
# the lengths of entries that carry a base (exported early)
EARLY = frozenset(n for n, (_f, _h, base) in _LAYOUT.items() if base is not None)
_U32 = 0xFFFFFFFF
# Ended connections whose entries may wait for ``ConnCache.reap``; past this
# many, ``defer`` removes the excess at once (a stream that never leaves the
# daemon a pause pays as it goes, and the wait stays bounded: some 40 MB of
# entries at most).  A 200k-connection burst fits.
DEAD_MAX = 1 << 18

pack4 = _HEAD4.pack
_pack6f = _HEAD6.pack
_pack6s = _HEAD6S.pack


def pack6(proto, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp, new_ns) -> bytes:
    """An IPv6 entry (``pack4``: IPv4), the reply source left out when it is
    the original destination."""
    if rsrc == odst:
        return _pack6s(proto, osrc, odst, osp, odp, rdst, rsp, rdp, new_ns)
    return _pack6f(proto, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp, new_ns)


def pack_event(ev: CtEvent, new_ns: int) -> bytes:
    """The entry of the connection of ``ev``, made at ``new_ns``."""
    o, r = ev[4], ev[5]
    entry = (pack4 if ev[1] == 4 else pack6)(o[2], o[0], o[1], o[3], o[4], r[0], r[1], r[3],
                                              r[4], new_ns)
    return zoned(entry, ev[13], ev[12]) if ev[12] or ev[13] else entry


def zoned(entry: bytes, zone: int, mark: int) -> bytes:
    """A new entry (``pack4``/``pack6``: no base yet) with the connection's
    conntrack zone and mark."""
    return entry + _ZM.pack(zone, mark)


def zone_mark(entry: bytes) -> tuple[int, int]:
    """(zone, mark) of the entry's connection (0, 0 where not stored)."""
    _family, head, _base = _LAYOUT[len(entry)]
    return _ZM.unpack_from(entry, head.size - _ZM.size) if head in _ZONED else (0, 0)


# The heads as numpy records, from the same Struct formats, to make a
# NewBlock's entries at once.
_FIELDS = ("p", "os", "od", "osp", "odp", "rs", "rd", "rsp", "rdp", "t")
_NP = {"B": "u1", "H": "<u2", "q": "<i8"}


def _record(head: struct.Struct) -> np.dtype:
    codes = re.findall(r"(\d*)([a-zA-Z])", head.format.lstrip("<"))
    names = _FIELDS if len(codes) == len(_FIELDS) else _FIELDS[:5] + _FIELDS[6:]
    dt = np.dtype([(n, f"V{k}" if c == "s" else _NP[c]) for n, (k, c) in zip(names, codes)])
    assert dt.itemsize == head.size
    return dt


_REC4, _REC6S, _REC6 = _record(_HEAD4), _record(_HEAD6S), _record(_HEAD6)


def _pack_rows(b, rows, dtype, width: int, now_ns: int) -> list:
    """The entries of ``rows`` of the block ``b`` in the layout ``dtype``
    (addresses ``width`` bytes)."""
    proto = b.o_proto[rows]
    rec = np.empty(len(proto), dtype=dtype)
    names = dtype.names
    rec["p"] = proto
    for name, col in (("os", b.o_src), ("od", b.o_dst), ("rs", b.r_src), ("rd", b.r_dst)):
        if name in names:
            rec[name] = np.ascontiguousarray(col[rows, :width]).view(f"V{width}").ravel()
    rec["osp"] = b.o_sport[rows]
    rec["odp"] = b.o_dport[rows]
    rec["rsp"] = b.r_sport[rows]
    rec["rdp"] = b.r_dport[rows]
    rec["t"] = now_ns if np.isscalar(now_ns) else now_ns[rows].astype(np.int64)
    raw = rec.tobytes()
    size = dtype.itemsize
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def pack_block(b, now_ns) -> list:
    """The entries of a ``ctblocks.NewBlock``'s connections, in row order:
    what ``pack_event`` makes of each.  ``now_ns``: their NEW time, one
    for all or a uint64 array (a time per row)."""
    fam = b.family
    if (fam == 4).all():
        out = _pack_rows(b, slice(None), _REC4, 4, now_ns)
    else:
        out = _pack_mixed(b, fam, now_ns)
    tagged = np.flatnonzero(b.zone | b.mark)
    if len(tagged):
        zones = b.zone[tagged].tolist()
        marks = b.mark[tagged].tolist()
        for i, z, m in zip(tagged.tolist(), zones, marks):
            out[i] = zoned(out[i], z, m)
    return out


def _pack_mixed(b, fam, now_ns) -> list:
    out = [None] * b.n
    v4 = np.flatnonzero(fam == 4)
    v6 = np.flatnonzero(fam != 4)
    short = (b.r_src[v6] == b.o_dst[v6]).all(axis=1)      # reply src == orig dst
    for rows, dtype, width in ((v4, _REC4, 4), (v6[short], _REC6S, 16),
                               (v6[~short], _REC6, 16)):
        if len(rows):
            for i, e in zip(rows.tolist(), _pack_rows(b, rows, dtype, width, now_ns)):
                out[i] = e
    return out


def is_early(entry: bytes) -> bool:
    """The entry carries counters exported by the active timeout."""
    return len(entry) in EARLY


def unpack(entry: bytes):
    """(family, head struct, (proto, osrc, odst, osp, odp, rsrc, rdst, rsp,
    rdp, new_ns), base (opk, oby, rpk, rby, exported_ns) or None)."""
    family, head, base = _LAYOUT[len(entry)]
    v = head.unpack_from(entry)
    if head in _ZONED:
        v = v[:-2]
    if head in _SHORT:
        proto, osrc, odst, osp, odp, rdst, rsp, rdp, new_ns = v
        v = (proto, osrc, odst, osp, odp, odst, rdst, rsp, rdp, new_ns)
    return family, head, v, (base.unpack_from(entry, head.size) if base else None)


def base_of(entry: bytes):
    """The entry's base (opk, oby, rpk, rby, exported_ns), None if it has none."""
    _family, head, base = _LAYOUT[len(entry)]
    return base.unpack_from(entry, head.size) if base else None


def with_base(entry: bytes, head, opk, oby, rpk, rby, now_ns) -> bytes:
    """The entry's head (``head``: from ``unpack``) with a new base."""
    if head not in _FULL6 and 0 <= min(opk, oby, rpk, rby) and max(opk, oby, rpk, rby) <= _U32:
        return entry[:head.size] + _BASE32.pack(opk, oby, rpk, rby, now_ns)
    return entry[:head.size] + _BASE.pack(opk, oby, rpk, rby, now_ns)


def entry_event(ct_id: int, entry: bytes) -> tuple[CtEvent, int, tuple | None]:
    """An entry back into (DESTROY event with zero counters, NEW time, base)."""
    family, _head, v, base = unpack(entry)
    proto, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp, new_ns = v
    zone, mark = zone_mark(entry)
    ev = CtEvent(EV_DESTROY, family, ct_id, 0, CtTuple(osrc, odst, proto, osp, odp),
                 CtTuple(rsrc, rdst, proto, rsp, rdp), 0, 0, 0, 0, 0, 0, mark, zone)
    return ev, new_ns, base


class ConnCache:
    """ct id -> entry (``entries``), and the removals DESTROY blocks left for
    later: ``dead``, arrays of ids, oldest first; ``revived``, ids a NEW
    event used again meanwhile, whose entries are the new connections' and
    stay.  ``early_ids``: the ids whose entries carried a base at the last
    ``note_early`` (sorted uint32, 4 bytes each; a hint, stale ones
    harmless)."""

    def __init__(self, dead_max: int = DEAD_MAX):
        self.entries: dict[int, bytes] = {}
        self.dead: list = []
        self.revived: set = set()
        self.early_ids = np.zeros(0, dtype=np.uint32)
        self.dead_max = dead_max
        self._dead_n = 0

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def reap_pending(self) -> int:
        """Ended connections whose entries are still to be removed."""
        return self._dead_n

    def defer(self, ids: np.ndarray) -> None:
        """Remove the entries of ``ids`` later (``reap``); past ``dead_max``
        waiting, the oldest go now."""
        if len(ids):
            self.dead.append(ids)
            self._dead_n += len(ids)
            if self._dead_n > self.dead_max:
                self.reap(self._dead_n - self.dead_max)

    def reap(self, limit: int | None = None) -> int:
        """Remove the entries ``defer`` left, oldest first, at most about
        ``limit`` of them (all by default); a revived id keeps its new entry.
        Returns how many ids were done."""
        live, dead, revived = self.entries, self.dead, self.revived
        done = 0
        while dead and (limit is None or done < limit):
            ids = dead[0]
            if limit is not None and len(ids) > limit - done:
                dead[0] = ids[limit - done:]
                ids = ids[:limit - done]
            else:
                del dead[0]
            done += len(ids)
            if live:
                ids = ids.tolist()
                if revived:
                    ids = [c for c in ids if c not in revived]
                deque(map(live.pop, ids, repeat(None)), maxlen=0)
        self._dead_n -= done
        if not dead:
            revived.clear()
        return done

    def note_early(self) -> None:
        """Note the ids whose entries carry a base now (``early_ids``)."""
        self.early_ids = np.sort(np.fromiter(
            (k for k, e in self.entries.items() if len(e) in EARLY), dtype=np.uint32))
