"""The meter's application-layer inspection: per-flow state, bounded.

Strategy (sans-IO): the flow table (``nfflowd.meter``) and the chunk path
(``nfflowd.meterfast``) never see payload; an ``Inspector`` looks at the same
frames alongside them and, when the records are emitted, ``attach`` puts
each record's fields into ``FlowBatch.l7``.  Frames come one at a time
(``frames``: the per-packet and live paths) or a pcap chunk at once
(``chunk``: a numpy pre-filter over the chunk's buffer picks the frames
worth parsing, everything else costs nothing in Python).  Both pick the same
frames in the same order, so both paths give the same fields.

Which frames: TCP or UDP over IPv4 (not a fragment) or IPv6 (no extension
header) with captured payload, whose first bytes say what they are:

- TCP: a TLS handshake record (0x16 0x03) -> TLS; an HTTP/1.x request method
  or ``HTTP/`` -> HTTP; port 53 -> DNS;
- UDP: port 53 -> DNS; a QUIC long header (the two top bits set) -> QUIC.

Each direction of a flow (the meter's unidirectional key, VLAN outer tag
only) gets one small state: the fields once a parser found some, else up to
``MAX_PACKETS`` inspected payloads, then it is done.  A TCP payload a parser
calls incomplete (a ClientHello split over two segments) is kept and retried
once, joined with the flow's next payload segment, whatever its first bytes.
A done state keeps only its fields (or nothing) until the flow's record takes
them; so at most ``max_flows`` states are held (the table's bound: a flow
beyond it is not inspected and counted in ``full``).  A record takes the
state of its key whose first inspected packet falls inside its time span.

Bad payload never raises: the parsers' reason strings are counted in
``bad``.  ``cut`` counts TCP/UDP packets whose payload the snaplen cut.
"""

from __future__ import annotations

import heapq
import struct

__all__ = ["Inspector", "Parsers", "PROTOCOLS", "MAX_PACKETS", "MIN_SNAPLEN", "parse_protocols",
           "record_key", "missing_parsers", "locate", "kind_of", "batch_keys"]

PROTOCOLS = ("tls", "quic", "http", "dns")
# payload packets inspected per direction of a flow before it is done
MAX_PACKETS = 4
# bytes of each packet a live capture keeps when inspection is on (YAF's 384)
MIN_SNAPLEN = 384
# a payload kept for a retry with the next segment is cut to this
MAX_HELD = 16384

# first four bytes of an HTTP/1.x request or response
HTTP_STARTS = frozenset((b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"CONN",
                         b"PATC", b"TRAC", b"HTTP"))
DNS_PORT = 53
# a QUIC long header's version: 1, 2 (RFC 9369); drafts are 0xff0000xx
QUIC_VERSIONS = frozenset((b"\x00\x00\x00\x01", b"\x6b\x33\x43\xcf"))

_KEY = struct.Struct("!16s16sHHBH").pack     # src, dst (padded), ports, proto, outer vlan
KEY_LEN = 39


def record_key(src: bytes, dst: bytes, sport: int, dport: int, proto: int, vlan: int) -> bytes:
    """The inspector's key of a direction: addresses padded to 16 bytes, the
    VLAN's outer tag only (what a record carries)."""
    return _KEY(src, dst, sport, dport, proto, vlan & 0xFFF)


def parse_protocols(text) -> tuple:
    """``tls,quic,http,dns``, ``all`` (or a list of names) -> the protocols
    in PROTOCOLS order; ValueError names an unknown one."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    if names == ["all"]:
        return PROTOCOLS
    bad = [n for n in names if n not in PROTOCOLS]
    if bad:
        raise ValueError(f"unknown L7 protocol {bad[0]!r} (known: {', '.join(PROTOCOLS)}, "
                         "or all)")
    return tuple(p for p in PROTOCOLS if p in names)


def kind_of(protos: frozenset, proto: int, sport: int, dport: int, head: bytes):
    """Which parser a payload starting with ``head`` goes to, or None."""
    if proto == 6:
        if "tls" in protos and head[:2] == b"\x16\x03":
            return "tls"
        if "http" in protos and head[:4] in HTTP_STARTS:
            return "http"
        if "dns" in protos and (sport == DNS_PORT or dport == DNS_PORT):
            return "dns"
        return None
    if "dns" in protos and (sport == DNS_PORT or dport == DNS_PORT):
        return "dns"
    if "quic" in protos and len(head) >= 5 and head[0] & 0xC0 == 0xC0 and (
            head[1:5] in QUIC_VERSIONS or head[1] == 0xFF):
        return "quic"
    return None


class _State:
    """One direction of a flow: its first inspected packet's time (ms), the
    parser it went to, payloads inspected, a payload held for a retry, the
    QUIC parser's state, the fields found; ``done``: inspect no more."""

    __slots__ = ("ts_ms", "kind", "server", "tcp", "n", "held", "quic", "fields", "done")

    def __init__(self, ts_ms: int, kind: str, server: bool, tcp: bool):
        self.ts_ms = ts_ms
        self.kind = kind
        self.server = server            # the source port is the lower: a server's direction
        self.tcp = tcp
        self.n = 0
        self.held = None
        self.quic = None
        self.fields = None
        self.done = False


