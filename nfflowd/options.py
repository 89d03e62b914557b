"""Options templates and records (NetFlow v9 and IPFIX), sans-IO.

Strategy: three options templates, each in a set of its own (nfdump reads
one options template per set), and their records, built here and sent by
``template.TemplateEncoder`` in datagrams of their own just before the
datagram that carries the flow templates (``ExporterOptions.bodies``):

- interface names (``TID_IFNAMES``): scope the interface index (v9 scope
  type 2, Interface; IPFIX ingressInterface), then ingressInterface,
  interfaceDescription (64 bytes, NUL-padded) and interfaceName (16 bytes
  in v9, variable length in IPFIX, RFC 7011 section 7).  Laid out for
  nfdump 1.7, which names interfaces (``%inam``, ``%onam``) from the
  ingressInterface and interfaceDescription of a non-scope field pair and
  steps through a set as if its records held nothing else: each record
  goes in a set of its own, and the description is the name when the
  interface has none.
  The names go at start, after a change, every ``period_ms`` and when the
  templates are forced (a new TCP connection, a collector restarted), not
  with every count-based template refresh: a firewall of hundreds of
  interfaces would send more names than flows.
- sampling (``TID_SAMPLING``): scope the system (v9 scope type 1; IPFIX
  observationDomainId), samplingInterval 1, samplingAlgorithm 1
  (deterministic), samplingPacketInterval 1, samplingPacketSpace 0: every
  packet counted.  Which collector reads what (their source):

  * Akvorado: samplingInterval (or samplingPacketInterval and -Space) of
    any options record, filed under samplerId 0 when the record has none,
    and used for data records without a samplerId; flows without a rate
    are dropped.  This datagram precedes the flows.
  * pmacct (nfacctd): a 4-byte samplingInterval in an options record
    (scope System in v9: the exporter's global sampler), the
    ``sampling_rate`` primitive of data records without a sampler id.
  * nfdump 1.7: an options template with samplingPacketSpace and without
    a sampler id or selector algorithm (samplerId, samplerMode and their
    successors would make it skip the template; so would
    samplingInterval with samplingAlgorithm and no packet space): a
    sampler of id 0, packet interval 1, packet space 0, applied to every
    flow (``nfdump -E`` lists it; samplingPacketSpace after
    samplingInterval, as nfdump keeps the later of the two).
- exporter statistics (``TID_EXPORTER_STATS``, RFC 7011 sections 4.1 and
  4.3 in one record): scope exportingProcessId (v9: System), then
  exportedMessageTotalCount, exportedOctetTotalCount,
  exportedFlowRecordTotalCount (v9: TOTAL_PKTS_EXP, TOTAL_BYTES_EXP,
  TOTAL_FLOWS_EXP) and notSentFlowTotalCount, from the counters of the
  collector's exporter (``stats``): messages and bytes handed to the
  kernel, records sent, records dropped or refused.

Template ids 512-514 (the flow templates are 256 and up).
"""

from __future__ import annotations

import struct
from typing import Callable, Sequence

from nfflowd.ie import VARLEN, element

TID_IFNAMES, TID_SAMPLING, TID_EXPORTER_STATS = 512, 513, 514
OPTIONS_SET_ID = {9: 1, 10: 3}      # v9 Options Template FlowSet id, IPFIX Options Template Set id
OPTIONS_PERIOD_MS = 60_000          # options datagrams at least this often (also on TCP)

# RFC 3954 section 6.1: v9 scope field types
V9_SCOPE_SYSTEM, V9_SCOPE_INTERFACE = 1, 2
_V9_SCOPE = {"observationDomainId": V9_SCOPE_SYSTEM, "exportingProcessId": V9_SCOPE_SYSTEM,
             "ingressInterface": V9_SCOPE_INTERFACE}

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_HHH = struct.Struct("!HHH")


def fixed_string(text: str, length: int) -> bytes:
    """``text`` in UTF-8, cut to ``length`` bytes at a character boundary and
    NUL-padded to ``length``."""
    b = text.encode("utf-8")[:length]
    while b:
        try:
            b.decode("utf-8")
            break
        except UnicodeDecodeError:
            b = b[:-1]          # a character cut in two: drop its first bytes
    return b + bytes(length - len(b))


