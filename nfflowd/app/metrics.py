"""An optional Prometheus endpoint (prometheus-client): the daemon's counter
dicts are the only state; a custom collector reads a snapshot of them at
scrape time and names them through the tables below (a numeric key not in
them is still exported, as a gauge ``nfflowd_<key>``).
"""

from __future__ import annotations

import re

from nfflowd import __version__
from nfflowd.errors import NfflowdError

PREFIX = "nfflowd_"

# A key ``"<collector>.<stat>"`` (as in ``Pipeline.summary()``, e.g.
# ``"127.0.0.1:2055/v5.records"``) becomes a sample labelled
# ``collector="127.0.0.1:2055/v5"``; a dict value ``{"records":
# {"127.0.0.1:2055/v5": 10}}`` is read the same way.  A packet meter's
# ``"meter.<iface>.<stat>"`` (``PER_METER``) becomes a sample labelled
# ``interface="<iface>"``.

# daemon counter -> (metric name without prefix and _total, help, labels)
COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "events_new": ("events", "Conntrack events received, by kind", {"kind": "new"}),
    "events_destroy": ("events", "Conntrack events received, by kind", {"kind": "destroy"}),
    "events_other": ("events", "Conntrack events received, by kind", {"kind": "other"}),
    "malformed": ("netlink_messages_skipped", "Netlink messages skipped, by reason",
                  {"reason": "malformed"}),
    "unknown": ("netlink_messages_skipped", "Netlink messages skipped, by reason",
                {"reason": "unknown"}),
    "overruns": ("netlink_overruns", "Netlink receive buffer overruns (the kernel dropped "
                 "events)", {}),
    "polls": ("table_polls", "Conntrack table dumps for connections older than nfflowd", {}),
    "connections_exported": ("connections_exported", "Connections exported as records", {}),
    "exported_by_poll": ("connections_exported_by_poll",
                         "Connections exported because a table poll found them gone", {}),
    "purged_ttl": ("connections_purged", "Connections forgotten after conntrack.ttl", {}),
    "duplicate_destroy": ("duplicate_destroy_events", "DESTROY events for connections "
                          "already exported", {}),
    "skipped_ipv6": ("records_skipped_ipv6", "IPv6 records NetFlow v5 cannot carry "
                     "(still mirrored to syslog)", {}),
    "syslog_lines": ("syslog_lines", "Flow-tools CSV lines sent to syslog", {}),
    "syslog_dropped": ("syslog_lines_dropped", "Flow-tools CSV lines syslog did not take", {}),
    "syslog_send_errors": ("syslog_send_errors", "Sends to syslog that failed (not those "
                           "that found its socket queue full: they wait)", {}),
    "syslog_unavailable": ("syslog_unavailable", "Attempts to reach the syslog socket that "
                           "found no listener", {}),
    "archive_rows_written": ("archive_rows", "Rows written to the NAT trace archive (a "
                             "connection's creation, its end)", {}),
    "archive_dropped": ("archive_dropped_connections", "Connections not archived: the "
                        "archive's queue was full", {}),
    "archive_write_errors": ("archive_write_errors", "Archive writes or seals that failed", {}),
    "archive_hours_sealed": ("archive_hours_sealed", "Hours of the archive sealed into "
                             "sorted files", {}),
    "archive_damaged": ("archive_damaged_files", "Archive files found damaged (skipped, "
                        "set aside)", {}),
    "archive_partitions_removed": ("archive_days_removed", "Archive days removed by the "
                                   "retention", {}),
    "archive_unpaired": ("archive_unpaired_records", "Flow records whose other direction "
                         "never came (not archived)", {}),
}

# daemon value that goes up and down -> (metric name without prefix, help)
GAUGES: dict[str, tuple[str, str]] = {
    "syslog_backlog": ("syslog_backlog_lines", "Flow-tools CSV lines waiting for syslog to "
                       "take them (at most syslog.backlog)"),
    "archive_backlog": ("archive_backlog_batches", "Record batches waiting for the archive's "
                        "thread (at most archive.queue)"),
}

# per-collector stat -> (metric name without prefix and _total, help)
PER_COLLECTOR: dict[str, tuple[str, str]] = {
    "records": ("records_sent", "Flow records sent, by collector"),
    "datagrams": ("datagrams_sent", "Export datagrams sent, by collector"),
    "send_errors": ("send_errors", "Export send errors (a datagram not sent; over UDP also "
                    "the collector's port reported closed for an earlier one), by collector"),
    "records_invalid": ("records_invalid", "Records the collector's encoder refused (a value "
                        "out of its field's range; not exported there), by collector"),
    "interfaces_zeroed": ("interfaces_zeroed", "Flows whose interface index did not fit "
                          "NetFlow v5's 16 bits (sent as 0), by collector"),
}

