"""Templates, sets and size-bounded datagrams shared by NetFlow v9 and IPFIX.

Strategy: NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) are the same template
protocol with different headers.  Everything that is the same lives here, once:

- ``Template``: a template id and a tuple of information element names (see
  ``ie.py``), compiled once into a ``struct.Struct`` for its data records and
  into the bytes of its template record.
- ``template_set``, ``records_fitting``: a template set's bytes, and how
  many records a data set can take in what is left of a datagram.
- ``TemplateEncoder``: the record layer both encoders share: which templates
  (per address family, with or without ICMP, with or without the zone, NAT
  events per family), how a ``FlowBatch`` / ``NatEvent`` maps onto them,
  when templates are (re)sent, and the loop that cuts packed records into
  datagrams.  ``netflow9.NetflowV9Encoder`` and
  ``ipfix.IpfixEncoder`` only supply the header, the set ids, the padding and
  the sequence rule.

Set layout (both protocols): a 4-byte set header (set id / FlowSet id,
length including the header and any padding), then records back to back.
A template record is template id, field count, then (element id, length)
pairs, or (element id | 0x8000, length, enterprise number) for an
enterprise-specific element (IPFIX only: RFC 5103's reverse elements,
``biflow.py``); either way a template set is a multiple of 4 bytes.
Padding of data sets is the subclass's ``PAD``: NetFlow v9 pads every
FlowSet to 4 bytes (RFC 3954 section 5.3, "SHOULD"), IPFIX does not pad
(RFC 7011 section 3.3.1: padding "MAY" be inserted; without it no
collector has to tell padding from a record).
Padding bytes are zero and always shorter than a record.

Hot path: records are grouped per template (order kept within a template)
and each group packed into one bytes object, in the form of the batch (see
``record.FlowBatch``): tuples one ``Struct.pack`` each through an
``operator.itemgetter``, columns by numpy into a record of the template's
layout.  One loop cuts the packed groups into data sets and datagrams.

Flow records carry ingressInterface and egressInterface (the record's
``in_if`` and ``out_if``) and flowDirection, derived: 1 (egress) when
``in_if`` is 0 and ``out_if`` is not (the host's own traffic, seen only
leaving), else 0 (ingress).  A record whose ``zone`` is not 0 goes in a
variant of its template (id + ``ZONE_TID``) that adds ingressVRFID and
egressVRFID, both the zone: zone-0 records carry no VRF, and a template is
one field set, as exporters make them.

Templates go before the first data set, then again in the first datagram
once ``template_refresh_packets`` datagrams were sent since the last ones, or
``template_refresh_seconds`` elapsed (``now_ms`` is passed in), or after
``force_templates()`` (IPFIX over TCP after a reconnect, a collector restart).
Each refresh carries every template of the enabled record kinds (zone
variants included), in as many datagrams as they need: those that do not
fit the datagram that opens with them go first in datagrams of their own
(``max_size`` need only hold the header, the largest template and a
record, as it did before the variants doubled the set).  A quiet
exporter sends no data to carry them: ``refresh_templates(now_ms)``, called
periodically, returns a templates-only datagram once the time refresh is due.

Application fields (``FlowBatch.l7``, the meter's ``--l7``): a record that
has some goes under a template of its flow template's elements followed by
those of its fields (the encoder's ``L7`` table, ``ie.py``: in IPFIX
ipfixprobe's enterprise elements, strings of variable length, RFC 7011
section 7; in v9 the IANA HTTP elements, strings of fixed length): a
template per field set, as exporters make them, its id stable for the
encoder's life (one per (flow template, field set), from ``L7_TID_FIRST``
on, at most ``L7_TEMPLATES_MAX``).  Such records are few: they are packed
one by one, each in a data set of its own, after the other records of the
batch.  A new template goes just before its first record (in the same
datagram when both fit, else opening the next), and from then on with
every refresh.  Fields that cannot go (no element in the protocol, a value
out of its element's range, a JA3 that is not 32 hex digits, a record too
large for ``max_size``, the template limit reached) and strings cut to a
fixed length are counted by reason in ``l7_unexported``; the record goes
without the fields left out.  Records without application fields go as
before, byte for byte.

Options (``attach_options``, ``options.ExporterOptions``): datagrams of
options templates and records go just before each datagram that carries
the templates, and between refreshes when the options are due (interfaces
changed, their period passed); each counts 0 in ``last_counts``.
"""

from __future__ import annotations

import struct
from operator import itemgetter
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from nfflowd.ie import L7_ELEMENTS, VARLEN, element
from nfflowd.options import fixed_string, varlen
from nfflowd.record import (FLOW_FIELDS, NAT44_SESSION_CREATE, NAT44_SESSION_DELETE, NAT_CREATE,
                            NAT_DELETE, Flow, FlowBatch, NatEvent)

SET_HEADER = struct.Struct("!HH")
# IPFIX field specifier of an enterprise-specific element (RFC 7011 section
# 3.2): element id with the enterprise bit, length, Private Enterprise Number
_ENTERPRISE_FIELD = struct.Struct("!HHI")


