"""The records every source produces and every encoder consumes.

Strategy: a source (the conntrack correlator, the pcap meter) turns what it
sees into flow records, one per direction of a connection, and appends them to
a ``FlowBatchBuilder``: one record at a time as ``Flow`` tuples, or a block
of them at once as a ``FlowBatch``.  ``builder.batch()`` gives everything
appended, in order, as one ``FlowBatch``: the ``Flow`` fields as columns
(numpy arrays, one row per record).  Encoders see only finished records and
never go back to the source.  A ``Flow`` is a NamedTuple rather than a
dataclass because it is built on the hot path (measured in bench/); every
field is a plain int or bytes.

The batch API:

- ``FlowBatch``: ``len(batch)``; a column per ``Flow`` field by name
  (``batch.sport``, ...): addresses (n, 16) uint8, IPv4 in the first 4 bytes
  and zeros after, every other field uint64; ``batch.flows()`` the rows as
  ``Flow`` tuples; ``FlowBatch.from_flows(flows)``,
  ``FlowBatch.from_columns(**columns)`` (every field, same length) and
  ``FlowBatch.concat(batches)`` make one.
- ``FlowBatchBuilder``: ``append(flow)``, ``extend(flows)``,
  ``add_block(batch)``, ``len``, ``bool``, ``clear()``, ``batch()``.
- ``interleave(a, b)``: rows a[0], b[0], a[1], b[1], ... (original and reply
  of each connection, say).

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

from typing import Iterable, NamedTuple

import numpy as np

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


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------

FLOW_FIELDS = Flow._fields
ADDRESS_FIELDS = ("src", "dst", "post_src", "post_dst")


def address_list(a: np.ndarray, family: list) -> list:
    """Rows of an (n, 16) uint8 address column as packed bytes, 4 of them
    where the row's ``family`` is 4, else 16."""
    raw = a.tobytes()
    return [raw[16 * i:16 * i + (4 if f == 4 else 16)] for i, f in enumerate(family)]


def interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows a[0], b[0], a[1], b[1], ... (``a`` and ``b`` alike in shape and
    type)."""
    n = len(a)
    out = np.empty((n, 2) + a.shape[1:], dtype=a.dtype)
    out[:, 0] = a
    out[:, 1] = b
    return out.reshape((2 * n,) + a.shape[1:])


class FlowBatch:
    """``Flow`` records as columns: addresses (n, 16) uint8 (IPv4 in the first
    4 bytes, the rest zero), every other field uint64, in ``Flow`` order."""

    __slots__ = FLOW_FIELDS + ("n",)

    def __len__(self):
        return self.n

    def flows(self) -> list:
        """The records as ``Flow`` tuples."""
        if not self.n:
            return []
        fam = self.family.tolist()
        cols = []
        for name in FLOW_FIELDS:
            col = getattr(self, name)
            cols.append(address_list(col, fam) if name in ADDRESS_FIELDS else col.tolist())
        new = tuple.__new__
        return [new(Flow, t) for t in zip(*cols)]

    @classmethod
    def from_columns(cls, **columns) -> "FlowBatch":
        """A batch of the given columns: every ``Flow`` field, as above."""
        b = cls()
        for name in FLOW_FIELDS:
            setattr(b, name, columns.pop(name))
        if columns:
            raise TypeError(f"not Flow fields: {sorted(columns)}")
        b.n = len(b.family)
        return b

    @classmethod
    def concat(cls, parts: list) -> "FlowBatch":
        """One batch of ``parts``' rows, in order."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.from_flows([])
        c = cls()
        for name in FLOW_FIELDS:
            setattr(c, name, np.concatenate([getattr(p, name) for p in parts]))
        c.n = sum(p.n for p in parts)
        return c

    @classmethod
    def from_flows(cls, flows) -> "FlowBatch":
        """Columns of ``Flow`` tuples.  Raises ValueError for records the
        columns cannot hold as they are (address length not that of the
        family, values beyond 64 bits or negative)."""
        c = cls()
        c.n = len(flows)
        if not flows:
            for name in FLOW_FIELDS:
                setattr(c, name, np.zeros((0, 16) if name in ADDRESS_FIELDS else 0,
                                          dtype=np.uint8 if name in ADDRESS_FIELDS
                                          else np.uint64))
            return c
        cols = list(zip(*flows))
        if len(cols) != len(FLOW_FIELDS):
            raise ValueError("not Flow records")
        fam = cols[0]
        for i, name in enumerate(FLOW_FIELDS):
            col = cols[i]
            if name in ADDRESS_FIELDS:
                parts = []
                for f, a in zip(fam, col):
                    if type(a) is not bytes or len(a) != (4 if f == 4 else 16) \
                            or f not in (4, 6):
                        raise ValueError("address")
                    parts.append(a if f == 6 else a + b"\0" * 12)
                arr = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(c.n, 16)
            else:
                try:
                    arr = np.array(col, dtype=np.uint64)
                except (OverflowError, ValueError, TypeError) as e:
                    raise ValueError(name) from e
                if any(type(v) is not int or v < 0 for v in col):
                    raise ValueError(name)
            setattr(c, name, arr)
        return c


class FlowBatchBuilder:
    """The records of a batch in the making, in order: ``Flow`` tuples and
    ``FlowBatch`` blocks.  ``len`` counts records; ``batch()`` gives them
    all as one ``FlowBatch``."""

    __slots__ = ("_parts", "_n", "_blocks")

    def __init__(self):
        self._parts: list = []      # list of Flow lists and FlowBatch blocks
        self._n = 0
        self._blocks = 0

    def __len__(self):
        return self._n

    def __bool__(self):
        return self._n > 0

    def append(self, flow: Flow) -> None:
        self.extend((flow,))

    def extend(self, flows: Iterable[Flow]) -> None:
        flows = list(flows)
        if not flows:
            return
        parts = self._parts
        if parts and type(parts[-1]) is list:
            parts[-1].extend(flows)
        else:
            parts.append(flows)
        self._n += len(flows)

    def add_block(self, batch: FlowBatch) -> None:
        if batch.n:
            self._parts.append(batch)
            self._n += batch.n
            self._blocks += 1

    @property
    def has_blocks(self) -> bool:
        return self._blocks > 0

    def clear(self) -> None:
        self._parts = []
        self._n = 0
        self._blocks = 0

    def __iter__(self):
        for p in self._parts:
            if type(p) is list:
                yield from p
            else:
                yield from p.flows()

    def flows(self) -> list:
        """The records as ``Flow`` tuples."""
        return list(self)

    def for_export(self):
        """What the encoders take: one ``FlowBatch`` when a burst left
        blocks here (and every flow fits columns), else the ``Flow`` list."""
        cols = self.batch() if self._blocks else None
        return cols if cols is not None else self.flows()

    def batch(self) -> FlowBatch | None:
        """Everything as one ``FlowBatch``; None when some ``Flow`` cannot be
        held as columns (then use ``flows()``)."""
        try:
            return FlowBatch.concat([p if type(p) is not list else FlowBatch.from_flows(p)
                                     for p in self._parts])
        except ValueError:
            return None
