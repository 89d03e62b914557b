"""IPFIX biflow export (RFC 5103): the meter's two directions of a
conversation in one record, sans-IO.

Strategy: the meter keeps unidirectional flows (``meter.py``) and nothing in
it changes.  Pairing happens on the sink side, per biflow collector, after
the records have left the flow table:

1. ``BiflowPairer`` (no I/O, time passed in): ``add(flows, now_ns)`` returns
   the pairs it can make, ``expire(now_ns)`` the records whose hold ran out,
   ``flush()`` everything still held (end of input, shutdown).  Output items
   are ``(forward Flow, reverse Flow or None)``: ``Flow`` stays the one record
   type.
2. ``BiflowIpfixEncoder``: ``ipfix.IpfixEncoder`` with flow templates that
   carry, after the forward elements the uniflow templates carry today
   (addresses, ports or ICMP type/code, protocol, counters, times, end
   reason, postNAT, vlanId for the meter), the reverse elements of RFC 5103
   section 6.1 - the same IANA ids with the enterprise bit and Private
   Enterprise Number 29305: reverseOctetDeltaCount, reversePacketDeltaCount,
   reverseFlowStartMilliseconds, reverseFlowEndMilliseconds - and
   biflowDirection (IANA 239); see ``biflow_names`` for their order.  The
   uniflow templates carry neither tcpControlBits nor ipClassOfService, so
   there are no reverse ones.  Nor are there reverse interfaces: the
   forward record's ingressInterface, egressInterface and flowDirection
   (and its zone's VRF ids) describe the pair, a conntrack reply crossing
   the original's interfaces swapped and a meter's two directions the one
   metered interface.
   Datagram size bound, template refresh, TCP and sequence numbers are
   ``template.py``'s and ``ipfix.py``'s, unchanged.
3. ``app.pipeline.BiflowExporter``: a ``TemplateExporter`` with that encoder
   and a pairer in front (``biflow: true`` on a version 10 collector).

Pairing (meter records, ``conn_id == 0``):

- The reverse key of a record is (dst, src, dport, sport), the same
  protocol, address family and VLAN (``Flow.vlan``, the outer tag: the QinQ
  inner tag is not in ``Flow``, so two directions that differ only by it
  would pair).  ICMP/ICMPv6 carry type*256+code in ``dport``: the reverse of
  a query is its reply type with the same code (echo 8 <-> 0, timestamp
  13 <-> 14, information 15 <-> 16, address mask 17 <-> 18; ICMPv6 echo
  128 <-> 129, node information 139 <-> 140, neighbour solicitation 135 <->
  advertisement 136: only a unicast solicitation pairs, one sent to a
  solicited-node multicast address has no reverse).  Every other ICMP
  type (errors such as unreachable or time exceeded, router
  advertisements, redirects) answers no ICMP flow in the other direction,
  has no reverse key and is exported at once alone.
- A record waits up to ``hold_s`` (default: the meter's inactive timeout)
  for a record of its reverse key whose time span, widened by ``hold_s`` on
  both sides, overlaps its own; of several such the one whose first packet is
  nearest.  So a 5-tuple reused later (a TCP port reused after FIN, a long
  flow cut by the active timeout) pairs each record with its own partner.
- Direction (RFC 5103 section 5.1, Direction by Initiator: the Source of a
  Biflow is the Initiator, the endpoint that sent the first packet): the
  record with the earlier first packet (``start_ms``) is forward.  Flow
  times are milliseconds, so a query and its answer on a fast link can tie
  (on a veth pair they usually do: tests/test_biflow_live.py): then an ICMP
  query beats its reply, and otherwise the record sent to the lower port (a
  client talking to a service port) is forward, then the one that reached
  the pairer first.  biflowDirection is 1 (initiator) when the first
  packets or the ICMP types told, 0 (arbitrary, section 5.3) after a tie
  broken by port or arrival.
- At most ``max_held`` records wait at once (the meter's ``max_flows``: a
  table's worth).  A record beyond that makes the one whose hold ends first
  go alone at once, counted in ``overflow`` (and in ``alone``): the pairer's
  memory is bounded whatever the rate of records, as the table's is.
- A record with no partner by the end of its hold is exported alone in the
  biflow template with the reverse values zero (counters and times): a
  uniflow record in a biflow template, which a reader takes for a biflow
  whose reverse direction carried no packet (libfixbuf, tshark and nfdump
  1.7.1 do: tests/test_biflow_meter.py).  RFC 5103 section 4 (Biflow
  Semantics) is where the RFC treats a Biflow seen in one direction only;
  its exact wording was not at hand when this was written and is not
  quoted here.  Its biflowDirection is 1: its source sent the first (only)
  packets seen.  One template per address family and ICMP-ness serves
  pairs and lone records alike, so a collector needs no second template.
- ``flowEndReason`` of a pair is that of the direction that ended last
  (the one whose end ended the conversation); on a tie the forward one's.

Conntrack records (``conn_id != 0``, a biflow collector in the daemon): a
connection's ORIGINAL and REPLY records leave the correlator together; each
such pair within one ``add`` becomes one biflow record, ORIGINAL forward
(conntrack knows the initiator: biflowDirection 1), with the original
direction's addresses and its postNAT* values (the reply's are their
mirror).  A conntrack record without its partner in the same call is
exported alone.  Conntrack records are never held.

Clock: ``now_ns`` is the meter's time: the wall clock for live meters and
the daemon, and for a capture file (``nfflowd meter -r``) the capture's
clock its sink passes in (the latest last-packet time among the records
received so far, ``cli._Exporter.clock``): never ahead of the meter's clock,
so a record is held at least ``hold_s`` of capture time after that clock
reached its arrival; what is left at the end is flushed.
"""

