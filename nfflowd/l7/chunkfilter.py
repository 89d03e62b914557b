"""The inspector's pre-filter over a pcap chunk, with numpy.

Strategy: ``inspect.locate`` and ``inspect.kind_of`` per frame cost a
microsecond or two in Python; a chunk holds a million frames, few of which
start a handshake, a request or a DNS message.  Here the same tests run on
every record of a ``pcapfile.RecordChunk`` at once (Ethernet with up to two
VLAN tags, and raw IP), a slice of ``SLICE`` frames at a time: the layers'
offsets, the ports, the payload's bounds and first bytes as arrays; the
frames picked come out with their inspector key, time, protocol and parser
already made, so that Python only loops over those.  The rules are
``locate``'s and ``kind_of``'s, term for term (tests/test_l7_meter.py
compares both on every sample capture and on hypothesis-made ones).
"""

from __future__ import annotations

import numpy as np

__all__ = ["candidates", "Candidates", "KINDS"]

_HTTP = [int.from_bytes(s, "big") for s in (b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE",
                                            b"OPTI", b"CONN", b"PATC", b"TRAC", b"HTTP")]
_RAW = (101, 12, 14, 228, 229)
KINDS = (None, "tls", "http", "dns", "quic")
_TLS, _HTTP_K, _DNS, _QUIC = 1, 2, 3, 4
# frames looked at per numpy pass: bounds the temporaries (some 30 arrays of
# this many values) whatever the chunk's size
SLICE = 1 << 16
# bytes readable past any frame's start: the headers' furthest field
_PAD = 256
_KEY_LEN = 39
_COLS = ("proto", "sport", "dport", "p", "end", "src", "dst", "alen", "vlan")


class Candidates:
    """The frames of a chunk the inspector may want.  ``picked``: (index,
    key, ts_ns, proto, kind, payload start, end) of those whose first bytes
    or ports name a protocol, in file order (buffer offsets);
    ``next_segment(key, i)``: (index, ts_ns, proto, start, end) of the
    first TCP frame with payload of ``key`` after ``i``, or None.  ``cut``:
    TCP/UDP frames whose payload the snaplen cut."""

    def __init__(self, chunk, protocols):
        self.chunk = chunk
        self.protocols = frozenset(protocols)
        room = chunk.room
        n = len(chunk.buf)
        b = np.frombuffer(room, np.uint8)
        if len(b) < n + _PAD:
            b = np.concatenate([b[:n], np.zeros(_PAD, np.uint8)])
        self.b = b
        self.v16 = np.ndarray((len(b) - 1,), ">u2", b, strides=(1,))
        self.v32 = np.ndarray((len(b) - 3,), ">u4", b, strides=(1,))
        self.cut = 0
        self.picked: list = []
        self._slice = (None, None)      # (start, its arrays): the last slice computed

    def _arrays(self, lo: int) -> dict:
        if self._slice[0] != lo:
            self._slice = (lo, _slice(self, lo))
        return self._slice[1]

    def next_segment(self, key: bytes, after: int):
        """(a slice's arrays computed again at most once in a row: a held
        payload's next segment is usually a few frames on)"""
        lo = (after + 1) - (after + 1) % SLICE
        ts = self.chunk.fields()[0]
        while lo < len(self.chunk):
            a = self._arrays(lo)
            at = np.flatnonzero(a["tcp_pay"] & (a["idx"] + lo > after))
            if len(at):
                if "keys" not in a:
                    a["keys"] = _key_matrix(self.b, a, np.arange(len(a["idx"])))
                hit = at[(a["keys"][at] == np.frombuffer(key, np.uint8)).all(axis=1)]
                if len(hit):
                    k = int(hit[0])
                    i = lo + int(a["idx"][k])
                    return (i, int(ts[i]), int(a["proto"][k]), int(a["p"][k]),
                            int(a["end"][k]))
            lo += SLICE
        return None


def _keys(b, a, sel) -> list:
    """The inspector keys (``inspect.record_key``) of the frames ``sel`` of a
    slice's arrays, made with numpy."""
    if not len(sel):
        return []
    return _key_matrix(b, a, sel).view(f"V{_KEY_LEN}").ravel().tolist()


def _key_matrix(b, a, sel):
    """``_keys`` as rows of bytes."""
    k = np.zeros((len(sel), _KEY_LEN), np.uint8)
    cols = np.arange(16)
    alen = a["alen"][sel][:, None]
    keep = cols[None, :] < alen
    k[:, 0:16] = np.where(keep, b[a["src"][sel][:, None] + cols], 0)
    k[:, 16:32] = np.where(keep, b[a["dst"][sel][:, None] + cols], 0)
    k[:, 32:36] = b[a["t"][sel][:, None] + cols[:4]]
    k[:, 36] = a["proto"][sel]
    v = a["vlan"][sel]
    k[:, 37] = v >> 8
    k[:, 38] = v & 0xFF
    return k


