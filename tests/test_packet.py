"""Link-layer and IP parsing: table-driven frames built here, the sample
captures checked frame by frame against tshark, and a fuzz."""

from __future__ import annotations

import glob
import ipaddress
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd.packet import Packet, PacketParser
from nfflowd.io.pcapfile import CaptureReader

PCAPS = Path(__file__).resolve().parent / "data" / "pcaps"

A4, B4 = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
A6 = ipaddress.IPv6Address("2001:db8::1").packed
B6 = ipaddress.IPv6Address("2001:db8::2").packed
MAC = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02"


def ipv4(proto, payload, src=A4, dst=B4, tos=0, ident=7, frag=0, total=None, opts=b""):
    ihl = (20 + len(opts)) // 4
    total = 20 + len(opts) + len(payload) if total is None else total
    return struct.pack("!BBHHHBB2x4s4s", 0x40 | ihl, tos, total, ident, frag, 64, proto,
                       src, dst) + opts + payload


def ipv6(nh, payload, src=A6, dst=B6, tc=0):
    return struct.pack("!IHBB16s16s", (6 << 28) | (tc << 20), len(payload), nh, 64,
                       src, dst) + payload


def tcp(sp=1234, dp=80, flags=0x18):
    return struct.pack("!HHIIBBHHH", sp, dp, 1, 2, 5 << 4, flags, 1024, 0, 0)


def udp(sp=5353, dp=53, body=b"hello"):
    return struct.pack("!HHHH", sp, dp, 8 + len(body), 0) + body


def eth(l3, et=0x0800, tags=()):
    out = MAC
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", et) + l3


def sll(l3, et=0x0800):
    return struct.pack("!HHH8sH", 0, 1, 6, b"\0" * 8, et) + l3


def sll2(l3, et=0x0800):
    return struct.pack("!HHIHBB8s", et, 0, 2, 1, 0, 6, b"\0" * 8) + l3


V4TCP = ipv4(6, tcp())
V6UDP = ipv6(17, udp())
P4 = Packet(A4, B4, 1234, 80, 6, 0, 40, 0, 0x18)
P6 = Packet(A6, B6, 5353, 53, 17, 0, 53, 0, 0)


@pytest.mark.parametrize("linktype,frame,want", [
    (1, eth(V4TCP), P4),
    (1, eth(V6UDP, 0x86DD), P6),
    (1, eth(V4TCP + b"\0" * 6), P4),                                   # padding not counted
    (1, eth(V4TCP, tags=[(0x8100, 0x2000 | 42)]), P4._replace(vlan=42)),  # PCP bits dropped
    (1, eth(V4TCP, tags=[(0x88A8, 100), (0x8100, 200)]), P4._replace(vlan=100 | 200 << 12)),
    (113, sll(V4TCP), P4),
    (113, sll(V6UDP, 0x86DD), P6),
    (276, sll2(V4TCP), P4),
    (101, V4TCP, P4), (12, V6UDP, P6), (14, V4TCP, P4), (228, V4TCP, P4), (229, V6UDP, P6),
    (0, struct.pack("<I", 2) + V4TCP, P4),                              # little-endian host
    (0, struct.pack(">I", 2) + V4TCP, P4),                              # big-endian host
    (0, struct.pack("<I", 30) + V6UDP, P6),                             # macOS AF_INET6
    (108, struct.pack(">I", 24) + V6UDP, P6),
])
def test_link_layers(linktype, frame, want):
    p = PacketParser()
    assert p.parse(linktype, frame, len(frame)) == want
    assert p.skipped == {} and p.truncated == 0


@pytest.mark.parametrize("linktype,frame,reason", [
    (1, eth(b"\0" * 28, 0x0806), "arp"),
    (1, MAC + struct.pack("!H", 38) + b"\x42\x42\x03" + b"\0" * 35, "llc"),
    (1, eth(b"\0" * 40, 0x88CC), "other_ethertype"),
    (1, MAC[:10], "short_frame"),
    (1, eth(b"", tags=[(0x8100, 5)])[:15], "short_frame"),
    (1, eth(V4TCP[:12]), "truncated_ip_header"),
    (1, eth(b"\x45" + V6UDP[1:], 0x86DD), "bad_ip_header"),
    (1, eth(b"\x60" + V4TCP[1:]), "bad_ip_header"),
    (101, b"\x10" * 30, "not_ip"),
    (0, struct.pack("<I", 7) + V4TCP, "other_address_family"),
    (147, V4TCP, "unsupported_linktype"),
])
def test_non_ip_frames_are_counted_with_a_reason(linktype, frame, reason):
    p = PacketParser()
    assert p.parse(linktype, frame, len(frame)) is None
    assert p.skipped == {reason: 1}


