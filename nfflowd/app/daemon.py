"""The running daemon: the one thread that ties the sans-IO stages to the
kernel and the sinks.  It sleeps in ``select`` until netlink, the packet
meters or the control socket are readable or the next deadline is due;
receive pacing (``pacing.Pacer``) decides how long a trickle may gather.
Signals set a flag and wake the loop; a stop drains what the kernel queued
and flushes everything pending.
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
from nfflowd.errors import ConfigError, NfflowdError
from nfflowd.interfaces import Interfaces
from nfflowd.io import netlink
from nfflowd.app.legacy import load_any
from nfflowd.app.pacing import RECV_BATCH, REAP_CHUNK, Pacer, Wait
from nfflowd.app.pipeline import Pipeline, check_encoders
from nfflowd.app.privileges import SENT_BY_A_PROCESS, SignalFd, drop_privileges

log = structlog.get_logger("nfflowd")

# Flush early when this many flows are pending, to bound memory and latency
# during a burst (a full v5 datagram is 30 records; 8000 flows are 4000
# connections).
FLUSH_THRESHOLD = 8000
# Seconds from the first ENOBUFS of an episode to the resync dump: a burst is
# let through first, then one dump resynchronises (more overruns meanwhile
# belong to the same episode).
RESYNC_DELAY = 0.5


# The cyclic garbage collector: the data path makes no reference cycles
# (tuples, bytes, numpy arrays, freed by reference counting), but every
# tracked allocation counts towards a collection, and at the default
# threshold of 700 a burst spends much of its time in collections that find
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
            "reloads_refused": 0, "resyncs": 0, "active_dumps": 0, "rtnl_overruns": 0,
        }
        # overrun episode: from the first ENOBUFS to the resync that follows
        self._overrun_episode = 0       # overruns in the current episode (0: none)
        self._resync_at = 0.0           # monotonic time the resync is due
        # the packet meters' flows carry VLAN ids: v9/IPFIX templates with vlanId
        self.pipeline = Pipeline(cfg, vlan=bool(cfg.meter.interfaces), archive=True)
        self.meters = None              # capture.InterfaceMeters (meter.interfaces)
        self.correlator: Correlator | None = None
        self.sock: netlink.ConntrackSocket | None = None
        # the records' interface indexes (interfaces.method; None: none), and
        # the rtnetlink socket that keeps its routes and links current
        self.interfaces: Interfaces | None = None
        self.rtnl = None
        # how a receive round's datagrams are decoded: runs of DESTROY and of
        # NEW events as blocks (the columnar path), the rest as events
        self.decoder = decode_blocks
        self.control = None
        self.metrics = None
        self.last_reload: dict | None = None     # result and reason of the last reload
        self.pacer = Pacer()            # receive pacing (time.monotonic())

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
        self._configure_interfaces(self.cfg.interfaces)
        table = netlink.dump_table()
        now_ns = time.time_ns()
        added = self.correlator.add_dumped(table, now_ns)
        self.pipeline.open()
        self._set_links()
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

    # -- interfaces ----------------------------------------------------------------
    def _configure_interfaces(self, icfg) -> None:
        """Apply ``interfaces:``: the rtnetlink socket opened (subscribe,
        then dump) or closed, the correlator given the lookup or none."""
        if icfg.method == "none":
            if self.rtnl is not None:
                self.rtnl.close()
                self.rtnl = None
            self.interfaces = None
        else:
            from nfflowd.io import rtnl
            if self.rtnl is None:
                self.rtnl = rtnl.RtnlSocket()
                self.interfaces = Interfaces(icfg.method, dict(icfg.map))
                self.interfaces.update(rtnl.dump())
            else:
                self.interfaces.configure(icfg.method, dict(icfg.map))
        self.correlator.interfaces = self.interfaces
        log.info("interfaces", method=icfg.method,
                 **(self.interfaces.sizes() if self.interfaces is not None else {}))

    def _routes(self) -> None:
        """What rtnetlink says changed (a re-dump after an overrun)."""
        from nfflowd.io import rtnl
        try:
            msgs = self.rtnl.read()
        except rtnl.RtnlOverrun:
            self.counters["rtnl_overruns"] += 1
            log.warning("rtnl_overrun", meaning="route and link changes were lost; "
                        "dumping them again")
            try:
                msgs = rtnl.dump()
            except NfflowdError as e:
                log.error("rtnl_dump_failed", error=str(e))
                return
        if self.interfaces.update(msgs):
            self._set_links()

    def _set_links(self) -> None:
        """The pipeline's interface names (options template), where it takes
        them."""
        set_links = getattr(self.pipeline, "set_links", None)
        if set_links is not None and self.interfaces is not None:
            set_links(dict(self.interfaces.links))

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
            check_encoders(new)
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
        if new.interfaces != self.cfg.interfaces:
            try:
                self._configure_interfaces(new.interfaces)
            except (OSError, NfflowdError) as e:
                log.error("interfaces_unchanged", error=str(e))
            self._set_links()
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
        rlist = self._rlist()
        corr = self.correlator
        pacer = self.pacer
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
            timeout = pacer.timeout(max(0.0, deadline - now), now, bool(pending),
                                    bool(corr.reap_pending))
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
                self.receive(pending)
            else:
                # also when the last receive ended on its round limit just
                # as the burst did
                now = time.monotonic()
                pacer.idle(now)
                self._burst_over(pending)
                if corr.reap_pending and pacer.reap_due(now):
                    corr.reap(REAP_CHUNK)
            if self.control in readable:
                self.control.handle_ready()
            if self.rtnl is not None and self.rtnl in readable:
                self._routes()
            if self.meters is not None:
                self._meter(readable)
            if self.reload_requested and not self.stopping:
                self.reload(pending)
                rlist = self._rlist()
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

    def _rlist(self) -> list:
        rlist = [self.sock, self._wake_r, self.control]
        if self._sigfd is not None:
            rlist.append(self._sigfd)
        if self.meters is not None:
            rlist += self.meters.sockets
        if self.rtnl is not None:
            rlist.append(self.rtnl)
        return rlist

    def _drain_wakeup(self):
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def receive(self, pending: list, max_rounds: int = 64) -> None:
        """Drain what netlink has queued (bounded), feeding the correlator;
        between rounds, the waits the pacer asks for."""
        corr = self.correlator
        handle_batch = corr.handle_batch
        c = self.counters
        pacer = self.pacer
        pacer.begin(time.monotonic(), self.sock.rcvbuf)
        for _ in range(max_rounds):
            if pacer.wait:
                if self.stopping or pacer.spent():
                    break       # the loop's turn (what is queued stays for the next call)
                # a stream arriving a few datagrams at a time: let a batch
                # gather; what is pending meanwhile is not held back for
                # long, and in a burst goes during the wait
                start = time.monotonic()
                if pending and pacer.export_before_wait(start):
                    self._flush(pending)
                if corr.reap_pending:
                    # part of the wait goes to the cache removals a burst
                    # left (a steady stream may never leave the socket empty)
                    reaps = pacer.reaps_in_wait(corr.reap_pending)
                    if reaps:
                        corr.reap(reaps)
                self._pace(pacer.start_wait(start))
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
                pacer.overrun()
                continue
            res = batch.decoded(self.decoder)
            pacer.received(batch.count, now)
            if res.events:
                handle_batch(res.events, time.time_ns(), pending)
            if res.malformed or res.unknown:
                c["malformed"] += res.malformed
                c["unknown"] += res.unknown
                log.warning("netlink_skipped", malformed=res.malformed, unknown=res.unknown)
            if not res.events and not res.malformed and not res.unknown:
                pacer.empty(now)
                self._burst_over(pending)
                break
            pacer.events()
            if len(pending) >= FLUSH_THRESHOLD:
                pacer.threshold()
                self._flush(pending)

    def _pace(self, wait: Wait) -> None:
        """Sleep through a pacing wait, telling it what the receive queue
        holds after each slice, until it is over."""
        if not wait.due(time.monotonic()):
            return
        pause = wait.next(self.sock.queued_bytes(), time.monotonic())
        while pause > 0:
            time.sleep(pause)
            if wait.over:
                break
            pause = wait.next(self.sock.queued_bytes(), time.monotonic())

    def _burst_over(self, pending: list) -> None:
        """Netlink has nothing queued: the tail of a burst being received
        goes now rather than at the next flush deadline (up to
        export.flush_interval later); the pacer ends the burst once netlink
        has been quiet for BURST_QUIET."""
        if self.pacer.in_burst:
            if pending:
                self._flush(pending)
            self.pacer.quiet_for(time.monotonic())

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
        self.receive(pending)
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
        self.receive(pending)
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
        self.pacer.flushed()
        nat_events = self.correlator.take_nat_events()
        if pending or nat_events:
            # (a flush deadline that finds nothing is no export: a stream
            # starting just after one sends its first flows at once)
            self.pacer.exported(time.monotonic())
            self.pipeline.export(pending.batch(), nat_events, time.time_ns(), uptime_ms())
            pending.clear()
        self.pipeline.tick(time.time_ns())

    def shutdown(self, pending: list) -> int:
        log.info("stopping")
        sdnotify.stopping()
        try:
            self.receive(pending)
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
            if self.rtnl is not None:
                self.rtnl.close()
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