class Template:
    """A template: id (>= 256) and element names, compiled."""

    __slots__ = ("id", "names", "struct", "size", "record", "pack_into")

    def __init__(self, template_id: int, names: Sequence[str]):
        if not 256 <= template_id <= 0xFFFF:
            raise ValueError("template ids are 256-65535")
        ies = [element(n) for n in names]
        self.id = template_id
        self.names = tuple(names)
        self.struct = struct.Struct("!" + "".join(ie.fmt for ie in ies))
        self.size = self.struct.size
        assert self.size == sum(ie.length for ie in ies)
        self.pack_into = self.struct.pack_into
        self.record = SET_HEADER.pack(template_id, len(ies)) + b"".join(
            _ENTERPRISE_FIELD.pack(ie.id | 0x8000, ie.length, ie.enterprise) if ie.enterprise
            else SET_HEADER.pack(ie.id, ie.length) for ie in ies)

    def __repr__(self):
        return f"Template({self.id}, {self.names})"

    def misfit(self, values: Sequence) -> str:
        """Why ``values`` (in template order) do not pack: the first element
        whose value does not fit its field (for the counters; rare path)."""
        for name, v in zip(self.names, values):
            try:
                struct.pack("!" + element(name).fmt, v)
            except (struct.error, TypeError):
                return f"{name} out of range"
        return "values do not fit the template"


def padded(n: int, pad: int) -> int:
    """``n`` rounded up to a multiple of ``pad`` (1 = no padding)."""
    return n + (-n % pad)


def records_fitting(max_size: int, off: int, size: int, pad: int) -> int:
    """How many records of ``size`` bytes a new data set (4-byte header,
    padded to ``pad``) can take in a datagram of at most ``max_size`` bytes
    filled up to ``off``."""
    room = max_size - off - 4
    if room < size:
        return 0
    n = room // size
    if padded(4 + n * size, pad) > room + 4:
        n -= 1      # the padding would not fit; one record less leaves room for it
    return n


def template_set(set_id: int, templates: Sequence[Template], pad: int = 4) -> bytes:
    """A whole template set (FlowSet id 0 in v9, set id 2 in IPFIX)."""
    body = b"".join(t.record for t in templates)
    n = padded(4 + len(body), pad)
    return SET_HEADER.pack(set_id, n) + body + bytes(n - 4 - len(body))


def data_set(template: Template, rows: Iterable[Sequence], pad: int = 4) -> bytes:
    """A whole data set of ``rows`` (value tuples in template order); for tests
    and tools."""
    body = b"".join(template.struct.pack(*r) for r in rows)
    n = padded(4 + len(body), pad)
    return SET_HEADER.pack(template.id, n) + body + bytes(n - 4 - len(body))


class L7Template:
    """A flow template (``base``) followed by application fields (names of
    ``table``, ``ie.L7_ELEMENTS`` or ``ie.V9_L7_ELEMENTS``): its template
    record; its data records are the base's record then the fields'
    encodings (``encode_l7``)."""

    __slots__ = ("id", "base", "fields", "names", "record")

    def __init__(self, template_id: int, base: Template, fields: Sequence[str],
                 table: dict = L7_ELEMENTS):
        if not 256 <= template_id <= 0xFFFF:
            raise ValueError("template ids are 256-65535")
        ies = [table[f].ie for f in fields]
        self.id = template_id
        self.base = base
        self.fields = tuple(fields)
        self.names = base.names + self.fields
        self.record = (SET_HEADER.pack(template_id, len(base.names) + len(ies)) + base.record[4:]
                       + b"".join(_ENTERPRISE_FIELD.pack(ie.id | 0x8000, ie.length, ie.enterprise)
                                  if ie.enterprise else SET_HEADER.pack(ie.id, ie.length)
                                  for ie in ies))

    def __repr__(self):
        return f"L7Template({self.id}, {self.base.id}, {self.fields})"


_ORDER: dict = {}      # id(table) -> {field: its position}: encode_l7's order


def encode_l7(values: dict, table: dict = L7_ELEMENTS) -> tuple[tuple, bytes, list]:
    """The application fields of one record (``FlowBatch.l7``'s ``{field:
    value}``) as the tail of its data record under the elements of
    ``table``: (the fields encoded, in ``table`` order; their bytes; the
    reasons of those left out or cut).  Strings are UTF-8, of variable
    length or cut to their element's and NUL-padded; the JA3 the 16 bytes
    of its MD5 (as ipfixprobe sends it); integers of their element's size.
    None values are absent fields."""
    names, parts, bad = [], [], []
    present = []
    for name, v in values.items():
        if v is None:
            continue
        if name in table:
            present.append(name)
        else:
            bad.append(f"{name}: no element" if name not in L7_ELEMENTS
                       else f"{name}: no element in NetFlow v9")
    if len(present) > 1:
        order = _ORDER.get(id(table))
        if order is None:
            order = _ORDER[id(table)] = {n: i for i, n in enumerate(table)}
        present.sort(key=order.__getitem__)
    for name in present:
        el = table[name]
        v = values[name]
        if el.type == "string":
            if not isinstance(v, str):
                bad.append(f"{name}: not a string")
                continue
            try:
                raw = v.encode("utf-8")
                if el.ie.length == VARLEN:
                    b = varlen(raw)
                else:
                    b = fixed_string(v, el.ie.length)
                    if len(raw) > el.ie.length:
                        bad.append(f"{name}: cut to {el.ie.length} bytes")
            except ValueError:              # a lone surrogate; longer than 65535 bytes
                bad.append(f"{name}: not encodable")
                continue
        elif el.type == "octetArray":       # the JA3: its MD5 in hex
            try:
                raw = bytes.fromhex(v) if isinstance(v, str) and len(v) == 32 else b""
            except ValueError:
                raw = b""
            if len(raw) != 16:
                bad.append(f"{name}: not 32 hex digits")
                continue
            b = varlen(raw)
        elif type(v) is not int and not isinstance(v, np.integer):
            bad.append(f"{name}: not an integer")
            continue
        else:
            try:
                b = struct.pack("!" + el.ie.fmt, v)
            except struct.error:
                bad.append(f"{name}: out of range")
                continue
        names.append(name)
        parts.append(b)
    return tuple(names), b"".join(parts), bad


