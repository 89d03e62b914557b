"""The running daemon: the I/O edge that ties the sans-IO stages together.

Data flows one way::

    netlink (ConntrackSocket) -> decode -> Correlator -> Flow records
        -> Exporters (one encoder + one UDP socket per collector)
        -> Mirror (flow-tools CSV lines to syslog)

One thread.  The loop sleeps in ``select`` until the netlink socket is readable
or the next deadline (flush, table poll, TTL purge) is due.  Signals only set a
flag and wake the loop through a wakeup fd; nothing is done in a handler.
SIGTERM and SIGINT drain what the kernel has already queued, flush every
pending record and close the sinks: nothing already received is lost.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time

import structlog

from . import conntrack
from .config import Config
from .correlate import Correlator
from .pipeline import Pipeline

log = structlog.get_logger("nfflowd")

SYSCTL = "/proc/sys/net/netfilter/"

# Flush early when this many flows are pending, to bound memory and latency
# during a burst (a full v5 datagram is 30 records).
FLUSH_THRESHOLD = 3000
# Datagrams drained from netlink per wake-up before deadlines are looked at.
RECV_BATCH = 512


def read_sysctl(name: str) -> int | None:
    """A net.netfilter sysctl of the current network namespace, or None."""
    try:
        with open(SYSCTL + name) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def configure_logging(level: str = "info") -> None:
    import logging
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"],
                                                drop_missing=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=__import__("sys").stderr),
        cache_logger_on_first_use=False,
    )


def announce_kernel_settings() -> bool:
    """Say at start what the kernel's conntrack settings mean for the records.
    Returns whether the kernel timestamps connections."""
    events = read_sysctl("nf_conntrack_events")
    acct = read_sysctl("nf_conntrack_acct")
    tstamp = read_sysctl("nf_conntrack_timestamp")
    if events == 0:
        log.warning("conntrack_events_off", nf_conntrack_events=0,
                    meaning="the kernel sends no conntrack events: nothing will be exported",
                    fix="sysctl -w net.netfilter.nf_conntrack_events=1")
    elif events == 2:
        log.info("conntrack_events_mode", nf_conntrack_events=2,
                 meaning="connections created before nfflowd started send no DESTROY event; "
                         "they are found by polling the table")
    elif events is not None:
        log.info("conntrack_events_mode", nf_conntrack_events=events,
                 meaning="every connection sends its events")
    if acct == 0:
        log.warning("conntrack_accounting_off", nf_conntrack_acct=0,
                    meaning="packet and byte counters will be zero",
                    fix="sysctl -w net.netfilter.nf_conntrack_acct=1")
    if tstamp == 0:
        log.info("conntrack_timestamps_off", nf_conntrack_timestamp=0,
                 meaning="start times come from NEW events, kept per connection "
                         "(purged after conntrack.ttl)",
                 fix="sysctl -w net.netfilter.nf_conntrack_timestamp=1")
    return bool(tstamp)


class Daemon:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.stopping = False
        self.counters = {
            "malformed": 0, "unknown": 0, "overruns": 0, "polls": 0,
        }
        self.pipeline = Pipeline(cfg)
        self.correlator: Correlator | None = None
        self.sock: conntrack.ConntrackSocket | None = None

    # -- signals ----------------------------------------------------------------
    def _install_signals(self):
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)

    def _on_stop(self, signum, frame):
        self.stopping = True

    # -- the loop ----------------------------------------------------------------
    def start(self):
        kernel_ts = announce_kernel_settings()
        ccfg = self.cfg.conntrack
        self.correlator = Correlator(ttl=ccfg.ttl, kernel_timestamps=kernel_ts)
        # Subscribe first, then dump: a connection created in between is seen
        # in both, and the correlator keys the dump by id and tuple.
        self.sock = conntrack.ConntrackSocket(rcvbuf=ccfg.rcvbuf)
        if self.sock.rcvbuf < ccfg.rcvbuf:
            log.warning("netlink_rcvbuf_smaller", wanted=ccfg.rcvbuf, obtained=self.sock.rcvbuf)
        table = conntrack.dump_table()
        now_ns = time.time_ns()
        added = self.correlator.add_dumped(table, now_ns)
        self.pipeline.open()
        log.info("ready", connections_at_start=added, rcvbuf=self.sock.rcvbuf,
                 collectors=[c.name for c in self.cfg.export.collectors],
                 syslog=self.cfg.syslog.address if self.cfg.syslog.enabled else "off")

    def run(self) -> int:
        self._install_signals()
        self.start()
        corr = self.correlator
        sock = self.sock
        ccfg = self.cfg.conntrack
        flush_every = self.cfg.export.flush_interval
        now = time.monotonic()
        next_flush = now + flush_every
        next_poll = now + ccfg.poll_interval
        next_purge = now + min(ccfg.ttl, 60.0)
        pending: list = []
        rlist = [sock, self._wake_r]
        while not self.stopping:
            deadline = min(next_flush, next_purge)
            if corr.dumped_pending:
                deadline = min(deadline, next_poll)
            timeout = max(0.0, deadline - time.monotonic())
            try:
                readable, _, _ = select.select(rlist, [], [], timeout)
            except InterruptedError:  # pragma: no cover (PEP 475 retries)
                readable = []
            if self._wake_r in readable:
                self._drain_wakeup()
            if sock in readable:
                self._receive(pending)
            now = time.monotonic()
            if len(pending) >= FLUSH_THRESHOLD or now >= next_flush:
                self._flush(pending)
                next_flush = now + flush_every
            if corr.dumped_pending and now >= next_poll:
                self._poll(pending)
                next_poll = time.monotonic() + ccfg.poll_interval
            if now >= next_purge:
                purged = corr.purge(time.time_ns())
                if purged:
                    log.warning("purged_by_ttl", connections=purged, ttl=ccfg.ttl)
                next_purge = now + min(ccfg.ttl, 60.0)
        return self.shutdown(pending)

    def _drain_wakeup(self):
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _receive(self, pending: list, max_rounds: int = 64) -> None:
        """Drain what netlink has queued (bounded), feeding the correlator."""
        handle_batch = self.correlator.handle_batch
        c = self.counters
        for _ in range(max_rounds):
            try:
                res = self.sock.recv_batch(RECV_BATCH)
            except conntrack.NetlinkOverrun:
                c["overruns"] += 1
                log.error("netlink_overrun",
                          meaning="the kernel dropped events: the receive buffer was full",
                          overruns=c["overruns"])
                continue
            if res.events:
                handle_batch(res.events, time.time_ns(), pending)
            if res.malformed or res.unknown:
                c["malformed"] += res.malformed
                c["unknown"] += res.unknown
                log.warning("netlink_skipped", malformed=res.malformed, unknown=res.unknown)
            if not res.events and not res.malformed and not res.unknown:
                break
            if len(pending) >= FLUSH_THRESHOLD:
                self._flush(pending)

    def _poll(self, pending: list) -> None:
        """Dump the table and export start-up connections that have gone."""
        self.counters["polls"] += 1
        try:
            table = conntrack.dump_table()
        except Exception as e:  # noqa: BLE001 - the loop must go on
            log.error("poll_failed", error=str(e))
            return
        # Events queued while dumping are handled first, so a DESTROY that
        # raced the dump is taken as the connection's end.
        self._receive(pending)
        flows = self.correlator.reconcile(table, time.time_ns())
        if flows:
            log.info("exported_by_poll", connections=len(flows) // 2,
                     still_pending=self.correlator.dumped_pending)
        pending.extend(flows)

    def _flush(self, pending: list) -> None:
        if pending:
            self.pipeline.export(pending, time.time_ns(), uptime_ms())
            pending.clear()
        self.pipeline.tick(time.time_ns())

    def shutdown(self, pending: list) -> int:
        log.info("stopping")
        try:
            self._receive(pending)
        finally:
            self._flush(pending)
            self.pipeline.close()
            if self.sock is not None:
                self.sock.close()
        log.info("stopped", **self.counters, **self.correlator.counters,
                 **self.pipeline.summary())
        return 0


def uptime_ms() -> int:
    """This machine's uptime in ms (the NetFlow SysUptime), CLOCK_BOOTTIME."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000


def run_foreground(cfg: Config) -> int:
    configure_logging(cfg.log_level)
    return Daemon(cfg).run()
