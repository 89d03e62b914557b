"""Replay recorded DESTROY messages through decode, correlate and encode.

    python bench/bench_pipeline.py [REPLAY_FILE] [--repeat N] [--objects]

The replay file holds real ctnetlink datagrams (u32 little-endian length, then
the datagram, as written by tools/capture_ctnetlink.py); bench/make_replay.py
builds one of 200k DESTROY messages from the captures in tests/data.  One
core, one process, no sockets: the figure is the sans-IO pipeline's
throughput, the part the daemon's loop spends its CPU on.

What the daemon does, measured: the datagrams of a receive batch (RECV_BATCH
of them) lie in slots of io.netlink.MultiRecv.HEAD bytes, one each, in one
buffer (as ConntrackSocket.recv's recvmmsg leaves them), decoded by
ctblocks.decode_blocks reading the slots as a matrix (``stride``);
the correlator appends to a FlowBatchBuilder, exported every FLUSH_THRESHOLD flows
(the flow-tools view and v5 datagrams, or IPFIX messages); the garbage
collector is set as the daemon sets it once started (daemon.tune_gc).
Before each pass the connections' NEW events (the recorded messages with the
NEW type and flags) fill the correlator's cache, untimed, so that each
DESTROY finds its connection in the cache as in the daemon.  The columnar
path leaves the removal of ended connections from the cache to the daemon's
idle time (Correlator.reap): it is timed apart, after the pass, and shown
beside each figure ("removals").
``--objects`` measures the per-object path instead (conntrack.decode, Flow
lists), the one small batches take.

Prints events per second for: decode only; decode + correlate; decode +
correlate + flow-tools view + NetFlow v5 encode; decode + correlate + IPFIX
encode (the issue's target: 200k events/s for both); v5 plus the syslog
CSV lines; and the NEW events alone (decode + correlate: the cache fill a
connection's NEW costs).  CPU time (process_time), best of --repeat passes.

Then the interface lookup (nfflowd/interfaces.py, method route) off and on,
passes alternating, for decode + correlate and decode + correlate + IPFIX:
each "on" pass gets a fresh lookup (its address cache empty, its tables
built as the first block after a change builds them, untimed) over a
firewall's routes plus ``--routes`` random prefixes (IPv4 and IPv6, of
several lengths); the lookup's cost per record is the difference over the
records (two per event).  The replay's connections use few addresses, so
the per-object path's lookups are nearly all cache hits: the cost of a miss
(a longest-prefix match over the table) is measured apart, over random
addresses.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nfflowd.ctblocks import decode_blocks  # noqa: E402
from nfflowd.record import FlowBatch, FlowBatchBuilder  # noqa: E402
from nfflowd.conntrack import decode_datagrams  # noqa: E402
from nfflowd.correlate import Correlator  # noqa: E402
from nfflowd.app.daemon import FLUSH_THRESHOLD, RECV_BATCH, tune_gc  # noqa: E402
from nfflowd.flowtools import csv_block, expand  # noqa: E402
from nfflowd.interfaces import (RT_TABLE_LOCAL, RT_TABLE_MAIN, RTN_LOCAL,  # noqa: E402
                                RTN_UNICAST, Interfaces, Link, Route)
from nfflowd.ipfix import IpfixEncoder  # noqa: E402
from nfflowd.io.netlink import MultiRecv  # noqa: E402
from nfflowd.netflow5 import V5Encoder  # noqa: E402

HEAD = MultiRecv.HEAD          # the receive slots' in-line bytes

DEFAULT = HERE / "data" / "destroy_replay.bin"


def load(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, off = [], 0
    while off + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def receive_batches(datagrams, size, slot=HEAD):
    """(buffer, starts, ends, stride) per receive batch, as recv's
    recvmmsg fills its slots (each datagram at a multiple of ``slot``; the
    recordings are all shorter); ``slot=0``: back to back, 4-aligned (the
    per-datagram receive path)."""
    out = []
    for i in range(0, len(datagrams), size):
        parts, starts, ends, off = [], [], [], 0
        for d in datagrams[i:i + size]:
            pad = (slot - len(d)) if slot else -len(d) % 4
            if pad < 0:
                raise ValueError("a datagram longer than a slot")
            parts.append(d + bytes(pad))
            starts.append(off)
            ends.append(off + len(d))
            off += len(d) + pad
        out.append((b"".join(parts), starts, ends, slot))
    return out


def as_new(datagram: bytes) -> bytes:
    """The NEW event of a recorded DESTROY message: IPCTNL_MSG_CT_NEW with
    NLM_F_CREATE|NLM_F_EXCL (the same attributes; the correlator's cache
    keeps the tuples from it)."""
    b = bytearray(datagram)
    struct.pack_into("=HH", b, 4, 0x100, 0x400 | 0x200)
    return bytes(b)


def firewall_routes(extra: int, seed: int = 18) -> list:
    """The replay's firewall (inside 198.51.100.0/24 and 2001:db8:1::/64 on
    2, outside and default on 3, its own addresses local) and ``extra``
    random prefixes besides, as rtnetlink messages."""
    import ipaddress
    import random
    rnd = random.Random(seed)

    def r(prefix, oif, table=RT_TABLE_MAIN, kind=RTN_UNICAST):
        net = ipaddress.ip_network(prefix, strict=False)
        return Route(True, net.version, table, kind,
                     net.network_address.packed if net.prefixlen else b"", net.prefixlen, oif)
    msgs = [Link(True, 1, "lo"), Link(True, 2, "lan0"), Link(True, 3, "wan0"),
            r("198.51.100.0/24", 2), r("203.0.113.0/24", 3), r("0.0.0.0/0", 3),
            r("2001:db8:1::/64", 2), r("2001:db8:2::/64", 3), r("::/0", 3)]
    for a in ("198.51.100.1/32", "203.0.113.1/32", "2001:db8:1::1/128", "2001:db8:2::1/128"):
        msgs.append(r(a, 1, RT_TABLE_LOCAL, RTN_LOCAL))
    for i in range(extra):
        if i % 2:
            net = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.0/{rnd.choice((16, 20, 24, 28))}"
        else:
            net = f"2001:db8:{rnd.randrange(1 << 16):x}:{rnd.randrange(1 << 16):x}::/" \
                  f"{rnd.choice((40, 48, 56, 64))}"
        msgs.append(r(net, rnd.randrange(2, 4)))
    return msgs


def lookup_miss_cost(msgs, n: int = 100_000) -> float:
    """CPU seconds per address of a cache miss (fresh lookup, random IPv4
    and IPv6 addresses, half of them in the random prefixes' ranges)."""
    import random
    rnd = random.Random(7)
    addrs = []
    for i in range(n):
        if i % 2:
            addrs.append(bytes([10, rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)]))
        else:
            addrs.append(b"\x20\x01\x0d\xb8" + rnd.randbytes(12))
    ifs = Interfaces()
    ifs.update(msgs)
    ifs.lookup(addrs[0])            # (the tables are built at the first lookup)
    t0 = time.process_time()
    for a in addrs:
        ifs.lookup(a)
    return (time.process_time() - t0) / n