class _OneRecord(NamedTuple):
    """A group of one record of its own length (``_encode`` reads ``id``
    and ``size``); ``template`` is the one to announce first if new."""
    id: int
    size: int
    template: object


def split_l7(batch: FlowBatch) -> tuple[FlowBatch, list]:
    """(the records of ``batch`` without application fields, as a batch of
    the same form; [(``Flow``, its fields)] of the others, in order)."""
    idx = sorted(i for i in batch.l7 if 0 <= i < batch.n)
    if batch.flow_list is not None:
        flows = batch.flow_list
        keep = set(idx)
        rest = FlowBatch.from_flows([f for i, f in enumerate(flows) if i not in keep])
        picked = [flows[i] for i in idx]
    else:
        mask = np.ones(batch.n, dtype=bool)
        mask[idx] = False
        at = np.asarray(idx, dtype=np.intp)
        rest = FlowBatch.from_columns(**{n: getattr(batch, n)[mask] for n in FLOW_FIELDS})
        picked = FlowBatch.from_columns(**{n: getattr(batch, n)[at] for n in FLOW_FIELDS}).flows()
    return rest, [(f, batch.l7[i]) for f, i in zip(picked, idx)]


# -- the templates nfflowd sends ------------------------------------------------

_FLOW_COMMON_HEAD = ("protocolIdentifier",)
# every flow template ends with these (flowDirection derived, see FLOW_SOURCE)
_FLOW_INTERFACES = ("ingressInterface", "egressInterface", "flowDirection")
# the zone variants add these, both the record's zone
ZONE_ELEMENTS = ("ingressVRFID", "egressVRFID")
_FLOW_COUNTERS = ("octetDeltaCount", "packetDeltaCount", "flowStartMilliseconds",
                  "flowEndMilliseconds", "flowEndReason")

FLOW4 = ("sourceIPv4Address", "destinationIPv4Address", "sourceTransportPort",
         "destinationTransportPort", *_FLOW_COMMON_HEAD, *_FLOW_COUNTERS,
         "postNATSourceIPv4Address", "postNATDestinationIPv4Address",
         "postNAPTSourceTransportPort", "postNAPTDestinationTransportPort", *_FLOW_INTERFACES)
FLOW6 = ("sourceIPv6Address", "destinationIPv6Address", "sourceTransportPort",
         "destinationTransportPort", *_FLOW_COMMON_HEAD, *_FLOW_COUNTERS,
         "postNATSourceIPv6Address", "postNATDestinationIPv6Address",
         "postNAPTSourceTransportPort", "postNAPTDestinationTransportPort", *_FLOW_INTERFACES)
FLOW4_ICMP = ("sourceIPv4Address", "destinationIPv4Address", *_FLOW_COMMON_HEAD,
              "icmpTypeCodeIPv4", *_FLOW_COUNTERS,
              "postNATSourceIPv4Address", "postNATDestinationIPv4Address", *_FLOW_INTERFACES)
FLOW6_ICMP = ("sourceIPv6Address", "destinationIPv6Address", *_FLOW_COMMON_HEAD,
              "icmpTypeCodeIPv6", *_FLOW_COUNTERS,
              "postNATSourceIPv6Address", "postNATDestinationIPv6Address", *_FLOW_INTERFACES)
# RFC 8158 section 4.4 (NAT44 / NAT64 session create/delete), less the VRF id,
# then flowStartMilliseconds and flowEndMilliseconds, both the event time:
# collectors that time every record by them (nfdump 1.7 reads only these as
# a record's first/last, in v9 and IPFIX) list and select NAT events at their
# time rather than at 1970-01-01.
_NAT_TIMES = ("flowStartMilliseconds", "flowEndMilliseconds")
NAT4 = ("observationTimeMilliseconds", "natEvent", "protocolIdentifier",
        "sourceIPv4Address", "sourceTransportPort",
        "postNATSourceIPv4Address", "postNAPTSourceTransportPort",
        "destinationIPv4Address", "destinationTransportPort",
        "postNATDestinationIPv4Address", "postNAPTDestinationTransportPort", *_NAT_TIMES)
NAT6 = ("observationTimeMilliseconds", "natEvent", "protocolIdentifier",
        "sourceIPv6Address", "sourceTransportPort",
        "postNATSourceIPv6Address", "postNAPTSourceTransportPort",
        "destinationIPv6Address", "destinationTransportPort",
        "postNATDestinationIPv6Address", "postNAPTDestinationTransportPort", *_NAT_TIMES)

TID_FLOW4, TID_FLOW6, TID_FLOW4_ICMP, TID_FLOW6_ICMP, TID_NAT4, TID_NAT6 = range(256, 262)
# the zone variant of flow template t is t + ZONE_TID (262-265)
ZONE_TID = 6
# the templates of records with application fields: 1024 on, one per (flow
# template, field set), as they first come (options.py has 512-514)
L7_TID_FIRST = 1024
L7_TEMPLATES_MAX = 1024

