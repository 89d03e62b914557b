"""The Prometheus endpoint: a real HTTP server on 127.0.0.1 (a free port),
scraped with urllib; values read from the daemon's dicts at scrape time."""

import urllib.error
import urllib.request

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from nfflowd.app import metrics  # noqa: E402
from nfflowd.app.metrics import MetricsError, MetricsServer  # noqa: E402


def scrape(url) -> dict:
    """{(sample name, frozenset(labels)): value}"""
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def daemon_like_counters():
    """The shape the daemon has: Daemon.counters, Correlator.counters and
    Pipeline.summary(), merged."""
    return {
        "events_new": 10, "events_destroy": 7, "events_other": 1, "malformed": 2,
        "unknown": 0, "overruns": 1, "polls": 3,
        "connections_exported": 7, "exported_by_poll": 1, "purged_ttl": 0,
        "duplicate_destroy": 0,
        "127.0.0.1:2055/v5.records": 21, "127.0.0.1:2055/v5.datagrams": 1,
        "127.0.0.1:2055/v5.send_errors": 0,
        "[::1]:9995/v5.records": 18, "[::1]:9995/v5.datagrams": 1,
        "[::1]:9995/v5.send_errors": 2,
        "skipped_ipv6": 3, "syslog_lines": 21, "syslog_dropped": 0,
        "syslog_backlog": 5, "syslog_send_errors": 1, "syslog_unavailable": 4,
    }


def test_scrape_reads_the_live_dicts():
    counters = daemon_like_counters()
    with MetricsServer("127.0.0.1:0", lambda: dict(counters)) as m:
        assert m.port > 0 and m.url == f"http://127.0.0.1:{m.port}/metrics"
        got = scrape(m.url)
        L = lambda **kw: frozenset(kw.items())  # noqa: E731
        assert got[("nfflowd_events_total", L(kind="new"))] == 10
        assert got[("nfflowd_events_total", L(kind="destroy"))] == 7
        assert got[("nfflowd_events_total", L(kind="other"))] == 1
        assert got[("nfflowd_netlink_messages_skipped_total", L(reason="malformed"))] == 2
        assert got[("nfflowd_netlink_overruns_total", L())] == 1
        assert got[("nfflowd_records_sent_total", L(collector="127.0.0.1:2055/v5"))] == 21
        assert got[("nfflowd_records_sent_total", L(collector="[::1]:9995/v5"))] == 18
        assert got[("nfflowd_send_errors_total", L(collector="[::1]:9995/v5"))] == 2
        assert got[("nfflowd_records_skipped_ipv6_total", L())] == 3
        assert got[("nfflowd_syslog_lines_total", L())] == 21
        assert got[("nfflowd_syslog_lines_dropped_total", L())] == 0
        assert got[("nfflowd_syslog_backlog_lines", L())] == 5
        assert got[("nfflowd_syslog_send_errors_total", L())] == 1
        assert got[("nfflowd_syslog_unavailable_total", L())] == 4
        assert got[("nfflowd_counters_up", L())] == 1
        assert got[("nfflowd_info", L(version=metrics.__version__))] == 1
        assert ("process_resident_memory_bytes", L()) in got
        # no duplicated state: the next scrape sees the dict as it is then
        counters["events_destroy"] = 8
        counters["[::1]:9995/v5.records"] = 21
        got = scrape(m.url)
        assert got[("nfflowd_events_total", L(kind="destroy"))] == 8
        assert got[("nfflowd_records_sent_total", L(collector="[::1]:9995/v5"))] == 21
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(m.url, timeout=2)      # closed


def test_packet_meter_counters_by_interface():
    """capture.InterfaceMeters.counters(): ``meter.<iface>.<stat>``, interface
    names with dots included; counters by interface, the cache size a gauge."""
    counters = {"meter.fw-lan.packets": 40, "meter.fw-lan.octets": 5000,
                "meter.fw-lan.flows_active": 3, "meter.fw-lan.kernel_drops": 2,
                "meter.eth0.100.packets": 7, "meter.eth0.100.flows_evicted": 1,
                "127.0.0.1:2055/v9.records": 4}
    with MetricsServer("127.0.0.1:0", lambda: dict(counters), process_metrics=False) as m:
        got = scrape(m.url)
    L = lambda **kw: frozenset(kw.items())  # noqa: E731
    assert got[("nfflowd_meter_packets_total", L(interface="fw-lan"))] == 40
    assert got[("nfflowd_meter_packets_total", L(interface="eth0.100"))] == 7
    assert got[("nfflowd_meter_octets_total", L(interface="fw-lan"))] == 5000
    assert got[("nfflowd_meter_kernel_drops_total", L(interface="fw-lan"))] == 2
    assert got[("nfflowd_meter_flows_evicted_total", L(interface="eth0.100"))] == 1
    assert got[("nfflowd_meter_flows_active", L(interface="fw-lan"))] == 3
    assert got[("nfflowd_records_sent_total", L(collector="127.0.0.1:2055/v9"))] == 4
    assert not any("collector" in dict(labels) and "meter" in dict(labels)["collector"]
                   for _, labels in got)


