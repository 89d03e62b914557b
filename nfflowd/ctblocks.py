"""The columnar ctnetlink decoder for bursts of DESTROY and NEW events (numpy).

Strategy: a table flush or a scan storm brings tens of thousands of messages
back to back, a few shapes repeated.  ``decode_blocks`` gathers a receive
round's messages as 32-bit words (every attribute is 4-aligned) through index
matrices built from the block specs of ``conntrack.LAYOUTS``, checking every
attribute header the walker would visit, so each message is read from the
offsets the walker would read.  Runs of DESTROY or NEW messages come out as
``DestroyBlock``/``NewBlock`` items (columns); any message that fails the
checks is decoded by ``conntrack.decode`` in its place.  The tests compare the
two decoders over recorded and mutated messages.
"""

from __future__ import annotations

import struct
import sys

import numpy as np

from nfflowd.conntrack import (EV_DESTROY, EV_NEW, LAYOUTS, MSG_CT_DELETE, MSG_CT_NEW, BlockSpec,
                               CtEvent, CtTuple, DecodeResult, decode, decode_datagrams)
from nfflowd.record import address_list

EV_BLOCK = 5            # the "kind" of a DestroyBlock in an event list
EV_NEW_BLOCK = 6        # ... and of a NewBlock

# Words of the gather matrix: where each value goes (see _SLOTS).
_ID, _STATUS, _MARK, _ZONE = 0, 1, 2, 3
_O, _R = 4, 17            # tuple bases: src 4 words, dst 4, proto, sport, dport, itype, icode
# 64-bit values: two words each, hi then lo (the first slot even)
_CO_PK, _CO_BY, _CR_PK, _CR_BY = 30, 32, 34, 36
_TS_START, _TS_STOP, _TS_EVENT = 38, 40, 42
NSLOTS = 44
_TUPLE = {"src": 0, "dst": 4, "proto": 8, "sport": 9, "dport": 10, "itype": 11, "icode": 12}
_ONE_WORD = {"id": (_ID, "I"), "status": (_STATUS, "I"), "mark": (_MARK, "I"),
             "zone": (_ZONE, "H")}
_WIDE = {"co.packets": _CO_PK, "co.bytes": _CO_BY, "cr.packets": _CR_PK,
         "cr.bytes": _CR_BY, "ts.start": _TS_START, "ts.stop": _TS_STOP,
         "ts.event": _TS_EVENT}
_TUPLE_FMT = {"src": ("4s", "16s"), "dst": ("4s", "16s"), "proto": ("B",), "sport": ("H",),
              "dport": ("H",), "itype": ("B",), "icode": ("B",)}
MIN_ROWS = 32           # fewer DESTROY messages in a batch, or in a run: the object path
# A run of fewer NEW messages goes the object way too: below this a block's
# fixed costs (decode, then the cache entries) are more than the objects'
# (bench/README.md)
NEW_MIN_ROWS = 128
_LITTLE = sys.byteorder == "little"
_NLMSG_LEN = struct.Struct("=I")        # nlmsghdr's first field (native order)


def _raw(values: np.ndarray) -> np.ndarray:
    """uint32 big-endian values as the words lie in a buffer read in host
    order (byte-swapped on a little-endian host)."""
    return values.byteswap() if _LITTLE else values


