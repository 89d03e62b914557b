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
While syslog lines wait (a table flush outruns syslogd's socket queue), the
mirror's socket is in the write set and drains as fast as syslogd reads.

The packet meters of ``meter.interfaces`` (``capture.InterfaceMeters``: a
TPACKET_V3 ring and a flow table per interface) join the same loop: their
sockets are in the read set, their next flow deadline bounds the sleep, and
the flows they end go straight to the pipeline; all flushed at shutdown.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time

import structlog

from nfflowd import __version__
from nfflowd.app import schedule
from nfflowd.app import sdnotify
from nfflowd.app.config import Config, require_output
from nfflowd.app.control import ControlServer
from nfflowd.app.control import socket_path as control_socket_path
from nfflowd.ctblocks import decode_blocks
from nfflowd.record import FlowBatch, FlowBatchBuilder
from nfflowd.correlate import Correlator
from nfflowd.ctcache import DEAD_MAX
from nfflowd.errors import ConfigError, NfflowdError
from nfflowd.io import netlink
from nfflowd.app.legacy import load_any
from nfflowd.app.pipeline import Pipeline
from nfflowd.app.privileges import SENT_BY_A_PROCESS, SignalFd, drop_privileges

log = structlog.get_logger("nfflowd")

# Flush early when this many flows are pending, to bound memory and latency
# during a burst (a full v5 datagram is 30 records; 8000 flows are 4000
# connections, ~30 ms of a table flush).
FLUSH_THRESHOLD = 8000
# Datagrams drained from netlink per receive round (one recvmmsg).  Fixed
# costs per round and per export (numpy calls, template lookups) are what
# larger batches save: replaying 200k DESTROY events daemon-like (cache
# filled by their NEW events, IPFIX over UDP to loopback), 3.83 us per event
# at 512 and 3000, 3.04 at 2048 and 8000.  Only a backlog fills a round.
RECV_BATCH = 2048
# A receive round with fewer datagrams than STREAM_BATCH (but some) means
# events are arriving about as fast as they are handled, a few at a time; each
# round costs ~0.6 ms whatever its size (numpy calls in the decoder and the
# correlator; decoding alone: 6.4 us per event in rounds of 64, 2.3 in rounds
# of 256, 1.2 in rounds of 1024), so a stream handled as it trickles in costs
# several times what it costs in batches, and falls behind.  The next round
# waits first, long enough for about STREAM_BATCH datagrams at the rate just
# seen, at most STREAM_WAIT seconds, and never long enough to fill more than a
# quarter of the receive buffer at that rate (EVENT_TRUESIZE: what one event
# datagram takes of it, generously).  A round whose rate is less than half the
# last one's means the stream is ending: no wait (its tail would wait for
# nothing).
STREAM_BATCH = 1024
STREAM_WAIT = 0.01
# ... outside a burst, at most STREAM_WAIT_STEADY: a steady stream of a few
# thousand events per second (connections made and ended all day) then
# comes in rounds of hundreds, not tens: each round's fixed costs (the
# loop, numpy calls) are shared by more events, and more runs are long
# enough for blocks.  5000 connections per second (bench/bench_churn.py):
# nfflowd's CPU per connection (its NEW and DESTROY) 60-63 us with rounds of
# at most 10 ms, 34-38 us with this.  Not for a fast stream (FAST_RATE): a
# slow wait ends early only once its batch has gathered, and a burst that
# slows down near its end (a flush) would hold its tail for the whole wait.
STREAM_WAIT_STEADY = 0.05
# A receive call (rounds and their waits) returns to the loop (signals, the
# control socket, deadlines, stream collectors' writes) after RECEIVE_SPAN.
RECEIVE_SPAN = 0.5
# A wait ends early when a WAIT_SLICE passes with nothing added to the queue
# although the rate just seen promised WAIT_EARLY_MIN datagrams or more in it:
# the stream stopped (a flush ended), and its tail goes now rather than up to
# STREAM_WAIT later.  Slower streams look every WAIT_SLICE_SLOW, and only for
# the next rule: a slice without events says nothing there.  A wait ends
# once the queue holds STREAM_BATCH datagrams (their size in the buffer is
# learnt from the waits; EVENT_TRUESIZE until then): a stream speeding up (a
# flush does, near its end; and the first round of a flush, a datagram or
# two, makes it look slow) would otherwise fill rounds of RECV_BATCH and
# more, and the last of them held a flush's tail (a 200k flush's last
# records came 4-7 ms after ulogd2's with 1 ms slices and no such end,
# 1.3-2.8 ms with both; bench/bench_burst.py).  A slice costs a wake-up and
# a getsockopt.
WAIT_SLICE = 0.00025
WAIT_EARLY_MIN = 8
WAIT_SLICE_SLOW = 0.001
EVENT_TRUESIZE = 2048
# A stream is fast (its waits at most STREAM_WAIT) while it is in a burst
# or brought FAST_RATE datagrams per second or more over the last
# FAST_WINDOW seconds.  A flush on a busy machine leaves gaps (the burst may
# end, see BURST_QUIET) and slow rounds; one of those, its wait 50 ms long,
# held a 200k flush's last records 32 ms.  Not a round's own rate: the
# kernel ends timed-out connections in bursts (its garbage collector), and a
# steady churn of 10k events per second then had fast rounds every second;
# such a burst of a few thousand makes a burst of the stream (STREAM_BATCH),
# which ends when a window brings less than half FAST_RATE, as a steady
# stream never leaves netlink quiet for BURST_QUIET.
FAST_WINDOW = 0.2
FAST_RATE = WAIT_EARLY_MIN / WAIT_SLICE
# ... and what the stream brought is exported at least every STREAM_FLUSH
# seconds (else a stream that slows down near its end holds its tail for up
# to 64 rounds of STREAM_WAIT).  In a burst, at every wait: the export then
# overlaps the wait, and the last round leaves only its own flows to send.
STREAM_FLUSH = 0.02
# Seconds from the first ENOBUFS of an episode to the resync dump: a burst is
# let through first, then one dump resynchronises (more overruns meanwhile
# belong to the same episode).
RESYNC_DELAY = 0.5
# The cache entries of connections a burst ended are removed once netlink has
# been quiet for REAP_QUIET seconds (Correlator.reap), this many per pass of
# the loop (~15 ms here), so a burst's CPU goes to its events first and the
# next one waits for at most one pass.  Finding netlink empty is not quiet:
# in a table flush sharing a CPU with nfflowd, the kernel adds events only
# while nfflowd does not run, so nfflowd drains the socket again and again;
# removals done each time took ~16% of its time in a 200k flush and left it
# further behind (bench/bench_burst.py).  Waiting REAP_QUIET in select gives
# the CPU back instead, and the flush's next events end the wait.
REAP_CHUNK = 24576
REAP_QUIET = 0.002
# A burst (see _burst_over) ends once netlink has been quiet this long; until
# then what arrives goes at once.  A table flush on a busy machine leaves
# gaps, and the connections it ended last came after one: their records,
# taken for a trickle, waited for the flush deadline (0.3 s late in a 200k
# flush).
BURST_QUIET = 0.05
# ... and inside a stream's pacing waits (see STREAM_BATCH), this many per
# second of wait: about a quarter of the wait at ~0.6 us a removal.  Only in a
# stream slower than REAP_STREAM_RATE datagrams per second (a wait there is
# idle time; in a flush it is the kernel's turn for the CPU), or once the
# removals pending reach half of ctcache.DEAD_MAX (a fast stream that never
# pauses: past DEAD_MAX its DESTROY blocks would pay for them inline).
REAP_PER_SECOND_OF_WAIT = 400_000
REAP_STREAM_RATE = 30_000


# The cyclic garbage collector: the data path makes no reference cycles
# (tuples, bytes, numpy arrays, freed by reference counting), but every
# tracked allocation counts towards a collection, and with the default
# threshold of 700 a burst spent ~15% of its time in collections that found
# nothing.  Once started, what start-up made is frozen out of the collector's
# sight (gc.freeze) and the young generation is collected every 50,000
# allocations instead; cycles made elsewhere (an exception's traceback, say)
# are still collected, later.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """The daemon's collector settings (see GC_THRESHOLDS); the replay
    benchmark applies them too."""
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def configure_logging(level: str = "info", to_syslog: bool = False) -> None:
    """structlog: key=value lines on stderr in the foreground; to syslog,
    facility daemon, when detached (no timestamp there: syslog adds its own)."""
    import logging
    import logging.handlers
    import sys
    processors = [structlog.processors.add_log_level]
    factory = structlog.PrintLoggerFactory(file=sys.stderr)
    if to_syslog:
        try:
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        except OSError:
            handler = None          # no syslog daemon: nowhere to log when detached
        if handler is not None:
            handler.ident = f"nfflowd[{os.getpid()}]: "
            std = logging.getLogger("nfflowd.daemon")
            std.handlers[:] = [handler]
            std.propagate = False
            std.setLevel(logging.DEBUG)
            factory = lambda *args: std  # noqa: E731 - the bound logger calls std.info(...)
    else:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    processors.append(structlog.processors.LogfmtRenderer(
        key_order=["timestamp", "level", "event"], drop_missing=True))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def announce_kernel_settings() -> bool:
    """Say at start what the kernel's conntrack settings mean for the records.
    Returns whether the kernel timestamps connections."""
    events = netlink.read_sysctl("nf_conntrack_events")
    acct = netlink.read_sysctl("nf_conntrack_acct")
    tstamp = netlink.read_sysctl("nf_conntrack_timestamp")
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


def event_groups(new_events: bool, kernel_timestamps: bool,
                 nat_events: bool) -> tuple[int, ...]:
    """The ctnetlink groups to subscribe to.  With kernel timestamps a
    DESTROY event carries all of a connection's records (tuples, counters,
    start and stop); NEW events serve NAT create events, start times without
    kernel timestamps, and the cache behind overrun recovery (resync) and the
    active timeout.  ``new_events`` False (conntrack.new_events) leaves them
    out where neither NAT events nor start times need them: an overrun then
    loses no DESTROY event (the kernel redelivers those it could not
    deliver, NETLINK_BROADCAST_ERROR), and connections are learnt from the
    resync's and the active timeout's dumps instead (adopted)."""
    if new_events or nat_events or not kernel_timestamps:
        return (netlink.NFNLGRP_CONNTRACK_NEW, netlink.NFNLGRP_CONNTRACK_DESTROY)
    return (netlink.NFNLGRP_CONNTRACK_DESTROY,)


def _announce_groups(new_events: bool, groups: tuple) -> None:
    """Say which events are received when conntrack.new_events is off."""
    if new_events:
        return
    if netlink.NFNLGRP_CONNTRACK_NEW in groups:
        log.info("conntrack_events", subscribed="new,destroy",
                 meaning="conntrack.new_events is off, but NAT events or start times "
                         "without kernel timestamps need NEW events")
    else:
        log.info("conntrack_events", subscribed="destroy",
                 meaning="NEW events are not received (conntrack.new_events: false)")


class Daemon:
    def __init__(self, cfg: Config, on_ready=None, on_drop=None):
        self.cfg = cfg
        self.on_ready = on_ready        # called once subscribed and ready
        self.on_drop = on_drop          # called before dropping root (user:)
        self._sigfd = None              # privileges.SignalFd, with user:
        self._uid_at_start = os.getuid()
        self.stopping = False
        self.reload_requested = False
        self.started_at = time.time()
        self.counters = {
            "malformed": 0, "unknown": 0, "overruns": 0, "polls": 0, "reloads": 0,
            "reloads_refused": 0, "resyncs": 0, "active_dumps": 0,
        }
        # overrun episode: from the first ENOBUFS to the resync that follows
        self._overrun_episode = 0       # overruns in the current episode (0: none)
        self._resync_at = 0.0           # monotonic time the resync is due
        # the packet meters' flows carry VLAN ids: v9/IPFIX templates with vlanId
        self.pipeline = Pipeline(cfg, vlan=bool(cfg.meter.interfaces))
        self.meters = None              # capture.InterfaceMeters (meter.interfaces)
        self.correlator: Correlator | None = None
        self.sock: netlink.ConntrackSocket | None = None
        # how a receive round's datagrams are decoded: runs of DESTROY and of
        # NEW events as blocks (the columnar path), the rest as events
        self.decoder = decode_blocks
        self.control = None
        self.metrics = None
        self.last_reload: dict | None = None     # result and reason of the last reload
        # a burst is being received (STREAM_BATCH datagrams or more since the
        # last export, or a threshold flush): its tail is sent when it pauses
        self._in_burst = False
        # when netlink was last found empty, None after events (REAP_QUIET)
        self._quiet_from: float | None = None
        self._last_flush = 0.0          # time.monotonic() of the last export of flows
        self._since_flush = 0           # datagrams received since then
        # what one event datagram takes of the receive buffer (learnt from
        # the pacing waits: see _pace), and the queue the last wait saw
        self._truesize = float(EVENT_TRUESIZE)
        self._queued_seen = 0
        self._burst_rate = 0.0          # the rate of the last round with events
        # datagrams received in the current FAST_WINDOW, and the last one's rate
        self._window_start, self._window_count, self._window_rate = 0.0, 0, 0.0

    # -- signals ----------------------------------------------------------------
    def _install_signals(self):
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        if self.cfg.user:
            # dropping root: any process of that user could signal us, so
            # these are read with their senders (the caller has blocked them
            # before any thread started: privileges.block_control_signals)
            self._sigfd = SignalFd()
            self.counters["signals_refused"] = 0

    def _read_signals(self):
        """Act on the signals root (or the kernel) sent; count the others."""
        for signo, code, pid, uid in self._sigfd.read():
            if code in SENT_BY_A_PROCESS and uid not in (0, self._uid_at_start):
                self.counters["signals_refused"] += 1
                log.warning("signal_refused", signal=signal.Signals(signo).name,
                            sender_pid=pid, sender_uid=uid,
                            meaning="only root may stop or reload the daemon")
            elif signo == signal.SIGHUP:
                self._on_hup(signo, None)
            else:
                self._on_stop(signo, None)

    def _on_stop(self, signum, frame):
        self.stopping = True

    def _on_hup(self, signum, frame):
        self.reload_requested = True

    # -- state for `check` and the metrics endpoint ------------------------------
    def all_counters(self) -> dict:
        out = dict(self.counters)
        if self.correlator is not None:
            out.update(self.correlator.counters)
            out["connections_tracked"] = self.correlator.tracked
            out["connections_from_start_dump"] = self.correlator.dumped_pending
            out["connections_cached"] = self.correlator.cached
            # ended connections whose cache entries go when the daemon is idle
            out["cache_removals_pending"] = self.correlator.reap_pending
        out.update(self.pipeline.summary())
        if self.meters is not None:
            out.update(self.meters.counters())
        return out

    def state(self) -> dict:
        return {"pid": os.getpid(), "version": __version__, "config": self.cfg.path,
                "started": self.started_at, "uptime": round(time.time() - self.started_at, 3),
                "rcvbuf": self.sock.rcvbuf if self.sock else None,
                "collectors": [c.name for c in self.cfg.export.collectors],
                "last_reload": self.last_reload,
                "counters": self.all_counters()}

    # -- start -------------------------------------------------------------------
    def start(self):
        if self.cfg.sched_priority:
            # first: the threads started below (metrics) inherit it
            try:
                schedule.set_realtime(self.cfg.sched_priority)
            except OSError as e:
                log.warning("sched_priority_refused", priority=self.cfg.sched_priority,
                            error=e.strerror,
                            meaning="running under the normal scheduler: " + schedule.NEEDS)
        kernel_ts = announce_kernel_settings()
        ccfg = self.cfg.conntrack
        self.correlator = Correlator(ttl=ccfg.ttl, kernel_timestamps=kernel_ts,
                                     nat_events=self.pipeline.wants_nat_events)
        # Subscribe first, then dump: a connection created in between is seen
        # in both, and the correlator keys the dump by id and tuple.
        groups = event_groups(ccfg.new_events, kernel_ts, self.pipeline.wants_nat_events)
        self.sock = netlink.ConntrackSocket(rcvbuf=ccfg.rcvbuf, groups=groups)
        _announce_groups(ccfg.new_events, groups)
        if self.sock.rcvbuf < ccfg.rcvbuf:
            log.warning("netlink_rcvbuf_smaller", wanted=ccfg.rcvbuf, obtained=self.sock.rcvbuf)
        table = netlink.dump_table()
        now_ns = time.time_ns()
        added = self.correlator.add_dumped(table, now_ns)
        self.pipeline.open()
        self.control = ControlServer(control_socket_path(self.cfg.pidfile), self.state)
        self._start_metrics(self.cfg)
        if self.cfg.meter.interfaces:
            from nfflowd.io.capture import InterfaceMeters
            self.meters = InterfaceMeters(self.cfg.meter)       # before dropping CAP_NET_RAW
            log.info("metering", interfaces=[i.name for i in self.cfg.meter.interfaces])
        if self.cfg.user:
            if self.on_drop is not None:
                self.on_drop()          # what root's only: the pidfile's descriptor
            drop_privileges(self.cfg.user)
            log.info("privileges_dropped", user=self.cfg.user, kept="CAP_NET_ADMIN")
        log.info("ready", connections_at_start=added, rcvbuf=self.sock.rcvbuf,
                 scheduling=schedule.describe(),
                 collectors=[c.name for c in self.cfg.export.collectors],
                 syslog=self.cfg.syslog.address if self.cfg.syslog.enabled else "off")
        tune_gc()
        sdnotify.ready(f"exporting to {len(self.cfg.export.collectors)} collector(s)")
        if self.on_ready is not None:
            self.on_ready()

    def _start_metrics(self, cfg: Config) -> None:
        if cfg.metrics_listen:
            self.metrics = self._metrics_server(cfg.metrics_listen)
            log.info("metrics_listening", url=self.metrics.url)

    def _metrics_server(self, listen: str):
        from nfflowd.app.metrics import MetricsServer
        return MetricsServer(listen, self.all_counters)

    def _prepare_metrics(self, new: Config):
        """The metrics endpoint of a reload: the server to keep, or the one
        started for ``new`` (None: none).  Raises (MetricsError) when
        ``new``'s cannot listen; the old one then serves as before."""
        listen = new.metrics_listen
        if listen == self.cfg.metrics_listen or not listen:
            return self.metrics if listen else None
        try:
            return self._metrics_server(listen)
        except Exception:
            if self.metrics is None:
                raise
        # the new address may take the old one's port (127.0.0.1:9469 ->
        # 0.0.0.0:9469): once more without the old server, and back to it if
        # that fails too
        self.metrics.close()
        try:
            return self._metrics_server(listen)
        except Exception:
            try:
                self.metrics = self._metrics_server(self.cfg.metrics_listen)
            except Exception as e:  # noqa: BLE001 - the reload's reason is the one to raise
                self.metrics = None
                log.error("metrics_lost", listen=self.cfg.metrics_listen, error=str(e))
            raise

    # -- reload (SIGHUP) ------------------------------------------------------------
    def _refuse_reload(self, reason: str) -> None:
        self.counters["reloads_refused"] += 1
        self.last_reload = {"result": "refused", "reason": reason, "at": time.time()}
        log.error("reload_refused", config=self.cfg.path, problems=reason,
                  meaning="the configuration in force is kept")
        sdnotify.ready(f"reload refused: {reason}")

    def reload(self, pending: list) -> None:
        """Re-read the config; apply collectors, syslog, metrics and timeouts.
        The netlink socket stays open throughout: events arriving meanwhile
        wait in its buffer.  Applied whole or refused whole: every new part
        (collectors, syslog mirror, metrics endpoint) is built before anything
        changes; a bad config or a part that cannot be built (a collector
        host that does not resolve, a metrics address not of this host) is
        refused with its reason and the configuration in force stays.
        Collectors whose settings did not change keep their exporter
        (socket, sequence numbers, counters)."""
        self.reload_requested = False
        sdnotify.reloading()
        try:
            new, _notes, _legacy = load_any(self.cfg.path)
            require_output(new)
        except ConfigError as e:
            self._refuse_reload(str(e).replace("\n", "; "))
            return
        self._flush(pending)                 # what arrived so far goes the old way
        try:
            plan = self.pipeline.prepare(new)
        except Exception as e:  # noqa: BLE001 - whatever it is, the old config stays
            self._refuse_reload(_reason(e))
            return
        try:
            metrics = self._prepare_metrics(new)
        except Exception as e:  # noqa: BLE001
            self.pipeline.discard(plan)
            self._refuse_reload(_reason(e))
            return
        self.pipeline.apply(plan)
        if metrics is not self.metrics:
            if self.metrics is not None:
                self.metrics.close()            # (closed already if it made room)
            self.metrics = metrics
            if metrics is not None:
                log.info("metrics_listening", url=metrics.url)
        corr = self.correlator
        corr.ttl_ns = int(new.conntrack.ttl * 1_000_000_000)
        corr.want_nat_events = self.pipeline.wants_nat_events
        self._resubscribe(new.conntrack.new_events)
        if (new.conntrack.rcvbuf != self.cfg.conntrack.rcvbuf or new.user != self.cfg.user
                or new.sched_priority != self.cfg.sched_priority):
            log.warning("reload_needs_restart", keys="conntrack.rcvbuf, user, sched_priority",
                        meaning="these apply at the next start")
        if new.meter != self.cfg.meter:
            log.warning("reload_needs_restart", keys="meter",
                        meaning="the meter settings apply at the next start")
        self.cfg = new
        self.counters["reloads"] += 1
        self.last_reload = {"result": "reloaded", "reason": None, "at": time.time()}
        log.info("reloaded", collectors=[c.name for c in new.export.collectors],
                 kept=len(self.pipeline.exporters) - len(plan.built),
                 syslog=new.syslog.address if new.syslog.enabled else "off")
        sdnotify.ready()

    def _resubscribe(self, new_events: bool) -> None:
        """The event groups a reloaded configuration needs, on the same socket
        (NAT events asked for now need NEW events)."""
        groups = event_groups(new_events, self.correlator.kernel_timestamps,
                              self.pipeline.wants_nat_events)
        if groups == self.sock.groups:
            return
        try:
            self.sock.set_groups(groups)
        except NfflowdError as e:
            log.error("conntrack_groups_unchanged", error=str(e), groups=self.sock.groups)
            return
        _announce_groups(new_events, groups)

    # -- the loop ----------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        self.start()
        pending = FlowBatchBuilder()
        now = time.monotonic()
        next_flush = now + self.cfg.export.flush_interval
        next_poll = now + self.cfg.conntrack.poll_interval
        next_purge = now + min(self.cfg.conntrack.ttl, 60.0)
        active_timeout = self.cfg.conntrack.active_timeout
        next_active = now + active_timeout if active_timeout else float("inf")
        rlist = [self.sock, self._wake_r, self.control]
        if self._sigfd is not None:
            rlist.append(self._sigfd)
        if self.meters is not None:
            rlist += self.meters.sockets
        corr = self.correlator
        while not self.stopping:
            deadline = min(next_flush, next_purge)
            if corr.dumped_pending:
                deadline = min(deadline, next_poll)
            deadline = min(deadline, next_active)
            if self._overrun_episode:
                deadline = min(deadline, self._resync_at)
            if self.meters is not None:
                dl = self.meters.next_deadline()       # wall-clock ns
                if dl is not None:
                    deadline = min(deadline, time.monotonic()
                                   + max(0.0, (dl - time.time_ns()) / 1e9))
            streams = self.pipeline.stream_sinks
            for sink in streams:
                wake = sink.next_wakeup()
                if wake is not None:
                    deadline = min(deadline, wake)
            wlist = [sink for sink in streams if sink.wants_write() and sink.fileno() >= 0]
            mirror = self.pipeline.mirror
            if mirror is not None and mirror.wants_write():
                # syslog lines waiting (its socket queue was full): they go
                # as fast as syslog reads, a chunk per writable round
                wlist.append(mirror)
            now = time.monotonic()
            timeout = max(0.0, deadline - now)
            quiet = self._quiet_from if self._quiet_from is not None else now
            if self._in_burst:
                # the tail goes once netlink is empty; the burst ends once it
                # has been quiet for BURST_QUIET (below)
                timeout = 0.0 if pending else min(timeout, max(0.0, quiet + BURST_QUIET - now))
            if corr.reap_pending:
                # removals once netlink has been quiet for REAP_QUIET (below)
                timeout = min(timeout, max(0.0, quiet + REAP_QUIET - now))
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except InterruptedError:  # pragma: no cover (PEP 475 retries)
                readable, writable = [], []
            for sink in writable:
                sink.on_writable()
            if streams:
                for sink in streams:
                    sink.tick()
            if self._wake_r in readable:
                self._drain_wakeup()
            if self._sigfd is not None and self._sigfd in readable:
                self._read_signals()
            if self.sock in readable:
                self._receive(pending)
            else:
                # also when the last _receive ended on its round limit just
                # as the burst did
                now = time.monotonic()
                if self._quiet_from is None:
                    self._quiet_from = now
                self._burst_over(pending)
                if corr.reap_pending and now - self._quiet_from >= REAP_QUIET:
                    corr.reap(REAP_CHUNK)
            if self.control in readable:
                self.control.handle_ready()
            if self.meters is not None:
                self._meter(readable)
            if self.reload_requested and not self.stopping:
                self.reload(pending)
                if self.cfg.conntrack.active_timeout != active_timeout:
                    active_timeout = self.cfg.conntrack.active_timeout
                    next_active = (time.monotonic() + active_timeout if active_timeout
                                   else float("inf"))
            ccfg = self.cfg.conntrack
            now = time.monotonic()
            if self._overrun_episode and now >= self._resync_at:
                self._resync(pending)
                now = time.monotonic()
            if now >= next_active:
                self._active(pending)
                next_active = time.monotonic() + active_timeout
            if len(pending) >= FLUSH_THRESHOLD or now >= next_flush:
                self._flush(pending)
                next_flush = now + self.cfg.export.flush_interval
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
        corr = self.correlator
        handle_batch = corr.handle_batch
        c = self.counters
        wait = 0.0
        # events the receive buffer holds, a quarter of which a wait may fill
        room = max(1, self.sock.rcvbuf // EVENT_TRUESIZE) / 4
        prev = time.monotonic()
        back = prev + RECEIVE_SPAN
        last_rate = 0.0
        first = True
        for _ in range(max_rounds):
            stopped = False     # this round's wait ended early: the stream stopped
            if wait:
                if self.stopping or prev + wait > back:
                    break       # the loop's turn (what is queued stays for the next call)
                # a stream arriving a few datagrams at a time: let a batch
                # gather (see STREAM_BATCH); what is pending meanwhile is not
                # held back for long, and in a burst goes during the wait
                start = time.monotonic()
                end = start + wait
                if pending and (self._in_burst or start - self._last_flush >= STREAM_FLUSH):
                    self._flush(pending)
                if corr.reap_pending and (last_rate < REAP_STREAM_RATE
                                          or corr.reap_pending >= DEAD_MAX // 2):
                    # part of the wait goes to the cache removals a burst left
                    # (a steady stream may never leave the socket empty)
                    corr.reap(max(256, int(wait * REAP_PER_SECOND_OF_WAIT)))
                stopped = self._pace(end, last_rate, STREAM_BATCH * self._truesize)
            now = time.monotonic()
            try:
                batch = self.sock.recv(RECV_BATCH)
            except netlink.NetlinkOverrun:
                c["overruns"] += 1
                if not self._overrun_episode:
                    # once per episode: a burst can raise ENOBUFS thousands
                    # of times; the resync that ends the episode says how many
                    log.error("netlink_overrun",
                              meaning="the kernel dropped events: the receive buffer was "
                                      "full; the table will be dumped to resynchronise",
                              overruns=c["overruns"], rcvbuf=self.sock.rcvbuf)
                    # let the burst pass first (each resync is a full dump),
                    # but not for long
                    self._resync_at = time.monotonic() + RESYNC_DELAY
                self._overrun_episode += 1
                wait = 0.0
                continue
            res = batch.decoded(self.decoder)
            got = batch.count
            if wait and 0 < got < RECV_BATCH and self._queued_seen:
                # what a datagram took of the buffer: the queue at the end of
                # the wait over the datagrams drained (a few more may have
                # come since: an underestimate, so batches err small)
                self._truesize = min(max(self._queued_seen / got, 256.0), 65536.0)
            self._since_flush += got
            if self._since_flush >= STREAM_BATCH:
                # events arriving faster than they trickle: their tail goes
                # when the stream pauses, not at the next flush deadline
                self._in_burst = True
            rate = got / max(now - prev, 1e-4)             # datagrams per second
            if first:
                first = False
                if self._in_burst:
                    # a burst resuming after a pause: the first round's own
                    # interval is too short to say how fast it comes
                    rate = max(rate, self._burst_rate)
            self._window_count += got
            if now - self._window_start >= FAST_WINDOW:
                self._window_rate = self._window_count / (now - self._window_start)
                self._window_start, self._window_count = now, 0
                if self._window_rate < FAST_RATE / 2:
                    # a burst slowed down to a steady stream (one that
                    # never pauses for BURST_QUIET)
                    self._in_burst = False
            if 0 < got < STREAM_BATCH and rate >= last_rate / 2 and not stopped:
                cap = (STREAM_WAIT if self._in_burst or self._window_rate >= FAST_RATE
                       else STREAM_WAIT_STEADY)
                wait = min(cap, (STREAM_BATCH - got) / rate, room / rate)
            else:
                # a full round, or the rate fell by half or more since the
                # last round: the stream is thinning out (a flush ending,
                # say); its tail goes without waiting
                wait = 0.0
            prev, last_rate = now, rate
            if got:
                self._burst_rate = rate
            if res.events:
                handle_batch(res.events, time.time_ns(), pending)
            if res.malformed or res.unknown:
                c["malformed"] += res.malformed
                c["unknown"] += res.unknown
                log.warning("netlink_skipped", malformed=res.malformed, unknown=res.unknown)
            if not res.events and not res.malformed and not res.unknown:
                self._quiet_from = now          # netlink found empty
                self._burst_over(pending)
                break
            self._quiet_from = None
            if len(pending) >= FLUSH_THRESHOLD:
                self._in_burst = True
                self._flush(pending)

    def _pace(self, end: float, rate: float, full: float = float("inf")) -> bool:
        """Sleep until ``end`` (time.monotonic()) for a batch to gather, until
        the queue holds ``full`` bytes (the batch is there: False), or until
        the stream stops (see WAIT_SLICE): True then."""
        self._queued_seen = 0
        left = end - time.monotonic()
        if left <= 0:
            return False
        # a slow stream (or one only just begun: its rate is a guess) looks
        # less often, and only for a full batch
        fast = rate >= FAST_RATE
        slice_ = WAIT_SLICE if fast else WAIT_SLICE_SLOW
        queued = self.sock.queued_bytes()
        if queued is None:
            time.sleep(left)
            return False
        while left > 0:
            time.sleep(min(left, slice_))
            now_queued = self.sock.queued_bytes()
            if now_queued is None:
                time.sleep(max(0.0, end - time.monotonic()))
                return False
            self._queued_seen = now_queued
            if now_queued == queued and fast:
                return True                 # nothing new in a slice: stopped
            if now_queued >= full:
                return False                # the batch has gathered
            queued = now_queued
            left = end - time.monotonic()
        return False

    def _burst_over(self, pending: list) -> None:
        """Netlink has nothing queued: the tail of a burst being received
        goes now rather than at the next flush deadline (up to
        export.flush_interval later).  The burst ends once netlink has been
        quiet for BURST_QUIET: until then, stragglers go as they come."""
        if self._in_burst:
            if pending:
                self._flush(pending)
            if time.monotonic() - self._quiet_from >= BURST_QUIET:
                self._in_burst = False

    def _poll(self, pending: list) -> None:
        """Dump the table and export start-up connections that have gone."""
        self.counters["polls"] += 1
        try:
            table = netlink.dump_table()
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

    def _sync_dump(self, pending: list):
        """Dump the table for a resync or an active-timeout export; events
        queued meanwhile are handled first.  Returns (table, dump start ns)
        or None when the dump failed."""
        corr = self.correlator
        corr.begin_sync()
        dump_ns = time.time_ns()
        try:
            table = netlink.dump_table()
        except Exception as e:  # noqa: BLE001 - the loop must go on
            log.error("dump_failed", error=str(e))
            corr.abandon_sync()
            return None
        self._receive(pending)
        return table, dump_ns

    def _resync(self, pending: list) -> None:
        """End an overrun episode: dump the table and export the connections
        that ended while events were being lost."""
        episode = self._overrun_episode
        self._overrun_episode = 0
        got = self._sync_dump(pending)
        if got is None:
            self._overrun_episode = episode
            self._resync_at = time.monotonic() + RESYNC_DELAY
            return
        table, dump_ns = got
        corr = self.correlator
        before = dict(corr.counters)
        flows = corr.resync(table, time.time_ns(), dump_ns)
        pending.extend(flows)
        self.counters["resyncs"] += 1
        log.warning("resynced", overruns_in_episode=episode,
                    exported_vanished=corr.counters["exported_by_resync"]
                    - before["exported_by_resync"],
                    adopted=corr.counters["adopted_by_resync"] - before["adopted_by_resync"],
                    table=len(table), cached=corr.cached)
        if len(pending) >= FLUSH_THRESHOLD:
            self._flush(pending)

    def _active(self, pending: list) -> None:
        """Active timeout: export each open connection's counters since its
        previous export."""
        got = self._sync_dump(pending)
        if got is None:
            return
        table, dump_ns = got
        corr = self.correlator
        before = corr.counters["active_exports"]
        pending.extend(corr.active_export(table, time.time_ns(), dump_ns))
        self.counters["active_dumps"] += 1
        log.info("active_timeout_export", connections=corr.counters["active_exports"] - before,
                 table=len(table))
        if len(pending) >= FLUSH_THRESHOLD:
            self._flush(pending)

    def _meter(self, readable) -> None:
        """The packet meters: meter what their rings hold, export the flows
        that ended (apart from the conntrack records' buffer)."""
        now_ns = time.time_ns()
        flows = self.meters.receive(readable, now_ns)
        if flows:
            self.pipeline.export(FlowBatch.from_flows(flows), [], now_ns, uptime_ms())

    def _flush(self, pending: list) -> None:
        self._since_flush = 0
        nat_events = self.correlator.take_nat_events()
        if pending or nat_events:
            # (a flush deadline that finds nothing is no export: a stream
            # starting just after one sends its first flows at once)
            self._last_flush = time.monotonic()
            self.pipeline.export(pending.batch(), nat_events, time.time_ns(), uptime_ms())
            pending.clear()
        self.pipeline.tick(time.time_ns())

    def shutdown(self, pending: list) -> int:
        log.info("stopping")
        sdnotify.stopping()
        try:
            self._receive(pending)
        finally:
            self._flush(pending)
            if self.meters is not None:
                flows = self.meters.flush_all(time.time_ns())
                if flows:
                    self.pipeline.export(FlowBatch.from_flows(flows), [], time.time_ns(),
                                         uptime_ms())
                self.meters.close()
            self.pipeline.close()
            if self.sock is not None:
                self.sock.close()
            if self.control is not None:
                self.control.close()
            if self.metrics is not None:
                self.metrics.close()
            if self._sigfd is not None:
                self._sigfd.close()
        log.info("stopped", **self.all_counters())
        return 0


def _reason(e: BaseException) -> str:
    """An exception as a refusal's reason: our errors say what they are."""
    return str(e) if isinstance(e, NfflowdError) else f"{type(e).__name__}: {e}"


def uptime_ms() -> int:
    """This machine's uptime in ms (the NetFlow SysUptime), CLOCK_BOOTTIME."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000


def run_foreground(cfg: Config, on_ready=None, on_drop=None) -> int:
    return Daemon(cfg, on_ready, on_drop).run()
