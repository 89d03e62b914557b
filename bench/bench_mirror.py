"""The syslog CSV mirror's replay rate: flow-tools records per CPU second.

    python bench/bench_mirror.py [REPLAY_FILE] [--repeat N] [--objects] [--qlen N] [--udp]

The replay (bench_pipeline.py's: 200k recorded DESTROY messages) is decoded
and correlated once, untimed, into the export batches the daemon makes
(every FLUSH_THRESHOLD flows).  Each pass then hands every batch to a
``Pipeline`` with no collector and the mirror on (``Pipeline.export``: the
flow-tools view, the CSV lines, the syslog framing and one datagram per
line), the mirror's address a unix datagram socket bound in a temp dir
(as /dev/log; ``--udp``: a UDP port on 127.0.0.1) and drained by a child
process; its queue holds
net.unix.max_dgram_qlen datagrams (``--qlen``).  Lines that find the
socket's queue full wait in the backlog and go as the daemon's loop sends
them: the socket selected for writing, ``on_writable`` until the backlog
is empty.  The child counts the lines; the bench checks it got them all.

Prints, best of --repeat passes, the sender's CPU time (process_time: the
child's is not in it) per record and records per CPU second, for the whole
mirror and for its formatting alone (the lines as the mirror makes them, no
socket).  ``--objects``: ``Flow`` lists (the per-object path) instead of
the columnar batches.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_pipeline as bp  # noqa: E402
from nfflowd.app import config  # noqa: E402
from nfflowd.app.daemon import FLUSH_THRESHOLD, RECV_BATCH, tune_gc  # noqa: E402
from nfflowd.app.pipeline import Pipeline  # noqa: E402
from nfflowd.ctblocks import decode_blocks  # noqa: E402
from nfflowd.record import FlowBatch, FlowBatchBuilder  # noqa: E402
from nfflowd.conntrack import decode_datagrams  # noqa: E402
from nfflowd.correlate import Correlator  # noqa: E402
from nfflowd import flowtools  # noqa: E402
from nfflowd.io.syslog import SyslogFormatter  # noqa: E402

UPTIME_MS = 3_600_000


def export_batches(batches, news, objects: bool) -> list:
    """What the daemon's correlator hands to ``Pipeline.export``, batch by batch."""
    corr = Correlator(kernel_timestamps=True)
    now_ns = time.time_ns()
    for buf, starts, ends, stride in news:
        corr.handle_batch(decode_datagrams(buf, starts, ends).events if objects
                          else decode_blocks(buf, starts, ends, stride).events, 0, [])
    out = []
    pending = [] if objects else FlowBatchBuilder()
    for buf, starts, ends, stride in batches:
        res = (decode_datagrams(buf, starts, ends) if objects
               else decode_blocks(buf, starts, ends, stride))
        corr.handle_batch(res.events, now_ns, pending)
        if len(pending) >= FLUSH_THRESHOLD:
            out.append(FlowBatch.from_flows(pending) if objects else pending.batch())
            pending = [] if objects else FlowBatchBuilder()
    if len(pending):
        out.append(FlowBatch.from_flows(pending) if objects else pending.batch())
    return out


def drain_child(sock: socket.socket, ctl: int, result: int) -> None:
    """The syslog daemon's part: read and count datagrams until the parent
    closes ``ctl`` and the socket is empty; write the count to ``result``."""
    sock.setblocking(False)
    recv = sock.recv
    n = 0
    while True:
        readable = select.select([sock, ctl], [], [])[0]
        if sock not in readable:
            break                       # ctl closed and nothing left to read
        while True:
            try:
                recv(65536)
            except BlockingIOError:
                break
            n += 1
    os.write(result, str(n).encode())


def mirror_pass(pipeline: Pipeline, exports, now_ns: int) -> tuple[float, int]:
    """CPU seconds of one pass over ``exports`` and the lines sent."""
    mirror = pipeline.mirror
    sent0 = mirror.sent
    t0 = time.process_time()
    for flows in exports:
        pipeline.export(flows, [], now_ns, UPTIME_MS)
        while mirror.wants_write():     # the daemon's loop, between exports
            if select.select([], [mirror], [], 1.0)[1]:
                mirror.on_writable()
    return time.process_time() - t0, mirror.sent - sent0


