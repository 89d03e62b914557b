"""IPFIX encoder (RFC 7011/7012, NAT events per RFC 8158), sans-IO.

Strategy: everything but the message header lives in
``template.TemplateEncoder`` (templates, record mapping, size bound, template
refresh), shared with NetFlow v9.  What is IPFIX's own:

- Message header (16 bytes): version 10, length (of the whole message),
  export time (epoch seconds, ``now_ms // 1000``), sequence number,
  observation domain id.
- Sequence number: "incremental sequence counter modulo 2^32 of all IPFIX
  Data Records sent in the current stream from the current Observation
  Domain by the Exporting Process, prior to the receipt of this IPFIX
  Message" (RFC 7011 section 3.1): template records do not count.  One
  encoder is one stream of one observation domain.
- Template set id 2, Options Template Set id 3 (``options.py``; options
  data records count in the sequence as any data record); data sets are not
  padded (RFC 7011 section 3.3.1 makes padding optional).  Messages are at
  most 65535 bytes (the length field).
- Over UDP templates are resent periodically (RFC 7011 section 8.4); over
  TCP every connection must start with them (section 10.4):
  ``templates_message(now_ms, before=head)`` is the templates-only message
  to send first, ahead of the messages queued for the old connection
  (``export.TcpCollector``'s ``on_connect``); ``before`` gives it the
  sequence number of the first of those, so the new stream has no step
  backwards (libfixbuf warns "IPFIX Message out of sequence" otherwise).
"""

from __future__ import annotations

import struct
from typing import Sequence

from nfflowd.record import FlowBatch, NatEvent
from nfflowd.template import RECORD_KINDS, TemplateEncoder, template_set

HEADER = struct.Struct("!HHIII")
assert HEADER.size == 16
TEMPLATE_SET_ID = 2
_U32 = 0xFFFFFFFF


class IpfixEncoder(TemplateEncoder):
    """One per collector (per transport session): its own sequence and templates."""

    HEADER_SIZE = HEADER.size
    VERSION = 10
    TEMPLATE_SET_ID = TEMPLATE_SET_ID
    PAD = 1
    MAX_SIZE_LIMIT = 65535

    def __init__(self, domain_id: int = 0, records: Sequence[str] = RECORD_KINDS,
                 nat_event_codes: str = "rfc8158", max_size: int = 1400,
                 template_refresh_packets: int = 20, template_refresh_seconds: float = 60,
                 vlan: bool = False):
        if not 0 <= domain_id <= _U32:
            raise ValueError("domain_id is 0-4294967295")
        self.domain_id = domain_id
        self.sequence = 0           # data records sent before the next message
        super().__init__(records, nat_event_codes, max_size, template_refresh_packets,
                         template_refresh_seconds, vlan)

    def encode(self, batch: FlowBatch, nat_events: Sequence[NatEvent],
               now_ms: int) -> list[bytes]:
        """Complete IPFIX messages carrying the flows of ``batch`` and
        ``nat_events`` (those of the enabled kinds), each <= max_size,
        templates first when due.
        ``now_ms`` is the wall clock (epoch ms).  Never raises on bad records
        (counted in ``invalid``)."""
        return self._encode(batch, nat_events, now_ms, 0)

    def templates_message(self, now_ms: int, before: bytes | None = None) -> bytes:
        """A message of every template of the enabled kinds and no data.
        Its sequence number is that of ``before`` (an IPFIX message of this
        encoder that will follow it on the connection), else the encoder's
        current one.  Counts as a template send (the refresh counters start
        again); does not touch ``last_counts``.  With options, their
        templates too, and their records go with the next message."""
        tset = template_set(self.TEMPLATE_SET_ID, self.templates, self.PAD)
        if self.options is not None:
            tset += b"".join(self.options.template_sets(self.PAD))
            self.options.pending = True
        seq = self.sequence
        if before is not None and len(before) >= HEADER.size:
            seq = HEADER.unpack_from(before)[3]
        # over TCP a message is bounded by its length field alone: every
        # template fits one (a few hundred bytes each at most)
        length = HEADER.size + len(tset)
        assert length <= self.MAX_SIZE_LIMIT
        message = HEADER.pack(10, length, (now_ms // 1000) & _U32, seq, self.domain_id) + tset
        self._templates_sent = True
        self._forced = False
        self._l7_pending.clear()
        self._since_templates = 1
        self._templates_ms = now_ms
        self.template_sends += 1
        self.datagrams_sent += 1
        return message

    def _header(self, length, template_records, data_records, now_ms, boot_ms) -> bytes:
        h = HEADER.pack(10, length, (now_ms // 1000) & _U32, self.sequence, self.domain_id)
        self.sequence = (self.sequence + data_records) & _U32
        return h
