"""The packet meter wired to its sources and sinks: ``nfflowd meter``.

Strategy: the flow table (``nfflowd.meter``) is fed by one loop per kind of
source, here: ``meter_file`` for capture files and ``meter_live`` for an
interface's ring (``nfflowd.io.capture``).  Both meter a batch of frames,
expire the flows due, and hand each list of ended flows to a sink; both fill
one ``MeterStats``.  Ended flows are gathered in a
``record.FlowBatchBuilder`` (``Flow`` records from the table, blocks of
columns from the chunk path) and go to the sink as one ``FlowBatch``.  A classic pcap file without a filter, a count or a
progress line goes a chunk at a time through ``nfflowd.meterfast`` (numpy),
whose records and counters are those of the batch-by-batch loop
(tests/test_meterfast.py); a chunk it cannot take is metered batch by batch
here.  ``run_file`` and ``run_interface`` are the command's runs: the sink
that exports through a ``Pipeline``, the progress line and the reports on
standard error; they return a ``service.Status``.
"""

from __future__ import annotations

import os
import select
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from nfflowd.app.config import Config
from nfflowd.app.service import Status, err
from nfflowd.errors import NfflowdError
from nfflowd.io.pcapfile import CaptureError, CaptureReader
from nfflowd.packet import PacketParser
from nfflowd.record import FlowBatch, FlowBatchBuilder

try:
    from nfflowd.meterfast import ChunkMeter
except ImportError:                  # numpy missing: batch by batch only
    ChunkMeter = None

__all__ = ["MeterStats", "meter_file", "meter_live", "chunk_size_for", "skip_warnings",
           "Exporter", "Progress", "run_file", "run_interface", "END_NAMES",
           "json_lines", "l7_lines", "l7_warnings"]


@dataclass
class MeterStats:
    """What a meter run saw, from a file or an interface.  ``error`` is the
    CaptureError (files) that stopped the read; every flow metered before it
    went to the sink (or, without one, into ``flows``)."""
    source: str = ""
    format: str | None = None       # files: pcap or pcapng
    frames: int = 0                 # frames read (that passed the filter, if any)
    filtered: int = 0               # frames the filter rejected (files only)
    ip_packets: int = 0             # metered
    octets: int = 0
    skipped: dict = field(default_factory=dict)   # reason -> frames (non-IP, ...)
    fragments: int = 0
    truncated: int = 0              # transport header cut by the snaplen
    length_mismatch: int = 0        # IP length above the wire length (the wire's counted)
    snapped: int = 0                # captured length < original length
    l7: dict | None = None          # --l7: the inspector's counters (Inspector.stats)
    flows: list = field(default_factory=list)     # when no sink was given
    flows_exported: int = 0
    evicted: int = 0
    end_reasons: dict = field(default_factory=dict)
    kernel_packets: int | None = None             # live only: PACKET_STATISTICS
    kernel_drops: int | None = None
    active_flows: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    error: Exception | None = None
    count_reached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def warnings(self) -> list[str]:
        out = [] if self.error is None else [f"capture error: {self.error}"]
        return out + skip_warnings(self.skipped, self.truncated, self.evicted,
                                   self.length_mismatch) + l7_warnings(self.l7)


def skip_warnings(skipped: dict, truncated: int, evicted: int,
                  length_mismatch: int = 0) -> list[str]:
    """What a meter run did not meter, or ended early, in words."""
    out = []
    non_ip = sum(skipped.values())
    if non_ip:
        why = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()))
        out.append(f"{non_ip} frames skipped, not metered ({why})")
    if truncated:
        out.append(f"{truncated} packets with a transport header cut by the snaplen "
                   "(metered with ports 0)")
    if length_mismatch:
        out.append(f"{length_mismatch} packets whose IP header claims more bytes than the "
                   "frame carried (counted at the frame's length)")
    if evicted:
        out.append(f"{evicted} flows ended early: flow table full")
    return out


def l7_lines(l7: dict | None) -> list[str]:
    """The L7 inspection's summary line (``--l7``)."""
    if l7 is None:
        return []
    bad = l7["bad"]
    return [f"l7: {l7['inspected']} payloads inspected, {l7['found']} flow directions with "
            f"fields, {l7['attached']} records given them"
            + (", bad payload: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
               if bad else "")]


