"""From finished ``Flow`` records to the wire: encoders and sinks.

Strategy: a dialect table maps each collector's NetFlow version to the exporter
that speaks it (v5: the flow-tools triplet; v9 and IPFIX: one record per
direction with both sides of the translation, and NAT session events); each
collector gets its own encoder (its own sequence numbers and templates) and its
own socket.  v9 and IPFIX collectors also get options records
(``nfflowd.options``): the interface names (``Pipeline.set_links``), the
sampling (none: an interval of 1) and the exporter's own counters.  The flow-tools view is computed once per batch and
shared by the v5 encoders and the syslog mirror, so the CSV line and the v5
record always carry the same values.  Nothing here raises on the data path:
send failures are counted by the sinks.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import TYPE_CHECKING

from nfflowd.app.logs import log
from nfflowd.biflow import BiflowIpfixEncoder, BiflowPairer
from nfflowd.errors import ConfigError
from nfflowd.io.export import TcpCollector, UdpCollector
from nfflowd.record import FlowBatch
from nfflowd.flowtools import expand
from nfflowd.ipfix import IpfixEncoder
from nfflowd.netflow5 import V5Encoder, record_count
from nfflowd.netflow9 import NetflowV9Encoder
from nfflowd.options import ExporterOptions
from nfflowd.io.syslog import SyslogSink

if TYPE_CHECKING:
    from nfflowd.app.config import Collector, Config, ExportConfig


class V5Exporter:
    """One NetFlow v5 collector: its encoder and its socket."""

    uses_flowtools = True

    def __init__(self, collector: Collector, cfg: Config, vlan: bool = False):
        # NetFlow v5 has no VLAN field: ``vlan`` is accepted and has no effect
        self.collector = collector
        self.encoder = V5Encoder(cfg.export.engine_type, cfg.export.engine_id)
        self.sink = UdpCollector(collector.host, collector.port, source=cfg.export.source)

    def export(self, flows, nat_events, ft_records, now_ns: int, boot_ms: int) -> None:
        for datagram in self.encoder.encode(ft_records):
            self.sink.send(datagram, record_count(datagram))

    def tick(self, now_ns: int) -> None:
        """Nothing is held back here (see BiflowExporter.tick)."""

    def set_links(self, links: dict) -> None:
        """NetFlow v5 has no options: nothing to do."""

    @property
    def stream(self) -> tuple:
        """What a collector tells exporters apart by (its sequence is theirs)."""
        return (5, self.encoder.engine_type, self.encoder.engine_id)

    def summary(self) -> dict:
        return {"records": self.encoder.records_encoded,
                "datagrams": self.sink.datagrams_sent,
                "records_dropped": self.sink.records_dropped,
                "send_errors": self.sink.send_errors,
                "records_invalid": self.encoder.invalid,
                "interfaces_zeroed": self.encoder.interfaces_zeroed,
                "skipped_ipv6": self.encoder.skipped_ipv6}

    def close(self) -> None:
        self.sink.close()


def _domain(collector: Collector, ex: ExportConfig) -> int:
    """The v9 source id / IPFIX observation domain of ``collector``."""
    return (collector.observation_domain if collector.observation_domain is not None
            else ex.observation_domain)


class TemplateExporter:
    """One NetFlow v9 or IPFIX collector: per-direction flows carrying both
    sides of the translation, and RFC 8158 NAT session events."""

    uses_flowtools = False
    IPFIX_ENCODER = IpfixEncoder        # BiflowExporter: its biflow encoder

    def __init__(self, collector: Collector, cfg: Config, vlan: bool = False):
        ex = cfg.export
        self.collector = collector
        self.encoder = enc = self.make_encoder(collector, ex, vlan)
        if collector.version == 9:
            self._encode = enc.encode
        else:
            self._encode = lambda flows, nats, now_ms, boot_ms: enc.encode(flows, nats, now_ms)
        self._boot_ms = 0               # of the last export: for the template timer (v9)
        self.stream = (collector.version, _domain(collector, ex))
        if collector.transport == "tcp":
            self.sink = TcpCollector(
                collector.host, collector.port, source=ex.source,
                on_connect=lambda head: enc.templates_message(time.time_ns() // 1_000_000,
                                                              before=head))
        else:
            self.sink = UdpCollector(collector.host, collector.port, source=ex.source)
        enc.options.stats = self.option_stats
        self.carried = (0, 0, 0, 0)     # option_stats of the exporters this one follows

    def option_stats(self) -> tuple:
        """For the exporter statistics options record: messages and bytes
        handed to the kernel, records sent, records not sent (dropped by
        the sink or refused by the encoder), with those of the exporter of
        the same stream that this one replaced (``carried``)."""
        s = self.sink
        messages = s.messages_sent if isinstance(s, TcpCollector) else s.datagrams_sent
        now = (messages, s.bytes_sent, s.records_sent, s.records_dropped + self.encoder.invalid)
        return tuple(a + b for a, b in zip(now, self.carried))

    def set_links(self, links: dict) -> None:
        """The interface names ``{ifindex: (name, description)}``: sent in
        the options at the next chance if they changed."""
        self.encoder.options.set_links(links)

    @classmethod
    def make_encoder(cls, collector: Collector, ex: ExportConfig, vlan: bool = False):
        """The encoder of ``collector`` under the export settings ``ex``.
        ValueError if ``ex.max_datagram`` cannot hold its largest template
        or record (check_encoders asks this, so that check refuses what
        start would)."""
        kw = dict(records=collector.records, nat_event_codes=collector.nat_event_codes,
                  max_size=ex.max_datagram,
                  template_refresh_packets=ex.template_refresh_packets,
                  template_refresh_seconds=ex.template_refresh_seconds, vlan=vlan)
        if collector.transport == "tcp":
            # RFC 7011 10.4: templates once at the start of every connection
            # (TcpCollector asks for them), not on a schedule
            kw.update(template_refresh_packets=0, template_refresh_seconds=0)
        domain = _domain(collector, ex)
        if collector.version == 9:
            enc = NetflowV9Encoder(domain, **kw)
        else:
            enc = cls.IPFIX_ENCODER(domain, **kw)
        enc.attach_options(ExporterOptions(collector.version, domain))
        return enc

    def export(self, flows, nat_events, ft_records, now_ns: int, boot_ms: int) -> None:
        enc = self.encoder
        self._boot_ms = boot_ms
        messages = self._encode(flows, nat_events, now_ns // 1_000_000, boot_ms)
        for message, records in zip(messages, enc.last_counts):
            self.sink.send(message, records)

    def tick(self, now_ns: int) -> None:
        """The templates on their own timer (UDP): a templates-only datagram
        once template_refresh_seconds passed without data carrying them, so
        that a collector restarted on a quiet exporter learns them without
        waiting for the next export."""
        for message in self.encoder.refresh_templates(now_ns // 1_000_000, self._boot_ms):
            self.sink.send(message, 0)

    def summary(self) -> dict:
        enc = self.encoder
        out = {"records": enc.records_sent,
               "send_errors": self.sink.send_errors,
               "template_sends": enc.template_sends,
               # records the encoder refused (a value out of its field's range)
               "records_invalid": enc.invalid}
        if enc.invalid_reasons:
            out["records_invalid_why"] = _invalid_why(enc.invalid_reasons)
        if isinstance(self.sink, TcpCollector):
            out.update(messages=self.sink.messages_sent,
                       messages_dropped=self.sink.messages_dropped,
                       records_dropped=self.sink.records_dropped,
                       connects=self.sink.connects)
        else:
            out["datagrams"] = self.sink.datagrams_sent
            out["records_dropped"] = self.sink.records_dropped
        return out

    def close(self) -> None:
        self.sink.close()


def _invalid_why(reasons: dict) -> str:
    """An encoder's ``invalid_reasons`` in words: ``flowStartMilliseconds out
    of range: 1``."""
    return ", ".join(f"{why}: {n}" for why, n in sorted(reasons.items()))


# NetFlow version -> exporter class.
DIALECTS = {5: V5Exporter, 9: TemplateExporter, 10: TemplateExporter}


def biflow_bound(cfg: Config) -> int:
    """How many records a biflow pairer may hold by default: a meter table's
    worth (``meter.max_flows``) per metered interface, at least one."""
    return cfg.meter.max_flows * max(1, len(cfg.meter.interfaces))


class BiflowExporter(TemplateExporter):
    """An IPFIX collector with ``biflow: true``: records paired by a
    ``biflow.BiflowPairer``, encoded by a ``biflow.BiflowIpfixEncoder``.
    ``hold_s``: the pairer's hold (None: the config's
    ``meter.inactive_timeout``); ``max_held``: its bound (None:
    ``meter.max_flows`` per metered interface, at least one table's worth).
    The pairer's clock is the ``now_ns`` of ``export`` and ``tick``."""

    IPFIX_ENCODER = BiflowIpfixEncoder

    def __init__(self, collector, cfg, vlan: bool = False, hold_s: float | None = None,
                 max_held: int | None = None):
        if collector.version != 10:
            raise ValueError("biflow export is IPFIX (version 10) only")
        super().__init__(collector, cfg, vlan)
        if max_held is None:
            max_held = biflow_bound(cfg)
        self.pairer = BiflowPairer(cfg.meter.inactive_timeout if hold_s is None else hold_s,
                                   max_held)

    def _send(self, pairs, nat_events, now_ns: int) -> None:
        if not pairs and not nat_events:
            return
        enc = self.encoder
        for message, records in zip(enc.encode_pairs(pairs, nat_events, now_ns // 1_000_000),
                                    enc.last_counts):
            self.sink.send(message, records)

    def export(self, batch, nat_events, ft_records, now_ns: int, boot_ms: int) -> None:
        pairs = self.pairer.add(batch.flows(), now_ns)
        pairs += self.pairer.expire(now_ns)
        self._send(pairs, nat_events, now_ns)

    def tick(self, now_ns: int) -> None:
        """Export the records whose hold ended by ``now_ns``; the template
        timer (``TemplateExporter.tick``)."""
        self._send(self.pairer.expire(now_ns), (), now_ns)
        super().tick(now_ns)

    def summary(self) -> dict:
        out = super().summary()
        p = self.pairer
        out.update(biflow_pairs=p.pairs + p.conntrack_pairs, biflow_alone=p.alone,
                   biflow_held=p.held, biflow_overflow=p.overflow)
        return out

    def close(self) -> None:
        self._send(self.pairer.flush(), (), time.time_ns())
        super().close()


def exporter_class(collector: Collector):
    """The exporter class of ``collector``."""
    if collector.biflow:
        return BiflowExporter
    return DIALECTS[collector.version]


def check_encoders(cfg: Config) -> None:
    """Every v9/IPFIX collector's encoder can be made under the export
    settings (``export.max_datagram`` holds its largest template or record;
    the templates go in as many datagrams as they need):
    raises ConfigError otherwise, so that what start, reload and meter would
    refuse is a configuration error wherever a configuration is loaded.
    Asked with vlanId in the templates, as the packet meter sends them (the
    largest).  (The encoders import numpy, whose threads start then: the
    command line blocks the daemon's signals before loading a config.)"""
    export = cfg.export
    problems = []
    for i, col in enumerate(export.collectors):
        if col.version == 5:
            continue                    # fixed records, no template
        try:
            exporter_class(col).make_encoder(col, export, vlan=True)
        except ValueError as e:
            kind = ", biflow" if col.biflow else ""
            problems.append(("export.max_datagram", f"{export.max_datagram} is too small for "
                             f"export.collectors[{i}] ({col.name}{kind}): {e}"))
    if problems:
        raise ConfigError(cfg.path, problems)


# Per-collector stats that are gauges, not counters: not carried over when
# an exporter is replaced (see Pipeline.summary).
GAUGES = ("biflow_held", "syslog_backlog", "archive_backlog")


def _add(out: dict, key: str, value) -> None:
    """``out[key] += value`` for numbers; any other value (a text) is kept
    if ``key`` has none yet."""
    old = out.get(key)
    if old is None:
        out[key] = value
    elif isinstance(old, (int, float)) and isinstance(value, (int, float)):
        out[key] = old + value


@dataclasses.dataclass
class Plan:
    """What ``Pipeline.prepare`` built for a new configuration, for
    ``Pipeline.apply`` (or ``Pipeline.discard``)."""
    cfg: Config
    exporters: list             # in the order of the new collectors
    built: list                 # those of them made new (the rest are kept)
    follows: list               # (new exporter, the one it replaces): same collector
    mirror: SyslogSink | None
    mirror_built: bool
    archive: object = None      # io.archive.ArchiveWriter
    archive_built: bool = False


class Pipeline:
    def __init__(self, cfg: Config, vlan: bool = False, biflow_hold: float | None = None,
                 biflow_max: int | None = None, archive: bool = False):
        """``vlan``: the flows carry VLAN ids (the pcap meter); v9 and IPFIX
        templates then include vlanId.  Conntrack flows have none.
        Collectors with ``biflow: true`` get a ``BiflowExporter``:
        ``biflow_hold`` is its pairing hold in seconds (None: the config's
        meter.inactive_timeout); it pairs on the ``now_ns`` given to
        ``export`` and ``tick`` (a capture file's own clock for ``meter -r``);
        ``biflow_max`` bounds the records it holds (None: the config's
        meter.max_flows per metered interface).

        A reload (``prepare`` then ``apply``) keeps every exporter whose
        settings did not change, with its socket, TCP connection, sequence
        numbers and counters, and the syslog mirror likewise; the counters of
        exporters and mirrors it closes are carried into ``summary``, so that
        they never go backwards for the life of the pipeline."""
        self.cfg = cfg
        self.vlan = vlan
        self.biflow_hold = biflow_hold
        self.biflow_max = biflow_max
        self.exporters: list = []
        self.mirror: SyslogSink | None = None
        # the NAT trace archive (the daemon's, with archive.enabled)
        self.use_archive = archive
        self.archive = None
        self._settings: list = []           # each exporter's settings (_settings_of)
        self.links: dict = {}               # set_links: {ifindex: (name, description)}
        self._retired: dict[str, int] = {}  # counters of closed exporters and mirrors

    def open(self) -> None:
        self.apply(self.prepare(self.cfg))

    def _settings_of(self, c: Collector, cfg: Config) -> tuple:
        """What an exporter of ``c`` is made from: equal settings, same exporter."""
        hold = None
        if c.biflow:
            hold = (cfg.meter.inactive_timeout if self.biflow_hold is None else self.biflow_hold,
                    biflow_bound(cfg) if self.biflow_max is None else self.biflow_max)
        return (c, dataclasses.replace(cfg.export, collectors=(), flush_interval=0.0), hold)

    def prepare(self, cfg: Config) -> Plan:
        """Build what ``cfg`` needs that this pipeline does not have yet: an
        exporter per collector whose settings are new, a syslog mirror if its
        settings changed; nothing in use is touched.  If anything cannot be
        built (a host that does not resolve, ...), what was built is closed
        and the exception raised."""
        free: dict = {}
        for key, exp in zip(self._settings, self.exporters):
            free.setdefault(key, []).append(exp)
        exporters, new = [], []     # new: the indexes of collectors without one
        for i, c in enumerate(cfg.export.collectors):
            kept = free.get(self._settings_of(c, cfg))
            if kept:
                exporters.append(kept.pop(0))
            else:
                exporters.append(None)
                new.append(i)
        leaving: dict = {}          # collector name -> its exporters not kept
        for exp in (e for lst in free.values() for e in lst):
            leaving.setdefault(exp.collector.name, []).append(exp)
        built, follows = [], []
        mirror, mirror_built = None, False
        try:
            for i in new:
                c = cfg.export.collectors[i]
                cls = exporter_class(c)
                exp = (cls(c, cfg, self.vlan, hold_s=self.biflow_hold, max_held=self.biflow_max)
                       if c.biflow else cls(c, cfg, self.vlan))
                built.append(exp)
                exporters[i] = exp
                exp.set_links(self.links)
                if leaving.get(c.name):
                    follows.append((exp, leaving[c.name].pop(0)))
                if exp.sink.bind_problem is not None:
                    log.warning("export_source_not_bound", source=cfg.export.source,
                                collector=c.name, reason=exp.sink.bind_problem,
                                meaning="datagrams leave from the address the kernel chooses")
            if cfg.syslog.enabled:
                s = cfg.syslog
                if self.mirror is not None and self.cfg.syslog == s:
                    mirror = self.mirror
                else:
                    mirror = SyslogSink(s.address, s.facility, s.priority, s.ident,
                                        backlog=s.backlog, log=log)
                    mirror_built = True
                    mirror.open()       # not there: said now, not at the first line
            archive, archive_built = self._prepare_archive(cfg)
        except BaseException:
            for exp in built:
                exp.close()
            if mirror_built:
                mirror.close(timeout=0)
            raise
        return Plan(cfg, exporters, built, follows, mirror, mirror_built, archive, archive_built)

    def _prepare_archive(self, cfg: Config):
        """The archive writer ``cfg`` needs: the one running if its settings
        are unchanged, else a new one, started."""
        if not (self.use_archive and cfg.archive.enabled):
            return None, False
        if self.archive is not None and self.cfg.archive == cfg.archive \
                and self.cfg.export.source == cfg.export.source:
            return self.archive, False
        from nfflowd.io.archive import ArchiveWriter
        a = cfg.archive
        firewall = a.firewall or cfg.export.source or socket.gethostname()
        store = None
        if a.backend == "clickhouse":
            from nfflowd.io.clickhouse import ClickHouseStore, with_table
            store = ClickHouseStore(with_table(a.url, a.table), a.retention_days, log)
        w = ArchiveWriter(a.path, firewall, a.retention_days, a.flush_interval, a.queue, log=log,
                          store=store)
        w.open(owner=cfg.user)
        return w, True

    def discard(self, plan: Plan) -> None:
        """Close what ``prepare`` built (the configuration was refused)."""
        for exp in plan.built:
            exp.close()
        if plan.mirror_built:
            plan.mirror.close(timeout=0)
        if plan.archive_built:
            plan.archive.close()

    def apply(self, plan: Plan) -> None:
        """Put ``plan`` in force; close the exporters and the mirror it does
        not keep (their counters carried over)."""
        kept = {id(exp) for exp in plan.exporters}
        for exp in self.exporters:
            if id(exp) not in kept:
                exp.close()
                self._retire(self._exporter_summary(exp))
        for exp, old in plan.follows:
            # a collector whose settings changed: the same stream to it
            # continues its sequence and its options' statistics (closed
            # first: biflow sends what it held)
            if exp.stream == old.stream:
                exp.encoder.sequence = old.encoder.sequence
                exp.carried = old.option_stats()
        if self.mirror is not None and self.mirror is not plan.mirror:
            self.mirror.close()
            self._retire(self._mirror_summary(self.mirror))
        self.cfg = plan.cfg
        self.exporters = plan.exporters
        self._settings = [self._settings_of(exp.collector, plan.cfg) for exp in plan.exporters]
        self.mirror = plan.mirror
        if self.archive is not None and self.archive is not plan.archive:
            self.archive.close()
            self._retire(self.archive.stats())
        self.archive = plan.archive

    def _retire(self, stats: dict) -> None:
        for k, v in stats.items():
            if k.rsplit(".", 1)[-1] in GAUGES:
                continue
            if not isinstance(v, (int, float)):
                self._retired.pop(k, None)      # a text: the latest
            _add(self._retired, k, v)

    def set_links(self, links: dict) -> None:
        """The interfaces ``{ifindex: (name, description)}`` (this host's
        links, or the packet meter's capture interfaces): every v9 and
        IPFIX collector gets them in an options template (interfaceName,
        interfaceDescription by index) at the next tick or export, and
        again with every template refresh.  ValueError for an index out
        of 1-4294967295."""
        links = dict(links)
        for exp in self.exporters:
            exp.set_links(links)
        self.links = links

    @property
    def wants_nat_events(self) -> bool:
        """NAT create events: for the collectors that take them, and for the
        archive (a connection is written when it is created)."""
        return (self.use_archive and self.cfg.archive.enabled) or any(
            "nat_events" in c.records for c in self.cfg.export.collectors)

    def export(self, batch: FlowBatch, nat_events, now_ns: int, uptime_ms: int,
               flowtools: bool = False):
        """Send a batch to every collector and the mirror.  ``uptime_ms`` is
        this machine's uptime read together with ``now_ns`` (SysUptime).
        Returns the batch's flow-tools view (``FtBatch``, the values the v5
        records and the mirror's CSV lines carry) when one was computed:
        always with ``flowtools=True``, else only if a v5 collector or the
        mirror needed it (None otherwise)."""
        boot_ms = now_ns // 1_000_000 - uptime_ms
        ft = None
        if (flowtools or self.mirror is not None
                or any(exp.uses_flowtools for exp in self.exporters)):
            # computed once, shared by the v5 encoders and the CSV mirror
            ft = expand(batch, now_ns, boot_ms, self.cfg.export.source)
        for exp in self.exporters:
            exp.export(batch, nat_events, ft, now_ns, boot_ms)
        if self.mirror is not None and ft:
            self.mirror.send_csv(ft, now_ns / 1e9)
        if self.archive is not None:
            self.archive.put(batch, nat_events)
        return ft

    @property
    def stream_sinks(self) -> list:
        """The TCP collectors, for the daemon's select loop."""
        return [exp.sink for exp in self.exporters if isinstance(exp.sink, TcpCollector)]

    def tick(self, now_ns: int) -> None:
        """Called at every flush deadline: retry what the sinks hold back."""
        for exp in self.exporters:
            exp.tick(now_ns)                # biflow: records whose hold ended
        for sink in self.stream_sinks:
            sink.tick()
        if self.mirror is not None:
            self.mirror.flush()

    @staticmethod
    def _exporter_summary(exp) -> dict:
        s = exp.summary()
        out = {"skipped_ipv6": s.pop("skipped_ipv6", 0)}
        name = exp.collector.name
        for k, v in s.items():
            out[f"{name}.{k}"] = v
        return out

    @staticmethod
    def _mirror_summary(m: SyslogSink) -> dict:
        return {"syslog_lines": m.sent, "syslog_dropped": m.dropped,
                "syslog_backlog": len(m.backlog), "syslog_send_errors": m.send_errors,
                "syslog_unavailable": m.unavailable}

    def summary(self) -> dict:
        """Counters per collector (``"<name>.<stat>"``), ``skipped_ipv6`` and
        the mirror's; those of exporters and mirrors closed by a reload are
        added in (a collector whose exporter was replaced continues its
        counts; one removed keeps its last)."""
        out = {"skipped_ipv6": 0}
        for exp in self.exporters:
            for k, v in self._exporter_summary(exp).items():
                _add(out, k, v)
        if self.mirror is not None:
            out.update(self._mirror_summary(self.mirror))
        if self.archive is not None:
            for k, v in self.archive.stats().items():
                _add(out, k, v)
        for k, v in self._retired.items():
            _add(out, k, v)
        return out

    def close(self) -> None:
        for exp in self.exporters:
            exp.close()
        if self.mirror is not None:
            self.mirror.close()
        if self.archive is not None:
            self.archive.close()
