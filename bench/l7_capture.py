"""The L7 benchmark's capture: TCP and UDP conversations whose first packets
carry what the meter's ``--l7`` inspects (bench/l7_payloads.py).

Shares, per conversation: TCP 80% (port 443 60%: a ClientHello, then the
server's ServerHello segment; port 80 and 8080 20%: an HTTP/1.1 request and
its response; port 22 the rest: no inspected payload), UDP 20% (DNS over port
53: one to three queries, each answered).  After the handshake, TCP data
segments (TLS application data on 443) both ways, each acknowledged, their
number per conversation exponential around the mean that gives ``packets``;
then FIN both ways and the last ACK.  Over 5 minutes of packet time, frames
cut to a 640-byte snaplen (ClientHellos, ServerHellos and HTTP headers whole,
bulk segments cut).  Seeded; written once under bench/data/ (gitignored).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import l7_payloads as pl

DATA = Path(__file__).resolve().parent / "data"
SNAPLEN = 640
SPAN_S = 300
GEN_VERSION = 1


def generate(path: Path, packets: int = 1_000_000, flows: int = 100_000, seed: int = 1) -> int:
    """Write the capture; returns the number of packets."""
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    ev = []
    n_udp = flows // 5
    n_tcp = (flows - n_udp) // 2
    per_dir = max(3, (packets - n_udp * 2) // (n_tcp * 2))
    for c in range(n_tcp):
        cli = struct.pack("!I", 0xC6336400 | rng.randrange(1, 255))       # 198.51.100.x
        srv = struct.pack("!I", 0xCB007100 | rng.randrange(1, 255))       # 203.0.113.x
        cport = 1024 + (c % 60000)
        r = rng.random()
        sport = 443 if r < 0.6 else (80 if r < 0.72 else 8080 if r < 0.8 else 22)
        host = f"www{rng.randrange(5000)}.example.com"
        t = t0 + rng.random() * SPAN_S
        ev.append((t, cli, srv, 6, cport, sport, b"", 0x02))
        t += 0.02
        ev.append((t, srv, cli, 6, sport, cport, b"", 0x12))
        t += 0.01
        if sport == 443:
            ev.append((t, cli, srv, 6, cport, sport, pl.client_hello(host, rng), 0x18))
            t += 0.02
            ev.append((t, srv, cli, 6, sport, cport, pl.server_hello(rng), 0x18))
        elif sport != 22:
            ev.append((t, cli, srv, 6, cport, sport, pl.http_request(host, f"/p/{c}"), 0x18))
            t += 0.02
            ev.append((t, srv, cli, 6, sport, cport, pl.http_response(rng), 0x18))
        data = b"\x17\x03\x03\x05\x6c" if sport == 443 else b""
        for _ in range(max(1, int(rng.expovariate(1 / (per_dir - 2))))):
            t += rng.expovariate(50)
            if rng.random() < 0.7:
                ev.append((t, srv, cli, 6, sport, cport, data + bytes(1400 - len(data)), 0x18))
                ev.append((t + 0.001, cli, srv, 6, cport, sport, b"", 0x10))
            else:
                ev.append((t, cli, srv, 6, cport, sport, data + bytes(300), 0x18))
                ev.append((t + 0.001, srv, cli, 6, sport, cport, b"", 0x10))
        t += 0.05
        ev.append((t, cli, srv, 6, cport, sport, b"", 0x11))
        ev.append((t + 0.01, srv, cli, 6, sport, cport, b"", 0x11))
        ev.append((t + 0.02, cli, srv, 6, cport, sport, b"", 0x10))
    for _ in range(n_udp // 2):
        cli = struct.pack("!I", 0xC6336400 | rng.randrange(1, 255))
        srv = struct.pack("!I", 0xCB007100 | rng.randrange(1, 9))
        cport = 1024 + rng.randrange(60000)
        t = t0 + rng.random() * SPAN_S
        name = f"host{rng.randrange(20000)}.example.org"
        for _ in range(rng.randint(1, 3)):
            qid = rng.randrange(65536)
            qtype = rng.choice((1, 1, 28))
            ev.append((t, cli, srv, 17, cport, 53, pl.dns_query(name, qid, qtype), 0))
            t += 0.005 + rng.random() * 0.05
            ev.append((t, srv, cli, 17, 53, cport,
                       pl.dns_response(name, qid, rng, qtype, rcode=3 if rng.random() < 0.05
                                       else 0), 0))
            t += 0.2
    ev.sort(key=lambda e: e[0])
    eth = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"
    ip_s = struct.Struct("!BBHHHBB2x4s4s")
    tcp_s = struct.Struct("!HHIIBBHHH")
    udp_s = struct.Struct("!HHHH")
    rec = struct.Struct("<IIII")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 1))
        out = bytearray()
        for i, (t, src, dst, proto, sp, dp, pay, flags) in enumerate(ev):
            if proto == 6:
                l4 = tcp_s.pack(sp, dp, 1, 1, 0x50, flags, 65535, 0, 0)
            else:
                l4 = udp_s.pack(sp, dp, 8 + len(pay), 0)
            frame = (eth + ip_s.pack(0x45, 0, 20 + len(l4) + len(pay), i & 0xFFFF, 0x4000, 64,
                                     proto, src, dst) + l4 + pay)
            sec = int(t)
            out += rec.pack(sec, int((t - sec) * 1e6), min(len(frame), SNAPLEN), len(frame))
            out += frame[:SNAPLEN]
            if len(out) > 1 << 24:
                f.write(out)
                out.clear()
        f.write(out)
    tmp.replace(path)
    return len(ev)


def capture(packets: int = 1_000_000, seed: int = 1) -> Path:
    """The capture for ``packets``, generated on first use."""
    path = DATA / f"l7_{packets}_s{seed}_v{GEN_VERSION}.pcap"
    if not path.exists():
        generate(path, packets, max(10, packets // 10), seed)
    return path
