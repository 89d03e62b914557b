"""From finished ``Flow`` records to the wire: encoders and sinks.

Strategy: a dialect table maps each collector's NetFlow version to the exporter
that speaks it (v5: the flow-tools triplet; v9 and IPFIX: one record per
direction with both sides of the translation, and NAT session events); each
collector gets its own encoder (its own sequence numbers and templates) and its
own socket.  The flow-tools view is computed once per batch and
shared by the v5 encoders and the syslog mirror, so the CSV line and the v5
record always carry the same values.  Nothing here raises on the data path:
send failures are counted by the sinks.
"""

from __future__ import annotations

import structlog

from .config import Collector, Config
import time

from .export import TcpCollector, UdpCollector
from .columns import FlowBuffer, FlowColumns
from .flowtools import expand, expand_columns
from .ipfix import IpfixEncoder
from .netflow5 import V5Encoder, record_count
from .netflow9 import NetflowV9Encoder
from .syslog import SyslogSink

log = structlog.get_logger("nfflowd")


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
        """Nothing is held back here (see biflow.BiflowExporter.tick)."""

    def summary(self) -> dict:
        return {"records": self.encoder.records_encoded,
                "datagrams": self.sink.datagrams_sent,
                "records_dropped": self.sink.records_dropped,
                "send_errors": self.sink.send_errors,
                "records_invalid": self.encoder.invalid,
                "skipped_ipv6": self.encoder.skipped_ipv6}

    def close(self) -> None:
        self.sink.close()


class TemplateExporter:
    """One NetFlow v9 or IPFIX collector: per-direction flows carrying both
    sides of the translation, and RFC 8158 NAT session events."""

    uses_flowtools = False
    IPFIX_ENCODER = IpfixEncoder        # biflow.BiflowExporter: its biflow encoder

    def __init__(self, collector: Collector, cfg: Config, vlan: bool = False):
        ex = cfg.export
        domain = (collector.observation_domain if collector.observation_domain is not None
                  else ex.observation_domain)
        kw = dict(records=collector.records, nat_event_codes=collector.nat_event_codes,
                  max_size=ex.max_datagram,
                  template_refresh_packets=ex.template_refresh_packets,
                  template_refresh_seconds=ex.template_refresh_seconds, vlan=vlan)
        self.collector = collector
        tcp = collector.transport == "tcp"
        if tcp:
            # RFC 7011 10.4: templates once at the start of every connection
            # (TcpCollector asks for them), not on a schedule
            kw.update(template_refresh_packets=0, template_refresh_seconds=0)
        if collector.version == 9:
            enc = NetflowV9Encoder(domain, **kw)
            self._encode = enc.encode
        else:
            enc = self.IPFIX_ENCODER(domain, **kw)
            self._encode = lambda flows, nats, now_ms, boot_ms: enc.encode(flows, nats, now_ms)
        self.encoder = enc
        if tcp:
            self.sink = TcpCollector(
                collector.host, collector.port, source=ex.source,
                on_connect=lambda head: enc.templates_message(time.time_ns() // 1_000_000,
                                                              before=head))
        else:
            self.sink = UdpCollector(collector.host, collector.port, source=ex.source)
        self._boot_ms = 0               # of the last export: for the template timer (v9)

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


class Pipeline:
    def __init__(self, cfg: Config, vlan: bool = False, biflow_hold: float | None = None):
        """``vlan``: the flows carry VLAN ids (the pcap meter); v9 and IPFIX
        templates then include vlanId.  Conntrack flows have none.
        Collectors with ``biflow: true`` get a ``biflow.BiflowExporter``:
        ``biflow_hold`` is its pairing hold in seconds (None: the config's
        meter.inactive_timeout); it pairs on the ``now_ns`` given to
        ``export`` and ``tick`` (a capture file's own clock for ``meter -r``)."""
        self.cfg = cfg
        self.vlan = vlan
        self.biflow_hold = biflow_hold
        self.exporters: list = []
        self.mirror: SyslogSink | None = None

    def open(self) -> None:
        cfg = self.cfg
        for c in cfg.export.collectors:
            if c.biflow:
                from .biflow import BiflowExporter
                exp = BiflowExporter(c, cfg, self.vlan, hold_s=self.biflow_hold)
            else:
                exp = DIALECTS[c.version](c, cfg, self.vlan)
            if exp.sink.bind_problem is not None:
                log.warning("export_source_not_bound", source=cfg.export.source,
                            collector=c.name, reason=exp.sink.bind_problem,
                            meaning="datagrams leave from the address the kernel chooses")
            self.exporters.append(exp)
        if cfg.syslog.enabled:
            s = cfg.syslog
            self.mirror = SyslogSink(s.address, s.facility, s.priority, s.ident,
                                     backlog=s.backlog, log=log)
            self.mirror.open()              # not there: said now, not at the first line

    @property
    def wants_nat_events(self) -> bool:
        return any("nat_events" in c.records for c in self.cfg.export.collectors)

    def export(self, flows, nat_events, now_ns: int, uptime_ms: int,
               flowtools: bool = False):
        """Send a batch to every collector and the mirror.  ``uptime_ms`` is
        this machine's uptime read together with ``now_ns`` (SysUptime).
        ``flows``: ``Flow`` records, or the daemon's ``columns.FlowBuffer``
        (encoded as columns when it holds blocks: the same bytes).
        Returns the batch's flow-tools view (``FtBatch``, the values the v5
        records and the mirror's CSV lines carry) when one was computed:
        always with ``flowtools=True``, else only if a v5 collector or the
        mirror needed it (None otherwise)."""
        boot_ms = now_ns // 1_000_000 - uptime_ms
        ft = None
        if isinstance(flows, FlowBuffer):
            flows = flows.for_export()  # the daemon's: columns after a burst
        if (flowtools or self.mirror is not None
                or any(exp.uses_flowtools for exp in self.exporters)):
            # computed once, shared by the v5 encoders and the CSV mirror
            if isinstance(flows, FlowColumns):
                ft = expand_columns(flows, now_ns, boot_ms, self.cfg.export.source)
            else:
                ft = expand(flows, now_ns, boot_ms, self.cfg.export.source)
        for exp in self.exporters:
            exp.export(flows, nat_events, ft, now_ns, boot_ms)
        if self.mirror is not None and ft:
            self.mirror.send_csv(ft, now_ns / 1e9)
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

    def summary(self) -> dict:
        out = {}
        skipped6 = 0
        for exp in self.exporters:
            s = exp.summary()
            skipped6 += s.pop("skipped_ipv6", 0)
            for k, v in s.items():
                out[f"{exp.collector.name}.{k}"] = v
        out["skipped_ipv6"] = skipped6
        if self.mirror is not None:
            m = self.mirror
            out["syslog_lines"] = m.sent
            out["syslog_dropped"] = m.dropped
            out["syslog_backlog"] = len(m.backlog)
            out["syslog_send_errors"] = m.send_errors
            out["syslog_unavailable"] = m.unavailable
        return out

    def close(self) -> None:
        for exp in self.exporters:
            exp.close()
        if self.mirror is not None:
            self.mirror.close()