@pytest.mark.parametrize("l3,want", [
    (ipv4(1, b"\x03\x01" + b"\0" * 30), Packet(A4, B4, 0, 0x0301, 1, 0, 52, 0, 0)),
    (ipv6(58, b"\x80\x00" + b"\0" * 6), Packet(A6, B6, 0, 0x8000, 58, 0, 48, 0, 0)),
    (ipv4(132, struct.pack("!HHI", 2905, 2906, 0)), Packet(A4, B4, 2905, 2906, 132, 0, 28, 0, 0)),
    (ipv4(136, udp(1, 2)), Packet(A4, B4, 1, 2, 136, 0, 33, 0, 0)),
    (ipv4(33, struct.pack("!HH", 5000, 6000) + b"\0" * 8), Packet(A4, B4, 5000, 6000, 33, 0, 32, 0, 0)),
    (ipv4(47, b"\0" * 8), Packet(A4, B4, 0, 0, 47, 0, 28, 0, 0)),                 # GRE: no ports
    (ipv4(6, tcp(flags=0x02), tos=0xB8), Packet(A4, B4, 1234, 80, 6, 0, 40, 0xB8, 2)),
    (ipv4(17, udp(), opts=b"\x01\x01\x01\x00"), Packet(A4, B4, 5353, 53, 17, 0, 37, 0, 0)),
    (ipv6(17, udp(), tc=0xAB), P6._replace(tos=0xAB)),
])
def test_protocols(l3, want):
    assert PacketParser().parse(101, l3, len(l3)) == want


def test_ipv6_extension_headers_walked():
    inner = udp(7, 9)
    hop = bytes([60, 0]) + b"\0" * 6                          # -> dst opts
    dst = bytes([43, 1]) + b"\0" * 14                         # 16 bytes -> routing
    rt = bytes([51, 0]) + b"\0" * 6                           # -> AH
    ah = bytes([17, 1]) + b"\0" * 6                           # (1+2)*4 = 12 bytes
    ah += b"\0" * 4
    l3 = ipv6(0, hop + dst + rt + ah + inner)
    assert PacketParser().parse(101, l3, len(l3)) == Packet(A6, B6, 7, 9, 17, 0, len(l3), 0, 0)


def test_ipv4_fragments_follow_the_first():
    p = PacketParser()
    first = ipv4(17, udp(1111, 53, b"x" * 20), ident=99, frag=0x2000)
    second = ipv4(17, b"y" * 24, ident=99, frag=0x2000 | 4)
    last = ipv4(17, b"z" * 8, ident=99, frag=7)
    lone = ipv4(17, b"z" * 8, ident=100, frag=7)
    got = [p.parse(101, f) for f in (first, second, last, last, lone)]
    assert [(g.sport, g.dport, g.octets) for g in got] == [
        (1111, 53, 48), (1111, 53, 44), (1111, 53, 28), (0, 0, 28), (0, 0, 28)]
    assert p.fragments == 5 and p.pending_fragments == 0


def test_ipv6_fragments_follow_the_first():
    p = PacketParser()
    fh = lambda off, m: struct.pack("!BBHI", 6, 0, (off << 3) | m, 0xABCDEF)
    first = ipv6(44, fh(0, 1) + tcp(4000, 443, 0x10))
    rest = ipv6(44, fh(3, 0) + b"d" * 16)
    a, b = p.parse(101, first), p.parse(101, rest)
    assert (a.proto, a.sport, a.dport, a.tcp_flags) == (6, 4000, 443, 0x10)
    assert (b.proto, b.sport, b.dport, b.octets, b.tcp_flags) == (6, 4000, 443, 64, 0)
    assert p.fragments == 2


def test_snaplen_cut_transport_is_metered_with_ports_zero():
    p = PacketParser()
    frame = eth(V4TCP)[:14 + 20 + 2]
    assert p.parse(1, frame, 54) == P4._replace(sport=0, dport=0, tcp_flags=0)
    assert p.truncated == 1 and p.skipped == {}