# Which record field carries each element (FLOW_SOURCE: of the flow templates,
# biflow.py extends it).  ``Flow`` fields by name; for NAT
# events the natEvent code is appended to the NatEvent tuple (index 13).
FLOW_SOURCE = {
    "sourceIPv4Address": "src", "sourceIPv6Address": "src",
    "destinationIPv4Address": "dst", "destinationIPv6Address": "dst",
    "sourceTransportPort": "sport", "destinationTransportPort": "dport",
    "icmpTypeCodeIPv4": "dport", "icmpTypeCodeIPv6": "dport",
    "protocolIdentifier": "proto",
    "octetDeltaCount": "octets", "packetDeltaCount": "packets",
    "flowStartMilliseconds": "start_ms", "flowEndMilliseconds": "end_ms",
    "flowEndReason": "end_reason",
    "postNATSourceIPv4Address": "post_src", "postNATSourceIPv6Address": "post_src",
    "postNATDestinationIPv4Address": "post_dst", "postNATDestinationIPv6Address": "post_dst",
    "postNAPTSourceTransportPort": "post_sport",
    "postNAPTDestinationTransportPort": "post_dport",
    "vlanId": "vlan",
    "ingressInterface": "in_if", "egressInterface": "out_if",
    "flowDirection": "flow_direction",
    "ingressVRFID": "zone", "egressVRFID": "zone",
}
# Values derived from a record's fields (a source above that is not a
# field): name -> (the fields it reads, its expression over them in a
# getter, the same over a batch's columns)
DERIVED = {
    "flow_direction": (("in_if", "out_if"), "(1 if not {0} and {1} else 0)",
                       lambda in_if, out_if: ((in_if == 0) & (out_if != 0)).astype(np.uint8)),
}
_NAT_SOURCE = dict(FLOW_SOURCE, observationTimeMilliseconds="time_ms", natEvent="code",
                   flowStartMilliseconds="time_ms", flowEndMilliseconds="time_ms")
_NAT_FIELDS = NatEvent._fields + ("code",)


# Flow fields narrower than 64 bits in the templates, and their widths
_NARROW = (("proto", 8), ("sport", 16), ("dport", 16), ("post_sport", 16),
           ("post_dport", 16), ("end_reason", 8), ("vlan", 16), ("in_if", 32), ("out_if", 32),
           ("zone", 32))
_NP_FMT = {"B": "u1", "H": ">u2", "I": ">u4", "Q": ">u8", "4s": ("u1", 4), "16s": ("u1", 16)}


def _columns_dtype(tpl: Template) -> np.dtype:
    """A numpy record with the layout of ``tpl.struct`` (no padding)."""
    names, formats, offsets = [], [], []
    off = 0
    for n in tpl.names:
        ie = element(n)
        names.append(n)
        formats.append(_NP_FMT[ie.fmt])
        offsets.append(off)
        off += ie.length
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                   "itemsize": off})
    assert dt.itemsize == tpl.size
    return dt


def _pack_columns(tpl: Template, dt: np.dtype, cols, rows) -> bytes:
    """The records ``rows`` (an index array, or ``slice(None)``: all) of
    ``cols`` packed as ``tpl`` packs them."""
    arr = np.zeros(cols.n if isinstance(rows, slice) else len(rows), dtype=dt)
    for n in tpl.names:
        src = FLOW_SOURCE[n]
        if src in DERIVED:
            fields, _, fn = DERIVED[src]
            col = fn(*(getattr(cols, f)[rows] for f in fields))
        else:
            col = getattr(cols, src)[rows]
        if col.ndim == 2:
            arr[n] = col[:, :dt[n].shape[0]]
        else:
            arr[n] = col
    return arr.tobytes()


def _getter(names: Sequence[str], source: dict, fields: Sequence[str]) -> Callable:
    """A function of an item (a tuple of ``fields``) giving the values of
    ``names`` in order: an ``itemgetter``, or where a value is derived
    (``DERIVED``) a lambda made for the template (as fast as the getter,
    measured)."""
    if not any(source[n] in DERIVED for n in names):
        idx = [fields.index(source[n]) for n in names]
        if len(idx) == 1:
            i = idx[0]
            return lambda r: (r[i],)
        return itemgetter(*idx)
    parts = []
    for n in names:
        src = source[n]
        if src in DERIVED:
            reads, expr, _ = DERIVED[src]
            parts.append(expr.format(*(f"r[{fields.index(f)}]" for f in reads)))
        else:
            parts.append(f"r[{fields.index(src)}]")
    return eval("lambda r: (" + ", ".join(parts) + ",)")     # noqa: S307 (names, no data)


# the flow templates without the zone (their zone variants: see ZONE_TID)
FLOW_TEMPLATES = {TID_FLOW4: FLOW4, TID_FLOW6: FLOW6,
                  TID_FLOW4_ICMP: FLOW4_ICMP, TID_FLOW6_ICMP: FLOW6_ICMP}
NAT_TEMPLATES = {TID_NAT4: NAT4, TID_NAT6: NAT6}

RECORD_KINDS = ("flows", "nat_events")
NOT_IP = "not IPv4 or IPv6"     # a reason the encoders skip a record (invalid_reasons)
NAT_CODES = {
    # (codes, family) -> (create, delete).  RFC 8158 defines session events for
    # NAT44 and NAT64 only; an IPv6-to-IPv6 translation (NPTv6, NAT66) gets
    # the NAT44 session codes, as the closest defined "address family kept"
    # event, rather than NAT64 ones which say the family changed.
    ("rfc8158", 4): (NAT44_SESSION_CREATE, NAT44_SESSION_DELETE),
    ("rfc8158", 6): (NAT44_SESSION_CREATE, NAT44_SESSION_DELETE),
    ("legacy", 4): (NAT_CREATE, NAT_DELETE),
    ("legacy", 6): (NAT_CREATE, NAT_DELETE),
}