def run(batches, stage: str, objects: bool, news=(), interfaces=None
        ) -> tuple[float, int, float]:
    """CPU seconds for one pass of ``stage`` over all batches; events seen;
    CPU seconds of the cache removals the pass left for later.
    ``news``: NEW batches handled first, untimed, so that every DESTROY
    finds its connection in the correlator's cache as in the daemon.
    ``interfaces``: the correlator's interface lookup (None: off)."""
    corr = Correlator(kernel_timestamps=True, interfaces=interfaces)

    def fill():
        for buf, starts, ends, stride in news:
            corr.handle_batch(decode_datagrams(buf, starts, ends).events if objects
                              else decode_blocks(buf, starts, ends, stride).events, 0, [])
    if stage == "new":
        # the NEW events themselves, timed: the cache fill
        t0 = time.process_time()
        fill()
        return time.process_time() - t0, corr.counters["events_new"], 0.0
    if stage != "decode":
        fill()
    v5 = V5Encoder()
    ipfix = IpfixEncoder(records=("flows",))
    now_ns = time.time_ns()
    boot_ms = now_ns // 1_000_000 - 3_600_000
    exaddr = b"\xcb\x00\x71\x01"
    pending = [] if objects else FlowBatchBuilder()
    events = 0

    def flush():
        batch = FlowBatch.from_flows(pending) if objects else pending.batch()
        if stage in ("v5", "csv"):
            ft = expand(batch, now_ns, boot_ms, exaddr)
            v5.encode(ft)
            if stage == "csv":
                csv_block(ft)           # the lines as the syslog mirror makes them
        elif stage == "ipfix":
            ipfix.encode(batch, [], now_ns // 1_000_000)
        pending.clear()

    t0 = time.process_time()
    for buf, starts, ends, stride in batches:
        res = (decode_datagrams(buf, starts, ends) if objects
               else decode_blocks(buf, starts, ends, stride))
        if stage == "decode":
            events += len(res.events) if objects else sum(len(e) for e in res.events)
            continue
        corr.handle_batch(res.events, now_ns, pending)
        if len(pending) >= FLUSH_THRESHOLD:
            flush()
    if stage != "decode":
        flush()
        events = corr.counters["events_destroy"]
    secs = time.process_time() - t0
    t0 = time.process_time()
    corr.reap()
    return secs, events, time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("replay", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=3, help="passes per stage; best is shown")
    ap.add_argument("--routes", type=int, default=1000,
                    help="random prefixes in the interface lookup's table (default 1000)")
    ap.add_argument("--objects", action="store_true",
                    help="the per-object path (conntrack.decode, Flow lists) instead")
    args = ap.parse_args()
    path = Path(args.replay)
    if not path.exists() and path == DEFAULT:
        subprocess.run([sys.executable, str(HERE / "make_replay.py"), str(path)], check=True)
    datagrams = load(path)
    batches = receive_batches(datagrams, RECV_BATCH)
    news = receive_batches([as_new(d) for d in datagrams], RECV_BATCH)
    print(f"replay: {path} ({len(datagrams)} datagrams, receive batches of {RECV_BATCH} in {HEAD}-byte slots, "
          f"export every {FLUSH_THRESHOLD} flows; "
          f"{'per-object path' if args.objects else 'columnar path'})")
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(f"pinned to cpu {min(os.sched_getaffinity(0))}")
    except (AttributeError, OSError):
        pass
    run(batches[:4], "ipfix", args.objects)         # learn the shapes (and warm up)
    tune_gc()
    for stage, label in (("decode", "decode"),
                         ("correlate", "decode + correlate"),
                         ("v5", "decode + correlate + v5 encode"),
                         ("ipfix", "decode + correlate + IPFIX encode"),
                         ("csv", "v5 + syslog CSV lines"),
                         ("new", "NEW events: decode + correlate")):
        best = None
        for _ in range(args.repeat):
            secs, events, reap = run(batches, stage, args.objects, news)
            if best is None or secs < best:
                best, best_reap = secs, reap
        removals = (f"; removals {best_reap / events * 1e6:.2f} us/event"
                    if stage not in ("decode", "new") else "")
        print(f"{label:34s} {events / best:>10,.0f} events/s  ({events} events, "
              f"{best:.3f} s CPU, {best / events * 1e6:.2f} us/event{removals})")
    compare_interfaces(batches, news, args)
    return 0


def compare_interfaces(batches, news, args) -> None:
    """The interface lookup off and on, passes alternating (see the
    module's docstring)."""
    msgs = firewall_routes(args.routes)

    def fresh():
        ifs = Interfaces()
        ifs.update(msgs)
        return ifs

    def built():
        # the tables made as the first block after a change makes them
        ifs = fresh()
        ifs.lookup_many(np.array([4, 6], dtype=np.uint64), np.zeros((2, 16), dtype=np.uint8))
        return ifs
    t0 = time.process_time()
    built()
    build = time.process_time() - t0
    sizes = fresh().sizes()
    print(f"interface lookup (method route; {sizes['routes4']} IPv4 and {sizes['routes6']} "
          f"IPv6 routes, {sizes['local']} local):")
    for stage, label in (("correlate", "decode + correlate"),
                         ("ipfix", "decode + correlate + IPFIX encode")):
        best = {False: None, True: None}
        for _ in range(args.repeat):
            for on in (False, True):
                secs, events, _reap = run(batches, stage, args.objects, news,
                                          built() if on else None)
                if best[on] is None or secs < best[on]:
                    best[on] = secs
        off, on = best[False], best[True]
        print(f"  {label:34s} off {events / off:>10,.0f} events/s, on {events / on:>10,.0f} "
              f"events/s: {on / off * 100 - 100:+.1f}% CPU; lookup "
              f"{(on - off) / (2 * events) * 1e6:.3f} us/record")
    print(f"  a cache miss (longest-prefix match, fresh lookup): "
          f"{lookup_miss_cost(msgs) * 1e6:.2f} us/address; the tables built after a "
          f"change: {build * 1e3:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