def varlen(data: bytes) -> bytes:
    """A variable-length field (RFC 7011 section 7): one length byte, or 255
    and two length bytes from 255 bytes on."""
    if len(data) < 255:
        return bytes((len(data),)) + data
    if len(data) > 0xFFFF:
        raise ValueError("a variable-length field holds at most 65535 bytes")
    return b"\xff" + _H.pack(len(data)) + data


class OptionsTemplate:
    """An options template: id, scope element names, then the other element
    names; ``lengths`` overrides an element's length (``VARLEN``: variable
    length, IPFIX only)."""

    def __init__(self, tid: int, scope: Sequence[str], fields: Sequence[str],
                 lengths: dict | None = None):
        if not scope:
            raise ValueError("an options template has at least one scope field")
        self.id = tid
        self.scope = tuple(scope)
        self.fields = tuple(fields)
        lengths = lengths or {}
        self.lengths = tuple(lengths.get(n, element(n).length) for n in self.names)

    @property
    def names(self) -> tuple:
        return self.scope + self.fields

    def v9_record(self) -> bytes:
        """RFC 3954 section 6.1: template id, scope length and option length
        (bytes), the scope (type, length) pairs, the option pairs."""
        if VARLEN in self.lengths:
            raise ValueError("NetFlow v9 has no variable-length fields")
        ns = len(self.scope)
        body = b"".join(_HH.pack(_V9_SCOPE[n], ln)
                        for n, ln in zip(self.scope, self.lengths[:ns]))
        body += b"".join(_HH.pack(element(n).id, ln)
                         for n, ln in zip(self.fields, self.lengths[ns:]))
        return _HHH.pack(self.id, 4 * ns, 4 * len(self.fields)) + body

    def ipfix_record(self) -> bytes:
        """RFC 7011 section 3.4.2.2: template id, field count, scope field
        count, the field specifiers, scope first."""
        return _HHH.pack(self.id, len(self.names), len(self.scope)) + b"".join(
            _HH.pack(element(n).id, ln) for n, ln in zip(self.names, self.lengths))

    def pack(self, values: Sequence) -> bytes:
        """One record of ``values`` (template order): integers, and ``str`` for
        the strings (fixed length: NUL-padded; ``VARLEN``: RFC 7011 section 7)."""
        out = []
        for n, ln, v in zip(self.names, self.lengths, values):
            if isinstance(v, str):
                out.append(varlen(v.encode("utf-8")) if ln == VARLEN else fixed_string(v, ln))
            else:
                out.append(v.to_bytes(ln, "big"))
        return b"".join(out)


def options_templates(version: int) -> dict[int, OptionsTemplate]:
    """The options templates of NetFlow ``version`` (9 or 10) by id."""
    names_len = {"interfaceName": element("interfaceName").length if version == 9 else VARLEN}
    return {
        TID_IFNAMES: OptionsTemplate(
            TID_IFNAMES, ("ingressInterface",),
            ("ingressInterface", "interfaceDescription", "interfaceName"), names_len),
        TID_SAMPLING: OptionsTemplate(
            TID_SAMPLING, ("observationDomainId",),
            ("samplingInterval", "samplingAlgorithm", "samplingPacketInterval",
             "samplingPacketSpace")),
        TID_EXPORTER_STATS: OptionsTemplate(
            TID_EXPORTER_STATS, ("exportingProcessId",),
            ("exportedMessageTotalCount", "exportedOctetTotalCount",
             "exportedFlowRecordTotalCount", "notSentFlowTotalCount")),
    }


def options_set(set_id: int, content: bytes, pad: int) -> bytes:
    """A set (header, ``content``, zero padding to ``pad``)."""
    n = 4 + len(content)
    n += -n % pad
    return _HH.pack(set_id, n) + content + bytes(n - 4 - len(content))


