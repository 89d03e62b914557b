"""The pcap meter against softflowd, on captures of several shapes.

    python bench/bench_meter.py [--shapes a,b,...] [--packets N] [--repeat N] [--quick]
                                [--max-flows N] [--no-softflowd]
    python bench/bench_meter.py --in-process [--packets N] [--flows N] [--full]

Each shape's capture is generated once (bench/data/, gitignored, seeded;
the file name carries the parameters): ``even`` is the original one (below),
the others come from bench/meter_shapes.py (``pareto``: the issue's case,
``pareto4`` the same conversations four times as long, ``ipv6``, ``vlan``,
``gaps``, ``scan``, ``elephants``); ``real`` adds every capture in
tests/data/pcaps, ``one`` a capture of one packet (start-up alone), ``l7``
TLS/HTTP/DNS conversations whose first packets carry what ``--l7`` reads
(bench/l7_capture.py).  ``--l7 PROTOCOLS`` adds a third run per shape:
nfflowd with ``--l7 PROTOCOLS`` (e.g. ``all``), its CPU against nfflowd
without and against softflowd (which has no L7), alternated with them.

For each, both meters run as child processes on the same file, one after
the other (``--repeat`` alternates them), exporting NetFlow v9 to a UDP
socket on 127.0.0.1 that this process drains; CPU (user + system) and peak
RSS of each child come from ``os.wait4`` and GNU time; nfflowd's
bytecode is compiled first (``compileall``), as an installed package's is:
- nfflowd: ``python -m nfflowd -c CFG meter -r FILE --max-flows N`` (its
  start-up included: imports, configuration);
- softflowd 1.1.0: ``softflowd -r FILE -v 9 -m N -d`` with nfflowd's
  timeouts (maxlife 300 s, idle 30 s, TCP FIN 5 s, RST 2 s).
Prints per shape both CPU times, the ratio softflowd CPU / nfflowd CPU
(>= 1.0: nfflowd as fast or faster), nfflowd's packets/s, both peak RSS
and the records each exported; first the interpreter's own baselines
(``python -c pass``; the meter's modules and numpy imported).

``even`` (``--in-process`` meters it in this process, as this bench did
first, and samples the flow cache's bytes per flow): 1M+ Ethernet/IPv4
packets in ~100k unidirectional flows: TCP connections (SYN, data both ways,
FIN both ways, last ACK; segment sizes from an IMIX-like mix of 40-byte ACKs,
mid-size and 1500-byte segments) and short UDP exchanges, interleaved over
5 minutes of packet time, cut to a 128-byte snaplen unless --full.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import l7_capture  # noqa: E402
import meter_shapes  # noqa: E402

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
    """``meter_file`` in this process: CPU, and the flow cache's bytes per flow."""
    from nfflowd.app.meters import meter_file
    from nfflowd.meter import FlowTable
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


def even_capture(packets: int, flows: int, full: bool, regenerate: bool = False) -> Path:
    path = DATA / f"meter_{packets}_{flows}{'_full' if full else ''}.pcap"
    if regenerate or not path.exists():
        t = time.monotonic()
        n = generate(path, packets, flows, full)
        print(f"generated {path} ({n} packets, {path.stat().st_size / 1e6:.0f} MB) "
              f"in {time.monotonic() - t:.1f} s", flush=True)
    return path