def l7_warnings(l7: dict | None) -> list[str]:
    """What the L7 inspection could not see, in words."""
    if l7 is None:
        return []
    from nfflowd.l7.inspect import MIN_SNAPLEN
    out = []
    if l7["cut"]:
        out.append(f"{l7['cut']} TCP/UDP packets whose payload the snaplen cut (L7 fields "
                   "may be missing: a live capture with --l7 keeps at least "
                   f"{MIN_SNAPLEN} bytes, -s raises it)")
    if l7["full"]:
        out.append(f"{l7['full']} payloads not inspected: --max-flows flows were being "
                   "inspected")
    return out


# a classic pcap file is metered a chunk at a time (nfflowd.meterfast), whose
# working set (the buffer, numpy arrays, a key per flow) is some 3 bytes per
# byte of chunk: the chunk follows the table's size, so that a small
# --max-flows bounds the memory of a run (from 1 MB, to 32 MB at the
# default 131072 flows)
CHUNK_PER_FLOW = 256
CHUNK_MIN, CHUNK_MAX = 1 << 20, 1 << 25


# meter -i's ring: 64 blocks of 1 MiB, some 500k small packets, which the
# meter works off after a burst (a 400k-packet flood on a veth: 25% dropped
# with 16 blocks, none with 64; bench/bench_capture.py)
LIVE_RING_BLOCKS = 64


def chunk_size_for(max_flows: int) -> int:
    """Bytes of capture per chunk for a table of ``max_flows`` flows."""
    return max(CHUNK_MIN, min(CHUNK_MAX, max_flows * CHUNK_PER_FLOW))


class _Run:
    """A run's table, parser and stats; the counters are the table's since
    the run began."""

    def __init__(self, table, source: str, sink, l7=None):
        self.table = table
        self.parser = PacketParser()
        self.stats = MeterStats(source=source)
        self.l7 = l7                # an l7.inspect.Inspector, or None (--l7 off)
        self.sink = sink if sink is not None else self._keep
        self._base = (table.packets, table.octets, table.flows_exported, table.evicted,
                      dict(table.end_reasons))

    def frames(self, batch, expire_at: int | None, inspect: bool = True) -> None:
        """Meter a batch of frames (and, with ``inspect``, let the L7
        inspector see them first); then, unless ``expire_at`` is None,
        expire the flows due by then into the sink."""
        stats = self.stats
        if stats.first_ns is None:
            stats.first_ns = batch[0][0]
        stats.frames += len(batch)
        stats.last_ns = batch[-1][0]
        if inspect and self.l7 is not None:
            self.l7.frames(batch)
        self.table.meter_frames(batch, self.parser)
        if expire_at is not None:
            self.expire(expire_at)

    def _keep(self, batch: FlowBatch) -> None:
        self.stats.flows.extend(batch.flows())

    def emit(self, out: FlowBatchBuilder) -> None:
        if out:
            batch = out.batch()
            if self.l7 is not None:
                self.l7.attach(batch)
            self.sink(batch)

    def expire(self, now_ns: int) -> None:
        out = FlowBatchBuilder()
        self.table.expire_into(now_ns, out)
        self.emit(out)

    def flush(self, now_ns: int) -> None:
        out = FlowBatchBuilder()
        self.table.flush_into(out)
        self.emit(out)
        if self.l7 is not None:
            self.l7.clear()

    def update(self) -> MeterStats:
        s, t, p = self.stats, self.table, self.parser
        pkts0, oct0, exp0, ev0, reasons0 = self._base
        s.ip_packets = t.packets - pkts0
        s.octets = t.octets - oct0
        s.skipped = dict(p.skipped)
        s.fragments = p.fragments
        s.truncated = p.truncated
        s.length_mismatch = p.length_mismatch
        s.flows_exported = t.flows_exported - exp0
        s.evicted = t.evicted - ev0
        s.end_reasons = {k: v - reasons0.get(k, 0) for k, v in t.end_reasons.items()
                         if v - reasons0.get(k, 0)}
        s.active_flows = len(t)
        if self.l7 is not None:
            s.l7 = self.l7.stats()
        return s


