"""NetFlow v9 encoder (RFC 3954), sans-IO: a FlowBatch and NatEvents -> datagrams.

Strategy: everything but the header lives in ``template.TemplateEncoder``
(templates, record mapping, size bound, template refresh), shared with IPFIX.
What is v9's own:

- Header (20 bytes): version 9, count, sysUptime, unix_secs, sequence,
  source id.  ``count`` is "the total number of records in the Export
  Packet, which is the sum of Options FlowSet records, Template FlowSet
  records, and Data FlowSet records" (RFC 3954 section 5.1): each template
  counts as one record.  sysUptime is ``now_ms - boot_ms`` (mod 2**32),
  unix_secs ``now_ms // 1000``.
- Sequence: "Incremental sequence counter of all Export Packets sent from
  the current Observation Domain by the Exporter" - the number of datagrams
  this encoder made before this one (0, 1, 2, ...), mod 2**32.
- Template FlowSet id 0, Options Template FlowSet id 1 (``options.py``:
  one options template per FlowSet); every FlowSet padded to 4 bytes with zeros, the
  FlowSet length including the padding (RFC 3954 section 5.3).
- Times: absolute flowStartMilliseconds / flowEndMilliseconds (152/153) in
  the records instead of uptime-relative FIRST/LAST_SWITCHED (22/21), so a
  collector never has to combine them with sysUptime.
- ICMPv6 type and code go in ICMP_TYPE (32, RFC 3954: type*256+code, any IP
  version) as well as in icmpTypeCodeIPv6 (139), as v9 exporters (nprobe,
  ipt-netflow) do: nfdump 1.7.1's v9 reader and the PyPI netflow parser
  know 32, not 139.  IPFIX keeps 139 alone (its 32 is IPv4's).
"""

from __future__ import annotations

import struct
from typing import Sequence

from nfflowd.ie import V9_L7_ELEMENTS
from nfflowd.record import FlowBatch, NatEvent
from nfflowd.template import RECORD_KINDS, TemplateEncoder

HEADER = struct.Struct("!HHIIII")
assert HEADER.size == 20
TEMPLATE_FLOWSET_ID = 0
_U32 = 0xFFFFFFFF


class NetflowV9Encoder(TemplateEncoder):
    """One per collector (each collector sees its own sequence and templates)."""

    HEADER_SIZE = HEADER.size
    VERSION = 9
    TEMPLATE_SET_ID = TEMPLATE_FLOWSET_ID
    PAD = 4
    MAX_SIZE_LIMIT = 65507      # the largest UDP/IPv4 payload; v9 has no length field
    L7 = V9_L7_ELEMENTS         # HTTP's IANA elements, strings of fixed length (ie.py)

    def __init__(self, source_id: int = 0, records: Sequence[str] = RECORD_KINDS,
                 nat_event_codes: str = "rfc8158", max_size: int = 1400,
                 template_refresh_packets: int = 20, template_refresh_seconds: float = 60,
                 vlan: bool = False):
        if not 0 <= source_id <= _U32:
            raise ValueError("source_id is 0-4294967295")
        self.source_id = source_id
        self.sequence = 0           # sequence of the next datagram
        super().__init__(records, nat_event_codes, max_size, template_refresh_packets,
                         template_refresh_seconds, vlan)

    def _flow_names(self, names: tuple) -> tuple:
        if "icmpTypeCodeIPv6" not in names:
            return names
        i = names.index("icmpTypeCodeIPv6") + 1
        return (*names[:i], "icmpTypeCodeIPv4", *names[i:])      # ICMP_TYPE

    def encode(self, batch: FlowBatch, nat_events: Sequence[NatEvent], now_ms: int,
               boot_ms: int) -> list[bytes]:
        """Datagrams carrying the flows of ``batch`` and ``nat_events`` (those
        of the enabled kinds), each <= max_size, templates first when due.  ``now_ms`` is the
        wall clock (epoch ms), ``boot_ms`` the wall-clock time of boot (for
        sysUptime).  Never raises on bad records (counted in ``invalid``)."""
        return self._encode(batch, nat_events, now_ms, boot_ms)

    def _header(self, length, template_records, data_records, now_ms, boot_ms) -> bytes:
        h = HEADER.pack(9, template_records + data_records, (now_ms - boot_ms) & _U32,
                        (now_ms // 1000) & _U32, self.sequence, self.source_id)
        self.sequence = (self.sequence + 1) & _U32
        return h