def test_ip_length_zero_falls_back_to_the_frame():
    l3 = ipv4(6, tcp(), total=0)                    # TSO-captured segment
    assert PacketParser().parse(1, eth(l3), 14 + 9000).octets == 9000


def test_ip_length_above_the_wire_counts_the_wire():
    """A forged IP length (#15 item 12): the frame's original length after
    the link header is counted, as softflowd counts it, and the packet in
    length_mismatch; a length the wire holds is kept (Ethernet padding is
    not counted), and so is one a snaplen cut hides."""
    p = PacketParser()
    v4 = eth(ipv4(17, udp(body=b"x" * 18), total=65000))             # a 60-byte frame
    assert len(v4) == 60
    assert p.parse(1, v4, 60).octets == 46
    assert p.parse(1, v4[:40], 60).octets == 46                       # cut by the snaplen
    v6 = ipv6(17, udp())                                              # payload length 13
    v6 = v6[:4] + struct.pack("!H", 65000) + v6[6:]
    assert p.parse(1, eth(v6, 0x86DD), 14 + len(v6)).octets == len(v6)
    assert p.parse(101, v6, len(v6)).octets == len(v6)                # raw IP: no link header
    # a record whose original length is below its captured one: the captured counts
    assert p.parse(1, v4, 50).octets == 46
    assert p.length_mismatch == 5
    honest = eth(ipv4(6, tcp()) + b"\0" * 6)                           # 40 bytes, 6 of padding
    assert p.parse(1, honest, 60).octets == 40
    assert p.parse(1, eth(ipv4(6, tcp(), total=1500))[:54], 1514).octets == 1500
    assert p.length_mismatch == 5
    frag = eth(ipv4(17, udp(), total=9000, frag=0x2000))              # a first fragment
    assert p.parse(1, frag, len(frag)).octets == len(frag) - 14
    assert p.length_mismatch == 6


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 9999]),
       st.binary(max_size=120),
       st.sampled_from([b"", MAC + b"\x08\x00", MAC + b"\x86\xdd", MAC + b"\x81\x00\x00\x05",
                        b"\x45", b"\x60\0\0\0", b"\x02\0\0\0"]))
def test_fuzz_never_raises(linktype, tail, head):
    p = PacketParser()
    r = p.parse(linktype, head + tail, 0)
    assert r is None or (type(r) is Packet and len(r.src) in (4, 16) and r.octets >= 0)


# -- against tshark, frame by frame -------------------------------------------

@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark needed")
@pytest.mark.parametrize("capture", sorted(glob.glob(str(PCAPS / "*.pcap"))),
                         ids=lambda p: Path(p).name)
def test_sample_frames_match_tshark(capture):
    fields = ["ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport",
              "udp.srcport", "udp.dstport", "ip.proto", "ipv6.nxt", "ip.len", "ipv6.plen",
              "ip.dsfield", "ipv6.tclass", "tcp.flags", "vlan.id",
              "icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code"]
    cmd = ["tshark", "-r", capture, "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    rows = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.splitlines()
    p = PacketParser()
    frames = [pk for b in CaptureReader(capture).batches() for pk in b]
    assert len(rows) == len(frames)
    for row, (_ts, lt, data, orig) in zip(rows, frames):
        v = [x.split(",")[0] for x in row.split("|")]
        (s4, d4, s6, d6, tsp, tdp, usp, udp_, p4, p6, iplen, plen, dsf, tc, fl, vid,
         it, ic, i6t, i6c) = v
        got = p.parse(lt, data, orig)
        if not (s4 or s6):
            assert got is None
            continue
        proto = int(p4 or p6)
        if proto not in (6, 17):     # a tunnel (IP in IP, GRE): tshark's ports are the inner ones
            tsp = tdp = usp = udp_ = fl = ""
        if proto in (1, 58):        # ICMP: type * 256 + code in dport
            tdp = str(int(it or i6t) * 256 + int(ic or i6c))
        want = Packet(ipaddress.ip_address(s4 or s6).packed, ipaddress.ip_address(d4 or d6).packed,
                      int(tsp or usp or 0), int(tdp or udp_ or 0), proto,
                      int(vid or 0), int(iplen) if s4 else int(plen) + 40,
                      int(dsf or tc or "0", 16), int(fl or "0", 16) & 0xFF)
        assert got == want