def _name(source) -> str:
    return (os.fspath(source) if isinstance(source, (str, os.PathLike))
            else type(source).__name__)


def meter_file(source, table, sink: Callable[[FlowBatch], None] | None = None, bpf=None,
               count: int | None = None,
               progress: Callable[[MeterStats], None] | None = None,
               batch_size: int = 4096, chunk_size: int | None = None,
               l7=None) -> MeterStats:
    """Meter the capture file ``source`` (path, binary file object or bytes)
    through ``table``, with the packets' own time.  Ended flows go to
    ``sink`` (called with a ``FlowBatch`` of them at a time) or, without
    one, to ``stats.flows`` (``Flow`` records).  Batches of ``batch_size`` frames, each followed by
    ``expire(its last time)``; at the end, and after a capture error (kept in
    ``stats.error``), every flow is flushed.  ``bpf`` (a ``bpf.Filter``)
    keeps the frames that pass and counts the others; ``count`` stops after
    that many frames (passing the filter, as ``tcpdump -c``);
    ``progress(stats)`` is called after every batch.  Without those three, a
    classic pcap file goes ``chunk_size`` bytes at a time through
    ``nfflowd.meterfast`` (default ``chunk_size_for(table.max_flows)``): the
    same flows, in another order and some later (at the chunk's last batch
    boundary).  Memory: the table's flows, one chunk, and the records of one
    batch (on the vectorised path, of one chunk: no more than the table holds).
    ``l7``: an ``l7.inspect.Inspector`` that sees the frames alongside the
    table (a chunk through its numpy pre-filter) and gives the records their
    application fields (``FlowBatch.l7``) as they go to ``sink``."""
    run = _Run(table, _name(source), sink, l7)
    stats = run.stats
    reader = CaptureReader(source, batch_size=batch_size)
    chunks = None
    if ChunkMeter is not None and bpf is None and count is None and progress is None:
        chunks = ChunkMeter(table, run.parser, batch_size)
        items = reader.record_chunks(chunk_size or chunk_size_for(table.max_flows))
    else:
        items = reader.batches()
    rejected0 = bpf.rejected if bpf is not None else 0
    try:
        for item in items:
            if type(item) is not list:          # a pcap chunk (nfflowd.meterfast)
                _meter_chunk(run, chunks, item)
                continue
            batch = item
            if bpf is not None:
                batch = bpf.keep(batch, None if count is None else count - stats.frames)
            if count is not None and stats.frames + len(batch) >= count:
                batch = batch[:count - stats.frames]
                stats.count_reached = True
            if batch:
                run.frames(batch, batch[-1][0])
            if progress is not None:
                progress(run.update())
            if stats.count_reached:
                break
    except CaptureError as e:
        stats.error = e
    last = stats.last_ns
    if chunks is not None and chunks.frames % batch_size and last is not None:
        run.expire(last)                        # the last, partial batch's expire
    run.flush(last if last is not None else 0)
    stats.format = reader.format
    stats.snapped = reader.snapped
    stats.filtered = bpf.rejected - rejected0 if bpf is not None else 0
    return run.update()


def _meter_chunk(run: _Run, chunks, chunk) -> None:
    """A chunk vectorised, or else batch by batch as the reader would have
    cut it, each batch boundary followed by its expire."""
    if run.l7 is not None:
        run.l7.chunk(chunk)
    out = FlowBatchBuilder()
    if not chunks.meter(chunk, out):
        for batch, boundary in chunks.batches(chunk):
            run.frames(batch, batch[-1][0] if boundary else None, inspect=False)
        return
    run.emit(out)
    stats = run.stats
    if stats.first_ns is None:
        stats.first_ns = int(chunk.first_ts())
    stats.frames += len(chunk)
    stats.last_ns = chunks.last_ts


