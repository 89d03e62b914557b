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
``skipped_ipv6``.  INPUT and OUTPUT are the records' interface indexes,
which ``flowtools.expand`` already gave 0 where wider than 16 bits (counted
here in ``interfaces_zeroed``, from the batch: flows of any family, the
mirror's lines carrying the same 0).  Counters wider than 32 bits were already clamped to
2**32-1 by ``flowtools.expand``; a record whose values do not fit the v5
fields anyway (a port > 65535, say, from a hand-made record) is skipped and
counted in ``invalid`` instead of raising on the data path.

Hot path, in the form of the ``FtBatch`` (see ``record.FlowBatch``): records
(the small rounds) are packed by one ``Struct`` call per datagram over the
flattened records, a struct error (a bad record) falling back to one record
at a time for that datagram; columns (bursts) are packed all datagrams' at
once by numpy into a record layout equal to the wire format.  Either way
NEXTHOP and the v5 fields nfflowd never fills are zero bytes,
and the IPv4 records are cut into datagrams of 30 in order, a bad record
leaving its datagram one record shorter.  The packed record bodies depend on
the batch only, so they are packed once and cached on the batch: every v5
encoder (one per collector) only adds its own header.
"""

from __future__ import annotations

import struct
from itertools import chain

import numpy as np

from nfflowd.record import fits

MAX_RECORDS = 30
HEADER = struct.Struct("!HHIIIIBBH")
# One record from an FtBatch record (flowtools.R_* order): srcaddr, dstaddr,
# nexthop (0: pad), input, output, dPkts, dOctets, First, Last, srcport, dstport,
# pad1, tcp_flags, prot, tos, then src_as, dst_as, src_mask, dst_mask, pad2 (0).
_RECORD_FORMAT = "4s4s4xHHIIIIHHxBBB8x"
RECORD = struct.Struct("!" + _RECORD_FORMAT)
assert HEADER.size == 24 and RECORD.size == 48
# _BODY[n]: n records in one call.
_BODY = [None] + [struct.Struct("!" + _RECORD_FORMAT * n) for n in range(1, MAX_RECORDS + 1)]

_U32 = 0xFFFFFFFF
# the record layout: (name, numpy type, offset), the FtColumns field of each
_LAYOUT = (("src", ("u1", 4), 0), ("dst", ("u1", 4), 4), ("in_if", ">u2", 12),
           ("out_if", ">u2", 14), ("pkts", ">u4", 16),
           ("octs", ">u4", 20), ("first", ">u4", 24), ("last", ">u4", 28),
           ("sport", ">u2", 32), ("dport", ">u2", 34), ("flags", "u1", 37),
           ("proto", "u1", 38), ("tos", "u1", 39))
_DTYPE = np.dtype({"names": [n for n, _, _ in _LAYOUT], "formats": [t for _, t, _ in _LAYOUT],
                   "offsets": [o for _, _, o in _LAYOUT], "itemsize": RECORD.size})
# the integer fields and their widths in bits
_WIDTHS = (("pkts", 32), ("octs", 32), ("first", 32), ("last", 32), ("sport", 16),
           ("dport", 16), ("in_if", 16), ("out_if", 16), ("flags", 8), ("proto", 8),
           ("tos", 8))


def _fitting(f) -> np.ndarray:
    """Which records of ``f`` (``FtColumns``) fit the v5 fields."""
    cols = [getattr(f, name) for name, _ in _WIDTHS]
    if all(c.dtype == np.uint64 for c in cols):
        pk, oc, fi, la, sp, dp, ii, oi, fl, pr, tos = cols
        wide = ((pk | oc | fi | la) >> np.uint64(32)) | ((sp | dp | ii | oi) >> np.uint64(16)) \
            | ((fl | pr | tos) >> np.uint64(8))
        return wide == 0
    ok = np.ones(f.n, dtype=bool)
    for col, (_, bits) in zip(cols, _WIDTHS):
        ok &= fits(col, bits)
    return ok


def _bodies(records) -> tuple[list[tuple[int, bytes]], int, int]:
    """(count, packed records) of each datagram of ``records`` (flat tuples,
    ``flowtools.R_*`` order), IPv6 records skipped, bad records counted:
    (bodies, skipped_ipv6, invalid).  The IPv4 records go 30 to a datagram in
    order; a bad record is left out of its datagram."""
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


def _bodies_columns(f) -> tuple[list[tuple[int, bytes]], int, int]:
    """``_bodies`` of ``f`` (``FtColumns``)."""
    v4 = np.flatnonzero(f.is4)
    ok = _fitting(f)[v4]
    good = v4[ok]
    arr = np.zeros(len(good), dtype=_DTYPE)
    arr["src"] = f.src[good, :4]
    arr["dst"] = f.dst[good, :4]
    for name, _ in _WIDTHS:
        col = getattr(f, name)[good]
        arr[name] = col if col.dtype == np.uint64 else col.astype(np.uint64)
    blob = arr.tobytes()
    size = RECORD.size
    if len(good) == len(v4):
        counts = [min(MAX_RECORDS, len(v4) - j) for j in range(0, len(v4), MAX_RECORDS)]
    else:
        counts = np.bincount(np.flatnonzero(ok) // MAX_RECORDS,
                             minlength=-(-len(v4) // MAX_RECORDS)).tolist()
    bodies = []
    at = 0
    for cnt in counts:
        if cnt:
            bodies.append((cnt, blob[at * size:(at + cnt) * size]))
            at += cnt
    return bodies, f.n - len(v4), len(v4) - len(good)


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
        self.interfaces_zeroed = 0  # flows whose interface index did not fit 16 bits

    def encode(self, batch) -> list[bytes]:
        """Datagrams carrying the records of ``batch`` (a ``flowtools.FtBatch``),
        in order, <= 30 records each.  Advances ``sequence``.  Never raises on
        bad records (they are counted)."""
        cached = batch.v5_cache
        if cached is None:
            cols = batch.columns
            cached = batch.v5_cache = (_bodies(batch.records) if cols is None
                                       else _bodies_columns(cols))
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
        self.interfaces_zeroed += batch.interfaces_zeroed
        return out


def record_count(datagram: bytes) -> int:
    """The count field of a v5 datagram this encoder made (for sink counters)."""
    return (datagram[2] << 8) | datagram[3]