class Inspector:
    """Application fields of a meter's flows (module doc).  ``protocols``:
    some of PROTOCOLS; ``max_flows``: states held at once (the flow
    table's size); ``parsers``: an object with the protocol functions
    (``nfflowd.l7.parsers`` by default, see ``Parsers``)."""

    def __init__(self, protocols, max_flows: int = 131072, parsers=None):
        self.protocols = frozenset(protocols)
        self.max_flows = int(max_flows)
        self.parsers = parsers if parsers is not None else default_parsers()
        self._states: dict = {}
        self._held: dict = {}           # key -> state, the states waiting for a segment
        # counters
        self.inspected = 0              # payloads handed to a parser
        self.found = 0                  # flow directions with fields
        self.attached = 0               # records given fields
        self.bad: dict = {}             # parser's reason -> payloads
        self.cut = 0                    # TCP/UDP packets whose payload the snaplen cut
        self.full = 0                   # payloads not inspected: max_flows states held

    def __len__(self) -> int:
        return len(self._states)

    # -- the per-packet path -----------------------------------------------------
    def frames(self, batch) -> None:
        """Inspect a batch of ``(ts_ns, linktype, data, orig_len)`` frames."""
        protos = self.protocols
        held = self._held
        feed = self._feed
        for ts, lt, data, orig in batch:
            # the common frame inline (``locate``'s rules): Ethernet, IPv4
            # without options, not a fragment, TCP or UDP
            n = len(data)
            if (lt == 1 and n >= 54 and data[12:15] == b"\x08\x00\x45"
                    and not (data[20] & 0x3F or data[21])):
                total = (data[16] << 8) | data[17]
                if total >= 20:
                    proto = data[23]
                    if proto == 6:
                        p = 34 + ((data[46] >> 4) << 2)
                    elif proto == 17:
                        p = 42
                    else:
                        continue
                    wire = orig if orig > n else n
                    ipend = 14 + total if 14 + total < wire else wire
                    if p >= ipend:
                        continue                # no payload (an ACK)
                    if ipend > n:
                        self.cut += 1
                        end = n
                    else:
                        end = ipend
                    if p >= end:
                        continue
                    sport = (data[34] << 8) | data[35]
                    dport = (data[36] << 8) | data[37]
                    if held:
                        key = _KEY(data[26:30], data[30:34], sport, dport, proto, 0)
                        if key in held:
                            feed(key, ts, proto, None, data[p:end])
                            continue
                    kind = kind_of(protos, proto, sport, dport, data[p:p + 5])
                    if kind is not None:
                        feed(_KEY(data[26:30], data[30:34], sport, dport, proto, 0), ts, proto,
                             kind, data[p:end])
                    continue
            loc = locate(lt, data, orig)
            if loc is None:
                continue
            key, proto, sport, dport, p, end, cut = loc
            if cut:
                self.cut += 1
            if p >= end:
                continue
            if key in held:
                feed(key, ts, proto, None, data[p:end])
                continue
            kind = kind_of(protos, proto, sport, dport, data[p:p + 5])
            if kind is not None:
                feed(key, ts, proto, kind, data[p:end])

    # -- the chunk path ------------------------------------------------------------
    def chunk(self, chunk) -> None:
        """Inspect a ``pcapfile.RecordChunk`` (classic pcap): a numpy
        pre-filter, then the picked frames in file order."""
        from nfflowd.l7 import chunkfilter
        found = chunkfilter.candidates(chunk, self.protocols)
        if found is None:                   # a link type the filter does not read
            self.frames(chunk.frames())
            return
        self.cut += found.cut
        buf = chunk.buf
        feed = self._feed
        held = self._held
        done = set()
        later: list = []        # the next segments of held payloads, fed at their place

        def next_segment(key, after):
            nxt = found.next_segment(key, after)
            if nxt is not None:
                done.add(nxt[0])
                heapq.heappush(later, nxt + (key,))

        for key in list(held):                  # payloads held from the chunks before
            next_segment(key, -1)
        get = self._states.get
        for i, key, ts, proto, kind, p, end in found.picked:
            while later and later[0][0] <= i:
                _j, ts2, proto2, p2, end2, key2 = heapq.heappop(later)
                feed(key2, ts2, proto2, None, bytes(buf[p2:end2]))
            st = get(key)
            if (st is not None and st.done) or (done and i in done):
                continue
            feed(key, ts, proto, kind, bytes(buf[p:end]))
            if key in held:
                next_segment(key, i)
        while later:
            _j, ts2, proto2, p2, end2, key2 = heapq.heappop(later)
            feed(key2, ts2, proto2, None, bytes(buf[p2:end2]))

    # -- both ------------------------------------------------------------------------
    def _feed(self, key: bytes, ts_ns: int, proto: int, kind, payload: bytes) -> None:
        """One payload of ``key``: ``kind`` None for the segment a held
        payload waits for."""
        st = self._states.get(key)
        if st is None:
            if kind is None:                # pragma: no cover (held implies a state)
                return
            if len(self._states) >= self.max_flows:
                self.full += 1
                return
            st = self._states[key] = _State(ts_ns // 1_000_000, kind, key[32:34] < key[34:36],
                                            proto == 6)
        elif st.done:
            return
        if kind is None:
            payload = st.held + payload
            st.held = None
            del self._held[key]
            retry = True
        else:
            retry = False
            if kind != st.kind and st.n:        # another protocol's start: not this flow's
                return
        st.n += 1
        self.inspected += 1
        fields, reason, more = self.parsers.parse(st.kind, payload, st)
        if retry and more and not fields and not reason:
            reason = f"{st.kind}_beyond_two_segments"
        if reason:
            self.bad[reason] = self.bad.get(reason, 0) + 1
        if fields:
            if st.fields is None:
                st.fields = dict(fields)
                self.found += 1
            else:
                st.fields.update(fields)
        elif more and not retry and proto == 6:
            st.held = payload[:MAX_HELD]
            self._held[key] = st
            return
        if (fields and not more) or st.n >= MAX_PACKETS:
            st.done = True
            st.quic = None

    # -- records -------------------------------------------------------------------
    def attach(self, batch) -> None:
        """Give each record of ``batch`` (a ``FlowBatch``) the fields of its
        key's state, if that state's first packet is inside the record's
        span, into ``batch.l7``; the state is dropped once its record passed."""
        states = self._states
        if not states or not len(batch):
            return
        l7 = batch.l7
        flows = batch.flow_list
        if flows is not None:
            keys = [_KEY(f[2], f[3], f[4], f[5], f[1], f[19] & 0xFFF) for f in flows]
            spans = [(f[12], f[13]) for f in flows]
        else:
            keys = batch_keys(batch)
            spans = zip(batch.start_ms.tolist(), batch.end_ms.tolist())
        get = states.get
        for i, (key, (start, end)) in enumerate(zip(keys, spans)):
            st = get(key)
            if st is None or st.ts_ms > end:    # none, or a later flow's
                continue
            del states[key]
            if st.held is not None:
                del self._held[key]
            if st.fields and st.ts_ms >= start:
                l7[i] = st.fields
                self.attached += 1

    def clear(self) -> None:
        """Drop every state (the table flushed every flow)."""
        self._states.clear()
        self._held.clear()

    def stats(self) -> dict:
        return {"inspected": self.inspected, "found": self.found, "attached": self.attached,
                "bad": dict(self.bad), "cut": self.cut, "full": self.full,
                "states": len(self._states)}