def meter_live(capture, table, sink: Callable[[FlowBatch], None],
               count: int | None = None,
               stop: Callable[[], bool] = lambda: False, wake_fds=(),
               on_wake: Callable[[MeterStats], None] | None = None,
               tick: Callable[[int], None] | None = None, tick_interval: float = 1.0,
               clock: Callable[[], int] = time.time_ns, l7=None) -> MeterStats:
    """Meter ``capture`` (a ``RingCapture``) through ``table`` until
    ``stop()`` is true or ``count`` frames were metered, then flush every
    flow to ``sink``.  Sleeps in ``select`` until a block is ready, a
    ``wake_fds`` descriptor is readable (drained here: a signal wake-up
    pipe), or the table's next deadline; ``on_wake(stats)`` is called after
    each wake-up (progress, SIGUSR1 statistics), ``tick(now_ns)`` at least
    every ``tick_interval`` seconds (the pipeline's retries); ``l7`` as
    for ``meter_file``."""
    run = _Run(table, capture.iface, sink, l7)
    stats = run.stats
    fds = [capture.fileno(), *wake_fds]
    next_tick = time.monotonic() + tick_interval
    while not stop() and not stats.count_reached:
        now = clock()
        dl = table.next_deadline()
        if dl is not None and dl <= now:
            run.expire(now)
            continue
        timeout = max(0.0, next_tick - time.monotonic())
        if dl is not None:
            timeout = min(timeout, (dl - now) / 1e9)
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:            # pragma: no cover (PEP 475 retries)
            ready = []
        for fd in ready:
            if fd != fds[0]:
                try:
                    os.read(fd, 512)
                except (BlockingIOError, InterruptedError):
                    pass
        batch = capture.read()
        if batch:
            if count is not None and stats.frames + len(batch) >= count:
                batch = batch[:count - stats.frames]
                stats.count_reached = True
            run.frames(batch, None)
            run.expire(max(clock(), stats.last_ns))
        if tick is not None and time.monotonic() >= next_tick:
            tick(clock())
            next_tick = time.monotonic() + tick_interval
        if on_wake is not None:
            stats.kernel_packets, stats.kernel_drops = capture.kernel_stats()
            on_wake(run.update())
    run.flush(clock())
    stats.kernel_packets, stats.kernel_drops = capture.kernel_stats()
    return run.update()


# -- the command's runs ----------------------------------------------------------
END_NAMES = {1: "idle timeout", 2: "active timeout", 3: "end of flow", 4: "end of capture",
             5: "flow table full"}


def json_lines(batch: FlowBatch) -> list[str]:
    """One JSON object per record of ``batch``: every ``Flow`` field by
    name (addresses as text), ``start`` and ``end`` as ISO 8601 UTC times,
    then the record's L7 fields (``batch.l7``), if any."""
    import json
    import socket
    from datetime import datetime, timezone
    ntop = socket.inet_ntop
    utc = timezone.utc

    def when(ms: int) -> str:
        try:
            t = datetime.fromtimestamp(ms / 1000, utc)
        except (OverflowError, OSError, ValueError):
            return str(ms)
        return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    l7 = batch.l7
    out = []
    for i, f in enumerate(batch.flows()):
        d = f._asdict()
        af = socket.AF_INET if f.family == 4 else socket.AF_INET6
        for name in ("src", "dst", "post_src", "post_dst"):
            d[name] = ntop(af, d[name])
        d["start"] = when(f.start_ms)
        d["end"] = when(f.end_ms)
        fields = l7.get(i)
        if fields:
            d.update(fields)
        out.append(json.dumps(d, separators=(",", ":"), ensure_ascii=False))
    return out