class _Shape:
    """One shape's rows of the index matrices, as arrays."""

    __slots__ = ("kind", "family", "rel", "present", "hrel", "hexp", "maxword")

    def __init__(self, spec: BlockSpec):
        self.kind = spec.kind
        self.family = spec.family
        rel = [0] * NSLOTS
        present = [False] * NSLOTS
        vals = dict(spec.vals)
        for prefix, base in (("o.", _O), ("r.", _R)):
            if prefix + "itype" in vals or prefix + "icode" in vals:
                vals.pop(prefix + "dport", None)   # ICMP: dport is type*256+code
        for name, (word, fmt) in vals.items():
            if name in _ONE_WORD:
                slot, want = _ONE_WORD[name]
                if fmt != want:
                    raise ValueError(name)
                rel[slot], present[slot] = word, True
            elif name in _WIDE:
                slot = _WIDE[name]
                if fmt == "Q":
                    rel[slot], present[slot] = word, True
                    rel[slot + 1], present[slot + 1] = word + 1, True
                elif fmt == "I":
                    rel[slot + 1], present[slot + 1] = word, True
                else:
                    raise ValueError(name)
            elif name[:2] in ("o.", "r.") and name[2:] in _TUPLE:
                field = name[2:]
                if fmt not in _TUPLE_FMT[field]:
                    raise ValueError(name)
                slot = (_O if name[0] == "o" else _R) + _TUPLE[field]
                for k in range(4 if fmt == "16s" else 1):
                    rel[slot + k], present[slot + k] = word + k, True
            else:
                raise ValueError(name)
        hrel = [w for w, _ in spec.hdr]
        # word offsets of the values (rel, present 0/1) and of the header
        # words to check (hrel) with what they must hold (hexp, as the words
        # lie in a buffer: host order, the values big-endian)
        self.rel = np.array(rel, dtype=np.intp)
        self.present = np.array(present, dtype=np.uint32)
        self.hrel = np.array(hrel, dtype=np.intp)
        self.hexp = _raw(np.array([e for _, e in spec.hdr], dtype=np.uint32))
        self.maxword = max(rel + hrel)


_shapes: dict = {}          # shape key -> _Shape | None (not columnar)
_KEYWORDS = np.array([0, 1, 4, 5])
_short_index: dict = {}     # (len << 32 | type|flags) -> [shape keys]
_index_version = [-1]


_K1 = 0x9E3779B97F4A7C15
_K2 = 0xC2B2AE3D27D4EB4F
_M64 = (1 << 64) - 1
_tables_cache: dict = {}


def _hash(ln, tf, w4, w5):
    """The shape key's hash: numpy uint64 arrays (wrapping) or Python ints."""
    if isinstance(ln, int):
        return ((ln << 48) ^ (tf << 16) ^ ((w4 * _K1) & _M64) ^ ((w5 * _K2) & _M64)) & _M64
    return ((ln << np.uint64(48)) ^ (tf << np.uint64(16)) ^ (w4 * np.uint64(_K1))
            ^ (w5 * np.uint64(_K2)))


def _index() -> dict:
    """hash -> [shape keys] of the learnt DESTROY shapes."""
    if _index_version[0] != LAYOUTS.version:
        _short_index.clear()
        _tables_cache.clear()
        _shapes.clear()
        for key in LAYOUTS.specs:
            ln, tf, nq = key
            w4, w5 = (nq & 0xFFFFFFFF, nq >> 32) if _LITTLE else (nq >> 32, nq & 0xFFFFFFFF)
            _short_index.setdefault(_hash(ln, tf, w4, w5), []).append(key)
        _index_version[0] = LAYOUTS.version
    return _short_index


def _tables(shapes: list):
    """Per-shape rows of the index matrices, stacked (cached per list of
    shapes); rows of None shapes are a known shape's, never used."""
    key = tuple(map(id, shapes))
    t = _tables_cache.get(key)
    if t is None:
        dummy = next(s for s in shapes if s is not None)
        table = [s if s is not None else dummy for s in shapes]
        maxh = max(len(s.hrel) for s in table)
        hrel = np.zeros((len(table), maxh), dtype=np.intp)
        hexp = np.zeros((len(table), maxh), dtype=np.uint32)
        for i, s in enumerate(table):
            nh = len(s.hrel)
            hrel[i, :nh] = s.hrel
            hexp[i, :nh] = s.hexp
            # pad with the first word again (nlmsg_len): compares equal
            hrel[i, nh:] = s.hrel[0]
            hexp[i, nh:] = s.hexp[0]
        rel = np.stack([s.rel for s in table])
        pres = np.stack([s.present for s in table]).astype(bool)
        fam = np.array([s.family for s in table], dtype=np.uint64)
        kinds = np.array([s.kind for s in table], dtype=np.uint8)
        if len(_tables_cache) > 64:
            _tables_cache.clear()
        t = _tables_cache[key] = (rel, pres, hrel, hexp, fam, kinds)
    return t