class Drain:
    """A UDP socket on 127.0.0.1 read by a thread: the collector of both meters."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams = 0
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.sock.recv(65536)
                self.datagrams += 1
            except socket.timeout:
                pass

    def close(self):
        self._stop.set()
        self._th.join()
        self.sock.close()


TIME = shutil.which("time") and Path("/usr/bin/time")


def run_child(argv: list[str], timeout: float = 300) -> dict:
    """Run ``argv`` to its end: CPU (user + system, s), peak RSS (MB), wall
    time and its output (stdout and stderr together).  The child is started
    by GNU time, whose %M is the peak RSS of the child alone: a child forked
    from this process would count this process's RSS at its exec in its own
    ru_maxrss.  The CPU is os.wait4's (time's own, a millisecond, with it)."""
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as tf:
        t = time.monotonic()
        wrap = [str(TIME), "-f", "%M", "-o", tf.name] if TIME and TIME.exists() else []
        proc = subprocess.Popen(wrap + argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = t + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t
        out.seek(0)
        text = out.read().decode(errors="replace")
        m = re.search(r"(\d+)\s*$", tf.read())
        rss = int(m.group(1)) / 1024 if wrap and m else ru.ru_maxrss / 1024
    return {"cpu": ru.ru_utime + ru.ru_stime, "rss": rss, "wall": wall,
            "rc": proc.returncode, "out": text}


def nfflowd_argv(path: Path, cfg: Path, max_flows: int) -> list[str]:
    return [sys.executable, "-m", "nfflowd", "-c", str(cfg), "meter", "-r", str(path),
            "--max-flows", str(max_flows)]


def softflowd_argv(path: Path, port: int, max_flows: int, tmp: Path) -> list[str]:
    # no -c: with a control socket, softflowd -r waits for a shutdown command
    # after the capture's end
    return ["softflowd", "-r", str(path), "-n", f"127.0.0.1:{port}", "-v", "9",
            "-m", str(max_flows), "-d", "-p", str(tmp / "softflowd.pid"),
            "-t", "maxlife=300", "-t", "general=30", "-t", "tcp=30", "-t", "udp=30",
            "-t", "icmp=30", "-t", "tcp.fin=5", "-t", "tcp.rst=2"]


def run_nfflowd(path: Path, cfg: Path, max_flows: int, extra=()) -> dict:
    r = run_child(nfflowd_argv(path, cfg, max_flows) + list(extra))
    m = re.search(r"(\d+) frames, (\d+) IP packets, \d+ bytes, (\d+) flows exported", r["out"])
    if r["rc"] != 0 or m is None:
        raise SystemExit(f"nfflowd failed on {path} (exit {r['rc']}):\n{r['out']}")
    r["frames"], r["packets"], r["records"] = (int(g) for g in m.groups())
    return r


def run_softflowd(path: Path, port: int, max_flows: int, tmp: Path) -> dict:
    r = run_child(softflowd_argv(path, port, max_flows, tmp))
    m = re.search(r"Flows exported: \d+ \((\d+) records\)", r["out"])
    p = re.search(r"Packets processed: (\d+)", r["out"])
    if r["rc"] != 0 or m is None:
        raise SystemExit(f"softflowd failed on {path} (exit {r['rc']}):\n{r['out']}")
    r["records"], r["packets"] = int(m.group(1)), int(p.group(1)) if p else None
    return r


def baselines(repeat: int) -> list[tuple[str, dict]]:
    """The interpreter alone, and with the meter's modules (numpy among them)."""
    rows = []
    for name, code in (("python -c pass", "pass"),
                       ("import nfflowd.app.meters, nfflowd.meterfast, numpy",
                        "import nfflowd.app.meters, nfflowd.meterfast, numpy")):
        runs = [run_child([sys.executable, "-c", code]) for _ in range(repeat)]
        rows.append((name, {"cpu": statistics.median(r["cpu"] for r in runs),
                            "rss": max(r["rss"] for r in runs)}))
    return rows


def shape_paths(names: list[str], packets: int, a) -> list[tuple[str, Path]]:
    out = []
    for name in names:
        if name == "even":
            out.append((name, even_capture(packets, a.flows, a.full, a.regenerate)))
        elif name == "real":
            out += [(f"real:{Path(p).stem}", Path(p))
                    for p in sorted((HERE.parent / "tests" / "data" / "pcaps").glob("*.pcap"))]
        elif name == "one":
            out.append((name, meter_shapes.capture("scan", 1)))
        elif name == "l7":
            out.append((name, l7_capture.capture(packets)))
        elif name in meter_shapes.SHAPES:
            t = time.monotonic()
            path = meter_shapes.capture(name, packets)
            if time.monotonic() - t > 1:
                print(f"generated {path.name} in {time.monotonic() - t:.1f} s", flush=True)
            out.append((name, path))
        else:
            raise SystemExit(f"unknown shape {name!r}; known: one, even, real, l7, "
                             + ", ".join(meter_shapes.SHAPES))
    return out