from __future__ import annotations

import heapq
from typing import Iterable, Sequence

from nfflowd.ipfix import IpfixEncoder
from nfflowd.record import ORIGINAL, Flow, FlowBatch
from nfflowd.template import FLOW_SOURCE

__all__ = ["BiflowPairer", "BiflowIpfixEncoder", "reverse_key", "biflow_direction",
           "REVERSE_ELEMENTS"]

# biflowDirection (IE 239) values, RFC 5103
ARBITRARY = 0
INITIATOR = 1

# ICMP query type -> reply type (the code is kept)
_ICMP_REPLY = {8: 0, 13: 14, 15: 16, 17: 18}
_ICMP6_REPLY = {128: 129, 139: 140, 135: 136}
_ICMP_PAIR = {1: {**_ICMP_REPLY, **{v: k for k, v in _ICMP_REPLY.items()}},
              58: {**_ICMP6_REPLY, **{v: k for k, v in _ICMP6_REPLY.items()}}}
_ICMP_QUERY = {1: set(_ICMP_REPLY), 58: set(_ICMP6_REPLY)}

_MS = 1_000_000


def _key(f: Flow) -> tuple:
    return (f[0], f[1], f[2], f[3], f[4], f[5], f[19])


def reverse_key(f: Flow) -> tuple | None:
    """The key of the records that answer ``f`` (family, proto, src, dst,
    sport, dport, vlan), or None when no record can (an ICMP error)."""
    family, proto = f[0], f[1]
    if (proto == 1 and family == 4) or (proto == 58 and family == 6):
        t = _ICMP_PAIR[proto].get(f[5] >> 8)
        if t is None:
            return None
        return (family, proto, f[3], f[2], f[4], (t << 8) | (f[5] & 0xFF), f[19])
    return (family, proto, f[3], f[2], f[5], f[4], f[19])


def _is_query(f: Flow) -> bool:
    q = _ICMP_QUERY.get(f[1])
    return q is not None and (f[5] >> 8) in q


def _order(held: Flow, new: Flow) -> tuple[Flow, Flow]:
    """(forward, reverse) of two records of one conversation; ``held``
    reached the pairer first."""
    if held.start_ms != new.start_ms:
        return (held, new) if held.start_ms < new.start_ms else (new, held)
    if _is_query(new) and not _is_query(held):
        return new, held
    if _is_query(held) and not _is_query(new):
        return held, new
    if new.dport < new.sport and not held.dport < held.sport:
        return new, held
    return held, new


