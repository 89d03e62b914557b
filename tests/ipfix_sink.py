"""A minimal IPFIX-over-UDP collector for the burst tests and bench.

    python ipfix_sink.py ADDR PORT OUT --lifetime S [--nat NAT_OUT]

Binds ADDR:PORT with a 64 MiB receive buffer (SO_RCVBUFFORCE: root), prints
READY, and writes one line per flow data record to OUT (flushed every
datagram): ``reason proto src sport dst dport packets octets start_ms end_ms``
(IPv4 and IPv6).  NAT event records are skipped, or with ``--nat`` written
to NAT_OUT, one line each: ``natEvent proto src sport post_src post_sport
time_ms``.  Also notes the time of the first and the last flow record in
OUT.times.  Exits on SIGTERM or after S s.
Templates are learnt as they come (fixed-length fields only, as nfflowd sends).
"""

import ipaddress
import signal
import socket
import struct
import sys
import time

def sets(d: bytes):
    """(set id, body start, body end) of each set of one IPFIX message;
    nothing for a datagram that is not one."""
    if len(d) < 16 or struct.unpack_from("!H", d)[0] != 10:
        return
    off, total = 16, min(len(d), struct.unpack_from("!H", d, 2)[0])
    while off + 4 <= total:
        sid, slen = struct.unpack_from("!HH", d, off)
        if slen < 4:
            return
        yield sid, off + 4, min(off + slen, total)
        off += slen


def learn(d: bytes, body: int, bend: int, templates: dict) -> None:
    """The templates of a template set: id -> ([(ie, offset, length)], record length).
    Enterprise elements are kept as 0x10000 | id."""
    p = body
    while p + 4 <= bend:
        tid, count = struct.unpack_from("!HH", d, p)
        p += 4
        fields, rlen = [], 0
        for _ in range(count):
            ie, ln = struct.unpack_from("!HH", d, p)
            p += 4
            if ie & 0x8000:            # enterprise number follows
                p += 4
                ie = 0x10000 | (ie & 0x7FFF)
            fields.append((ie, rlen, ln))
            rlen += ln
        templates[tid] = (fields, rlen)


WANT = {136: "reason", 4: "proto", 8: "src", 27: "src", 7: "sport", 12: "dst", 28: "dst",
        11: "dport", 2: "packets", 1: "octets", 152: "start", 153: "end",
        32: "icmp", 139: "icmp"}
NAT_WANT = {230: "event", 4: "proto", 8: "src", 27: "src", 7: "sport", 225: "post_src",
            281: "post_src", 227: "post_sport", 323: "time"}


def values(d: bytes, p: int, fields, want: dict) -> dict:
    """The ``want`` elements of the record at ``p``."""
    rec = {}
    for ie, fo, ln in fields:
        name = want.get(ie)
        if name is None:
            continue
        raw = d[p + fo:p + fo + ln]
        rec[name] = (str(ipaddress.ip_address(raw)) if name in ("src", "dst", "post_src")
                     else int.from_bytes(raw, "big"))
    return rec


def main():
    addr, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    lifetime = float(sys.argv[sys.argv.index("--lifetime") + 1]) if "--lifetime" in sys.argv else 60
    nat_out = open(sys.argv[sys.argv.index("--nat") + 1], "w") if "--nat" in sys.argv else None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)    # SO_RCVBUFFORCE
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind((addr, port))
    s.settimeout(0.2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    templates = {}
    first = last = None
    f = open(out, "w")
    print("READY", flush=True)
    end = time.monotonic() + lifetime
    while not stop and time.monotonic() < end:
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        lines, nat_lines = [], []
        for sid, body, bend in sets(d):
            if sid == 2:
                learn(d, body, bend, templates)
            elif sid >= 256 and sid in templates:
                fields, rlen = templates[sid]
                names = {WANT[ie] for ie, _, _ in fields if ie in WANT}
                if nat_out is not None and 230 in {ie for ie, _, _ in fields} and rlen:
                    for p in range(body, bend - rlen + 1, rlen):
                        rec = values(d, p, fields, NAT_WANT)
                        nat_lines.append("%s %s %s %s %s %s %s\n" % (
                            rec["event"], rec.get("proto", 0), rec.get("src"),
                            rec.get("sport", 0), rec.get("post_src"),
                            rec.get("post_sport", 0), rec.get("time", 0)))
                elif "packets" in names and rlen:
                    p = body
                    while p + rlen <= bend:
                        rec = values(d, p, fields, WANT)
                        lines.append("%s %s %s %s %s %s %s %s %s %s\n" % (
                            rec.get("reason", 0), rec.get("proto", 0), rec.get("src"),
                            rec.get("sport", 0), rec.get("dst"),
                            rec.get("dport", rec.get("icmp", 0)), rec.get("packets", 0),
                            rec.get("octets", 0), rec.get("start", 0), rec.get("end", 0)))
                        p += rlen
        if lines:
            now = time.time()
            first = first or now
            last = now
            f.write("".join(lines))
            f.flush()
        if nat_lines:
            nat_out.write("".join(nat_lines))
            nat_out.flush()
    f.close()
    if nat_out is not None:
        nat_out.close()
    with open(out + ".times", "w") as t:
        t.write(f"{first} {last}\n")


if __name__ == "__main__":
    main()