def _shape(key):
    """The ``_Shape`` of a learnt shape key, None when its spec does not fit
    the index matrices.  Called after ``_index()``, which forgets them all
    whenever the specs change (so this holds no more keys than they do)."""
    sh = _shapes.get(key, False)
    if sh is False:
        spec = LAYOUTS.specs.get(key)
        if spec is None:
            return None             # not learnt yet (or neither DESTROY nor NEW)
        try:
            sh = _Shape(spec)
        except ValueError:
            sh = None
        _shapes[key] = sh
    return sh


class DestroyBlock:
    """A run of decoded DESTROY messages as columns (numpy arrays, one row per
    message, in message order).  Addresses are (n, 16) uint8, IPv4 in the
    first 4 bytes and zeros after; every other column is uint64.  ICMP tuples
    carry the id in ``*_sport`` and type*256+code in ``*_dport`` as
    ``CtTuple`` does."""

    __slots__ = ("n", "family", "ct_id", "status", "mark", "zone", "o_src", "o_dst",
                 "o_proto", "o_sport", "o_dport", "r_src", "r_dst", "r_proto", "r_sport",
                 "r_dport", "o_packets", "o_bytes", "r_packets", "r_bytes", "start_ns",
                 "stop_ns", "event_ns")
    EVENT = EV_DESTROY          # the kind of event a row is

    def __getitem__(self, i):
        if i == 0:
            return EV_BLOCK          # handle_batch looks at ev[0] first
        raise IndexError(i)

    def __len__(self):
        return self.n

    def take(self, sel) -> "DestroyBlock":
        """The rows ``sel`` (a slice, index array or mask) as a new block."""
        b = type(self)()
        for name in DestroyBlock.__slots__[1:]:
            setattr(b, name, getattr(self, name)[sel])
        b.n = len(b.ct_id)
        return b

    @classmethod
    def from_events(cls, events) -> "DestroyBlock":
        """A block of ``CtEvent`` DESTROY (NewBlock: NEW) events (tests, tools)."""
        b = cls()
        b.n = len(events)

        def col(get):
            return np.array([get(e) for e in events], dtype=np.uint64)

        def addr(get):
            raw = b"".join(get(e).ljust(16, b"\0") for e in events)
            return np.frombuffer(raw, dtype=np.uint8).reshape(b.n, 16).copy()
        b.family = col(lambda e: e.family)
        b.ct_id = col(lambda e: e.ct_id)
        b.status = col(lambda e: e.status)
        b.mark = col(lambda e: e.mark)
        b.zone = col(lambda e: e.zone)
        for p, t in (("o_", lambda e: e.orig), ("r_", lambda e: e.reply)):
            setattr(b, p + "src", addr(lambda e: t(e).src))
            setattr(b, p + "dst", addr(lambda e: t(e).dst))
            setattr(b, p + "proto", col(lambda e: t(e).proto))
            setattr(b, p + "sport", col(lambda e: t(e).sport))
            setattr(b, p + "dport", col(lambda e: t(e).dport))
        b.o_packets = col(lambda e: e.orig_packets)
        b.o_bytes = col(lambda e: e.orig_bytes)
        b.r_packets = col(lambda e: e.reply_packets)
        b.r_bytes = col(lambda e: e.reply_bytes)
        b.start_ns = col(lambda e: e.start_ns)
        b.stop_ns = col(lambda e: e.stop_ns)
        b.event_ns = col(lambda e: e.event_ns)
        return b

    def events(self) -> list:
        """The rows as ``CtEvent`` objects (what ``conntrack.decode`` gives)."""
        out = []
        kind = self.EVENT
        fam = self.family.tolist()
        osrc = address_list(self.o_src, fam)
        odst = address_list(self.o_dst, fam)
        rsrc = address_list(self.r_src, fam)
        rdst = address_list(self.r_dst, fam)
        cols = [c.tolist() for c in (self.ct_id, self.status, self.o_proto, self.o_sport,
                                     self.o_dport, self.r_proto, self.r_sport, self.r_dport,
                                     self.o_packets, self.o_bytes, self.r_packets,
                                     self.r_bytes, self.start_ns, self.stop_ns, self.mark,
                                     self.zone, self.event_ns)]
        for i, (cid, st, op, osp, odp, rp, rsp, rdp, opk, oby, rpk, rby, t0, t1, mk,
                zn, te) in enumerate(zip(*cols)):
            out.append(CtEvent(kind, fam[i], cid, st,
                               CtTuple(osrc[i], odst[i], op, osp, odp),
                               CtTuple(rsrc[i], rdst[i], rp, rsp, rdp),
                               opk, oby, rpk, rby, t0, t1, mk, zn, te))
        return out