class ExporterOptions:
    """The options one encoder (one collector) sends: its templates, the
    interface names (``set_links``), the sampling record and the statistics
    record of ``stats`` (a callable returning messages sent, octets sent,
    records sent, records not sent; zeros without one).  ``domain``: the
    v9 source id / IPFIX observation domain, the value of the system scope
    and of exportingProcessId."""

    def __init__(self, version: int, domain: int = 0,
                 stats: Callable[[], tuple] | None = None,
                 period_ms: int = OPTIONS_PERIOD_MS):
        if version not in OPTIONS_SET_ID:
            raise ValueError("options are NetFlow v9 (9) or IPFIX (10)")
        self.version = version
        self.domain = domain
        self.stats = stats
        self.period_ms = period_ms
        self.templates = options_templates(version)
        self.links: dict[int, tuple[str, str]] = {}
        self.pending = True             # send at the next chance (start, links changed)
        self.last_ms: int | None = None
        self.records_sent = 0
        # v9 reads one options template per FlowSet (nfdump): one set each
        rec = (lambda t: t.v9_record()) if version == 9 else (lambda t: t.ipfix_record())
        self._set_id = OPTIONS_SET_ID[version]
        self._template_records = [rec(t) for t in self.templates.values()]

    def set_links(self, links: dict) -> None:
        """The interfaces ``{ifindex: (name, description)}``; sent again at
        the next chance if they changed."""
        links = {int(i): (str(n), str(d)) for i, (n, d) in links.items()}
        for i in links:
            if not 0 < i <= 0xFFFFFFFF:
                raise ValueError(f"interface index {i} is not 1-4294967295")
        if links != self.links:
            self.links = links
            self.pending = True

    def due(self, now_ms: int) -> bool:
        """Options to send besides the template refreshes: links changed, or
        ``period_ms`` passed (or the clock went back)."""
        return (self.pending or self.last_ms is None
                or not 0 <= now_ms - self.last_ms < self.period_ms)

    def template_sets(self, pad: int) -> list[bytes]:
        return [options_set(self._set_id, r, pad) for r in self._template_records]

    def data_sets(self, pad: int, names: bool = True) -> list[bytes]:
        """The records, a set each: sampling, statistics and, with
        ``names``, one per interface (by index)."""
        t = self.templates
        system = self.domain
        messages, octets, records, not_sent = self.stats() if self.stats else (0, 0, 0, 0)
        u64 = 0xFFFFFFFFFFFFFFFF
        out = [options_set(TID_SAMPLING, t[TID_SAMPLING].pack((system, 1, 1, 1, 0)), pad),
               options_set(TID_EXPORTER_STATS, t[TID_EXPORTER_STATS].pack(
                   (self.domain, messages & u64, octets & u64, records & u64, not_sent & u64)),
                   pad)]
        tpl = t[TID_IFNAMES]
        for i, (name, desc) in sorted(self.links.items()) if names else ():
            out.append(options_set(TID_IFNAMES, tpl.pack((i, i, desc or name, name)), pad))
        return out

    def min_room(self, pad: int) -> int:
        """The smallest datagram body (after the header) that holds any one
        of the sets (each goes whole in a datagram)."""
        return max(len(s) for s in (self.template_sets(pad) + self.data_sets(pad)
                                    + [self._largest_names_set(pad)]))

    def _largest_names_set(self, pad: int) -> bytes:
        return options_set(TID_IFNAMES, self.templates[TID_IFNAMES].pack(
            (1, 1, "x" * 64, "x" * 15)), pad)

    def bodies(self, now_ms: int, room: int, pad: int, with_templates: bool,
               names: bool = True) -> list[tuple]:
        """The options datagrams' bodies (after the header), each at most
        ``room`` bytes: [(body, template records, data records)], the
        templates first when ``with_templates``; the interface names only
        with ``names`` (then they count as sent: ``due`` starts again)."""
        out = []
        parts: list[bytes] = []
        size = ntpl = ndata = 0
        sets = [(s, True) for s in self.template_sets(pad)] if with_templates else []
        sets += [(s, False) for s in self.data_sets(pad, names)]
        for s, is_template in sets:
            if size + len(s) > room and parts:
                out.append((b"".join(parts), ntpl, ndata))
                parts, size, ntpl, ndata = [], 0, 0, 0
            parts.append(s)
            size += len(s)
            ntpl += is_template
            ndata += not is_template
        if parts:
            out.append((b"".join(parts), ntpl, ndata))
        if names:
            self.pending = False
            self.last_ms = now_ms
        self.records_sent += sum(n for _b, _t, n in out)
        return out
