"""The pcap meter against softflowd on the same capture file.

    python bench/bench_meter.py [--packets N] [--flows N] [--full] [--no-softflowd]

Generates (once, into bench/data/, gitignored) a pcap of 1M+ Ethernet/IPv4
packets in ~100k unidirectional flows: TCP connections (SYN, data both ways,
FIN both ways, last ACK; segment sizes from an IMIX-like mix of 40-byte ACKs,
mid-size and 1500-byte segments) and short UDP exchanges, interleaved over
5 minutes of packet time.  Frames are stored cut to a 128-byte snaplen (what
a metering probe captures; the original length is the real one) unless
--full is given.

Then meters it, one core, no sockets:
- nfflowd: ``meter_file`` with the default table (active 300 s, inactive
  30 s, 131072 flows), which meters a classic pcap file with numpy a chunk
  (32 MB) at a time (nfflowd.meterfast): CPU time (time.process_time) of one
  run in a fresh process, packets/s, and the flow cache's bytes per flow
  (``FlowTable.memory_per_flow``: sys.getsizeof over the entries, sampled
  between chunks at the fullest point; inside a chunk the packets are held in
  numpy arrays, some 100 bytes per packet of the chunk, whatever the flows);
- softflowd 1.1.0: ``softflowd -r FILE -v 9 -m 131072`` exporting to a UDP
  socket on 127.0.0.1 that this process drains; its CPU time is that of the
  waited-for child (resource.getrusage(RUSAGE_CHILDREN), user + system).
Prints both and the ratio (softflowd CPU / nfflowd CPU: >= 1.0 means nfflowd
is as fast or faster).
"""

from __future__ import annotations

import argparse
import random
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nfflowd.app.meters import meter_file  # noqa: E402
from nfflowd.meter import FlowTable  # noqa: E402

DATA = HERE / "data"
SNAPLEN = 128
SPAN_S = 300


def _segment(rng) -> int:
    r = rng.random()
    if r < 0.45:
        return 1460
    if r < 0.6:
        return rng.randint(200, 1200)
    return rng.randint(1, 120)


def generate(path: Path, packets: int, flows: int, full: bool, seed: int = 1) -> int:
    """Write the capture; returns the number of packets."""
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    events = []          # (time, frame-builder args)
    n_udp_flows = flows // 5
    n_tcp_conn = (flows - n_udp_flows) // 2
    per_dir = max(2, (packets - n_udp_flows * 2) // (n_tcp_conn * 2))
    for c in range(n_tcp_conn):
        cli = struct.pack("!I", 0x0A000000 | rng.randrange(1 << 16))
        srv = struct.pack("!I", 0xC6336400 | rng.randrange(256))
        cport = 1024 + (c % 60000)
        sport = rng.choice((80, 443, 443, 443, 22, 8080))
        t = t0 + rng.random() * SPAN_S
        k = max(1, int(rng.expovariate(1 / (per_dir - 2)))) if per_dir > 2 else 1
        events.append((t, cli, srv, 6, cport, sport, 40, 0x02))
        t += 0.02
        events.append((t, srv, cli, 6, sport, cport, 40, 0x12))
        for _ in range(k):
            t += rng.expovariate(50)
            if rng.random() < 0.7:
                events.append((t, srv, cli, 6, sport, cport, 40 + _segment(rng), 0x18))
            else:
                events.append((t, cli, srv, 6, cport, sport, 40 + rng.randint(0, 600), 0x18))
            events.append((t + 0.001, cli if events[-1][1] == srv else srv,
                           srv if events[-1][1] == srv else cli, 6,
                           events[-1][5], events[-1][4], 40, 0x10))
        t += 0.05
        events.append((t, cli, srv, 6, cport, sport, 40, 0x11))
        events.append((t + 0.01, srv, cli, 6, sport, cport, 40, 0x11))
        events.append((t + 0.02, cli, srv, 6, cport, sport, 40, 0x10))
    for u in range(n_udp_flows // 2):
        cli = struct.pack("!I", 0x0A010000 | rng.randrange(1 << 16))
        srv = struct.pack("!I", 0x08080800 | rng.randrange(8))
        cport = 1024 + rng.randrange(60000)
        t = t0 + rng.random() * SPAN_S
        for _ in range(rng.randint(1, 3)):
            events.append((t, cli, srv, 17, cport, 53, 28 + rng.randint(20, 60), 0))
            t += 0.005 + rng.random() * 0.05
            events.append((t, srv, cli, 17, 53, cport, 28 + rng.randint(40, 500), 0))
            t += 0.2
    events.sort(key=lambda e: e[0])
    eth = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"
    ip_s = struct.Struct("!BBHHHBB2x4s4s")
    l4_tcp = struct.Struct("!HHIIBBHHH")
    l4_udp = struct.Struct("!HHHH")
    rec = struct.Struct("<IIII")
    pad = bytes(1600)
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535 if full else SNAPLEN, 1))
    for i, (t, src, dst, proto, sp, dp, total, flags) in enumerate(events):
        frame = eth + ip_s.pack(0x45, 0, total, i & 0xFFFF, 0x4000, 64, proto, src, dst)
        if proto == 6:
            frame += l4_tcp.pack(sp, dp, 1, 1, 0x50, flags, 65535, 0, 0)
        else:
            frame += l4_udp.pack(sp, dp, total - 20, 0)
        wire = 14 + total
        caplen = wire if full else min(wire, SNAPLEN)
        frame = (frame + pad[:max(0, caplen - len(frame))])[:caplen]
        sec = int(t)
        out += rec.pack(sec, int((t - sec) * 1e6), caplen, wire)
        out += frame
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return len(events)


