"""The one record type every source produces and every encoder consumes.

Strategy: a source (the conntrack correlator, later the pcap meter) turns what it
sees into ``Flow`` records, one per direction of a connection.  Encoders see only
finished ``Flow`` records and never go back to the source.  A ``Flow`` is a
NamedTuple rather than a dataclass because it is built on the hot path (measured
in bench/); every field is a plain int or bytes.

Field units and byte order:

- ``family``: 4 or 6 (IP version of the addresses).
- ``proto``: IP protocol number.
- ``src``, ``dst``: addresses as packed network-order bytes (4 or 16 bytes).
- ``sport``, ``dport``: host-order ints.  For ICMP/ICMPv6 ``sport`` is 0 and
  ``dport`` is type*256+code (the NetFlow convention); protocols without ports
  carry 0 in both.
- ``post_src``, ``post_dst``, ``post_sport``, ``post_dport``: the same flow as it
  looks on the other side of the translation (RFC 8158's postNAT*/postNAPT*).
  Equal to the pre-NAT fields when nothing was translated; see ``translated``.
- ``packets``, ``octets``: counters of this direction (layer 3 bytes).
- ``start_ms``, ``end_ms``: wall-clock (UNIX epoch) milliseconds of the first and
  last packet.  Encoders that need uptime-relative times derive them.
- ``tos``, ``tcp_flags``: as in NetFlow v5 (0 where unknown).
- ``direction``: ORIGINAL (0) for the initiator's direction, REPLY (1) for the
  answer.  The flow-tools triplet view uses it.
- ``end_reason``: IPFIX flowEndReason (RFC 7012, IE 136).
- ``conn_id``: the conntrack id, 0 when there is none (metered flows).
- ``vlan``: the 802.1Q VLAN id (1-4094) of a metered flow's frames, the outer
  (service) tag of a QinQ frame; 0 when untagged and for conntrack flows.  The
  QinQ inner (customer) tag is part of the meter's flow key, so flows that
  differ only by it stay separate records, but it is not carried here.

Producers on the hot path build ``Flow`` with ``tuple.__new__(Flow, (...))``
and readers unpack it by position (``correlate``, ``flowtools``): a new field
goes at the end, and every one of those must be updated with it
(tests/test_correlate.py checks the positions).
"""

from __future__ import annotations

from typing import NamedTuple

ORIGINAL = 0
REPLY = 1

# RFC 7012, flowEndReason (IE 136)
END_IDLE_TIMEOUT = 1
END_ACTIVE_TIMEOUT = 2
END_OF_FLOW = 3
END_FORCED = 4
END_LACK_OF_RESOURCES = 5


class Flow(NamedTuple):
    family: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    post_src: bytes
    post_dst: bytes
    post_sport: int
    post_dport: int
    packets: int
    octets: int
    start_ms: int
    end_ms: int
    direction: int = ORIGINAL
    end_reason: int = END_OF_FLOW
    tos: int = 0
    tcp_flags: int = 0
    conn_id: int = 0
    vlan: int = 0

    @property
    def translated(self) -> bool:
        return (self.src != self.post_src or self.dst != self.post_dst
                or self.sport != self.post_sport or self.dport != self.post_dport)


# RFC 8158 natEvent (IE 230) values used by nfflowd
NAT_CREATE = 1      # legacy "NAT translation create" (collectors before RFC 8158)
NAT_DELETE = 2      # legacy "NAT translation delete"
NAT44_SESSION_CREATE = 4
NAT44_SESSION_DELETE = 5
NAT64_SESSION_CREATE = 6
NAT64_SESSION_DELETE = 7


class NatEvent(NamedTuple):
    """A translation created or deleted (RFC 8158 session logging).

    Addresses and ports as in ``Flow``: ``src``/``dst``/``sport``/``dport`` are
    the original direction before translation, ``post_*`` after it.
    ``created`` is True for a creation, False for a deletion; the encoder maps it
    to RFC 8158 or legacy codes.  ``time_ms`` is wall-clock epoch milliseconds.
    """
    family: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    post_src: bytes
    post_dst: bytes
    post_sport: int
    post_dport: int
    time_ms: int
    created: bool
    conn_id: int = 0