# per-interface packet meter stat (``"meter.<iface>.<stat>"``, from
# capture.InterfaceMeters.counters()) -> (metric name, help, is a counter)
PER_METER: dict[str, tuple[str, str, bool]] = {
    "frames": ("meter_frames", "Frames read from the capture ring, by interface", True),
    "packets": ("meter_packets", "IP packets metered, by interface", True),
    "octets": ("meter_octets", "Layer-3 bytes metered, by interface", True),
    "flows_active": ("meter_flows_active", "Flows in the meter's cache, by interface", False),
    "flows_exported": ("meter_flows_exported", "Flows the meter exported, by interface", True),
    "flows_evicted": ("meter_flows_evicted", "Flows exported early because the meter's "
                      "cache was full, by interface", True),
    "frames_skipped": ("meter_frames_skipped", "Frames not metered (not IP, cut short), "
                       "by interface", True),
    "length_mismatch": ("meter_length_mismatch", "Packets whose IP length exceeds the "
                        "frame's (counted at the frame's length), by interface", True),
    "kernel_packets": ("meter_kernel_packets", "Packets the kernel passed to the capture "
                       "socket (its drops included), by interface", True),
    "kernel_drops": ("meter_kernel_drops", "Packets the kernel dropped because the capture "
                     "ring was full, by interface", True),
}

_BAD = re.compile(r"[^a-zA-Z0-9_]")


class MetricsError(NfflowdError):
    """The metrics endpoint cannot be started."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:9469``, ``[::1]:9469``, ``:9469`` (all addresses)."""
    host, sep, port = str(listen).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsError(f"metrics listen address {listen!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def listen_problem(listen: str) -> str | None:
    """Why ``MetricsServer`` could not listen on ``listen``'s address (not
    an address of this host, a name that does not resolve), None if it can;
    tried on port 0, as the running daemon may hold the port (``check``)."""
    import socket
    try:
        host, _port = parse_listen(listen)
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind(sockaddr)
    except MetricsError as e:
        return str(e)
    except OSError as e:
        return f"metrics: cannot listen on {listen}: {e.strerror or e}"
    return None


def families(counters: dict) -> list:
    """The metric families for one snapshot of the daemon's counters."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    out: dict[str, object] = {}

    def counter(name, help_, labels: dict, value):
        fam = out.get(name)
        if fam is None:
            fam = out[name] = CounterMetricFamily(PREFIX + name, help_, labels=sorted(labels))
        fam.add_metric([labels[k] for k in sorted(labels)], value)

    def gauge(name, labels: dict, value, help_=None):
        fam = out.get("g:" + name)
        if fam is None:
            fam = out["g:" + name] = GaugeMetricFamily(
                PREFIX + name, help_ or f"nfflowd counter {name} (not mapped to a metric name)",
                labels=sorted(labels))
        fam.add_metric([labels[k] for k in sorted(labels)], value)

    def one(key: str, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if key in COUNTERS:
            name, help_, labels = COUNTERS[key]
            counter(name, help_, labels, value)
            return
        if key in GAUGES:
            name, help_ = GAUGES[key]
            gauge(name, {}, value, help_)
            return
        if key.startswith("meter."):
            iface, dot, stat = key[6:].rpartition(".")
            if dot and stat in PER_METER:
                name, help_, is_counter = PER_METER[stat]
                if is_counter:
                    counter(name, help_, {"interface": iface}, value)
                else:
                    gauge(name, {"interface": iface}, value, help_)
                return
        collector, dot, stat = key.rpartition(".")
        if dot and stat in PER_COLLECTOR:
            name, help_ = PER_COLLECTOR[stat]
            counter(name, help_, {"collector": collector}, value)
            return
        gauge(_BAD.sub("_", key), {}, value)

    for key, value in counters.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if key in PER_COLLECTOR:
                    one(f"{sub}.{key}", v)
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    gauge(_BAD.sub("_", str(key)), {"key": str(sub)}, v)
        else:
            one(str(key), value)
    return list(out.values())


class _Collector:
    """Calls ``get_counters()`` at scrape time, in the HTTP server's thread:
    it should return a fresh snapshot (``{**daemon.counters,
    **correlator.counters, **pipeline.summary()}``).  Reading ints the loop
    is updating is safe under the GIL, iterating a dict the loop is resizing
    is not (a RuntimeError is retried once)."""

    def __init__(self, get_counters):
        self.get_counters = get_counters
        self.errors = 0

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        info = GaugeMetricFamily(PREFIX + "info", "nfflowd version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        ok = GaugeMetricFamily(PREFIX + "counters_up", "Whether the daemon's counters "
                               "could be read at this scrape")
        snapshot = None
        for _ in range(2):
            try:
                snapshot = dict(self.get_counters())
                break
            except RuntimeError:  # a dict resized while copied: once more
                continue
            except Exception:  # noqa: BLE001 - a scrape must not kill anything
                break
        if snapshot is None:
            self.errors += 1
            ok.add_metric([], 0)
            yield ok
            return
        ok.add_metric([], 1)
        yield ok
        yield from families(snapshot)


class MetricsServer:
    """Serves ``/metrics`` on ``listen`` from a prometheus-client HTTP server
    thread.  ``port`` is the port actually bound (useful with port 0)."""

    def __init__(self, listen: str = "127.0.0.1:9469", get_counters=dict,
                 process_metrics: bool = True):
        try:
            from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
        except ImportError:
            raise MetricsError("the metrics endpoint needs prometheus-client "
                               "(pip install prometheus-client)") from None
        host, port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = _Collector(get_counters)
        self.registry.register(self.collector)
        if process_metrics:
            ProcessCollector(registry=self.registry)
        try:
            self._httpd, self._thread = start_http_server(port, addr=host,
                                                          registry=self.registry)
        except OSError as e:
            raise MetricsError(f"metrics: cannot listen on {listen}: {e.strerror or e}") from None
        self.host = host
        self.port = self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
