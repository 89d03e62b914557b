"""Make bench/data/destroy_replay.bin: >=100k ctnetlink DESTROY messages for the
decode benchmark, from the REAL DESTROY messages recorded in tests/data.

The recorded messages are replicated round-robin, each copy with its own
CTA_ID and with the original direction's source port and the reply
direction's destination port (and, for ICMP, the id in both tuples) rewritten
to a counter, so that every copy is a distinct connection with the layout
the kernel gave it.  Nothing else is changed; the netlink sequence numbers are
left as recorded.  The output uses the capture framing of
tools/capture_ctnetlink.py (u32 little-endian length + datagram, one message
per datagram as the kernel sends events).  bench/data/ is gitignored.

    python bench/make_replay.py [-n 200000] [[-o] bench/data/destroy_replay.bin]

Standard library only: the rewriting walks attributes itself, so it does not
depend on the decoder it feeds.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = [os.path.join(ROOT, "tests", "data", "ct_events.bin")]
FRAME = struct.Struct("<I")
MSG_CT_DELETE = 0x102
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ID = 1, 2, 12
CTA_TUPLE_PROTO = 2
CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT, CTA_PROTO_ICMP_ID, CTA_PROTO_ICMPV6_ID = 2, 3, 4, 7


def read_frames(path):
    with open(path, "rb") as f:
        data = f.read()
    off = 0
    while off + 4 <= len(data):
        (n,) = FRAME.unpack_from(data, off)
        yield data[off + 4:off + 4 + n]
        off += 4 + n


def messages(datagram):
    off = 0
    while off + 16 <= len(datagram):
        ln, typ = struct.unpack_from("=IH", datagram, off)
        if ln < 16 or off + ln > len(datagram):
            return
        yield typ, datagram[off:off + ln]
        off += (ln + 3) & ~3


def attrs(buf, start, end):
    """(type, payload offset, payload length) of each attribute in [start, end)."""
    while start + 4 <= end:
        ln, typ = struct.unpack_from("=HH", buf, start)
        if ln < 4:
            return
        yield typ & 0x3FFF, start + 4, ln - 4
        start += (ln + 3) & ~3


def patch_points(msg):
    """Offsets of CTA_ID, orig sport/icmp id, reply dport/icmp id."""
    pts = {"id": None, "o": [], "r": []}
    for typ, p, n in attrs(msg, 20, len(msg)):
        if typ == CTA_ID and n == 4:
            pts["id"] = p
        elif typ in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
            which = "o" if typ == CTA_TUPLE_ORIG else "r"
            want = (CTA_PROTO_SRC_PORT,) if which == "o" else (CTA_PROTO_DST_PORT,)
            want += (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMPV6_ID)
            for t2, p2, n2 in attrs(msg, p, p + n):
                if t2 == CTA_TUPLE_PROTO:
                    for t3, p3, n3 in attrs(msg, p2, p2 + n2):
                        if t3 in want and n3 == 2:
                            pts[which].append(p3)
    return pts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="make the DESTROY replay file for bench_decode.py")
    ap.add_argument("-n", type=int, default=200_000, help="messages to write (default 200000)")
    ap.add_argument("-o", dest="out", default=None,
                    help="output file (default bench/data/destroy_replay.bin)")
    ap.add_argument("output", nargs="?", help="output file (same as -o)")
    a = ap.parse_args(argv)
    a.o = a.out or a.output or os.path.join(HERE, "data", "destroy_replay.bin")
    templates = []
    for src in SOURCES:
        for dg in read_frames(src):
            for typ, msg in messages(dg):
                if typ == MSG_CT_DELETE:
                    templates.append((msg, patch_points(msg)))
    if not templates:
        sys.exit(f"no DESTROY messages in {SOURCES}")
    os.makedirs(os.path.dirname(os.path.abspath(a.o)), exist_ok=True)
    out = bytearray()
    for i in range(a.n):
        msg, pts = templates[i % len(templates)]
        m = bytearray(msg)
        if pts["id"] is not None:
            struct.pack_into(">I", m, pts["id"], (0x10000000 + i) & 0xFFFFFFFF)
        port = 1024 + (i // len(templates)) % 64000
        for p in pts["o"] + pts["r"]:
            struct.pack_into(">H", m, p, port)
        out += FRAME.pack(len(m)) + m
    with open(a.o, "wb") as f:
        f.write(out)
    print(f"{a.n} DESTROY messages from {len(templates)} recorded templates -> {a.o} "
          f"({len(out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
