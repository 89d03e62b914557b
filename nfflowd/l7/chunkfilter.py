"""The inspector's pre-filter over a pcap chunk, with numpy.

Strategy: ``inspect.locate`` and ``inspect.kind_of`` per frame cost a
microsecond or two in Python; a chunk holds a million frames, few of which
start a handshake, a request or a DNS message.  Here the same tests run on
every record of a ``pcapfile.RecordChunk`` at once (Ethernet with up to two
VLAN tags, and raw IP): the layers' offsets, the ports, the payload's bounds
and first bytes as arrays, so that only the frames picked are looked at in
Python.  The rules are ``locate``'s and ``kind_of``'s, term for term
(tests/test_l7_meter.py compares them on every sample capture).
"""

from __future__ import annotations

import numpy as np

__all__ = ["candidates", "Candidates"]

_HTTP = [int.from_bytes(s, "big") for s in (b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE",
                                            b"OPTI", b"CONN", b"PATC", b"TRAC", b"HTTP")]
_RAW = (101, 12, 14, 228, 229)


# frames looked at per numpy pass: bounds the pre-filter's temporaries
# (some 30 arrays of this many values) whatever the chunk's size
SLICE = 1 << 16
_COLS = ("proto", "sport", "dport", "p", "end", "src", "dst", "alen", "vlan")


class Candidates:
    """The frames of a chunk the inspector may want: ``picked()`` the
    indexes of those whose first bytes or ports name a protocol, in file
    order; ``frame(i)`` (proto, sport, dport, payload start, end: buffer
    offsets) of a picked frame or a TCP frame with payload; ``key(i)``,
    ``ts(i)``; ``next_segment(key, i)``: the first TCP frame with payload of
    ``key`` after ``i``.  ``cut``: TCP/UDP frames whose payload the snaplen
    cut."""

    def __init__(self, chunk, protocols, record_key):
        self.chunk = chunk
        self.record_key = record_key
        self.protocols = frozenset(protocols)
        self.b = np.frombuffer(chunk.buf, np.uint8)
        self.cut = 0
        self._pick: list = []
        self._rows: dict = {}       # frame index -> (proto, sport, dport, p, end, src, dst, alen, vlan)
        self._slice = (None, None)  # (start, its arrays): the last slice computed

    def picked(self) -> list:
        return self._pick

    def _arrays(self, lo: int) -> dict:
        if self._slice[0] != lo:
            self._slice = (lo, _slice(self.b, self.chunk, lo, self.protocols))
        return self._slice[1]

    def _row(self, i: int):
        r = self._rows.get(i)
        if r is None:
            lo = i - i % SLICE
            a = self._arrays(lo)
            r = tuple(int(a[c][i - lo]) for c in _COLS)
        return r

    def frame(self, i: int):
        return self._row(i)[:5]

    def ts(self, i: int) -> int:
        return int(self.chunk.fields()[0][i])

    def key(self, i: int) -> bytes:
        proto, sport, dport, _p, _e, s, d, a, vlan = self._row(i)
        buf = self.chunk.buf
        return self.record_key(bytes(buf[s:s + a]), bytes(buf[d:d + a]), sport, dport, proto, vlan)

    def next_segment(self, key: bytes, after: int):
        """(a slice's arrays computed again at most once in a row: a held
        payload's next segment is usually a few frames on)"""
        h = _key_hash_of(key)
        lo = (after + 1) - (after + 1) % SLICE
        while lo < len(self.chunk):
            a = self._arrays(lo)
            tp = np.flatnonzero(a["tcp_pay"])
            if "hash" not in a:
                a["hash"] = _key_hash(self.b, a["src"][tp], a["dst"][tp], a["alen"][tp],
                                      a["sport"][tp], a["dport"][tp], len(self.b) - 1)
            hit = tp[(a["hash"] == h) & (tp + lo > after)]
            for j in (hit + lo).tolist():
                if self.key(j) == key:
                    return j
            lo += SLICE
        return None


def _be16(b, at, top):
    at = np.minimum(at, top)
    return (b[at].astype(np.int64) << 8) | b[np.minimum(at + 1, top)]


_M = np.uint64(0x9E3779B97F4A7C15)


def _key_hash(b, src, dst, alen, sport, dport, top):
    """A hash of each frame's key (collisions are checked on the keys): the
    last four bytes of each address and the ports."""
    s = src + alen - 4
    d = dst + alen - 4
    a = np.zeros(len(src), np.uint64)
    for k in range(4):
        a = (a << np.uint64(8)) | b[np.minimum(s + k, top)].astype(np.uint64)
        a = (a << np.uint64(8)) | b[np.minimum(d + k, top)].astype(np.uint64)
    return a ^ (((sport.astype(np.uint64) << np.uint64(16)) | dport.astype(np.uint64)) * _M)