class Exporter:
    """The sink of a meter run: each ``FlowBatch`` of ended flows to the
    pipeline (and, with ``print_csv``, its flow-tools CSV lines to ``out``,
    or with ``fmt`` "json" one JSON object per record, ``json_lines``)."""

    def __init__(self, cfg: Config, print_csv: bool, out, table=None,
                 record_clock: bool = False, fmt: str = "csv"):
        # biflow collectors pair the two directions for as long as the
        # table's inactive timeout, on the clock below (a capture's own for -r),
        # holding at most a table's worth of records
        from nfflowd.app.pipeline import Pipeline
        hold = table.inactive_ns / 1e9 if table is not None else None
        most = table.max_flows if table is not None else None
        self.pipeline = Pipeline(cfg, vlan=True, biflow_hold=hold, biflow_max=most)
        self.print_json = print_csv and fmt == "json"
        self.print_csv = print_csv and not self.print_json
        self.out = out
        self.exported = 0
        self.record_clock = record_clock
        self._now_ms = 0

    def clock(self, batch) -> tuple[int, int]:
        """(now_ns, uptime_ms) for a batch.  Live: this machine's.  A capture
        file: the capture's own time, so that v5 and flow-tools times (kept
        as milliseconds since boot) can carry flows older than this machine's
        boot: "now" is the latest flow end seen so far and the batch's uptime
        counts from one second before its earliest flow start.  Each v5
        datagram carries both in its header, so a collector computes every
        flow's real time from it (as it does for any exporter)."""
        if not self.record_clock:
            from nfflowd.app.daemon import uptime_ms
            return time.time_ns(), uptime_ms()
        if len(batch):
            self._now_ms = max(self._now_ms, int(batch.end_ms.max()))
            start = int(batch.start_ms.min())
        else:
            start = self._now_ms
        return self._now_ms * 1_000_000, self._now_ms - start + 1000

    def __call__(self, batch: FlowBatch) -> None:
        from nfflowd.flowtools import csv_lines
        now_ns, up_ms = self.clock(batch)
        ft = self.pipeline.export(batch, [], now_ns, up_ms, flowtools=self.print_csv)
        self.exported += len(batch)
        self.pipeline.tick(now_ns)
        if self.print_csv and ft is not None and len(ft):
            self.out.write("\n".join(csv_lines(ft)) + "\n")
            self.out.flush()
        elif self.print_json and len(batch):
            self.out.write("\n".join(json_lines(batch)) + "\n")
            self.out.flush()


class Progress:
    """One line on a terminal, rewritten at most every ``interval`` s."""

    def __init__(self, enabled: bool, stream=None, interval: float = 0.2):
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval
        self._next = 0.0
        self.shown = False

    def __call__(self, stats) -> None:
        if not self.enabled or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        self.stream.write(f"\r{stats.frames} packets, {stats.ip_packets} IP, "
                          f"{stats.flows_exported + stats.active_flows} flows "
                          f"({stats.active_flows} active)\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def run_file(cfg: Config, path: str, table, print_csv: bool = False, out=None, bpf=None,
             count: int | None = None, progress: bool = False, fmt: str = "csv",
             l7=()) -> Status:
    """Meter the capture ``path`` through ``table`` and export every flow as
    it ends to ``cfg``'s collectors (and its syslog mirror, if enabled), one
    ``Pipeline.export`` per batch of ended flows, on the capture's clock
    (``Exporter.clock``).  With ``print_csv`` the flow-tools CSV lines of
    each batch go to ``out`` (standard output).  ``bpf`` (a ``bpf.Filter``)
    and ``count`` select the packets; ``progress`` shows a progress line on
    standard error, as do the summary and problems.  FAILED if the capture
    is truncated, corrupt or unreadable (everything metered before the
    problem is exported) or an encoder refused records, BAD_CONFIG if the
    filter cannot be compiled for the capture's link type.  ``fmt``: what
    ``print_csv`` prints, "csv" or "json"; ``l7``: the application
    protocols to inspect (``l7.inspect.PROTOCOLS``; none: off)."""
    from nfflowd.io.bpf import FilterError

    sink = Exporter(cfg, print_csv, sys.stdout if out is None else out, table,
                    record_clock=True, fmt=fmt)
    sink.pipeline.open()
    bar = Progress(progress)
    t0 = time.monotonic()
    try:
        summary = meter_file(path, table, sink, bpf=bpf, count=count,
                             progress=bar if progress else None,
                             l7=_inspector(l7, table))
    except FilterError as e:
        bar.clear()
        err(f"meter --bpf: {e}")
        return Status.BAD_CONFIG
    finally:
        bar.clear()
        elapsed = time.monotonic() - t0      # metering, not the exporters' closing
        sink.pipeline.close()
    sent = sink.pipeline.summary()
    for line in file_report(path, summary, sink.exported, elapsed, sent, bpf=bpf):
        err(line)
    if summary.error is not None:
        err(f"error: {path}: {summary.error}; the {sink.exported} flows metered before it "
            "were exported")
        return Status.FAILED
    return _refused(sent)


