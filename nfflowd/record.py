"""The records every source produces and every encoder consumes.

Strategy: a source (the conntrack correlator, the pcap meter) turns what it
sees into flow records, one per direction of a connection, and appends them to
a ``FlowBatchBuilder``: one record at a time as ``Flow`` tuples, or a block
of them at once as a ``FlowBatch`` of columns (the columnar decoder's
bursts).  ``builder.batch()`` gives everything appended, in order, as one
``FlowBatch``, the one thing encoders take.  Encoders see only finished
records and never go back to the source.  A batch keeps the form it was made
in: encoders take tuples record by record (the small rounds of a steady
stream, where numpy's fixed cost per call would dominate) and columns with
numpy (bursts); both write the same bytes (tests/test_wire.py).  A ``Flow``
is a NamedTuple rather than a dataclass because it is built on the hot path
(measured in bench/); every field is a plain int or bytes.

The batch API:

- ``FlowBatch``: ``len(batch)``; a column per ``Flow`` field by name
  (``batch.sport``, ...): addresses (n, 16) uint8, IPv4 in the first 4 bytes
  and zeros after, every other field uint64; ``batch.flows()`` the records
  as ``Flow`` tuples; ``batch.flow_list``, the tuples it was made of (None
  when made of columns); ``batch.as_columns()``, the same as columns;
  ``FlowBatch.from_flows(flows)``, ``FlowBatch.from_columns(**columns)``
  (every field, same length) and ``FlowBatch.concat(batches)`` make one.
- ``fits(column, bits)``: which values of an integer column a field of that
  width carries (a column some hand-made value of which a uint64 cannot
  hold is an object column).
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
- ``in_if``, ``out_if``: the firewall's (or capture's) ingress and egress
  interface index of this direction, 0 where unknown or local (a flow the
  host itself sends has no ingress, one it receives no egress).
- ``zone``: the conntrack zone (part of a connection's identity, exported as
  ingressVRFID/egressVRFID), 0 for the default zone and metered flows.
- ``mark``: the conntrack mark (ct mark), 0 where unset and for metered flows.

Producers on the hot path build ``Flow`` with ``tuple.__new__(Flow, (...))``
and readers unpack it by position (``correlate``, ``flowtools``): a new field
goes at the end, and every one of those must be updated with it
(tests/test_correlate.py checks the positions).
"""

from __future__ import annotations

import struct
from typing import Iterable, NamedTuple

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
    in_if: int = 0
    out_if: int = 0
    zone: int = 0
    mark: int = 0

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

class _Numpy:
    """numpy, imported when first used.  The command line loads its
    configuration (which imports the syslog mirror, so flowtools and this
    module) before it blocks the daemon's signals, and numpy's import starts
    threads, which must be started after that block (app/privileges.py).
    Modules that take ``np`` from here get numpy's names as attributes of
    this object, each looked up once."""

    def __getattr__(self, name):
        import numpy
        value = getattr(numpy, name)
        setattr(self, name, value)
        return value


np = _Numpy()

FLOW_FIELDS = Flow._fields
ADDRESS_FIELDS = ("src", "dst", "post_src", "post_dst")
_U64_MAX = (1 << 64) - 1
# One record as the bytes of a row of ``_row_dtype()``: ``struct`` checks
# every value (an int in [0, 2**64), addresses bytes) while it packs
_ROW = struct.Struct("=" + "".join("16s" if n in ADDRESS_FIELDS else "Q" for n in FLOW_FIELDS))
_ROW_DTYPE: list = []          # its numpy record, made at first use


def _row_dtype():
    """The numpy record of a packed ``_ROW``: the ``Flow`` fields, addresses
    as 16 uint8, every other field uint64."""
    if not _ROW_DTYPE:
        _ROW_DTYPE.append(np.dtype([(n, (np.uint8, 16) if n in ADDRESS_FIELDS else np.uint64)
                                    for n in FLOW_FIELDS]))
        assert _ROW.size == _ROW_DTYPE[0].itemsize
    return _ROW_DTYPE[0]


def address_list(a: np.ndarray, family: list) -> list:
    """Rows of an (n, 16) uint8 address column as packed bytes: 16 of them
    where the row's ``family`` is 6, else 4."""
    raw = a.tobytes()
    return [raw[16 * i:16 * i + (16 if f == 6 else 4)] for i, f in enumerate(family)]


def address_column(values: list) -> np.ndarray:
    """Packed addresses (bytes, 4 or 16 of them) as an (n, 16) uint8 column,
    each zero-padded (and cut) to 16 bytes; anything not bytes as zeros."""
    raw = b"".join(bytes(a[:16]).ljust(16, b"\0") if isinstance(a, (bytes, bytearray))
                   else bytes(16) for a in values)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(values), 16)


def int_column(values: list) -> np.ndarray:
    """Integers as a uint64 column, or, when some are not ints in
    [0, 2**64), as an object column holding the values as they are."""
    if all(type(v) is int and 0 <= v <= _U64_MAX for v in values):
        return np.array(values, dtype=np.uint64)
    col = np.empty(len(values), dtype=object)
    col[:] = values
    return col


def fits(col: np.ndarray, bits: int) -> np.ndarray:
    """Which values of an integer column are ints in [0, 2**bits) (a bool
    mask): what a field of that width can carry."""
    if col.dtype == np.uint64:
        if bits >= 64:
            return np.ones(len(col), dtype=bool)
        return (col >> np.uint64(bits)) == 0
    top = 1 << bits
    return np.fromiter((type(v) is int and 0 <= v < top for v in col.tolist()),
                       dtype=bool, count=len(col))


def interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows a[0], b[0], a[1], b[1], ... (``a`` and ``b`` alike in shape and
    type)."""
    n = len(a)
    out = np.empty((n, 2) + a.shape[1:], dtype=a.dtype)
    out[:, 0] = a
    out[:, 1] = b
    return out.reshape((2 * n,) + a.shape[1:])


class FlowBatch:
    """``Flow`` records, held in the form they were made in: ``Flow`` tuples
    (``from_flows``) or columns (``from_columns``, ``concat`` of a block);
    each form made from the other when first asked for.

    Columns: one attribute per ``Flow`` field, addresses (n, 16) uint8 (IPv4
    in the first 4 bytes, the rest zero; 16 bytes long where ``family`` is
    6, else 4), every other field a uint64 column.  A field some record of
    which holds a value a uint64 cannot (negative, wider, not an int: a
    hand-made record, a capture from before 1970) is an object column of the
    values as they are (``fits`` tells which fit a field).

    ``flow_list`` is the tuples a batch was made of (None for columns):
    encoders take such a batch record by record, a columnar one with numpy
    (per record is cheaper for the small rounds the tuples come in, numpy's
    fixed cost per call being paid once per column; bench/README.md).

    ``l7``: the application fields of the records that have some (the
    meter's ``--l7``), ``{record index: {field name: value}}``; empty for
    most batches, so that everything which does not look at it pays
    nothing.  ``concat`` and the builder carry it, indexes shifted."""

    __slots__ = FLOW_FIELDS + ("n", "flow_list", "_rows", "l7")

    def __init__(self):
        self.n = 0
        self.flow_list = None       # the Flow tuples the batch was made of
        self._rows = None           # their _row_dtype() array, once a column was asked for
        self.l7 = {}                # record index -> {field: value}

    def __getattr__(self, name):
        # a column not made yet: made from the tuples (all columns at once,
        # views of one packed array; an object column where needed)
        flows = self.flow_list
        if flows is None or name not in FLOW_FIELDS:
            raise AttributeError(name)
        if self._rows is None:
            try:
                pack = _ROW.pack
                self._rows = np.frombuffer(b"".join([pack(*f) for f in flows]),
                                           dtype=_row_dtype())
            except struct.error:        # a value a uint64 cannot hold
                self._columns_of(flows)
                return object.__getattribute__(self, name)
        col = self._rows[name]
        setattr(self, name, col)
        return col

    def __len__(self):
        return self.n

    def flows(self) -> list:
        """The records as ``Flow`` tuples."""
        if self.flow_list is not None:
            return self.flow_list
        if not self.n:
            return []
        fam = self.family.tolist()
        cols = []
        for name in FLOW_FIELDS:
            col = getattr(self, name)
            cols.append(address_list(col, fam) if name in ADDRESS_FIELDS else col.tolist())
        new = tuple.__new__
        return [new(Flow, t) for t in zip(*cols)]

    def as_columns(self) -> "FlowBatch":
        """The same records as a batch of columns (contiguous, as the
        columnar decoder's blocks come): tests and tools, both forms being
        encoded alike."""
        if self.flow_list is None:
            return self
        c = FlowBatch.from_columns(**{name: np.ascontiguousarray(getattr(self, name))
                                      for name in FLOW_FIELDS})
        c.l7 = self.l7
        return c

    @classmethod
    def from_flows(cls, flows) -> "FlowBatch":
        """The batch of the ``Flow`` tuples ``flows`` (copied: the caller
        may go on changing its list)."""
        c = cls()
        c.flow_list = list(flows)
        c.n = len(c.flow_list)
        return c

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
        """One batch of ``parts``' rows, in order: tuples if they all are."""
        if len(parts) == 1:
            return parts[0]
        if all(p.flow_list is not None for p in parts):
            c = cls.from_flows([f for p in parts for f in p.flow_list])
        else:
            c = cls()
            for name in FLOW_FIELDS:
                cols = [getattr(p, name) for p in parts]
                if name not in ADDRESS_FIELDS and any(col.dtype != np.uint64 for col in cols):
                    cols = [col.astype(object) for col in cols]
                setattr(c, name, np.concatenate(cols))
            c.n = sum(p.n for p in parts)
        base = 0
        for p in parts:
            if p.l7:
                c.l7.update((base + i, v) for i, v in p.l7.items())
            base += p.n
        return c

    def _columns_of(self, flows) -> None:
        cols = list(zip(*flows)) or [()] * len(FLOW_FIELDS)
        if len(cols) != len(FLOW_FIELDS):
            raise ValueError("not Flow records")
        for name, col in zip(FLOW_FIELDS, cols):
            setattr(self, name,
                    address_column(col) if name in ADDRESS_FIELDS else int_column(col))


class FlowBatchBuilder:
    """The records of a batch in the making, in order: ``Flow`` tuples and
    ``FlowBatch`` blocks.  ``len`` counts records; ``batch()`` gives them
    all as one ``FlowBatch``."""

    __slots__ = ("_parts", "_n")

    def __init__(self):
        self._parts: list = []      # list of Flow lists and FlowBatch blocks
        self._n = 0

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

    def clear(self) -> None:
        self._parts = []
        self._n = 0

    def batch(self) -> FlowBatch:
        """Everything appended so far as one ``FlowBatch``, in order: of
        tuples when only tuples were appended, else of columns."""
        return FlowBatch.concat([p if type(p) is not list else FlowBatch.from_flows(p)
                                 for p in self._parts] or [FlowBatch.from_flows([])])