def candidates(chunk, protocols) -> Candidates | None:
    """The ``Candidates`` of ``chunk``, or None for a link type other than
    Ethernet or raw IP (the caller goes frame by frame)."""
    if chunk.linktype != 1 and chunk.linktype not in _RAW:
        return None
    c = Candidates(chunk, protocols)
    ts = chunk.fields()[0]
    out = c.picked
    for lo in range(0, len(chunk), SLICE):
        a = c._arrays(lo)
        c.cut += a["cut"]
        sel = np.flatnonzero(a["kind"])
        if len(sel):
            idx = a["idx"][sel] + lo
            out += zip(idx.tolist(), _keys(c.b, a, sel), ts[idx].tolist(),
                       a["proto"][sel].tolist(), [KINDS[k] for k in a["kind"][sel].tolist()],
                       a["p"][sel].tolist(), a["end"][sel].tolist())
    return c


def _slice(c: Candidates, lo: int) -> dict:
    """The arrays of the TCP and UDP frames with payload among frames ``lo``
    to ``lo + SLICE`` of the chunk (``idx``: their place in the slice), and
    ``cut``.  Each step keeps only the frames the next one needs."""
    b, v16 = c.b, c.v16
    chunk = c.chunk
    _ts, cap, orig = chunk.fields()
    cap = cap[lo:lo + SLICE]
    d = chunk.offsets[lo:lo + SLICE] + 16           # frame starts
    vlan = None
    if chunk.linktype == 1:
        ok = cap >= 14
        et = v16[d + 12]
        hl = 14                                     # link header
        tag = (et == 0x8100) | (et == 0x88A8) | (et == 0x9100)
        if tag.any():
            ok &= ~tag | (cap >= 18)
            vlan = np.where(tag, v16[d + 14] & 0xFFF, 0)
            et = np.where(tag, v16[d + 16], et)
            hl = np.where(tag, 18, 14)
            tag2 = tag & ((et == 0x8100) | (et == 0x88A8) | (et == 0x9100))
            ok &= ~tag2 | (cap >= 22)
            et = np.where(tag2, v16[d + 20], et)
            hl = np.where(tag2, 22, hl)
        net = d + hl
        first = b[net]
        ver = first >> 4
        v4 = ok & (et == 0x0800)
        v6 = ok & (et == 0x86DD)
    else:
        hl = 0
        net = d
        first = b[net]
        ver = first >> 4
        v4 = cap >= 1
        v6 = v4.copy()
    v4 &= (cap >= hl + 20) & (ver == 4) & ((first & 15) >= 5) & ((v16[net + 6] & 0x3FFF) == 0)
    v6 &= (cap >= hl + 40) & (ver == 6)
    idx = np.flatnonzero(v4 | v6)
    # the IP frames
    v4 = v4[idx]
    net = net[idx]
    d = d[idx]
    capi = cap[idx]
    fend = d + capi
    wire = d + np.maximum(orig[lo:lo + SLICE][idx], capi)
    ihl = np.where(v4, (first[idx] & 15).astype(np.int64) << 2, 40)
    proto = b[net + np.where(v4, 9, 6)]
    length = v16[net + np.where(v4, 2, 4)].astype(np.int64)
    ipend = np.where(np.where(v4, length < ihl, length == 0), wire,
                     net + np.where(v4, length, length + 40))
    ipend = np.minimum(ipend, wire)
    t = net + ihl
    tcp = (proto == 6) & (t + 20 <= fend)
    udp = (proto == 17) & (t + 8 <= fend)
    p = t + np.where(tcp, (b[t + 12] >> 4).astype(np.int64) << 2, 8)
    both = tcp | udp
    end = np.minimum(ipend, fend)
    cut = int(np.count_nonzero(both & (p < ipend) & (ipend > fend)))
    k = np.flatnonzero(both & (p < end))
    # the TCP and UDP frames with payload
    idx, v4, net, t, p, end, tcp, proto = (idx[k], v4[k], net[k], t[k], p[k], end[k], tcp[k],
                                           proto[k].astype(np.int64))
    vlan = np.zeros(len(idx), np.int64) if vlan is None else vlan[idx]
    pl = end - p
    sport = v16[t]
    dport = v16[t + 2]
    # the parser each payload goes to: inspect.kind_of's tests, in its order
    protos = c.protocols
    w4 = c.v32[p]
    kind = np.zeros(len(idx), np.int8)
    dns = (sport == 53) | (dport == 53)
    if "dns" in protos:
        kind[dns] = _DNS
    if "quic" in protos:
        ver = c.v32[p + 1]
        quic = (~tcp & (pl >= 5) & ((w4 >> 30) == 3)
                & ((ver == 1) | (ver == 0x6B3343CF) | ((ver >> 24) == 0xFF)))
        if "dns" in protos:
            quic &= ~dns
        kind[quic] = _QUIC
    if "http" in protos:
        kind[tcp & (pl >= 4) & np.isin(w4, _HTTP)] = _HTTP_K
    if "tls" in protos:
        kind[tcp & (pl >= 2) & ((w4 >> 16) == 0x1603)] = _TLS
    return {"idx": idx, "kind": kind, "tcp_pay": tcp, "cut": cut, "proto": proto, "t": t,
            "p": p, "end": end, "src": np.where(v4, net + 12, net + 8),
            "dst": np.where(v4, net + 16, net + 24), "alen": np.where(v4, 4, 16),
            "vlan": vlan}