def batch_keys(batch) -> list:
    """``record_key`` of every record of a columnar ``FlowBatch``, with numpy."""
    import numpy as np
    n = len(batch)
    k = np.empty((n, KEY_LEN), np.uint8)
    k[:, 0:16] = batch.src
    k[:, 16:32] = batch.dst
    for col, at in ((batch.sport, 32), (batch.dport, 34)):
        c = col.astype(np.uint64)
        k[:, at] = c >> 8
        k[:, at + 1] = c & 0xFF
    k[:, 36] = batch.proto.astype(np.uint64) & 0xFF
    v = batch.vlan.astype(np.uint64) & 0xFFF
    k[:, 37] = v >> 8
    k[:, 38] = v & 0xFF
    return k.view(f"V{KEY_LEN}").ravel().tolist()


# -- the frames' layers, for the per-packet path ----------------------------------
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)


def locate(lt: int, data: bytes, orig: int):
    """(key, proto, sport, dport, payload start, payload end, cut) of a TCP
    or UDP frame (the end: the IP length's or the capture's, the nearer),
    else None.  The rules of ``chunkfilter`` (tests/test_l7_meter.py): IPv4
    not a fragment, IPv6 without extension headers, complete transport
    header."""
    n = len(data)
    vlan = 0
    if lt == 1:
        if n < 14:
            return None
        et = (data[12] << 8) | data[13]
        net = 14
        if et in _VLAN_TYPES:
            if n < 18:
                return None
            vlan = ((data[14] << 8) | data[15]) & 0xFFF
            et = (data[16] << 8) | data[17]
            net = 18
            if et in _VLAN_TYPES:
                if n < 22:
                    return None
                et = (data[20] << 8) | data[21]
                net = 22
        if et == 0x0800:
            v = 4
        elif et == 0x86DD:
            v = 6
        else:
            return None
    elif lt in (101, 12, 14, 228, 229):
        net = 0
        if not n:
            return None
        v = data[0] >> 4
    elif lt == 113:
        if n < 16:
            return None
        et = (data[14] << 8) | data[15]
        net = 16
        v = 4 if et == 0x0800 else 6 if et == 0x86DD else 0
    elif lt == 276:
        if n < 20:
            return None
        et = (data[0] << 8) | data[1]
        net = 20
        v = 4 if et == 0x0800 else 6 if et == 0x86DD else 0
    elif lt == 0 or lt == 108:
        if n < 4:
            return None
        af = int.from_bytes(data[:4], "big" if lt == 108 else "little")
        if lt == 0 and af > 0xFFFF:
            af = int.from_bytes(data[:4], "big")
        net = 4
        v = 4 if af == 2 else 6 if af in (10, 24, 28, 30) else 0
    else:
        return None
    wire = orig if orig > n else n
    if v == 4:
        if n < net + 20 or data[net] >> 4 != 4:
            return None
        ihl = (data[net] & 15) << 2
        if ihl < 20 or (data[net + 6] & 0x3F) or data[net + 7]:
            return None
        proto = data[net + 9]
        total = (data[net + 2] << 8) | data[net + 3]
        ipend = net + total if total >= ihl else wire
        src = data[net + 12:net + 16]
        dst = data[net + 16:net + 20]
        t = net + ihl
    elif v == 6:
        if n < net + 40 or data[net] >> 4 != 6:
            return None
        plen = (data[net + 4] << 8) | data[net + 5]
        ipend = net + 40 + plen if plen else wire
        proto = data[net + 6]
        src = data[net + 8:net + 24]
        dst = data[net + 24:net + 40]
        t = net + 40
    else:
        return None
    if ipend > wire:
        ipend = wire
    if proto == 6:
        if t + 20 > n:
            return None
        p = t + ((data[t + 12] >> 4) << 2)
    elif proto == 17:
        if t + 8 > n:
            return None
        p = t + 8
    else:
        return None
    sport = (data[t] << 8) | data[t + 1]
    dport = (data[t + 2] << 8) | data[t + 3]
    end = ipend if ipend < n else n
    return (_KEY(src, dst, sport, dport, proto, vlan), proto, sport, dport, p, end,
            p < ipend and ipend > n)