class NewBlock(DestroyBlock):
    """A run of decoded NEW messages (a connection made), as columns: the
    same columns as a ``DestroyBlock`` (counters and times as the messages
    carry them, mostly 0); its first field is ``EV_NEW_BLOCK``."""

    __slots__ = ()
    EVENT = EV_NEW

    def __getitem__(self, i):
        if i == 0:
            return EV_NEW_BLOCK
        raise IndexError(i)


def _of_kind(block: DestroyBlock, kind: int) -> DestroyBlock:
    """``block`` as the block class of its rows' ``kind`` (the same columns:
    a NEW run becomes a NewBlock in place)."""
    if kind == EV_NEW:
        block.__class__ = NewBlock
    return block


def _block_from(G, fam) -> DestroyBlock:
    """The block of the gathered words ``G`` ((n, NSLOTS) uint32, as they lie
    in the buffer: host order, the values big-endian; absent slots 0)."""
    b = DestroyBlock()
    n = b.n = len(G)
    b.family = fam
    # the values (a big-endian view cast: faster than byteswap())
    V = G.view(">u4").astype(np.uint32) if _LITTLE else G
    u64 = np.uint64
    b.ct_id = V[:, _ID].astype(u64)
    b.status = V[:, _STATUS].astype(u64)
    b.mark = V[:, _MARK].astype(u64)
    b.zone = (V[:, _ZONE] >> 16).astype(u64)
    for p, base in (("o_", _O), ("r_", _R)):
        # addresses: the words' bytes are the address bytes, in network order
        setattr(b, p + "src", np.ascontiguousarray(G[:, base:base + 4]).view(np.uint8)
                .reshape(n, 16))
        setattr(b, p + "dst", np.ascontiguousarray(G[:, base + 4:base + 8]).view(np.uint8)
                .reshape(n, 16))
        setattr(b, p + "proto", (V[:, base + 8] >> 24).astype(u64))
        setattr(b, p + "sport", (V[:, base + 9] >> 16).astype(u64))
        # at most one of dport and (itype, icode) is read per shape
        setattr(b, p + "dport", ((V[:, base + 10] >> 16) + ((V[:, base + 11] >> 24) << 8)
                                 + (V[:, base + 12] >> 24)).astype(u64))

    # a 64-bit value's two words (slots s, s + 1, s even) lie as its eight
    # big-endian bytes: read as one (a 32-bit one has slot s absent: 0)
    Q = G.view(">u8")

    def wide(s):
        return Q[:, s >> 1].astype(u64)
    b.o_packets = wide(_CO_PK)
    b.o_bytes = wide(_CO_BY)
    b.r_packets = wide(_CR_PK)
    b.r_bytes = wide(_CR_BY)
    b.start_ns = wide(_TS_START)
    b.stop_ns = wide(_TS_STOP)
    b.event_ns = wide(_TS_EVENT)
    return b