def format_pass(bare: Pipeline, exports, now_ns: int) -> tuple[float, int]:
    """CPU seconds of the view and the lines alone (no socket), as the
    mirror makes them (flowtools.csv_block where there is one, else the
    encoded csv_lines); lines made."""
    prefix = SyslogFormatter(pid=os.getpid()).prefix_text(now_ns / 1e9)
    block = getattr(flowtools, "csv_block", None)
    n = 0
    t0 = time.process_time()
    for flows in exports:
        ft = bare.export(flows, [], now_ns, UPTIME_MS, flowtools=True)
        n += len(block(ft, prefix) if block is not None
                 else [line.encode() for line in flowtools.csv_lines(ft, prefix)])
    return time.process_time() - t0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("replay", nargs="?", default=str(bp.DEFAULT))
    ap.add_argument("--repeat", type=int, default=3, help="passes; best is shown")
    ap.add_argument("--objects", action="store_true",
                    help="Flow lists (the per-object path) instead of columnar batches")
    ap.add_argument("--qlen", type=int, metavar="N",
                    help="as root: run in a network namespace of its own whose "
                         "net.unix.max_dgram_qlen is N (systemd sets 512; the kernel's "
                         "default is 10)")
    ap.add_argument("--udp", action="store_true",
                    help="the mirror over UDP to 127.0.0.1 (RFC 3164, one send per line) "
                         "instead of a unix socket")
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.qlen is not None:
        if not args.in_netns:
            os.execvp("unshare", ["unshare", "-n", sys.executable, *sys.argv, "--in-netns"])
        Path("/proc/sys/net/unix/max_dgram_qlen").write_text(f"{args.qlen}\n")
    path = Path(args.replay)
    if not path.exists() and path == bp.DEFAULT:
        subprocess.run([sys.executable, str(HERE / "make_replay.py"), str(path)], check=True)
    datagrams = bp.load(path)
    exports = export_batches(bp.receive_batches(datagrams, RECV_BATCH),
                             bp.receive_batches([bp.as_new(d) for d in datagrams], RECV_BATCH),
                             args.objects)
    if args.udp:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 256 << 20)
        rx.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{rx.getsockname()[1]}"
        kind = "UDP"
    else:
        addr = Path(tempfile.mkdtemp(prefix="bench_mirror.")) / "log"
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(str(addr))
        kind = "unix datagram"
    ctl_r, ctl_w = os.pipe()
    res_r, res_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ctl_w)
        os.close(res_r)
        try:
            drain_child(rx, ctl_r, res_w)
        finally:
            os._exit(0)
    rx.close()
    os.close(ctl_r)
    os.close(res_w)
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    except (AttributeError, OSError):
        pass
    with_mirror = Pipeline(config.loads(
        f"export: {{collectors: []}}\nsyslog: {{address: '{addr}', backlog: 10000000}}\n"))
    with_mirror.open()
    bare = Pipeline(config.loads("export: {collectors: []}\nsyslog: {enabled: false}\n"))
    bare.open()
    now_ns = time.time_ns()
    print(f"replay: {path} ({len(datagrams)} datagrams, {len(exports)} exports of up to "
          f"{FLUSH_THRESHOLD} flows, {'Flow lists' if args.objects else 'columnar'}); "
          f"mirror to {addr} ({kind}), net.unix.max_dgram_qlen "
          f"{Path('/proc/sys/net/unix/max_dgram_qlen').read_text().strip()}")
    mirror_pass(with_mirror, exports[:2], now_ns)        # warm up (address caches, imports)
    tune_gc()
    for label, run, pl in (("view + CSV lines (no socket)", format_pass, bare),
                           ("mirror: view + lines + syslog", mirror_pass, with_mirror)):
        best = None
        for _ in range(args.repeat):
            secs, lines = run(pl, exports, now_ns)
            if best is None or secs < best[0]:
                best = (secs, lines)
        secs, lines = best
        print(f"{label:32s} {lines / secs:>10,.0f} records/s  ({lines} records, "
              f"{secs:.3f} s CPU, {secs / lines * 1e6:.2f} us/record)")
    sent = with_mirror.mirror.sent
    dropped = with_mirror.mirror.dropped
    with_mirror.close()
    os.close(ctl_w)
    got = int(os.read(res_r, 64) or 0)
    os.waitpid(child, 0)
    print(f"lines sent {sent:,}, dropped {dropped:,}, received {got:,}"
          + ("" if got == sent and not dropped else "  MISMATCH"))
    return 0 if got == sent and not dropped else 1


if __name__ == "__main__":
    sys.exit(main())