class TemplateEncoder:
    """The record layer shared by the v9 and IPFIX encoders (subclass it).

    Subclasses set HEADER_SIZE, TEMPLATE_SET_ID, PAD and implement
    ``_header(length, template_records, data_records, now_ms, boot_ms)``,
    which also advances the sequence.
    """

    HEADER_SIZE = 0
    TEMPLATE_SET_ID = 0
    PAD = 1
    MAX_SIZE_LIMIT = 65535
    L7: dict = L7_ELEMENTS      # the elements of the application fields (ie.py)

    def __init__(self, records: Sequence[str] = RECORD_KINDS, nat_event_codes: str = "rfc8158",
                 max_size: int = 1400, template_refresh_packets: int = 20,
                 template_refresh_seconds: float = 60, vlan: bool = False):
        records = tuple(records)
        if not records or any(r not in RECORD_KINDS for r in records):
            raise ValueError(f"records: a non-empty subset of {RECORD_KINDS}, not {records!r}")
        if nat_event_codes not in ("rfc8158", "legacy"):
            raise ValueError("nat_event_codes is 'rfc8158' or 'legacy'")
        if template_refresh_packets is not None and template_refresh_packets < 0:
            raise ValueError("template_refresh_packets must be >= 0 (0: no count refresh)")
        if template_refresh_seconds is not None and template_refresh_seconds < 0:
            raise ValueError("template_refresh_seconds must be >= 0 (0: no time refresh)")
        self.records = records
        self.nat_event_codes = nat_event_codes
        self.refresh_packets = template_refresh_packets or 0
        self.refresh_ms = int((template_refresh_seconds or 0) * 1000)

        self.templates: list[Template] = []
        self._flow_tpl: dict = {}
        if "flows" in records:
            t = {tid: Template(tid, names)
                 for tid, names in self._flow_template_names(vlan).items()}
            self.templates += t.values()
            self._flow_get = {tid: _getter(tpl.names, self.FLOW_SOURCE, self.FLOW_FIELDS)
                              for tid, tpl in t.items()}
            self._flow_tpl = t
            self._flow_dtype = {tid: _columns_dtype(tpl) for tid, tpl in t.items()}
            # the template of a record: by (family, protocol), else by
            # family; the zone's variants where its zone is not 0
            self._flow_by_key = {(4, 1): t[TID_FLOW4_ICMP], (6, 58): t[TID_FLOW6_ICMP]}
            self._flow_by_family = {4: t[TID_FLOW4], 6: t[TID_FLOW6]}
            self._zone_by_key = {k: t[v.id + ZONE_TID] for k, v in self._flow_by_key.items()}
            self._zone_by_family = {k: t[v.id + ZONE_TID]
                                    for k, v in self._flow_by_family.items()}
        if "nat_events" in records:
            t = {tid: Template(tid, names) for tid, names in NAT_TEMPLATES.items()}
            self.templates += t.values()
            self._nat_get = {tid: _getter(tpl.names, _NAT_SOURCE, _NAT_FIELDS)
                             for tid, tpl in t.items()}
            self._nat_by_family = {4: t[TID_NAT4], 6: t[TID_NAT6]}

        biggest = max(t.size for t in self.templates)
        need = self.HEADER_SIZE + max(
            padded(4 + biggest, self.PAD),
            max(len(template_set(self.TEMPLATE_SET_ID, [t], self.PAD)) for t in self.templates))
        if not need <= max_size <= self.MAX_SIZE_LIMIT:
            raise ValueError(f"max_size must be {need}-{self.MAX_SIZE_LIMIT} "
                             f"(header and the largest template or record)")
        self.max_size = max_size
        self._template_sets = self._split_templates()

        self._templates_sent = False    # ever, or since force_templates()
        self._forced = False            # force_templates() called, not yet sent
        self._since_templates = 0       # datagrams sent since the last templates
        self._templates_ms = 0          # now_ms of the last templates
        # statistics
        self.datagrams_sent = 0
        self.records_sent = 0           # data records, flows and NAT events
        self.template_sends = 0         # datagrams that carried templates
        self.invalid = 0                # records skipped: bad family or values
        self.invalid_reasons: dict[str, int] = {}   # ``invalid`` by reason
        self.last_counts: list[int] = []  # data records per datagram of the last encode()
        self.options = None             # options.ExporterOptions (attach_options)
        self.l7_unexported: dict[str, int] = {}     # application fields left out, by reason
        self._l7_templates: dict[tuple, L7Template] = {}    # (base id, fields) -> template
        self._l7_pending: dict[int, L7Template] = {}   # created, not sent since the last refresh

    # What a flow item is (the fields its getters index) and which of them
    # carries each element: ``Flow`` here; biflow.BiflowIpfixEncoder's rows
    # are a Flow followed by the reverse direction's values.
    FLOW_FIELDS: tuple = Flow._fields
    FLOW_SOURCE: dict = FLOW_SOURCE

    def _flow_template_names(self, vlan: bool) -> dict:
        """Template id -> element names of the flow templates, then of their
        zone variants."""
        # vlanId only where flows can carry one (the pcap meter): conntrack
        # records would otherwise all pad a zero VLAN
        extra = ("vlanId",) if vlan else ()
        out = {tid: self._flow_names(names + extra) for tid, names in FLOW_TEMPLATES.items()}
        for tid, names in FLOW_TEMPLATES.items():
            out[tid + ZONE_TID] = self._flow_names(names + extra + ZONE_ELEMENTS)
        return out

    def _flow_names(self, names: tuple) -> tuple:
        """The elements of a flow template of the uniflow ``names``
        (subclasses add theirs)."""
        return names

    def _split_templates(self) -> list[tuple[bytes, int]]:
        """The template sets a refresh sends, in template order, each with
        its number of templates: as few as fit a datagram each (with its
        header)."""
        room = self.max_size - self.HEADER_SIZE
        chunks: list[list[Template]] = [[]]
        for t in self.templates:
            if chunks[-1] and len(template_set(self.TEMPLATE_SET_ID, chunks[-1] + [t],
                                               self.PAD)) > room:
                chunks.append([])
            chunks[-1].append(t)
        return [(template_set(self.TEMPLATE_SET_ID, c, self.PAD), len(c)) for c in chunks]

    # -- options -----------------------------------------------------------------
    VERSION = 0                         # 9 or 10: the subclass's

    def attach_options(self, opts) -> None:
        """Send ``opts`` (an ``options.ExporterOptions`` of this encoder's
        version) with the templates and when due.  ValueError if
        ``max_size`` cannot hold its largest set."""
        if opts.version != self.VERSION:
            raise ValueError(f"options of version {opts.version} for a v{self.VERSION} encoder")
        need = self.HEADER_SIZE + opts.min_room(self.PAD)
        if need > self.max_size:
            raise ValueError(f"max_size must be at least {need} for the options")
        self.options = opts

    def _options_out(self, now_ms: int, boot_ms: int, out: list, counts: list,
                     with_templates: bool) -> None:
        """The options datagrams, appended to ``out`` (0 records each in
        ``counts``); the interface names among them when due.  Without
        ``with_templates`` only over a transport that never refreshes
        templates (TCP: they went at its start)."""
        with_templates = with_templates or bool(self.refresh_packets or self.refresh_ms)
        opts = self.options
        for body, ntpl, ndata in opts.bodies(now_ms, self.max_size - self.HEADER_SIZE, self.PAD,
                                             with_templates, opts.due(now_ms)):
            out.append(self._header(self.HEADER_SIZE + len(body), ntpl, ndata, now_ms, boot_ms)
                       + body)
            counts.append(0)
            self.datagrams_sent += 1

    def _options_between(self, now_ms: int, boot_ms: int, out: list, counts: list) -> None:
        """Options due between template refreshes (the templates are known)."""
        if (self.options is not None and self._templates_sent
                and not self.templates_due(now_ms) and self.options.due(now_ms)):
            self._options_out(now_ms, boot_ms, out, counts, False)

    # -- templates ---------------------------------------------------------------
    def force_templates(self) -> None:
        """Send the templates with the next datagram (and let ``encode`` return
        a templates-only message if it has no records): a new TCP connection,
        a collector known to have restarted."""
        self._templates_sent = False
        self._forced = True
        if self.options is not None:
            self.options.pending = True     # the interface names too

    reset_templates = force_templates

    def templates_due(self, now_ms: int) -> bool:
        if not self._templates_sent:
            return True
        if self.refresh_packets and self._since_templates >= self.refresh_packets:
            return True
        if self.refresh_ms and not 0 <= now_ms - self._templates_ms < self.refresh_ms:
            return True     # also when the clock went back
        return False

    def refresh_templates(self, now_ms: int, boot_ms: int = 0) -> list[bytes]:
        """The template timer: a templates-only datagram (in a list) once
        ``template_refresh_seconds`` have passed since data last carried the
        templates, else nothing.  Call it periodically (the daemon does at
        every flush deadline): a collector that restarted while no data was
        exported learns the templates within the refresh period.  Nothing
        before the first templates (the first data carries them).  The
        datagram follows the sequence rules (v9 counts it, IPFIX does not
        advance); ``last_counts`` is left alone.  The options datagrams go
        before it, or alone when due."""
        out: list[bytes] = []
        if not (self._templates_sent and self.refresh_ms
                and not 0 <= now_ms - self._templates_ms < self.refresh_ms):
            self._options_between(now_ms, boot_ms, out, [])
            return out
        off, parts, _, tmpl = self._open(now_ms, boot_ms, out, [])
        self._close_packed(parts, off, tmpl, 0, now_ms, boot_ms, out, [])
        return out

    def _templates_written(self, now_ms: int) -> None:
        """A datagram about to be sent carries the templates: the refresh
        counters start again."""
        self._templates_sent = True
        self._forced = False
        self._l7_pending.clear()
        self._since_templates = 0
        self._templates_ms = now_ms
        self.template_sends += 1

    # -- records ---------------------------------------------------------------
    def _column_groups(self, cols, groups: dict) -> None:
        """``_groups`` for a ``record.FlowBatch``: per template (first-seen
        order), its records packed by numpy as ``struct`` would pack them,
        as (template, blob, None)."""
        fam, proto = cols.family, cols.proto
        if any(getattr(cols, n).dtype != np.uint64 for n in set(FLOW_SOURCE.values())
               if n not in ("src", "dst", "post_src", "post_dst") and n not in DERIVED):
            raise ValueError("a value a uint64 cannot hold")
        for n, bits in _NARROW:
            if (getattr(cols, n) >> np.uint64(bits)).any():
                raise ValueError(n)
        tid = np.where(fam == 4, np.where(proto == 1, TID_FLOW4_ICMP, TID_FLOW4),
                       np.where(proto == 58, TID_FLOW6_ICMP, TID_FLOW6))
        zoned = cols.zone != 0
        if zoned.any():
            tid[zoned] += ZONE_TID
        tid[(fam != 4) & (fam != 6)] = 0
        t0 = int(tid[0])
        if t0 and (tid == t0).all():
            # one template for all (the usual case): no grouping
            tpl = self._flow_tpl[t0]
            groups[t0] = (tpl, _pack_columns(tpl, self._flow_dtype[t0], cols, slice(None)),
                          cols.n, None)
            return
        bad = int((tid == 0).sum())
        # the templates present, in first-seen order (eight candidates:
        # eight comparisons cost less than sorting the column)
        first = {}
        for t in self._flow_tpl:
            hit = tid == t
            if hit.any():
                first[t] = (int(hit.argmax()), np.flatnonzero(hit))
        for t, (_at, rows) in sorted(first.items(), key=lambda kv: kv[1][0]):
            tpl = self._flow_tpl[t]
            groups[t] = (tpl, _pack_columns(tpl, self._flow_dtype[t], cols, rows), len(rows),
                         None)
        self._refused(NOT_IP, bad)

    def _groups(self, batch: FlowBatch, nat_events: Sequence[NatEvent]):
        """[(template, records packed, items, packed before each item)],
        first-seen order of templates (see ``_pack``): a batch of tuples
        record by record, one of columns with numpy (see
        ``record.FlowBatch``)."""
        groups: dict[int, tuple] = {}
        invalid = 0
        l7 = ()
        if batch.l7 and "flows" in self.records:
            batch, l7 = split_l7(batch)
        flows = batch.flow_list
        if flows is None:
            try:
                if batch.n and "flows" in self.records:
                    self._column_groups(batch, groups)
                flows = ()
            except ValueError:          # a value too wide for its field: per record
                groups.clear()
                flows = batch.flows()
        if flows and "flows" in self.records:
            by_key, by_fam = self._flow_by_key, self._flow_by_family
            zone_key, zone_fam = self._zone_by_key, self._zone_by_family
            per: dict[int, list] = {}
            for f in flows:
                if f[22]:       # zone
                    t = zone_key.get((f[0], f[1])) or zone_fam.get(f[0])
                else:
                    t = by_key.get((f[0], f[1])) or by_fam.get(f[0])
                if t is None:
                    invalid += 1
                    continue
                lst = per.get(t.id)
                if lst is None:
                    lst = per[t.id] = []
                    groups[t.id] = (t, lst, self._flow_get[t.id])
                lst.append(f)
        if nat_events and "nat_events" in self.records:
            codes = self.nat_event_codes
            for ev in nat_events:
                t = self._nat_by_family.get(ev[0])
                if t is None:
                    invalid += 1
                    continue
                create, delete = NAT_CODES[(codes, ev[0])]
                g = groups.get(t.id)
                if g is None:
                    g = groups[t.id] = (t, [], self._nat_get[t.id])
                g[1].append(ev + (create if ev[11] else delete,))
        self._refused(NOT_IP, invalid)
        out = [g if len(g) == 4 else self._pack(*g) for g in groups.values()]
        if l7:
            self._l7_groups(l7, out)
        return out

    def _l7_out(self, reason: str, n: int = 1) -> None:
        self.l7_unexported[reason] = self.l7_unexported.get(reason, 0) + n

    def _l7_groups(self, items: list, out: list) -> None:
        """The (``Flow``, fields) ``items`` added to the groups ``out``:
        a group of one record each under the template of its field set
        (created when new); when none of its fields can go, its record
        joins its flow template's group."""
        pad, room = self.PAD, self.max_size - self.HEADER_SIZE
        at = {g[0].id: k for k, g in enumerate(out)}
        for f, values in items:
            if f[22]:
                t = self._zone_by_key.get((f[0], f[1])) or self._zone_by_family.get(f[0])
            else:
                t = self._flow_by_key.get((f[0], f[1])) or self._flow_by_family.get(f[0])
            if t is None:
                self._refused(NOT_IP, 1)
                continue
            values_of = self._flow_get[t.id](f)
            try:
                rec = t.struct.pack(*values_of)
            except (struct.error, TypeError):
                self._refused(t.misfit(values_of), 1)
                continue
            fields, tail, bad = encode_l7(values, self.L7)
            for reason in bad:
                self._l7_out(reason)
            tpl = t
            if fields:
                # its template set and the record, alone in a datagram
                known = self._l7_templates.get((t.id, fields))
                tset = padded(4 + (len(known.record) if known else len(t.record) + sum(
                    8 if self.L7[f].ie.enterprise else 4 for f in fields)), pad)
                if tset + padded(4 + len(rec) + len(tail), pad) > room:
                    self._l7_out("record larger than max_size", len(fields))
                else:
                    tpl = self._l7_template(t, fields) or t
            if tpl is not t:
                out.append((_OneRecord(tpl.id, len(rec) + len(tail), tpl), rec + tail, 1, None))
                continue
            k = at.get(t.id)
            if k is None:
                at[t.id] = len(out)
                out.append((t, rec, 1, None))
            else:
                _, blob, n, good = out[k]
                out[k] = (t, blob + rec, n + 1, None if good is None else good + [good[-1] + 1])

    def _l7_template(self, base: Template, fields: tuple):
        """The template of ``base`` with ``fields``: made (and to be
        announced) when new; None (counted) past ``L7_TEMPLATES_MAX``."""
        key = (base.id, fields)
        tpl = self._l7_templates.get(key)
        if tpl is not None:
            return tpl
        if len(self._l7_templates) >= L7_TEMPLATES_MAX:
            self._l7_out("too many field sets", len(fields))
            return None
        tpl = L7Template(L7_TID_FIRST + len(self._l7_templates), base, fields, self.L7)
        self._l7_templates[key] = tpl
        self.templates.append(tpl)
        self._template_sets = self._split_templates()
        self._l7_pending[tpl.id] = tpl
        return tpl

    def _pack(self, tpl: Template, items: list, getter: Callable) -> tuple:
        """``items`` packed by ``tpl`` (``getter(item)``: the values in
        template order), those whose values do not fit skipped and counted
        by reason (``Template.misfit``): (tpl, blob, len(items), good).
        ``good`` is None when every item was packed, else the number packed
        before each item (and after the last), so that a datagram's share of
        the items carries the records of the good ones."""
        pack = tpl.struct.pack
        parts = []
        append = parts.append
        good = None
        for i, item in enumerate(items):
            try:
                append(pack(*getter(item)))
            except (struct.error, TypeError):
                if good is None:
                    good = list(range(i + 1))
                good.append(good[-1])
                self._refused(tpl.misfit(getter(item)), 1)
                continue
            if good is not None:
                good.append(good[-1] + 1)
        return (tpl, b"".join(parts), len(items), good)

    def _refused(self, reason: str, n: int) -> None:
        """``n`` records skipped for ``reason`` (counted in ``invalid`` and
        ``invalid_reasons``)."""
        if n:
            self.invalid += n
            self.invalid_reasons[reason] = self.invalid_reasons.get(reason, 0) + n

    def _encode(self, batch: FlowBatch, nat_events, now_ms: int, boot_ms: int) -> list[bytes]:
        """The datagrams of ``batch`` and ``nat_events``: each group's
        packed records cut into data sets, as many as each datagram has
        room for, templates first in a datagram when due.  A datagram takes
        the records of as many items as it has room for; items that could
        not be packed (counted in ``_pack``) leave it that much shorter.
        Full datagrams of one template with records of theirs still to
        follow (most of a burst) are cut in a run: ~2 us per datagram
        instead of ~6.5 step by step."""
        out: list[bytes] = []
        counts: list[int] = []
        self._options_between(now_ms, boot_ms, out, counts)
        max_size, hsize, pad = self.max_size, self.HEADER_SIZE, self.PAD
        parts: list = []
        off = 0                 # 0: no datagram open
        data = tmpl = 0
        set_hdr = SET_HEADER.pack
        pending = self._l7_pending
        for tpl, blob, n, good in self._groups(batch, nat_events):
            size = tpl.size
            tid = tpl.id
            i = 0
            if pending and tid in pending:
                # a new template: before its record, in the same datagram
                # if both fit (_l7_groups made sure they fit an empty one)
                tset = template_set(self.TEMPLATE_SET_ID, [pending[tid]], pad)
                if off and off + len(tset) + padded(4 + size, pad) > max_size:
                    self._close_packed(parts, off, tmpl, data, now_ms, boot_ms, out, counts)
                    off = 0
                if not off:
                    off, parts, data, tmpl = self._open(now_ms, boot_ms, out, counts)
                if tid in pending:          # not sent by a refresh in _open
                    del pending[tid]
                    parts.append(tset)
                    off += len(tset)
                    tmpl += 1
            # records in a datagram of this template alone (no templates)
            k0 = records_fitting(max_size, hsize, size, pad)
            while i < n:
                if (not off and k0 and n - i > k0 and good is None
                        and not self.templates_due(now_ms)):
                    # the next m datagrams are full, k0 records each (a record
                    # is left for the step-by-step path: what follows it may
                    # share its datagram), none of them due to carry templates
                    m = (n - i - 1) // k0
                    if self.refresh_packets:
                        m = min(m, self.refresh_packets - self._since_templates)
                    ln = 4 + k0 * size
                    p = -ln % pad
                    body = set_hdr(tid, ln + p)
                    tail = bytes(p)
                    length = hsize + ln + p
                    step = k0 * size
                    header = self._header
                    for a in range(i * size, (i + m * k0) * size, step):
                        out.append(header(length, 0, k0, now_ms, boot_ms) + body
                                   + blob[a:a + step] + tail)
                    i += m * k0
                    self._sent(k0, counts, m)
                    continue
                if not off:
                    off, parts, data, tmpl = self._open(now_ms, boot_ms, out, counts)
                k = records_fitting(max_size, off, size, pad)
                if k == 0:
                    self._close_packed(parts, off, tmpl, data, now_ms, boot_ms, out, counts)
                    off = 0
                    continue
                if k > n - i:
                    k = n - i
                lo, hi = (i, i + k) if good is None else (good[i], good[i + k])
                i += k
                if hi == lo:
                    continue                # none of these items packed: no set
                ln = 4 + (hi - lo) * size
                p = -ln % pad
                parts.append(set_hdr(tid, ln + p))
                parts.append(blob[lo * size:hi * size])
                if p:
                    parts.append(bytes(p))
                off += ln + p
                data += hi - lo
        if not off and self._forced:
            off, parts, data, tmpl = self._open(now_ms, boot_ms, out, counts)   # templates only
        if off and (data or tmpl):
            self._close_packed(parts, off, tmpl, data, now_ms, boot_ms, out, counts)
        self.last_counts = counts
        return out

    def _open(self, now_ms: int, boot_ms: int, out: list, counts: list) -> tuple:
        """A new datagram, with the templates when due: (its length so far,
        its parts, data records, template records).  Templates that do not
        fit it go first, in datagrams of their own (appended to ``out``),
        after the options datagrams."""
        if not self.templates_due(now_ms):
            return self.HEADER_SIZE, [], 0, 0
        if self.options is not None:
            self._options_out(now_ms, boot_ms, out, counts, True)
        sets = self._template_sets
        for tset, n in sets[:-1]:
            self._close_packed([tset], self.HEADER_SIZE + len(tset), n, 0, now_ms, boot_ms, out,
                               counts)
        self._templates_written(now_ms)
        tset, n = sets[-1]
        return self.HEADER_SIZE + len(tset), [tset], 0, n

    def _close_packed(self, parts, off, tmpl, data, now_ms, boot_ms, out, counts) -> None:
        out.append(self._header(off, tmpl, data, now_ms, boot_ms) + b"".join(parts))
        self._sent(data, counts)

    def _sent(self, data_records: int, counts: list, datagrams: int = 1) -> None:
        """``datagrams`` datagrams of ``data_records`` records each went out."""
        counts.extend([data_records] * datagrams)
        self.datagrams_sent += datagrams
        self.records_sent += data_records * datagrams
        self._since_templates += datagrams

    def _header(self, length: int, template_records: int, data_records: int, now_ms: int,
                boot_ms: int) -> bytes:
        """The header of a datagram of ``length`` bytes; advances the
        sequence."""
        raise NotImplementedError