def frame(buf) -> tuple[list, list]:
    """(starts, ends) of the netlink messages in ``buf``, one per message (for
    buffers that did not come from ``io.netlink.ConntrackSocket``, which knows its
    datagrams).  Stops at the first message that cannot be framed."""
    unpack = _NLMSG_LEN.unpack_from
    n = len(buf)
    starts, ends = [], []
    off = 0
    while off + 16 <= n:
        ln = unpack(buf, off)[0]
        if ln < 16 or off + ln > n:
            break
        starts.append(off)
        ends.append(off + ln)
        off += (ln + 3) & ~3
    return starts, ends


def _objects(buf, starts, ends) -> DecodeResult:
    """The object path (``conntrack.decode_datagrams``) over the datagrams
    ``starts``/``ends`` (lists or arrays)."""
    if isinstance(starts, np.ndarray):
        starts, ends = starts.tolist(), ends.tolist()
    return decode_datagrams(buf, starts, ends)


def _shapes_of(keys: list) -> list:
    """The ``_Shape`` (or None) of each shape-key hash."""
    index = _index()
    shapes = []
    for a in keys:
        full = index.get(a)
        shapes.append(_shape(full[0]) if full is not None and len(full) == 1 else None)
    return shapes


def _gather_slots(M, h, ok, words: int):
    """(G, family column, kind column) of a batch read as a matrix of slots
    ``M`` (a row per datagram, ``words`` words each), shape by shape: each
    shape's rows (grouped by the hash ``h``), its columns, every header word
    the walker visits compared as when the shape was compiled; ``ok`` is
    updated.  (None, None, None) when fewer than MIN_ROWS rows are left."""
    n = len(h)
    if (h == h[0]).all():
        order, keys, bounds = None, [int(h[0])], [0, n]      # one shape (a burst's usual)
    else:
        order = np.argsort(h, kind="stable")
        hs = h[order]
        bounds = [0, *(np.flatnonzero(hs[1:] != hs[:-1]) + 1).tolist(), n]
        keys = hs[bounds[:-1]].tolist()
    G = fam = kinds = None
    for k, s in enumerate(_shapes_of(keys)):
        r = slice(None) if order is None else order[bounds[k]:bounds[k + 1]]
        if s is None or s.maxword >= words:
            # unknown, or reading past a slot (a longer message's shape: only
            # a hash collision brings one here)
            ok[r] = False
            continue
        rel, pres, hrel, hexp = s.rel, s.present, s.hrel, s.hexp
        sub = M if order is None else M.take(r, axis=0)    # its rows (whole: fast)
        g = sub.take(rel, axis=1)
        g *= pres                               # values the shape has not: 0
        ok[r] &= (sub.take(hrel, axis=1) == hexp).all(axis=1)
        if order is None:
            G, fam = g, np.full(n, s.family, dtype=np.uint64)
            kinds = np.full(n, s.kind, dtype=np.uint8)
        else:
            if G is None:
                G = np.zeros((n, NSLOTS), dtype=np.uint32)
                fam = np.zeros(n, dtype=np.uint64)
                kinds = np.zeros(n, dtype=np.uint8)
            G[r] = g
            fam[r] = s.family
            kinds[r] = s.kind
    if G is None or ok.sum() < MIN_ROWS:
        return None, None, None
    return G, fam, kinds


