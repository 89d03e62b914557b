"""From finished ``Flow`` records to the wire: encoders and sinks.

Strategy: a dialect table maps each collector's NetFlow version to the encoder
that speaks it; each collector gets its own encoder (its own sequence numbers)
and its own UDP socket.  The flow-tools view is computed once per batch and
shared by the v5 encoders and the syslog mirror, so the CSV line and the v5
record always carry the same values.  Nothing here raises on the data path:
send failures are counted by the sinks.
"""

from __future__ import annotations

import structlog

from .config import Collector, Config
from .export import UdpCollector
from .flowtools import csv_lines, expand
from .netflow5 import V5Encoder, record_count
from .syslog import SyslogSink

log = structlog.get_logger("nfflowd")


class V5Exporter:
    """One NetFlow v5 collector: its encoder and its socket."""

    def __init__(self, collector: Collector, cfg: Config):
        self.collector = collector
        self.encoder = V5Encoder(cfg.export.engine_type, cfg.export.engine_id)
        self.sink = UdpCollector(collector.host, collector.port, source=cfg.export.source)

    def export_ft(self, ft_records) -> None:
        for datagram in self.encoder.encode(ft_records):
            self.sink.send(datagram, record_count(datagram))

    def summary(self) -> dict:
        return {"records": self.encoder.records_encoded,
                "datagrams": self.sink.datagrams_sent,
                "send_errors": self.sink.send_errors,
                "skipped_ipv6": self.encoder.skipped_ipv6}

    def close(self) -> None:
        self.sink.close()


# NetFlow version -> exporter class.  v9 and IPFIX join here.
DIALECTS = {5: V5Exporter}


class Pipeline:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.exporters: list = []
        self.mirror: SyslogSink | None = None

    def open(self) -> None:
        cfg = self.cfg
        for c in cfg.export.collectors:
            exp = DIALECTS[c.version](c, cfg)
            if exp.sink.bind_problem is not None:
                log.warning("export_source_not_bound", source=cfg.export.source,
                            collector=c.name, reason=exp.sink.bind_problem,
                            meaning="datagrams leave from the address the kernel chooses")
            self.exporters.append(exp)
        if cfg.syslog.enabled:
            s = cfg.syslog
            self.mirror = SyslogSink(s.address, s.facility, s.priority, s.ident)

    def export(self, flows, now_ns: int, uptime_ms: int) -> None:
        boot_ms = now_ns // 1_000_000 - uptime_ms
        ft = expand(flows, now_ns, boot_ms, self.cfg.export.source)
        for exp in self.exporters:
            exp.export_ft(ft)
        if self.mirror is not None:
            self.mirror.send(csv_lines(ft), now_ns / 1e9)

    def tick(self, now_ns: int) -> None:
        """Called at every flush deadline: retry what the sinks hold back."""
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
            out["syslog_lines"] = self.mirror.sent
            out["syslog_dropped"] = self.mirror.dropped
        return out

    def close(self) -> None:
        for exp in self.exporters:
            exp.close()
        if self.mirror is not None:
            self.mirror.close()