def biflow_direction(fwd: Flow, rev: Flow | None) -> int:
    """biflowDirection of a pair as ``BiflowPairer`` ordered it: 1
    (initiator) when the first packets, the ICMP types or conntrack told
    which side began, 0 (arbitrary) when a tie was broken by port or
    arrival."""
    if rev is None or fwd.start_ms < rev.start_ms:
        return INITIATOR
    if fwd.conn_id and fwd.direction == ORIGINAL:
        return INITIATOR
    if _is_query(fwd) and not _is_query(rev):
        return INITIATOR
    return ARBITRARY


class BiflowPairer:
    """Pairs a meter's unidirectional records into biflows (see the module
    docstring).  ``hold_s``: how long a record waits for its reverse;
    ``max_held``: how many records may wait at once (None: no bound)."""

    def __init__(self, hold_s: float = 30.0, max_held: int | None = None):
        if not hold_s >= 0:
            raise ValueError("hold_s must be >= 0")
        if max_held is not None and max_held < 1:
            raise ValueError("max_held must be at least 1")
        self.max_held = max_held
        self.hold_ns = int(hold_s * 1e9)
        self.hold_ms = self.hold_ns // _MS
        self._waiting: dict[tuple, list] = {}     # key -> [entry], arrival order
        self._heap: list = []                     # (deadline, seq, entry)
        self._seq = 0
        self.held = 0                             # records waiting now
        # counters
        self.pairs = 0
        self.alone = 0                            # records exported without a partner
        self.overflow = 0                         # of those, sent early: max_held reached
        self.conntrack_pairs = 0

    def __len__(self) -> int:
        return self.held

    def add(self, flows: Iterable[Flow], now_ns: int) -> list:
        """Take the records ``flows`` ended at ``now_ns``; returns the pairs
        made now (and the records that cannot have a partner, alone)."""
        out = []
        ct: dict = {}
        hold_ms = self.hold_ms
        for f in flows:
            if f[18]:                                   # conntrack
                other = ct.pop(f[18], None)
                if other is None:
                    ct[f[18]] = f
                elif other[14] != f[14]:
                    out.append((other, f) if other[14] == ORIGINAL else (f, other))
                    self.conntrack_pairs += 1
                else:                                   # two of one direction
                    out.append((other, None))
                    self.alone += 1
                    ct[f[18]] = f
                continue
            rk = reverse_key(f)
            if rk is None:
                out.append((f, None))
                self.alone += 1
                continue
            cands = self._waiting.get(rk)
            best = None
            if cands:
                start, end = f[12], f[13]
                for i, e in enumerate(cands):
                    g = e[2]
                    if g[12] <= end + hold_ms and start <= g[13] + hold_ms:
                        d = abs(g[12] - start)
                        if best is None or d < best[0]:
                            best = (d, i)
            if best is not None:
                e = cands.pop(best[1])
                if not cands:
                    del self._waiting[rk]
                e[3] = False
                self.held -= 1
                out.append(_order(e[2], f))
                self.pairs += 1
                continue
            if self.held == self.max_held:
                self._overflow(out)
            self._seq += 1
            e = [now_ns + self.hold_ns, self._seq, f, True]
            self._waiting.setdefault(_key(f), []).append(e)
            heapq.heappush(self._heap, (e[0], e[1], e))
            self.held += 1
        if len(self._heap) > 2 * self.held + 1024:
            # entries of the records paired since: drop them (amortised O(1))
            self._heap = [x for x in self._heap if x[2][3]]
            heapq.heapify(self._heap)
        for f in ct.values():
            out.append((f, None))
            self.alone += 1
        return out

    def next_deadline(self) -> int | None:
        """When the next held record's hold ends (ns), None if none is held."""
        heap = self._heap
        while heap and not heap[0][2][3]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now_ns: int) -> list:
        """The records whose hold ended at or before ``now_ns``, alone."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            _, _, e = heapq.heappop(heap)
            if e[3]:
                self._drop(e)
                out.append((e[2], None))
        self.alone += len(out)
        return out

    def flush(self) -> list:
        """Every record still held, alone, in arrival order."""
        out = [(e[2], None) for _, _, e in sorted(self._heap, key=lambda x: x[1]) if e[3]]
        self._heap = []
        self._waiting = {}
        self.held = 0
        self.alone += len(out)
        return out

    def _overflow(self, out: list) -> None:
        """Send the record whose hold ends first alone, now (max_held reached)."""
        heap = self._heap
        while heap:
            e = heapq.heappop(heap)[2]
            if e[3]:
                self._drop(e)
                out.append((e[2], None))
                self.alone += 1
                self.overflow += 1
                return

    def _drop(self, e) -> None:
        e[3] = False
        k = _key(e[2])
        lst = self._waiting.get(k)
        if lst is not None:
            lst.remove(e)
            if not lst:
                del self._waiting[k]
        self.held -= 1


# -- the encoder -----------------------------------------------------------------

REVERSE_ELEMENTS = ("reverseOctetDeltaCount", "reversePacketDeltaCount",
                    "reverseFlowStartMilliseconds", "reverseFlowEndMilliseconds",
                    "biflowDirection")


def biflow_names(names: Sequence[str]) -> tuple:
    """A biflow template's elements from a uniflow template's ``names``:
    reverseFlowStart/EndMilliseconds just before flowStartMilliseconds, the
    reverse counters and biflowDirection at the end.  The times go first
    because nfcapd 1.7.1 reads elements 152/153 whatever their enterprise
    number and keeps the last one: after the forward times they would
    replace them (and a lone record would start in 1970); before them,
    nfdump shows the forward times and the reverse counters as its "out"
    packets and bytes (tests/test_biflow_meter.py)."""
    i = names.index("flowStartMilliseconds")
    return (*names[:i], *REVERSE_ELEMENTS[2:4], *names[i:], *REVERSE_ELEMENTS[:2],
            REVERSE_ELEMENTS[4])


# a row: the forward Flow's fields, then these
_ROW_EXTRA = ("rev_octets", "rev_packets", "rev_start_ms", "rev_end_ms", "biflow_direction")
_END = Flow._fields.index("end_reason")


def rows(pairs: Sequence) -> list[tuple]:
    """The encoder's rows of ``(forward, reverse or None)`` pairs."""
    out = []
    for fwd, rev in pairs:
        if rev is None:
            out.append((*fwd, 0, 0, 0, 0, INITIATOR))
            continue
        reason = rev[_END] if rev.end_ms > fwd.end_ms else fwd[_END]
        out.append((*fwd[:_END], reason, *fwd[_END + 1:], rev.octets, rev.packets,
                    rev.start_ms, rev.end_ms, biflow_direction(fwd, rev)))
    return out