def _inspector(l7, table):
    """The ``Inspector`` of the protocols ``l7`` for ``table``, None if none.
    It holds states for the table's flows and for those of the chunk or
    batch it saw before the table (up to as many again)."""
    if not l7:
        return None
    from nfflowd.l7.inspect import Inspector
    return Inspector(l7, max_flows=2 * table.max_flows)


def run_interface(cfg: Config, iface: str, table, bpf: str | None = None,
                  count: int | None = None, snaplen: int = 256, print_csv: bool = False,
                  out=None, progress: bool = False, fmt: str = "csv", l7=()) -> Status:
    """Meter the live interface ``iface`` until SIGINT or SIGTERM (or
    ``count`` packets), exporting every flow as it ends; SIGUSR1 prints the
    statistics so far.  FAILED if the capture cannot be opened or an encoder
    refused records, BAD_CONFIG for a bad filter.  ``fmt`` and ``l7`` as
    for ``run_file``; with ``l7`` each packet's first ``l7.inspect.MIN_SNAPLEN``
    bytes at least are captured."""
    import signal
    import socket as socketmod

    from nfflowd.io.bpf import FilterError
    from nfflowd.io.capture import RingCapture

    inspector = _inspector(l7, table)
    if inspector is not None:
        from nfflowd.l7.inspect import MIN_SNAPLEN
        if snaplen < MIN_SNAPLEN:
            err(f"meter -i: --l7 captures {MIN_SNAPLEN} bytes of each packet "
                f"(snaplen {snaplen} raised)")
            snaplen = MIN_SNAPLEN
    try:
        capture = RingCapture(iface, bpf=bpf, snaplen=snaplen, block_nr=LIVE_RING_BLOCKS)
    except FilterError as e:
        err(f"meter --bpf: {e}")
        return Status.BAD_CONFIG
    except NfflowdError as e:
        err(f"meter -i: {e}")
        return Status.FAILED
    table.in_if = capture.ifindex       # every record's ingress: the interface metered
    sink = Exporter(cfg, print_csv, sys.stdout if out is None else out, table, fmt=fmt)
    # the options template names the capture interface, by the index its
    # records carry
    sink.pipeline.set_links({capture.ifindex: (iface, "")})
    bar = Progress(progress)
    flags = {"stop": False, "report": False}
    r, w = socketmod.socketpair()
    r.setblocking(False)
    w.setblocking(False)

    def on_stop(signum, frame):
        flags["stop"] = True

    def on_usr1(signum, frame):
        flags["report"] = True

    old = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, on_stop),
                                                (signal.SIGTERM, on_stop),
                                                (signal.SIGUSR1, on_usr1))}
    old_wakeup = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    t0 = time.monotonic()

    def on_wake(stats) -> None:
        if flags["report"]:
            flags["report"] = False
            bar.clear()
            for line in live_report(stats, sink.exported, time.monotonic() - t0,
                                    sink.pipeline.summary(), bpf, "statistics"):
                err(line)
        bar(stats)

    try:
        sink.pipeline.open()
        err(f"metering {iface}" + (f" (filter {bpf!r})" if bpf else "")
            + (f", {count} packets" if count else "") + "; SIGUSR1 prints statistics, "
            "SIGINT or SIGTERM stops")
        stats = meter_live(capture, table, sink, count=count, stop=lambda: flags["stop"],
                           wake_fds=(r.fileno(),), on_wake=on_wake,
                           tick=sink.pipeline.tick,
                           tick_interval=cfg.export.flush_interval, l7=inspector)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old.items():
            signal.signal(s, h)
        r.close()
        w.close()
        bar.clear()
        capture.close()
        elapsed = time.monotonic() - t0
        sink.pipeline.close()
    sent = sink.pipeline.summary()
    for line in live_report(stats, sink.exported, elapsed, sent, bpf, "end"):
        err(line)
    return _refused(sent)


def _refused(sent: dict) -> Status:
    """FAILED (with an error line) if an encoder refused records: those
    flows are missing at that collector; else OK."""
    refused = sum(v for k, v in sent.items() if k.endswith(".records_invalid"))
    if not refused:
        return Status.OK
    err(f"error: the encoders refused {refused} records (see above): those flows are "
        "missing at their collectors")
    return Status.FAILED