class Parsers:
    """The parsers, behind the one call the inspector makes:
    ``parse(kind, payload, state) -> (fields or None, reason or None,
    more)``.  ``fields``: what the payload gave (merged into what the
    direction has); ``reason``: what could not be read, counted; ``more``:
    the direction is not finished -- with fields, later payloads may add
    some (QUIC: a ClientHello over several Initials); without, a TCP payload
    that looks like the start of something the next segment may complete
    (held, then retried once with it).  ``state`` is the direction's
    ``_State`` (``quic``: the QUIC parser's own per-flow object,
    ``server``: the source port is the lower)."""

    def parse(self, kind: str, payload: bytes, state):
        return getattr(self, kind)(payload, state)

    def tls(self, payload, state):
        from nfflowd.l7 import tls
        fields, reason = tls.inspect(payload)
        if not fields and tls.needed(payload) > len(payload):   # a record's first segment
            return None, None, True
        return fields, reason, False

    def http(self, payload, state):
        from nfflowd.l7 import http
        fields, reason = http.inspect(payload)
        return fields, reason, False

    def dns(self, payload, state):
        from nfflowd.l7 import dns
        fields, reason = dns.inspect(payload, tcp=state.tcp)
        return fields, reason, False

    def quic(self, payload, state):
        from nfflowd.l7 import quic
        if state.quic is None:
            state.quic = quic.QuicState()
        fields, reason = quic.inspect_datagram(payload, state.quic, server=state.server)
        return fields, reason, not state.quic.done


def default_parsers() -> Parsers:
    return Parsers()


MODULES = {"tls": "tls", "quic": "quic", "http": "http", "dns": "dns"}


def missing_parsers(protocols) -> list[str]:
    """The protocols of ``protocols`` whose parser module cannot be imported."""
    import importlib
    out = []
    for p in protocols:
        try:
            importlib.import_module(f"nfflowd.l7.{MODULES[p]}")
        except ImportError:
            out.append(p)
    return out