class BiflowIpfixEncoder(IpfixEncoder):
    """``IpfixEncoder`` whose flow templates carry the reverse direction
    (RFC 5103).  ``encode_pairs`` takes ``(forward, reverse or None)``
    pairs; NAT events as ``IpfixEncoder``.  Template ids as the uniflow
    encoder's (256-259): a biflow collector's stream has only these."""

    FLOW_FIELDS = Flow._fields + _ROW_EXTRA
    FLOW_SOURCE = dict(FLOW_SOURCE, **dict(zip(REVERSE_ELEMENTS, _ROW_EXTRA)))

    def _flow_names(self, names: tuple) -> tuple:
        return biflow_names(names)

    def encode_pairs(self, pairs: Sequence, nat_events: Sequence, now_ms: int) -> list[bytes]:
        """IPFIX messages carrying one biflow record per pair (and
        ``nat_events``); as ``IpfixEncoder.encode`` otherwise."""
        # the rows as a batch of tuples (FLOW_FIELDS: a Flow's, then the
        # reverse direction's values), encoded record by record
        return self._encode(FlowBatch.from_flows(rows(pairs)), nat_events, now_ms, 0)

    def encode(self, batch: FlowBatch, nat_events, now_ms: int) -> list[bytes]:
        """Uniflow records as biflow records with the reverse values zero."""
        return self.encode_pairs([(f, None) for f in batch.flows()], nat_events, now_ms)