def _new_first(block: DestroyBlock, isnew, buf, st, en) -> DecodeResult | None:
    """A batch of NEW and DESTROY messages (``isnew``: which rows are NEW)
    as its NEW rows, then its DESTROY rows: each kind one block where it has
    enough rows for one (NEW_MIN_ROWS, MIN_ROWS), else objects.  A steady
    churn alternates the two kinds in runs of a few messages: as runs, its
    batches went the object way (see decode_blocks).  Taking a batch's NEW
    events before its DESTROY events changes nothing unless a DESTROY comes
    before a NEW with the same id (a connection ended, its id used again by
    one made after it): None then, and the batch is taken in order."""
    pos_new = np.flatnonzero(isnew)
    pos_del = np.flatnonzero(~isnew)
    if len(pos_new) < NEW_MIN_ROWS and len(pos_del) < MIN_ROWS:
        return None
    ids = block.ct_id
    both = np.intersect1d(ids[pos_new], ids[pos_del])
    for cid in both.tolist():
        if pos_del[ids[pos_del] == cid][0] < pos_new[ids[pos_new] == cid][-1]:
            return None
    events: list = []
    malformed = unknown = 0
    for pos, kind, least in ((pos_new, EV_NEW, NEW_MIN_ROWS), (pos_del, EV_DESTROY, MIN_ROWS)):
        if len(pos) >= least:
            events.append(_of_kind(block.take(pos), kind))
        elif len(pos):
            res = _objects(buf, st[pos], en[pos])
            if res.errors or res.done:
                return None             # (rows that passed the checks: not seen)
            events.extend(res.events)
            malformed += res.malformed
            unknown += res.unknown
    return DecodeResult(events, malformed, unknown, False, [])


