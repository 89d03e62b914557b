"""NetFlow v5 encoder: flow-tools records -> Cisco v5 datagrams (sans-IO).

Strategy: the encoder consumes the ``FtBatch`` built once per batch by
``flowtools.expand`` (the same records the syslog mirror formats), so a v5
record and its CSV line cannot disagree.  The header's unix_secs, unix_nsecs
and sys_uptime are the batch's (the time of the batch): a datagram only ever
holds records of one batch.

Wire format (all big-endian): a 24-byte header (version=5, count, sys_uptime,
unix_secs, unix_nsecs, flow_sequence, engine_type, engine_id,
sampling_interval=0), then at most 30 records of 48 bytes.  flow_sequence is
the number of records this encoder emitted before the datagram (mod 2**32).

IPv6 records cannot be carried by v5: they are skipped and counted in
``skipped_ipv6``.  Counters wider than 32 bits were already clamped to
2**32-1 by ``flowtools.expand``; a record whose values do not fit the v5
fields anyway (a port > 65535, say, from a hand-made record) is skipped and
counted in ``invalid`` instead of raising on the data path.

Hot path: the records of a datagram are packed by one ``Struct`` call over the
flattened records (NEXTHOP, INPUT, OUTPUT and the v5 fields nfflowd never
fills are zero bytes of the format); a struct error (a bad record) falls back
to one record at a time for that datagram.  The packed record bodies depend on
the batch only, so they are packed once and cached on the batch: every v5
encoder (one per collector) only adds its own header.
"""

from __future__ import annotations

import struct
from itertools import chain

MAX_RECORDS = 30
HEADER = struct.Struct("!HHIIIIBBH")
# One record from an FtBatch record (flowtools.R_* order): srcaddr, dstaddr,
# nexthop/input/output (0: pad), dPkts, dOctets, First, Last, srcport, dstport,
# pad1, tcp_flags, prot, tos, then src_as, dst_as, src_mask, dst_mask, pad2 (0).
_RECORD_FORMAT = "4s4s8xIIIIHHxBBB8x"
RECORD = struct.Struct("!" + _RECORD_FORMAT)
assert HEADER.size == 24 and RECORD.size == 48
# _BODY[n]: n records in one call.
_BODY = [None] + [struct.Struct("!" + _RECORD_FORMAT * n) for n in range(1, MAX_RECORDS + 1)]

_U32 = 0xFFFFFFFF


def _bodies(records) -> tuple[list[tuple[int, bytes]], int, int]:
    """(count, packed records) of each datagram, IPv6 records skipped, bad
    records counted: (bodies, skipped_ipv6, invalid)."""
    v4 = [r for r in records if len(r[0]) == 4]
    bodies = []
    append = bodies.append
    invalid = 0
    flat = chain.from_iterable
    pack = RECORD.pack
    for j in range(0, len(v4), MAX_RECORDS):
        chunk = v4[j:j + MAX_RECORDS]
        n = len(chunk)
        try:
            append((n, _BODY[n].pack(*flat(chunk))))
            continue
        except struct.error:
            pass
        parts = []
        for r in chunk:     # a bad record in this chunk: find it
            try:
                parts.append(pack(*r))
            except struct.error:
                invalid += 1
        if parts:
            append((len(parts), b"".join(parts)))
    return bodies, len(records) - len(v4), invalid


_V5_DTYPE = None


def _v5_dtype():
    global _V5_DTYPE
    if _V5_DTYPE is None:
        import numpy as np
        _V5_DTYPE = np.dtype({
            "names": ["src", "dst", "pkts", "octs", "first", "last", "sport", "dport",
                      "flags", "proto", "tos"],
            "formats": [("u1", 4), ("u1", 4), ">u4", ">u4", ">u4", ">u4", ">u2", ">u2",
                        "u1", "u1", "u1"],
            "offsets": [0, 4, 16, 20, 24, 28, 32, 34, 37, 38, 39],
            "itemsize": RECORD.size})
    return _V5_DTYPE


def _bodies_columns(f):
    """``_bodies`` over ``flowtools.FtColumns``; None when some record would
    not fit (then the per-record path finds and counts it)."""
    import numpy as np
    for name, bits in (("sport", 16), ("dport", 16), ("flags", 8), ("proto", 8), ("tos", 8)):
        if (getattr(f, name) >> np.uint64(bits)).any():
            return None
    rows = np.flatnonzero(f.is4)
    arr = np.zeros(len(rows), dtype=_v5_dtype())
    arr["src"] = f.src[rows, :4]
    arr["dst"] = f.dst[rows, :4]
    for name in ("pkts", "octs", "first", "last", "sport", "dport", "flags", "proto", "tos"):
        arr[name] = getattr(f, name)[rows]
    blob = arr.tobytes()
    size = RECORD.size
    bodies = [(min(MAX_RECORDS, len(rows) - j), blob[j * size:(j + MAX_RECORDS) * size])
              for j in range(0, len(rows), MAX_RECORDS)]
    return bodies, f.n - len(rows), 0


class V5Encoder:
    """One per collector (each collector sees its own flow_sequence)."""

    def __init__(self, engine_type: int = 0, engine_id: int = 0):
        if not (0 <= engine_type <= 255 and 0 <= engine_id <= 255):
            raise ValueError("engine_type and engine_id are 0-255")
        self.engine_type = engine_type
        self.engine_id = engine_id
        self.sequence = 0           # flow_sequence of the next datagram
        self.records_encoded = 0
        self.datagrams_encoded = 0
        self.skipped_ipv6 = 0
        self.invalid = 0

    def encode(self, batch) -> list[bytes]:
        """Datagrams carrying the records of ``batch`` (a ``flowtools.FtBatch``),
        in order, <= 30 records each.  Advances ``sequence``.  Never raises on
        bad records (they are counted)."""
        cached = batch.v5_cache
        if cached is None:
            cols = getattr(batch, "columns", None)
            if cols is not None:
                cached = _bodies_columns(cols)
            if cached is None:
                cached = _bodies(batch.records)
            batch.v5_cache = cached
        bodies, skipped6, invalid = cached
        pack_hdr = HEADER.pack
        up, secs, nsecs = batch.sys_uptime, batch.unix_secs, batch.unix_nsecs
        et, eid = self.engine_type, self.engine_id
        seq = self.sequence
        out = []
        n = 0
        for cnt, body in bodies:
            out.append(pack_hdr(5, cnt, up, secs, nsecs, seq, et, eid, 0) + body)
            seq = (seq + cnt) & _U32
            n += cnt
        self.sequence = seq
        self.records_encoded += n
        self.datagrams_encoded += len(out)
        self.skipped_ipv6 += skipped6
        self.invalid += invalid
        return out


def record_count(datagram: bytes) -> int:
    """The count field of a v5 datagram this encoder made (for sink counters)."""
    return (datagram[2] << 8) | datagram[3]