def compare(name: str, path: Path, a, drain: Drain, cfg: Path, tmp: Path) -> dict:
    """``a.repeat`` runs of each meter, alternated; medians (RSS: the largest)."""
    nf, sf, l7 = [], [], []
    for _ in range(a.repeat):
        nf.append(run_nfflowd(path, cfg, a.max_flows))
        if a.l7:
            l7.append(run_nfflowd(path, cfg, a.max_flows, ("--l7", a.l7)))
        if not a.no_softflowd:
            sf.append(run_softflowd(path, drain.port, a.max_flows, tmp))
    row = {"shape": name, "frames": nf[0]["frames"], "nf_cpu": statistics.median(r["cpu"] for r in nf),
           "nf_rss": max(r["rss"] for r in nf), "nf_records": nf[0]["records"]}
    if sf:
        row.update(sf_cpu=statistics.median(r["cpu"] for r in sf),
                   sf_rss=max(r["rss"] for r in sf), sf_records=sf[0]["records"],
                   ratios=[s["cpu"] / n["cpu"] for n, s in zip(nf, sf)])
    if l7:
        row.update(l7_cpu=statistics.median(r["cpu"] for r in l7),
                   l7_over_off=[x["cpu"] / n["cpu"] for n, x in zip(nf, l7)],
                   l7_line=re.search(r"l7: .*", l7[0]["out"]).group(0))
        if sf:
            row["l7_ratios"] = [s["cpu"] / x["cpu"] for x, s in zip(l7, sf)]
    return row


HEAD = (f"{'shape':<18} {'packets':>9} {'nfflowd s':>9} {'softflowd s':>11} {'ratio':>6} "
        f"{'nfflowd pkt/s':>13} {'nfflowd MB':>10} {'softflowd MB':>12} {'records nf/sf':>17}")


def show(row: dict) -> None:
    sf = "sf_cpu" in row
    ratio = statistics.median(row["ratios"]) if sf else None
    line = (f"{row['shape']:<18} {row['frames']:>9} {row['nf_cpu']:>9.3f} "
            + (f"{row['sf_cpu']:>11.3f} {ratio:>6.2f} " if sf else f"{'-':>11} {'-':>6} ")
            + f"{row['frames'] / row['nf_cpu']:>13,.0f} {row['nf_rss']:>10.1f} "
            + (f"{row['sf_rss']:>12.1f} " if sf else f"{'-':>12} ")
            + f"{row['nf_records']:>8}/{row.get('sf_records', '-')!s:<8}")
    if sf and len(row["ratios"]) > 1:
        line += "  ratios " + " ".join(f"{r:.2f}" for r in row["ratios"])
    print(line, flush=True)
    if "l7_cpu" in row:
        print(f"{'  with --l7':<18} {'':>9} {row['l7_cpu']:>9.3f} "
              f"({statistics.median(row['l7_over_off']):.2f}x the CPU without; "
              f"{row['l7_cpu'] / row['frames'] * 1e6:.2f} us a packet)"
              + (f", softflowd / nfflowd --l7: {statistics.median(row['l7_ratios']):.2f}"
                 if "l7_ratios" in row else "") + f"; {row['l7_line']}", flush=True)


DEFAULT_SHAPES = "one,even,pareto,pareto4,ipv6,vlan,gaps,scan,elephants,real"