def _key_hash_of(key: bytes):
    """``_key_hash`` of an inspector key (inspect.record_key)."""
    v4 = key[4:16] == bytes(12) and key[20:32] == bytes(12)
    s = key[0:4] if v4 else key[12:16]
    d = key[16:20] if v4 else key[28:32]
    a = 0
    for k in range(4):
        a = (a << 16) | (s[k] << 8) | d[k]
    ports = int.from_bytes(key[32:36], "big")
    return np.uint64(a ^ ((ports * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF))


def candidates(chunk, protocols, record_key) -> Candidates | None:
    """The ``Candidates`` of ``chunk``, or None for a link type other than
    Ethernet or raw IP (the caller goes frame by frame); ``record_key``:
    ``inspect.record_key``, what ``key`` gives."""
    if chunk.linktype != 1 and chunk.linktype not in _RAW:
        return None
    c = Candidates(chunk, protocols, record_key)
    for lo in range(0, len(chunk), SLICE):
        a = c._arrays(lo)
        c.cut += a["cut"]
        idx = np.flatnonzero(a["pick"])
        if len(idx):
            cols = [a[k][idx].tolist() for k in _COLS]
            c._rows.update(zip((idx + lo).tolist(), zip(*cols)))
            c._pick += (idx + lo).tolist()
    return c


def _slice(b, chunk, lo: int, protos) -> dict:
    """The arrays of the frames ``lo`` to ``lo + SLICE`` of ``chunk``."""
    top = len(b) - 1
    lt = chunk.linktype
    _ts, cap, orig = chunk.fields()
    cap = cap[lo:lo + SLICE]
    orig = orig[lo:lo + SLICE]
    d = chunk.offsets[lo:lo + SLICE] + 16       # frame starts
    fend = d + cap
    ok = np.ones(len(d), bool)
    vlan = np.zeros(len(d), np.int64)
    if lt == 1:
        ok &= cap >= 14
        et = _be16(b, d + 12, top)
        net = d + 14
        tag = np.isin(et, (0x8100, 0x88A8, 0x9100))
        if tag.any():
            ok &= ~tag | (cap >= 18)
            vlan = np.where(tag, _be16(b, d + 14, top) & 0xFFF, 0)
            et = np.where(tag, _be16(b, d + 16, top), et)
            net = np.where(tag, d + 18, net)
            tag2 = tag & np.isin(et, (0x8100, 0x88A8, 0x9100))
            ok &= ~tag2 | (cap >= 22)
            et = np.where(tag2, _be16(b, d + 20, top), et)
            net = np.where(tag2, d + 22, net)
        v = np.where(et == 0x0800, 4, np.where(et == 0x86DD, 6, 0))
    else:
        ok &= cap >= 1
        net = d
        v = b[np.minimum(d, top)] >> 4
    first = b[np.minimum(net, top)]
    wire = d + np.maximum(orig, cap)
    # IPv4: not a fragment
    v4 = ok & (v == 4) & (fend >= net + 20) & (first >> 4 == 4)
    ihl = (first & 15).astype(np.int64) << 2
    v4 &= (ihl >= 20) & ((_be16(b, net + 6, top) & 0x3FFF) == 0)
    total = _be16(b, net + 2, top)
    # IPv6: the transport header right after
    v6 = ok & (v == 6) & (fend >= net + 40) & (first >> 4 == 6)
    plen = _be16(b, net + 4, top)
    proto = np.where(v4, b[np.minimum(net + 9, top)],
                     np.where(v6, b[np.minimum(net + 6, top)], 0)).astype(np.int64)
    ipend = np.where(v4, np.where(total >= ihl, net + total, wire),
                     np.where(plen > 0, net + 40 + plen, wire))
    ipend = np.minimum(ipend, wire)
    t = np.where(v4, net + ihl, net + 40)
    tcp = (v4 | v6) & (proto == 6) & (t + 20 <= fend)
    udp = (v4 | v6) & (proto == 17) & (t + 8 <= fend)
    p = np.where(tcp, t + ((b[np.minimum(t + 12, top)] >> 4).astype(np.int64) << 2), t + 8)
    both = tcp | udp
    end = np.minimum(ipend, fend)
    has = both & (p < end)
    sport = _be16(b, t, top)
    dport = _be16(b, t + 2, top)
    # the first bytes (inspect.kind_of's tests), where there are that many
    pl = end - p
    b0 = b[np.minimum(p, top)].astype(np.int64)
    b1 = b[np.minimum(p + 1, top)].astype(np.int64)
    w4 = ((b0 << 24) | (b1 << 16) | (b[np.minimum(p + 2, top)].astype(np.int64) << 8)
          | b[np.minimum(p + 3, top)])
    pick = np.zeros(len(d), bool)
    if "tls" in protos:
        pick |= tcp & (pl >= 2) & (b0 == 0x16) & (b1 == 0x03)
    if "http" in protos:
        pick |= tcp & (pl >= 4) & np.isin(w4, _HTTP)
    if "dns" in protos:
        pick |= (sport == 53) | (dport == 53)
    if "quic" in protos:
        ver = ((b1 << 24) | (b[np.minimum(p + 2, top)].astype(np.int64) << 16)
               | (b[np.minimum(p + 3, top)].astype(np.int64) << 8) | b[np.minimum(p + 4, top)])
        pick |= (udp & (pl >= 5) & ((b0 & 0xC0) == 0xC0)
                 & ((ver == 1) | (ver == 0x6B3343CF) | (b1 == 0xFF)))
    src = np.where(v4, net + 12, net + 8)
    dst = np.where(v4, net + 16, net + 24)
    alen = np.where(v4, 4, 16)
    return {"pick": pick & has, "tcp_pay": tcp & has,
            "cut": int(np.count_nonzero(both & (p < ipend) & (ipend > fend))),
            "proto": proto, "sport": sport, "dport": dport, "p": p, "end": end, "src": src,
            "dst": dst, "alen": alen, "vlan": vlan}
