"""NetFlow v5 encoder: flow-tools records -> Cisco v5 datagrams (sans-IO).

Strategy: the encoder consumes the ``FtRecord`` tuples built once per batch by
``flowtools.expand`` (the same tuples the syslog mirror formats), so a v5 record
and its CSV line cannot disagree.  The header's unix_secs, unix_nsecs and
sys_uptime are taken from the records themselves (fields 0-2, the time of the
batch); a datagram only ever holds records sharing those three values, so a
list made of several batches is split where they change.

Wire format (all big-endian): a 24-byte header (version=5, count, sys_uptime,
unix_secs, unix_nsecs, flow_sequence, engine_type, engine_id,
sampling_interval=0), then at most 30 records of 48 bytes.  flow_sequence is
the number of records this encoder emitted before the datagram (mod 2**32).

IPv6 records cannot be carried by v5: they are skipped and counted in
``skipped_ipv6``.  Counters wider than 32 bits were already clamped to
2**32-1 by ``flowtools.expand``; a record whose values do not fit the v5
fields anyway (a port > 65535, say, from a hand-made tuple) is skipped and
counted in ``invalid`` instead of raising on the data path.

Hot path: one preallocated buffer per datagram, ``Struct.pack_into`` per
record, no per-record objects.
"""

from __future__ import annotations

import struct
from typing import Sequence

MAX_RECORDS = 30
HEADER = struct.Struct("!HHIIIIBBH")
# pad1, src_as, dst_as, src_mask, dst_mask, pad2 are always 0: pad bytes ("x").
RECORD = struct.Struct("!4s4s4sHHIIIIHHxBBBxxxxxxxx")
assert HEADER.size == 24 and RECORD.size == 48

_U32 = 0xFFFFFFFF


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

    def encode(self, records: Sequence[tuple]) -> list[bytes]:
        """Datagrams carrying ``records`` (flow-tools tuples), in order,
        <= 30 records each.  Advances ``sequence``.  Never raises on bad
        records (they are counted)."""
        v4 = [r for r in records if len(r[8]) == 4]
        self.skipped_ipv6 += len(records) - len(v4)
        out: list[bytes] = []
        n = len(v4)
        j = 0
        pack_rec = RECORD.pack_into
        pack_hdr = HEADER.pack_into
        et, eid = self.engine_type, self.engine_id
        seq = self.sequence
        invalid = 0
        while j < n:
            chunk = v4[j:j + MAX_RECORDS]
            r = chunk[0]
            secs, nsecs, up = r[0], r[1], r[2]
            buf = bytearray(24 + 48 * MAX_RECORDS)
            off = 24
            for k, r in enumerate(chunk):
                if r[2] != up or r[1] != nsecs or r[0] != secs:
                    break           # another batch: another header
                try:
                    pack_rec(buf, off, r[8], r[9], r[10], r[11], r[12], r[4], r[5],
                             r[6], r[7], r[13], r[14], r[17], r[15], r[16])
                except struct.error:
                    invalid += 1
                    continue
                off += 48
            else:
                k = len(chunk)
            j += k
            cnt = (off - 24) // 48
            if cnt:
                pack_hdr(buf, 0, 5, cnt, up, secs, nsecs, seq, et, eid, 0)
                del buf[off:]
                out.append(bytes(buf))
                seq = (seq + cnt) & _U32
        self.records_encoded += n - invalid
        self.datagrams_encoded += len(out)
        self.sequence = seq
        self.invalid += invalid
        return out


def record_count(datagram: bytes) -> int:
    """The count field of a v5 datagram this encoder made (for sink counters)."""
    return (datagram[2] << 8) | datagram[3]
