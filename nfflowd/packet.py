"""From a captured frame to the fields a flow is keyed and counted by.

Strategy: one hand-written parser over ``struct`` and byte indexing, no object
per header: the link layer gives the offset of the IP header and the VLAN tags,
the IP layer gives addresses, protocol, ToS and the layer-3 length, the
transport layer gives ports and TCP flags.  The result is a ``Packet`` tuple
whose first six fields are the flow key.  Frames that carry no IP are counted
per reason in ``PacketParser.skipped`` and give ``None``; nothing raises.

Link types (tcpdump.org LINKTYPE_*): Ethernet (1) with 802.1Q / 802.1ad /
QinQ tags, Linux cooked capture SLL (113) and SLL2 (276), raw IP (101, and
the historical DLT_RAW values 12 and 14; 228 IPv4, 229 IPv6), BSD loopback
NULL (0, host byte order) and LOOP (108, network byte order).

Counting, as NetFlow does: ``octets`` is the layer-3 length, IPv4 Total Length
(RFC 791) or IPv6 Payload Length + 40 (RFC 8200), whatever the link adds
(Ethernet padding, FCS) or the capture cut -- but never more than the frame
carried on the wire: when the header claims more than the original length
after the link header (a forged or corrupt length), that is what is counted
(softflowd counts the wire length too), and the packet counts in
``length_mismatch``.  A length of 0 (TSO, jumbograms) counts the wire length.  ``sport``/``dport`` for TCP, UDP,
SCTP, UDP-Lite and DCCP (the first four bytes of each header); ICMP and ICMPv6
carry ``type * 256 + code`` in ``dport`` and 0 in ``sport``; other protocols 0
and 0.  IPv6 extension headers (hop-by-hop, routing, fragment, destination
options, AH; RFC 8200 section 4) are walked to the upper layer.

Fragments: the first fragment carries the ports; it is remembered under
(src, dst, proto, identification) so the later fragments of the same datagram
are counted in the same flow.  A non-first fragment whose first fragment was
not seen goes to the flow with ports 0 (as softflowd does for all of them).
A transport header cut by the snaplen gives ports 0 and counts in
``truncated``; the packet is still metered.

Flow keys (``flow_key``) are bytes: src + dst + sport (2) + dport (2) +
proto (1) + vlan (3), 16 bytes for IPv4 and 40 for IPv6, so that an IPv4
Ethernet frame gives its first 12 in one slice (``IPV4_KEY_TAIL``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["Packet", "PacketParser", "LINKTYPES", "flow_key", "reverse_flow_key",
           "split_flow_key", "IPV4_KEY_TAIL", "KEY_PROTO",
           "LINKTYPE_NULL", "LINKTYPE_ETHERNET", "LINKTYPE_RAW", "LINKTYPE_LOOP",
           "LINKTYPE_LINUX_SLL", "LINKTYPE_LINUX_SLL2"]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_12 = 12
LINKTYPE_RAW_14 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

LINKTYPES = {LINKTYPE_NULL: "null", LINKTYPE_ETHERNET: "ethernet", LINKTYPE_RAW_12: "raw",
             LINKTYPE_RAW_14: "raw", LINKTYPE_RAW: "raw", LINKTYPE_LOOP: "loop",
             LINKTYPE_LINUX_SLL: "linux_sll", LINKTYPE_IPV4: "ipv4", LINKTYPE_IPV6: "ipv6",
             LINKTYPE_LINUX_SLL2: "linux_sll2"}

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
ETH_RARP = 0x8035
ETH_VLAN = (0x8100, 0x88A8, 0x9100)

# BSD address families in DLT_NULL / DLT_LOOP headers
AF_INET = 2
AF_INET6 = (10, 24, 28, 30)

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_DCCP = 33
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
PROTO_UDPLITE = 136
PORT_PROTOS = frozenset((PROTO_TCP, PROTO_UDP, PROTO_DCCP, PROTO_SCTP, PROTO_UDPLITE))
# RFC 8200 section 4: extension headers walked to find the upper layer
IPV6_HOPOPTS, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DSTOPTS, IPV6_AH = 0, 43, 44, 60, 51
IPV6_EXT_SIMPLE = frozenset((IPV6_HOPOPTS, IPV6_ROUTING, IPV6_DSTOPTS))

MAX_FRAGMENT_KEYS = 4096


class Packet(NamedTuple):
    """One metered IP packet.  The first six fields are the flow key.

    ``src``/``dst``: packed addresses (4 or 16 bytes).  ``vlan``: outer VLAN
    id | inner (QinQ customer) VLAN id << 12, 0 when untagged.  ``octets``: layer
    3 length.  ``tos``: IPv4 ToS / IPv6 traffic class byte.
    """
    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int
    vlan: int
    octets: int
    tos: int
    tcp_flags: int


_new = tuple.__new__
_KEYPACK = struct.Struct("!HHI").pack
_KEYTAIL = struct.Struct("!HHI").unpack_from
# the key's last 4 bytes of an untagged flow, by protocol: an IPv4 frame's
# addresses and ports (12 bytes in a row) + IPV4_KEY_TAIL[proto] is its key
IPV4_KEY_TAIL = [bytes((p, 0, 0, 0)) for p in range(256)]
KEY_PROTO = -4                    # index of the protocol byte in a key


def flow_key(p) -> bytes:
    """The flow key of a ``Packet``: its first six fields, packed (vlan: 3
    bytes, outer id | inner id << 12)."""
    return p[0] + p[1] + _KEYPACK(p[2], p[3], (p[4] << 24) | p[5])


def reverse_flow_key(key: bytes) -> bytes:
    """The key of the other direction: addresses and ports swapped."""
    a = len(key) - 8 >> 1             # address length: 4 or 16
    return (key[a:2 * a] + key[:a] + key[2 * a + 2:2 * a + 4] + key[2 * a:2 * a + 2]
            + key[-4:])


def split_flow_key(key: bytes) -> tuple:
    """(src, dst, sport, dport, proto, vlan) of a flow key."""
    a = len(key) - 8 >> 1
    sport, dport, pv = _KEYTAIL(key, 2 * a)
    return key[:a], key[a:2 * a], sport, dport, pv >> 24, pv & 0xFFFFFF


_H = struct.Struct("!H").unpack_from
_I = struct.Struct("!I").unpack_from
_HH = struct.Struct("!HH").unpack_from
_IPV4 = struct.Struct("!BBHHHBB").unpack_from   # ver/ihl, tos, total, id, frag, ttl, proto
_L_I = struct.Struct("<I").unpack_from


class PacketParser:
    """Parse frames of any supported link type; keep the counters.

    ``parse(linktype, data, original_length)`` returns a ``Packet`` or None.
    Counters: ``skipped`` (reason -> frames), ``fragments`` (IP fragments seen),
    ``truncated`` (transport header cut: metered with ports 0),
    ``length_mismatch`` (IP length above the wire length: the wire's counted).
    """

    def __init__(self, max_fragment_keys: int = MAX_FRAGMENT_KEYS):
        self.skipped: dict[str, int] = {}
        self.fragments = 0
        self.truncated = 0
        self.length_mismatch = 0
        self._frags: dict = {}
        self._max_frags = max_fragment_keys

    @property
    def pending_fragments(self) -> int:
        """First fragments remembered for the datagrams' later fragments."""
        return len(self._frags)

    def snapshot(self):
        """The counters and fragment memory, for ``restore``: a caller that
        parsed frames tentatively (``nfflowd.meterfast``) undoes them."""
        return (dict(self.skipped), self.fragments, self.truncated, self.length_mismatch,
                dict(self._frags))

    def restore(self, snap) -> None:
        (skipped, self.fragments, self.truncated, self.length_mismatch, frags) = snap
        self.skipped = dict(skipped)
        self._frags = dict(frags)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    # -- link layer --------------------------------------------------------
    def parse(self, linktype: int, data: bytes, origlen: int = 0):
        if linktype == 1:
            n = len(data)
            if n < 14:
                self.skip("short_frame")
                return None
            et = (data[12] << 8) | data[13]
            if et == 0x0800:
                return self.ipv4(data, 14, 0, origlen)
            return self._ethertype(data, 12, et, origlen)
        if linktype == 113:            # SLL: protocol at 14, header 16
            if len(data) < 16:
                self.skip("short_frame")
                return None
            return self._ethertype(data, 14, (data[14] << 8) | data[15], origlen)
        if linktype == 276:            # SLL2: protocol at 0, header 20
            if len(data) < 20:
                self.skip("short_frame")
                return None
            et = (data[0] << 8) | data[1]
            return self._dispatch_et(data, 20, et, 0, origlen)
        if linktype in (101, 12, 14, 228, 229):
            return self._raw(data, 0, origlen)
        if linktype == 0 or linktype == 108:
            if len(data) < 4:
                self.skip("short_frame")
                return None
            if linktype == 108:
                af = _I(data, 0)[0]
            else:
                af = _L_I(data, 0)[0]
                if af > 0xFFFF:           # written on a big-endian host
                    af = _I(data, 0)[0]
            if af == AF_INET:
                return self.ipv4(data, 4, 0, origlen)
            if af in AF_INET6:
                return self.ipv6(data, 4, 0, origlen)
            self.skip("other_address_family")
            return None
        self.skip("unsupported_linktype")
        return None

    def _ethertype(self, data, off, et, origlen):
        """``off`` points at an Ethernet type field; walk VLAN tags."""
        vlan = 0
        tags = 0
        n = len(data)
        while et in ETH_VLAN:
            if off + 6 > n:
                self.skip("short_frame")
                return None
            vid = ((data[off + 2] << 8) | data[off + 3]) & 0x0FFF
            if tags == 0:
                vlan = vid
            elif tags == 1:
                vlan |= vid << 12
            tags += 1
            off += 4
            et = (data[off] << 8) | data[off + 1]
        return self._dispatch_et(data, off + 2, et, vlan, origlen)

    def _dispatch_et(self, data, off, et, vlan, origlen):
        if et == ETH_IPV4:
            return self.ipv4(data, off, vlan, origlen)
        if et == ETH_IPV6:
            return self.ipv6(data, off, vlan, origlen)
        if et == ETH_ARP or et == ETH_RARP:
            self.skip("arp")
        elif et < 0x0600:
            self.skip("llc")                 # 802.3 length field: LLC/SNAP, STP, ...
        else:
            self.skip("other_ethertype")
        return None

    def _raw(self, data, off, origlen):
        if len(data) <= off:
            self.skip("short_frame")
            return None
        v = data[off] >> 4
        if v == 4:
            return self.ipv4(data, off, 0, origlen)
        if v == 6:
            return self.ipv6(data, off, 0, origlen)
        self.skip("not_ip")
        return None

    # -- IPv4 (RFC 791) ----------------------------------------------------
    def ipv4(self, data, o, vlan, origlen):
        n = len(data)
        if n < o + 20:
            self.skip("truncated_ip_header")
            return None
        vihl, tos, total, ident, frag, _ttl, proto = _IPV4(data, o)
        ihl = (vihl & 15) << 2
        if vihl >> 4 != 4 or ihl < 20:
            self.skip("bad_ip_header")
            return None
        if total < ihl or total > origlen - o:
            wire = (origlen if origlen > n else n) - o      # what the frame held
            if total > wire:             # a forged length: count the wire's
                total = wire
                self.length_mismatch += 1
            elif total < ihl:            # 0 with TSO: take what the frame says
                total = wire
        src = data[o + 12:o + 16]
        dst = data[o + 16:o + 20]
        t = o + ihl
        if frag & 0x3FFF:                # MF or an offset: a fragment
            self.fragments += 1
            fkey = (src, dst, proto, ident)
            if frag & 0x1FFF:            # not the first: ports of the first one
                if frag & 0x2000:
                    ports = self._frags.get(fkey)
                else:
                    ports = self._frags.pop(fkey, None)
                if ports is None:
                    return _new(Packet, (src, dst, 0, 0, proto, vlan, total, tos, 0))
                return _new(Packet, (src, dst, ports[0], ports[1], proto, vlan, total, tos, 0))
            p = self._transport(data, t, n, proto, src, dst, vlan, total, tos)
            frags = self._frags
            if len(frags) >= self._max_frags:
                del frags[next(iter(frags))]
            frags[fkey] = (p[2], p[3])
            return p
        # the common case, inlined: TCP and UDP with a complete header
        if proto == 6:
            if t + 14 <= n:
                sp, dp = _HH(data, t)
                return _new(Packet, (src, dst, sp, dp, 6, vlan, total, tos, data[t + 13]))
        elif proto == 17:
            if t + 4 <= n:
                sp, dp = _HH(data, t)
                return _new(Packet, (src, dst, sp, dp, 17, vlan, total, tos, 0))
        return self._transport(data, t, n, proto, src, dst, vlan, total, tos)

    # -- IPv6 (RFC 8200) ---------------------------------------------------
    def ipv6(self, data, o, vlan, origlen):
        n = len(data)
        if n < o + 40:
            self.skip("truncated_ip_header")
            return None
        b0 = data[o]
        if b0 >> 4 != 6:
            self.skip("bad_ip_header")
            return None
        tos = ((b0 & 15) << 4) | (data[o + 1] >> 4)
        plen = (data[o + 4] << 8) | data[o + 5]
        total = plen + 40
        if plen == 0 or total > origlen - o:
            wire = (origlen if origlen > n else n) - o      # what the frame held
            if plen == 0:                # a jumbogram: what the frame says
                total = wire
            elif total > wire:           # a forged length: count the wire's
                total = wire
                self.length_mismatch += 1
        nh = data[o + 6]
        src = data[o + 8:o + 24]
        dst = data[o + 24:o + 40]
        p = o + 40
        for _ in range(16):
            if nh in IPV6_EXT_SIMPLE:
                if p + 2 > n:
                    break
                nh, p = data[p], p + ((data[p + 1] + 1) << 3)
            elif nh == IPV6_AH:
                if p + 2 > n:
                    break
                nh, p = data[p], p + ((data[p + 1] + 2) << 2)
            elif nh == IPV6_FRAGMENT:
                if p + 8 > n:
                    break
                self.fragments += 1
                offlg = (data[p + 2] << 8) | data[p + 3]
                ident = _I(data, p + 4)[0]
                nh = data[p]
                fkey = (src, dst, nh, ident)
                if offlg & 0xFFF8:        # not the first fragment
                    ports = (self._frags.get(fkey) if offlg & 1
                             else self._frags.pop(fkey, None))
                    if ports is None:
                        return _new(Packet, (src, dst, 0, 0, nh, vlan, total, tos, 0))
                    return _new(Packet, (src, dst, ports[0], ports[1], nh, vlan, total, tos, 0))
                pk = self._transport(data, p + 8, n, nh, src, dst, vlan, total, tos)
                if offlg & 1:
                    frags = self._frags
                    if len(frags) >= self._max_frags:
                        del frags[next(iter(frags))]
                    frags[fkey] = (pk[2], pk[3])
                return pk
            else:
                return self._transport(data, p, n, nh, src, dst, vlan, total, tos)
        # an extension header cut short (or more than 16 of them)
        self.truncated += 1
        return _new(Packet, (src, dst, 0, 0, nh, vlan, total, tos, 0))

    # -- transport ---------------------------------------------------------
    def _transport(self, data, t, n, proto, src, dst, vlan, total, tos):
        if proto in PORT_PROTOS:
            if proto == 6:
                if t + 14 <= n:
                    sp, dp = _HH(data, t)
                    return _new(Packet, (src, dst, sp, dp, 6, vlan, total, tos, data[t + 13]))
            elif t + 4 <= n:
                sp, dp = _HH(data, t)
                return _new(Packet, (src, dst, sp, dp, proto, vlan, total, tos, 0))
            self.truncated += 1
            return _new(Packet, (src, dst, 0, 0, proto, vlan, total, tos, 0))
        if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            if t + 2 <= n:
                return _new(Packet, (src, dst, 0, (data[t] << 8) | data[t + 1], proto, vlan,
                                     total, tos, 0))
            self.truncated += 1
        return _new(Packet, (src, dst, 0, 0, proto, vlan, total, tos, 0))