def test_unmapped_and_nested_counters_and_a_failing_source():
    state = {"fail": False}

    def get():
        if state["fail"]:
            raise OSError("gone")
        return {"new_thing": 4.5, "flag": True, "name": "x",
                "records": {"198.51.100.1:2055/v5": 5}, "per_queue": {"q1": 2}}

    with MetricsServer("127.0.0.1:0", get, process_metrics=False) as m:
        got = scrape(m.url)
        assert got[("nfflowd_new_thing", frozenset())] == 4.5
        assert got[("nfflowd_records_sent_total",
                    frozenset({"collector": "198.51.100.1:2055/v5"}.items()))] == 5
        assert got[("nfflowd_per_queue", frozenset({"key": "q1"}.items()))] == 2
        assert not any(name.startswith("nfflowd_flag") or name.startswith("nfflowd_name")
                       for name, _ in got)
        state["fail"] = True
        got = scrape(m.url)                            # still answers
        assert got[("nfflowd_counters_up", frozenset())] == 0
        assert not any(n.startswith("nfflowd_events") for n, _ in got)


def test_listen_addresses_and_errors():
    assert metrics.parse_listen("127.0.0.1:9469") == ("127.0.0.1", 9469)
    assert metrics.parse_listen("[::1]:9469") == ("::1", 9469)
    assert metrics.parse_listen(":9469") == ("0.0.0.0", 9469)
    for bad in ("127.0.0.1", "host:port", "1.2.3.4:70000"):
        with pytest.raises(MetricsError):
            metrics.parse_listen(bad)
    with MetricsServer("127.0.0.1:0", dict, process_metrics=False) as m:
        with pytest.raises(MetricsError, match="cannot listen"):
            MetricsServer(f"127.0.0.1:{m.port}", dict)


def test_records_the_encoders_refuse_are_counted_by_collector():
    """#15 item 14: a record no encoder can carry (a start time before 1970)
    through a real Pipeline to v5, v9 and IPFIX collectors on 127.0.0.1: its
    summary (what the daemon's ``check`` prints and the endpoint serves)
    counts it per collector with the reason, and the endpoint names it."""
    import socket

    from nfflowd.app import config
    from nfflowd.app.pipeline import Pipeline
    from nfflowd.record import FlowBatch

    from test_netflow9 import T0, many_flows

    rx = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in rx:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in rx]
    cfg = config.parse({"export": {"collectors": [
        {"host": "127.0.0.1", "port": p, "version": v} for p, v in zip(ports, (5, 9, 10))]},
        "syslog": {"enabled": False}})
    pl = Pipeline(cfg)
    pl.open()
    try:
        good, bad = many_flows(2)[0], many_flows(2)[0]._replace(start_ms=-5)
        pl.export(FlowBatch.from_flows([good, bad, good]), [], T0 * 1_000_000, 3_600_000)
        s = pl.summary()
    finally:
        pl.close()
        for r in rx:
            r.close()
    n5, n9, n10 = (f"127.0.0.1:{p}/v{v}" for p, v in zip(ports, (5, 9, 10)))
    for n in (n9, n10):
        assert (s[f"{n}.records"], s[f"{n}.records_invalid"]) == (2, 1)
        assert s[f"{n}.records_invalid_why"] == "flowStartMilliseconds out of range: 1"
    # v5 (times since boot, clamped at 0) takes it: before and after NAT each
    assert (s[f"{n5}.records"], s[f"{n5}.records_invalid"]) == (6, 0)
    with MetricsServer("127.0.0.1:0", lambda: dict(s), process_metrics=False) as m:
        got = scrape(m.url)
    L = lambda **kw: frozenset(kw.items())  # noqa: E731
    assert got[("nfflowd_records_invalid_total", L(collector=n9))] == 1
    assert got[("nfflowd_records_invalid_total", L(collector=n10))] == 1
    assert got[("nfflowd_records_invalid_total", L(collector=n5))] == 0
