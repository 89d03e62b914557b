"""The NAT trace archive: ingest rate, bytes per connection, lookup latency.

Generates CGNAT-like connections (a few public addresses whose 64k ports are
reused all day, 16k private hosts, mostly short connections and 1% longer
than an hour), hour by hour over ``--days``: each connection gives an OPEN row
at its start and a FINAL row at its end, as the daemon writes them.  Rows go
through the store as the writer thread drives it (append, flush, seal of each
finished hour); the rate counts that whole work, CPU time of this process.
Then ``--probes`` random ``trace ip:port --at T`` lookups on connections that
exist (the first right after opening the archive) give the median and the
99th percentile.  ``--grep N`` and ``--nfdump N`` ask the same probes of N of
the connections as the mirror's CSV lines and as nfcapd files, scaled to all.

    python bench/bench_archive.py --connections 100000000 --days 7 --nfdump 1000000
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nfflowd.archive import (HOUR_MS, KIND_FINAL, KIND_OPEN, ROW, addr16,  # noqa: E402
                             make_pkey, set_pkeys)
from nfflowd.io.archive import Reader, Store  # noqa: E402

PUBLIC = [addr16(bytes([203, 0, 113, i])) for i in range(1, 9)]


def _addrs(ints: np.ndarray) -> np.ndarray:
    """IPv4 ints as 16-byte mapped addresses."""
    out = np.zeros((len(ints), 16), np.uint8)
    out[:, 10:12] = 0xFF
    out[:, 12:] = ints.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out.view("S16").reshape(len(ints))


def hour_rows(rng, hour_ms: int, n: int, n_public: int, first_id: int):
    """The connections that start in one hour: (open rows, final rows)."""
    rows = np.zeros(n, ROW)
    start = hour_ms + np.sort(rng.integers(0, HOUR_MS, n))
    dur = (rng.lognormal(8.5, 1.8, n)).astype(np.int64)         # median ~5 s
    long_ = rng.random(n) < 0.01
    dur[long_] = rng.integers(HOUR_MS, 6 * HOUR_MS, long_.sum())
    rows["start_ms"] = start
    rows["family"] = 4
    rows["proto"] = rng.choice(np.array([6, 17, 1], np.uint8), n, p=[0.6, 0.38, 0.02])
    rows["src"] = _addrs(0x64400000 + rng.integers(0, 16384, n))   # 100.64.0.0/10
    popular = rng.integers(0, 5000, n) * 7919 % (1 << 24) + (93 << 24)
    rows["dst"] = _addrs(np.where(rng.random(n) < 0.7, popular,
                                  rng.integers(1 << 24, 223 << 24, n)))
    rows["sport"] = rng.integers(32768, 61000, n)
    rows["dport"] = rng.choice(np.array([443, 80, 53, 123, 993, 5222], np.uint16), n)
    pub = np.array(PUBLIC[:n_public], "S16")
    rows["xsrc"] = pub[rng.integers(0, n_public, n)]
    rows["xdst"] = rows["dst"]
    rows["xsport"] = rng.integers(1024, 65536, n)
    rows["xdport"] = rows["dport"]
    rows["conn_id"] = ((np.arange(n, dtype=np.uint64) + first_id) * 2654435761 % (1 << 32)).astype(np.uint32)
    rows["fw"] = b"fw1"
    set_pkeys(rows)
    opens = rows.copy()
    opens["kind"] = KIND_OPEN
    fin = rows
    fin["end_ms"] = start + dur
    fin["kind"] = KIND_FINAL
    fin["reason"] = 3
    pk = rng.lognormal(2.5, 1.5, n).astype(np.uint64) + 1
    fin["pkts_out"] = pk
    fin["bytes_out"] = pk * rng.integers(60, 1400, n).astype(np.uint64)
    fin["pkts_in"] = pk
    fin["bytes_in"] = pk * rng.integers(60, 1400, n).astype(np.uint64)
    return opens, fin


def records_stage(n: int) -> None:
    """Rows from what the correlator hands the archive: a NAT create event
    and two DESTROY records per connection, as ``Flow`` tuples (the object
    path) and as a ``FlowBatch`` (the burst path); CPU per connection."""
    from nfflowd.archive import RowBuilder
    from nfflowd.record import REPLY, Flow, FlowBatch, NatEvent
    pub = bytes([203, 0, 113, 1])
    flows, events = [], []
    for i in range(n):
        priv = (0x64400000 + i % 16384).to_bytes(4, "big")
        rem = (0x5D000000 + i * 7919 % 99991).to_bytes(4, "big")
        sp, xp, t = 30000 + i % 30000, 1024 + i % 60000, 1_780_000_000_000 + i
        events.append(NatEvent(4, 6, priv, rem, sp, 443, pub, rem, xp, 443, t, True, i + 1))
        flows.append(Flow(4, 6, priv, rem, sp, 443, pub, rem, xp, 443, 5, 500, t, t + 900,
                          0, 3, 0, 0, i + 1, 0))
        flows.append(Flow(4, 6, rem, pub, 443, xp, rem, priv, 443, sp, 5, 5000, t, t + 900,
                          REPLY, 3, 0, 0, i + 1, 0))
    batch = FlowBatch.from_flows(flows).as_columns()
    b = RowBuilder("fw1")
    c0 = time.process_time()
    b.rows([], events)
    c1 = time.process_time()
    b.rows(flows, [])
    c2 = time.process_time()
    b.rows(batch, [])
    c3 = time.process_time()
    print(f"rows from records      create events {n / (c1 - c0):,.0f}/s, DESTROY records "
          f"{n / (c2 - c1):,.0f} connections/s as Flow tuples, {n / (c3 - c2):,.0f} as a "
          f"FlowBatch (CPU)")
    print(f"  per connection       {(c1 - c0 + c2 - c1) / n * 1e6:.1f} us (object path), "
          f"{(c1 - c0 + c3 - c2) / n * 1e6:.1f} us (burst path)")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=10_000_000)
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--public", type=int, default=4, help="public addresses")
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--dir", default=None, help="keep the archive here")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--records", type=int, default=200_000,
                    help="connections for the rows-from-records stage (0: skip)")
    ap.add_argument("--grep", type=int, default=0, metavar="N",
                    help="also: grep over the syslog CSV lines of N of the connections "
                         "(3 lines each, as the mirror writes them), extrapolated to all")
    ap.add_argument("--nfdump", type=int, nargs="?", default=0, const=1_000_000, metavar="N",
                    help="also: nfdump over nfcapd files of N (1000000) of the connections "
                         "(nfflowd's NetFlow v9 export of them sent to a local nfcapd), "
                         "extrapolated to all")
    ap.add_argument("--probe-only", action="store_true",
                    help="only the lookups, on the archive --dir holds (probes drawn from it)")
    a = ap.parse_args()
    if a.probe_only:
        probe(Path(a.dir), existing_samples(Path(a.dir), np.random.default_rng(a.seed),
                                            4 * a.probes), a.probes, np.random.default_rng(a.seed))
        return
    rng = np.random.default_rng(a.seed)
    if a.records:
        records_stage(a.records)
    hours = max(1, int(a.days * 24))
    per_hour = a.connections // hours
    base = (1_780_000_000_000 // HOUR_MS) * HOUR_MS
    d = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="nfflowd-archive-bench-"))
    if d.exists():
        shutil.rmtree(d)
    store = Store(d)
    store.open()
    gen_cpu = io_cpu = 0.0
    seal_cpu = 0.0
    samples = []
    pending_final = []
    t_wall = time.perf_counter()
    for h in range(hours):
        hour = base + h * HOUR_MS
        c0 = time.process_time()
        opens, fin = hour_rows(rng, hour, per_hour, a.public, h * per_hour)
        if len(samples) < 4 * a.probes:
            pick = rng.integers(0, per_hour, max(1, 4 * a.probes // hours + 1))
            samples.extend(fin[pick])
        c1 = time.process_time()
        gen_cpu += c1 - c0
        # this hour's opens, and the finals that end in it (rows of earlier hours too)
        pending_final.append(fin)
        allfin = np.concatenate(pending_final)
        due = allfin["end_ms"] < hour + HOUR_MS
        c1 = time.process_time()
        store.append(opens)
        store.append(allfin[due])
        store.flush()
        pending_final = [allfin[~due]]
        c2 = time.process_time()
        store.seal_due(hour + HOUR_MS, grace_ms=0)
        c3 = time.process_time()
        io_cpu += c2 - c1
        seal_cpu += c3 - c2
        print(f"hour {h + 1}/{hours}: {per_hour} connections, append {c2 - c1:.2f} s, "
              f"seal {c3 - c2:.2f} s CPU", file=sys.stderr, flush=True)
    rest = np.concatenate(pending_final)
    store.append(rest)
    store.flush()
    store.seal_due(base + (hours + 8) * HOUR_MS, grace_ms=0)
    store.close()
    wall = time.perf_counter() - t_wall
    total = per_hour * hours
    size = du(d)
    print(f"connections            {total}")
    print(f"ingest (append+flush)  {total / io_cpu:,.0f} connections/s CPU "
          f"({2 * total / io_cpu:,.0f} rows/s)")
    print(f"ingest with sealing    {total / (io_cpu + seal_cpu):,.0f} connections/s CPU")
    print(f"generation (not counted) {gen_cpu:.1f} s CPU; wall for all {wall:.1f} s")
    print(f"size on disk           {size / total:.1f} bytes/connection ({size / 1e6:.1f} MB)")

    median = probe(d, samples, a.probes, rng)
    if a.grep:
        grep_stage(d, a.grep, total, median, rng)
    if a.nfdump:
        nfdump_stage(d, a.nfdump, total, median, rng)
    if not a.dir:
        shutil.rmtree(d)


def existing_samples(d: Path, rng, n: int) -> list:
    """Connections drawn from the sealed hour files of an archive."""
    import pyarrow.parquet as pq
    from nfflowd.io.archive import from_table
    files = sorted(d.glob("*/??.parquet"))
    out = []
    for f in rng.choice(files, min(n // 4 + 1, len(files))):
        t = pq.read_table(f)
        for i in rng.integers(0, max(1, t.num_rows), 4 if t.num_rows else 0):
            out.append(from_table(t.slice(int(i), 1))[0])
    return out


def probe(d: Path, samples: list, n: int, rng) -> None:
    """``n`` lookups of connections among ``samples``, at a time inside each."""
    probes = [samples[i] for i in rng.choice(len(samples), min(n, len(samples)),
                                              replace=False)]
    times = []
    first = None
    found = 0
    reader = None
    for r in probes:
        t = int(r["start_ms"]) + random.randint(0, max(0, int(r["end_ms"] - r["start_ms"])))
        key = make_pkey(bytes(r["xsrc"]).ljust(16, b"\0"), int(r["xsport"]))
        c = time.perf_counter()
        if reader is None:
            reader = Reader(d)
        got = reader.lookup(key, t, 2000)
        times.append(time.perf_counter() - c)
        first = times[0] if first is None else first
        found += any(int(g["conn_id"]) == int(r["conn_id"]) for g in got)
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000  # noqa: E731
    print(f"probes                 {len(times)}, found {found}, "
          f"the first (opening) {first * 1000:.1f} ms")
    print(f"lookup median          {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {times[-1] * 1000:.1f} ms")
    return p(0.5) / 1000


def first_rows(d: Path, n: int) -> np.ndarray:
    """The first ``n`` connections of the sealed hour files, in hour order."""
    import pyarrow.parquet as pq
    from nfflowd.io.archive import from_table
    rows = []
    for f in sorted(d.glob("*/??.parquet")):
        rows.append(from_table(pq.read_table(f)))
        if sum(map(len, rows)) >= n:
            break
    return np.concatenate(rows)[:n]


def grep_stage(d: Path, n: int, total: int, median: float, rng) -> None:
    """The same question asked of the mirror's CSV lines with grep: the
    line of the public address and port, whole file scanned (as the
    README's awk does), on ``n`` connections, then scaled to ``total``."""
    import subprocess

    from nfflowd.archive import addr_text
    rows = first_rows(d, n)
    path = d / "flows.csv"
    with open(path, "w") as out:
        for r in rows:
            src, dst, xsrc = (addr_text(bytes(r[k])) for k in ("src", "dst", "xsrc"))
            head = f"{int(r['end_ms']) // 1000},0,1000000,203.0.113.1,{r['pkts_out']},{r['bytes_out']},1,2,"
            out.write(f"{head}{src},{dst},0.0.0.0,0,0,{r['sport']},{r['dport']},{r['proto']},0,0\n")
            out.write(f"{head}{xsrc},{dst},0.0.0.0,0,0,{r['xsport']},{r['dport']},{r['proto']},0,0\n")
            out.write(f"{head[:-4]}1,2,{dst},{xsrc},0.0.0.0,0,0,{r['dport']},{r['xsport']},"
                      f"{r['proto']},0,0\n")
    size = path.stat().st_size
    times = []
    for i in rng.integers(0, len(rows), 5):
        r = rows[int(i)]
        pat = f",{addr_text(bytes(r['xsrc']))},[^,]*,0.0.0.0,0,0,{r['xsport']},"
        c = time.perf_counter()
        subprocess.run(["grep", "-E", pat, str(path)], capture_output=True, check=False)
        times.append(time.perf_counter() - c)
    per = sorted(times)[len(times) // 2] * total / n
    print(f"grep over CSV lines    {size / n:.0f} bytes/connection; a probe over {n} "
          f"connections {sorted(times)[len(times) // 2] * 1000:.0f} ms, scaled to {total}: "
          f"{per:.1f} s, {per / median:,.0f}x the archive's median")


NFDUMP_FMT = "%ts %te %pr %sa %sp %nsa %nsp %da %dp %nevt"


def _v4(col: np.ndarray) -> np.ndarray:
    """The archive's 16-byte IPv4-mapped addresses as a ``FlowBatch``
    address column (the 4 bytes first, zeros after)."""
    raw = np.ascontiguousarray(col).view(np.uint8).reshape(len(col), 16)
    out = np.zeros_like(raw)
    out[:, :4] = raw[:, 12:]
    return out


def export_batch(rows: np.ndarray):
    """What the daemon exports of ``rows`` (IPv4, source NAT): the flow
    records of both directions, and the NAT create and delete events."""
    from nfflowd.record import REPLY, FlowBatch, NatEvent, interleave
    n = len(rows)
    src, dst, xsrc = _v4(rows["src"]), _v4(rows["dst"]), _v4(rows["xsrc"])
    u = lambda k: rows[k].astype(np.uint64)  # noqa: E731
    orig = dict(src=src, dst=dst, sport=u("sport"), dport=u("dport"), post_src=xsrc,
                post_dst=dst, post_sport=u("xsport"), post_dport=u("dport"),
                packets=u("pkts_out"), octets=u("bytes_out"), direction=np.zeros(n, np.uint64))
    reply = dict(src=dst, dst=xsrc, sport=u("dport"), dport=u("xsport"), post_src=dst,
                 post_dst=src, post_sport=u("dport"), post_dport=u("sport"),
                 packets=u("pkts_in"), octets=u("bytes_in"),
                 direction=np.full(n, REPLY, np.uint64))
    same = dict(family=np.full(n, 4, np.uint64), proto=u("proto"), start_ms=u("start_ms"),
                end_ms=u("end_ms"), end_reason=u("reason"), tos=np.zeros(n, np.uint64),
                tcp_flags=np.zeros(n, np.uint64), conn_id=u("conn_id"),
                vlan=np.zeros(n, np.uint64), in_if=np.zeros(n, np.uint64),
                out_if=np.zeros(n, np.uint64), zone=np.zeros(n, np.uint64),
                mark=np.zeros(n, np.uint64))
    batch = FlowBatch.from_columns(**{k: interleave(v, reply[k]) for k, v in orig.items()},
                                   **{k: interleave(v, v) for k, v in same.items()})
    b4 = lambda a: [bytes(x) for x in a[:, :4]]  # noqa: E731
    cols = (rows["proto"].tolist(), b4(src), b4(dst), rows["sport"].tolist(),
            rows["dport"].tolist(), b4(xsrc), rows["xsport"].tolist(),
            rows["start_ms"].tolist(), rows["end_ms"].tolist(), rows["conn_id"].tolist())
    events = []
    for proto, s, d_, sp, dp, xs, xp, t0, t1, cid in zip(*cols):
        events.append(NatEvent(4, proto, s, d_, sp, dp, xs, d_, xp, dp, t0, True, cid))
        events.append(NatEvent(4, proto, s, d_, sp, dp, xs, d_, xp, dp, t1, False, cid))
    return batch, events


def wait_bound(proc, port: int) -> None:
    """Until ``proc`` (nfcapd) holds UDP ``port`` on 127.0.0.1."""
    import socket
    end = time.monotonic() + 10
    while True:
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"nfcapd did not bind 127.0.0.1:{port}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)


def write_nfcapd(rows: np.ndarray, out: Path) -> int:
    """``rows`` as nfcapd files in ``out``: encoded by nfflowd's NetFlow v9
    encoder (legacy NAT event codes, as the README gives nfdump 1.7.1),
    sent over loopback UDP to an nfcapd of its own, stopped at the end (it
    writes its file then).  The records sent."""
    import signal
    import socket
    import subprocess

    from nfflowd.netflow9 import NetflowV9Encoder
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["nfcapd", "-w", str(out), "-b", "127.0.0.1", "-p", str(port),
                             "-t", "3600", "-B", str(8 << 20)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sent = 0
    try:
        wait_bound(proc, port)
        enc = NetflowV9Encoder(source_id=1, nat_event_codes="legacy", max_size=1400)
        boot = int(rows["start_ms"].min()) - 1000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(0, len(rows), 5000):
                part = rows[i:i + 5000]
                batch, events = export_batch(part)
                for dg in enc.encode(batch, events, int(part["end_ms"].max()), boot):
                    s.sendto(dg, ("127.0.0.1", port))
                sent += len(batch) + len(events)
                time.sleep(0.02)        # nfcapd keeps up: no datagram lost
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return sent


def nfdump(args: list, env: dict):
    """nfdump's output lines, its wall and CPU time."""
    import resource
    import subprocess
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c = time.perf_counter()
    r = subprocess.run(["nfdump", *args], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - c
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise SystemExit(f"nfdump {' '.join(args)}: {r.stderr.strip()}")
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return r.stdout.splitlines(), wall, cpu


def nfdump_stage(d: Path, n: int, total: int, median: float, rng, probes: int = 5) -> None:
    """The same question asked of nfdump over nfcapd files holding ``n``
    of the connections (as nfflowd's v9 export carries them: both flow
    records and the NAT events), with the README's filter on the public
    address and port, the whole directory scanned; the connection checked
    among the answers; the per-probe time scaled to ``total``."""
    import datetime as dt
    import os

    from nfflowd.archive import addr_text
    rows = first_rows(d, n)
    out = d / "nfcapd"
    out.mkdir()
    c = time.perf_counter()
    sent = write_nfcapd(rows, out)
    env = dict(os.environ, TZ="UTC")
    stat, _, _ = nfdump(["-R", str(out), "-I"], env)
    held = next((int(x.split(":")[1]) for x in stat if x.startswith("Flows:")), 0)
    size = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith("nfcapd."))
    print(f"nfcapd files           {n} connections: {sent} records sent, {held} held "
          f"({size / n:.0f} bytes/connection), written in {time.perf_counter() - c:.0f} s")
    ts = lambda ms: dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime(  # noqa: E731
        "%Y-%m-%d %H:%M:%S.%f")[:-3]
    walls, cpus, found = [], [], 0
    pick = rng.permutation(np.flatnonzero(rows["proto"] != 1))[:probes]
    for i in pick:
        r = rows[int(i)]
        name = {6: "tcp", 17: "udp"}[int(r["proto"])]
        filt = (f"proto {name} and src xip {addr_text(bytes(r['xsrc']))} "
                f"and src xport {r['xsport']}")
        lines, wall, cpu = nfdump(["-R", str(out), "-q", "-N", "-o", f"fmt:{NFDUMP_FMT}", filt],
                                  env)
        walls.append(wall)
        cpus.append(cpu)
        want = [ts(int(r["start_ms"])), ts(int(r["end_ms"])), addr_text(bytes(r["src"])),
                str(r["sport"])]
        found += any([" ".join(w[0:2]), " ".join(w[2:4]), w[5], w[6]] == want
                     for w in map(str.split, lines))
    wall, cpu = sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2]
    per = wall * total / n
    print(f"nfdump over nfcapd     {len(pick)} probes, found {found}; a probe over {n} "
          f"connections {wall * 1000:.0f} ms ({min(walls) * 1000:.0f}-{max(walls) * 1000:.0f}; "
          f"{cpu * 1000:.0f} ms CPU), scaled to {total}: "
          f"{per:.1f} s, {per / median:,.0f}x the archive's median")


if __name__ == "__main__":
    main()