def count_packets(path: Path) -> int:
    from nfflowd.io.pcapfile import CaptureReader
    r = CaptureReader(path)
    for _ in r.batches():
        pass
    return r.packets


def bench_nfflowd(path: Path) -> dict:
    table = FlowTable()
    t0 = time.process_time()
    s = meter_file(path, table, sink=lambda flows: None)
    cpu = time.process_time() - t0
    # a second, untimed pass samples the cache size when it is fullest
    table2 = FlowTable()
    peak = {"n": 0, "bpf": 0.0}

    def sample(_flows):
        n = len(table2)
        if n > peak["n"] * 1.1:
            peak["n"], peak["bpf"] = n, table2.memory_per_flow()
    meter_file(path, table2, sink=sample)
    return {"cpu": cpu, "frames": s.frames, "flows": s.flows_exported,
            "peak_flows": peak["n"], "bytes_per_flow": peak["bpf"],
            "end_reasons": s.end_reasons}


def bench_softflowd(path: Path, frames: int) -> dict | None:
    if not (shutil.which("softflowd") and shutil.which("softflowctl")):
        return None
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.2)
    port = sink.getsockname()[1]
    stop = threading.Event()
    got = {"datagrams": 0}

    def drain():
        while not stop.is_set():
            try:
                sink.recv(65536)
                got["datagrams"] += 1
            except socket.timeout:
                pass
    th = threading.Thread(target=drain, daemon=True)
    th.start()
    ctl = DATA / "softflowd.ctl"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic()
    proc = subprocess.Popen(["timeout", "600", "softflowd", "-r", str(path), "-n",
                             f"127.0.0.1:{port}", "-v", "9", "-m", "131072",
                             "-c", str(ctl), "-p", str(DATA / "softflowd.pid"), "-d"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pokes = 0
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if ctl.exists():
                r = subprocess.run(["softflowctl", "-c", str(ctl), "statistics"],
                                   capture_output=True, text=True, timeout=10)
                pokes += 1
                m = re.search(r"Packets processed: (\d+)", r.stdout)
                n = re.search(r"\((\d+) non-IP", r.stdout)
                if m and n and int(m.group(1)) + int(n.group(1)) >= frames:
                    subprocess.run(["softflowctl", "-c", str(ctl), "shutdown"],
                                   capture_output=True, timeout=10)
                    break
            time.sleep(0.01)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop.set()
        th.join()
        sink.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = re.search(r"Flows exported: \d+ \((\d+) records\)", out)
    p = re.search(r"Packets processed: (\d+)", out)
    return {"cpu": cpu, "wall": time.monotonic() - wall, "records": int(m.group(1)) if m else None,
            "packets": int(p.group(1)) if p else None, "pokes": pokes,
            "datagrams": got["datagrams"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--full", action="store_true", help="store whole frames, not 128 bytes")
    ap.add_argument("--no-softflowd", action="store_true")
    ap.add_argument("--regenerate", action="store_true")
    a = ap.parse_args()
    path = DATA / f"meter_{a.packets}_{a.flows}{'_full' if a.full else ''}.pcap"
    if a.regenerate or not path.exists():
        t = time.monotonic()
        n = generate(path, a.packets, a.flows, a.full)
        print(f"generated {path} ({n} packets, {path.stat().st_size / 1e6:.0f} MB) "
              f"in {time.monotonic() - t:.1f} s")
    frames = count_packets(path)
    r = bench_nfflowd(path)
    print(f"capture: {path.name}: {frames} packets")
    print(f"nfflowd   meter: {r['cpu']:.2f} s CPU, {frames / r['cpu']:,.0f} packets/s, "
          f"{r['flows']} flows exported {r['end_reasons']}")
    print(f"nfflowd   flow cache: {r['bytes_per_flow']:.0f} bytes per flow "
          f"(at {r['peak_flows']} active flows)")
    if a.no_softflowd:
        return
    s = bench_softflowd(path, frames)
    if s is None:
        print("softflowd not installed: no comparison")
        return
    print(f"softflowd 1.1.0: {s['cpu']:.2f} s CPU, {frames / s['cpu']:,.0f} packets/s, "
          f"{s['records']} records, {s['packets']} IP packets "
          f"({s['pokes']} control-socket pokes, {s['wall']:.1f} s wall)")
    print(f"ratio (softflowd CPU / nfflowd CPU): {s['cpu'] / r['cpu']:.2f}")


if __name__ == "__main__":
    main()