def in_process(a) -> None:
    """The first form of this bench: the even capture metered in this process."""
    path = even_capture(a.packets, a.flows, a.full, a.regenerate)
    frames = count_packets(path)
    r = bench_nfflowd(path)
    print(f"capture: {path.name}: {frames} packets")
    print(f"nfflowd   meter: {r['cpu']:.2f} s CPU, {frames / r['cpu']:,.0f} packets/s, "
          f"{r['flows']} flows exported {r['end_reasons']}")
    print(f"nfflowd   flow cache: {r['bytes_per_flow']:.0f} bytes per flow "
          f"(at {r['peak_flows']} active flows)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES,
                    help=f"comma-separated (default {DEFAULT_SHAPES})")
    ap.add_argument("--packets", type=int, default=None,
                    help="packets per generated capture (default 1,000,000; --quick 100,000)")
    ap.add_argument("--flows", type=int, default=100_000, help="flows of the even capture")
    ap.add_argument("--full", action="store_true",
                    help="even capture: store whole frames, not 128 bytes")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each meter per shape, alternated (medians printed)")
    ap.add_argument("--quick", action="store_true", help="small captures: a smoke run")
    ap.add_argument("--max-flows", type=int, default=131072, help="both meters' table size")
    ap.add_argument("--no-softflowd", action="store_true")
    ap.add_argument("--l7", metavar="PROTOCOLS",
                    help="also run nfflowd with --l7 PROTOCOLS (all, or tls,quic,http,dns)")
    ap.add_argument("--regenerate", action="store_true", help="even capture: write it again")
    ap.add_argument("--in-process", action="store_true",
                    help="the even capture metered in this process (meter_file), no softflowd")
    a = ap.parse_args()
    packets = a.packets or (100_000 if a.quick else 1_000_000)
    if a.quick and a.flows == 100_000:
        a.flows = packets // 10
    a.packets = packets
    if a.in_process:
        in_process(a)
        return
    if not a.no_softflowd and not shutil.which("softflowd"):
        print("softflowd not installed: nfflowd alone")
        a.no_softflowd = True
    shapes = shape_paths([s for s in a.shapes.split(",") if s], packets, a)
    # bytecode as an installed package has it (this machine may run with
    # PYTHONDONTWRITEBYTECODE): else every run compiles nfflowd's sources
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "nfflowd")],
                   check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    drain = Drain()
    try:
        with tempfile.TemporaryDirectory(prefix="bench_meter.") as tmpdir:
            tmp = Path(tmpdir)
            cfg = tmp / "nfflowd.yaml"
            cfg.write_text("export:\n  collectors:\n    - {host: 127.0.0.1, port: %d, version: 9}\n"
                           "syslog:\n  enabled: false\n" % drain.port)
            print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
                  f"--max-flows {a.max_flows}, {a.repeat} run(s) of each meter per shape")
            for name, b in baselines(max(1, a.repeat)):
                print(f"baseline {name}: {b['cpu']:.3f} s CPU, {b['rss']:.1f} MB peak RSS")
            print(HEAD)
            rows = []
            for name, path in shapes:
                rows.append(compare(name, path, a, drain, cfg, tmp))
                show(rows[-1])
    finally:
        drain.close()
    by = {r["shape"]: r for r in rows}
    if "scan" in by and "one" in by:
        per = (by["scan"]["nf_rss"] - by["one"]["nf_rss"]) * (1 << 20) / a.max_flows
        print(f"scan (table full, {a.max_flows} slots): nfflowd {per:,.0f} bytes per flow slot "
              "above the one-packet run"
              + (f"; softflowd {(by['scan']['sf_rss'] - by['one']['sf_rss']) * (1 << 20) / a.max_flows:,.0f}"
                 if "sf_rss" in by["scan"] else ""))
    if "pareto" in by and "pareto4" in by:
        p1, p4 = by["pareto"], by["pareto4"]
        print(f"pareto x4 packets, same flows: nfflowd peak RSS {p1['nf_rss']:.1f} -> "
              f"{p4['nf_rss']:.1f} MB" + (f", softflowd {p1['sf_rss']:.1f} -> {p4['sf_rss']:.1f} MB"
                                          if "sf_rss" in p1 else ""))


if __name__ == "__main__":
    main()