# -- reports ---------------------------------------------------------------------
def _export_problems(sent: dict) -> list[str]:
    problems = {k: v for k, v in sent.items()
                if v and k.rsplit(".", 1)[-1] in ("send_errors", "records_dropped",
                                                  "messages_dropped", "skipped_ipv6",
                                                  "syslog_dropped", "records_invalid")}
    lines = []
    if problems:
        lines.append("export problems: " + ", ".join(f"{k}={v}" for k, v in problems.items()))
    for k, v in sent.items():
        if k.endswith(".records_invalid_why"):
            lines.append(f"{k[:-len('.records_invalid_why')]} refused records (not exported "
                         f"there): {v}")
    return lines


def _biflow_lines(sent: dict) -> list[str]:
    """What each biflow collector paired and sent alone."""
    out = []
    for k, v in sent.items():
        if k.endswith(".biflow_pairs"):
            name = k[:-len(".biflow_pairs")]
            over = sent.get(name + ".biflow_overflow", 0)
            out.append(f"biflow {name}: {v} pairs, {sent.get(name + '.biflow_alone', 0)} "
                       "records alone"
                       + (f" ({over} of them before their hold ended: too many waiting, "
                          "--max-flows bounds them)" if over else "")
                       + f", {sent.get(name + '.records', 0)} biflow records sent")
    return out


def _end_reasons(s: MeterStats) -> list[str]:
    if not s.end_reasons:
        return []
    return ["flows ended by: " + ", ".join(f"{END_NAMES.get(k, k)} {v}"
                                           for k, v in sorted(s.end_reasons.items()))]


def live_report(s: MeterStats, exported: int, elapsed: float, sent: dict, bpf,
                what: str) -> list[str]:
    """The lines of an interface run's statistics (``what``: when)."""
    rate = s.frames / elapsed if elapsed > 0 else 0.0
    lines = [f"{what}: {s.source}: {s.frames} packets captured, {s.ip_packets} IP packets, "
             f"{s.octets} bytes, {exported} flows exported, {s.active_flows} active; "
             f"{elapsed:.1f} s ({rate:.0f} packets/s)"
             + ("; count reached" if s.count_reached else "")]
    lines.append(f"kernel: {s.kernel_packets} packets received by the socket, "
                 f"{s.kernel_drops} dropped (ring full)"
                 + (f"; filter {bpf!r} applied in the kernel (rejected packets are not "
                    "counted)" if bpf else ""))
    lines += _end_reasons(s)
    lines += l7_lines(s.l7)
    lines += s.warnings()
    lines += _biflow_lines(sent)
    lines += _export_problems(sent)
    return lines


def file_report(path, s: MeterStats, exported: int, elapsed: float, sent: dict,
                bpf=None) -> list[str]:
    """The lines of a capture file run's summary (its capture error aside)."""
    span = ((s.last_ns - s.first_ns) / 1e9 if s.first_ns is not None and s.last_ns is not None
            else 0.0)
    rate = s.ip_packets / elapsed if elapsed > 0 else 0.0
    lines = [f"{path} ({s.format or 'unknown format'}): {s.frames} frames, "
             f"{s.ip_packets} IP packets, {s.octets} bytes, {exported} flows exported; "
             f"capture spans {span:.3f} s; metered in {elapsed:.3f} s "
             f"({rate:.0f} packets/s)"]
    if bpf is not None:
        lines.append(f"filter {bpf.expression!r}: {s.filtered} frames rejected, "
                     f"{s.frames} passed")
    if s.count_reached:
        lines.append(f"stopped after {s.frames} frames (-n)")
    lines += _end_reasons(s)
    lines += l7_lines(s.l7)
    if not exported and s.error is None:
        if s.frames:
            lines.append("no flow: no IP packet in the capture")
        elif bpf is not None and s.filtered:
            lines.append("no flow: the filter rejected every frame")
        else:
            lines.append("no flow: the capture holds no packet")
    lines += [w for w in s.warnings() if not w.startswith("capture error:")]
    lines += _biflow_lines(sent)
    lines += _export_problems(sent)
    return lines
