"""Replay recorded DESTROY messages through decode, correlate and encode.

    python bench/bench_pipeline.py [REPLAY_FILE] [--repeat N]

The replay file holds real ctnetlink datagrams (u32 little-endian length, then
the datagram, as written by tools/capture_ctnetlink.py); bench/make_replay.py
builds one of 100k+ DESTROY messages from the captures in tests/data.  One
core, one process, no sockets: the figure is the sans-IO pipeline's
throughput, the part the daemon's loop spends its CPU on.

Prints events per second for: decode only; decode + correlate; decode +
correlate + flow-tools view + NetFlow v5 encode (the issue's target, 100k
events/s or more); and the same plus the syslog CSV lines.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nfflowd.conntrack import decode  # noqa: E402
from nfflowd.correlate import Correlator  # noqa: E402
from nfflowd.flowtools import csv_lines, expand  # noqa: E402
from nfflowd.daemon import RECV_BATCH  # noqa: E402
from nfflowd.netflow5 import V5Encoder  # noqa: E402

DEFAULT = HERE / "data" / "destroy_replay.bin"


def load(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, off = [], 0
    while off + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def run(batches, stage: str) -> tuple[float, int]:
    """CPU seconds for one pass of ``stage`` over all batches; events seen."""
    corr = Correlator(kernel_timestamps=True)
    enc = V5Encoder()
    now_ns = time.time_ns()
    boot_ms = now_ns // 1_000_000 - 3_600_000
    exaddr = b"\xcb\x00\x71\x01"
    pending: list = []
    events = 0
    t0 = time.process_time()
    for buf in batches:
        res = decode(buf)
        events += len(res.events)
        if stage == "decode":
            continue
        corr.handle_batch(res.events, now_ns, pending)
        if stage in ("encode", "csv") and pending:
            ft = expand(pending, now_ns, boot_ms, exaddr)
            enc.encode(ft)
            if stage == "csv":
                csv_lines(ft)
        pending.clear()
    return time.process_time() - t0, events


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("replay", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=3, help="passes per stage; best is shown")
    args = ap.parse_args()
    path = Path(args.replay)
    if not path.exists() and path == DEFAULT:
        subprocess.run([sys.executable, str(HERE / "make_replay.py"), str(path)], check=True)
    datagrams = load(path)
    # The daemon receives datagrams back to back into one buffer and decodes
    # each receive batch in one call (ConntrackSocket.recv_batch); so here.
    batches = [b"".join(datagrams[i:i + RECV_BATCH])
               for i in range(0, len(datagrams), RECV_BATCH)]
    print(f"replay: {path} ({len(datagrams)} datagrams, batches of {RECV_BATCH})")
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(f"pinned to cpu {min(os.sched_getaffinity(0))}")
    except (AttributeError, OSError):
        pass
    for stage, label in (("decode", "decode"),
                         ("correlate", "decode + correlate"),
                         ("encode", "decode + correlate + v5 encode"),
                         ("csv", "... + syslog CSV lines")):
        best = None
        for _ in range(args.repeat):
            secs, events = run(batches, stage)
            best = secs if best is None else min(best, secs)
        print(f"{label:34s} {events / best:>10,.0f} events/s  ({events} events, {best:.3f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