def decode_blocks(buf, starts=None, ends=None, stride: int = 0) -> DecodeResult:
    """Decode ``buf`` as ``conntrack.decode`` does, but with runs of DESTROY
    messages as ``DestroyBlock`` items in ``events``, and runs of NEW ones as
    ``NewBlock`` items.  ``starts``/``ends`` are
    the datagrams' offsets in ``buf`` (each usually one message; several are
    fine, the object path takes them; lists or integer arrays), ``None`` to
    frame ``buf`` here.
    ``stride``: every datagram starts at a multiple of it and is no longer
    (the slots recvmmsg fills, ``io.netlink.MultiRecv``), and ``buf`` holds
    the whole slot of the last one: the batch is then read as a matrix, a row
    per slot, without per-word index matrices.
    The events are in message order, but for one case: a batch of NEW and
    DESTROY messages only may come as its NEW events, then its DESTROY
    events, where that changes nothing for the correlator (``_new_first``).
    The counts (malformed, unknown, errors, done) are those of ``decode``."""
    if starts is None:
        if type(buf) is not bytes:
            buf = bytes(buf)
        starts, ends = frame(buf)
        tail = len(buf) - (((ends[-1] + 3) & ~3) if ends else 0)
        if tail > 0 or len(starts) < MIN_ROWS:
            return decode(buf)           # something to count or too few to gain
    if len(starts) < MIN_ROWS:
        return _objects(buf, starts, ends)
    n = len(starts)
    nw = len(buf) // 4
    st = np.asarray(starts, dtype=np.int64)
    en = np.asarray(ends, dtype=np.int64)
    ok = ((st & 3) == 0) & (en - st >= 24) & (en <= 4 * nw) & (en - st < 1 << 16)
    if stride:
        rows = st // stride
        nrows = int(rows[-1]) + 1
        if (stride & 3 or nrows * stride > len(buf) or not ok.all()
                or (st % stride).any() or (en - st > stride).any()):
            stride = 0                      # not so laid out: per-word indexes
    if stride:
        # the slots as rows of 32-bit words, host order, not copied
        M = np.frombuffer(buf, dtype=np.uint32, count=nrows * (stride // 4))
        M = M.reshape(nrows, stride // 4)
        if nrows != n:
            M = M[rows]                     # some slots left out (rare)
        hdr = M[:, _KEYWORDS]
    else:
        # words in host order, not copied (gathers clip their indexes: rows
        # already refused may read a known shape's offsets)
        W = np.frombuffer(buf, dtype=np.uint32, count=nw)
        sw = np.where(ok, st >> 2, 0)
        # nlmsg_len, type|flags and the two words after (host order)
        hdr = W.take(sw[:, None] + _KEYWORDS, mode="clip")
    # too few DESTROY messages and too few NEW ones for blocks: the object
    # path, before any gathering
    typ = (hdr[:, 1] & 0xFFFF) if _LITTLE else (hdr[:, 1] >> 16)
    if ((typ == MSG_CT_DELETE).sum() < MIN_ROWS
            and (typ == MSG_CT_NEW).sum() < NEW_MIN_ROWS):
        return _objects(buf, starts, ends)
    ln = hdr[:, 0].astype(np.int64)
    ok &= ln == en - st                       # exactly one message in the datagram
    # candidate shapes by a hash of the shape key (the header check below
    # compares every word of the key, so a collision only costs speed)
    h = _hash(ln.astype(np.uint64), hdr[:, 1].astype(np.uint64),
              hdr[:, 2].astype(np.uint64), hdr[:, 3].astype(np.uint64))
    if stride:
        G, fam, kinds = _gather_slots(M, h, ok, stride // 4)
        if G is None:
            return _objects(buf, starts, ends)
    else:
        uniq, inv = np.unique(h, return_inverse=True)
        shapes = _shapes_of(uniq.tolist())
        known = np.array([s is not None for s in shapes], dtype=bool)
        ok &= known[inv]
        if ok.sum() < MIN_ROWS:
            return _objects(buf, starts, ends)
        rel, pres, hrel, hexp, fam, kinds = _tables(shapes)
        rel, pres, hrel, hexp, fam, kinds = (rel[inv], pres[inv], hrel[inv], hexp[inv],
                                             fam[inv], kinds[inv])
        # every header word the walker visits, as when the shape was compiled
        ok &= (W.take(sw[:, None] + hrel, mode="clip") == hexp).all(axis=1)
        G = W.take(sw[:, None] + rel, mode="clip")
        G *= pres                               # values the shape has not: 0
    block = _block_from(G, fam)
    if ok.all():
        k = int(kinds[0])
        if (kinds == k).all() and (k != EV_NEW or n >= NEW_MIN_ROWS):
            return DecodeResult([_of_kind(block, k)], 0, 0, False, [])
        split = _new_first(block, kinds == EV_NEW, buf, st, en)
        if split is not None:
            return split
    if ok.sum() < MIN_ROWS:
        return _objects(buf, starts, ends)
    # long runs of good rows of one kind as blocks; the rest (rows refused,
    # short runs) through the object path, one call per stretch between
    # blocks: a block of a few rows costs about what one of a whole batch
    # does (numpy calls here, in the correlator, in the export), so a block
    # per short run of a steady churn would cost far more than the objects
    events: list = []
    malformed = unknown = 0
    done = False
    errors: list = []
    okl = ok.tolist()
    kl = kinds.tolist()
    i = lo = 0                  # rows lo..i-1 wait for the object path

    def objects(a, b):
        nonlocal malformed, unknown, done
        res = _objects(buf, starts[a:b], ends[a:b])
        events.extend(res.events)
        malformed += res.malformed
        unknown += res.unknown
        done = done or res.done
        errors.extend(res.errors)
    while i < n:
        j = i + 1
        if okl[i]:
            k = kl[i]
            while j < n and okl[j] and kl[j] == k:
                j += 1
            if j - i >= (NEW_MIN_ROWS if k == EV_NEW else MIN_ROWS):
                if lo < i:
                    objects(lo, i)
                events.append(_of_kind(block.take(slice(i, j)), k))
                lo = j
        else:
            while j < n and not okl[j]:
                j += 1
        i = j
    if lo < n:
        objects(lo, n)
    return DecodeResult(events, malformed, unknown, done, errors)
