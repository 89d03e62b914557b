"""The configuration: the sample loads, defaults hold, every error names file and key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nfflowd.app import config
from nfflowd.cli import main
from nfflowd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "conf" / "nfflowd.yaml"


def test_the_sample_config_is_valid_and_matches_the_defaults():
    cfg = config.load(SAMPLE)
    assert cfg.export.source == "203.0.113.1"
    assert cfg.export.collectors == (config.Collector("127.0.0.1", 2055, 5),)
    d = config.parse({})
    assert (cfg.syslog, cfg.conntrack, cfg.pidfile) == (d.syslog, d.conntrack, d.pidfile)
    assert (d.syslog.facility, d.syslog.priority, d.syslog.ident) == ("local6", "info", "nfflowd")
    # a 200k-connection table flush waits whole for a slow syslog: 3 lines a connection
    assert d.syslog.backlog == 600_000
    assert config.parse({"syslog": {"backlog": 0}}).syslog.backlog == 0
    assert (d.conntrack.ttl, d.conntrack.poll_interval) == (604800, 30)
    assert cfg.sched_priority == d.sched_priority == 0
    assert config.parse({"sched_priority": 99}).sched_priority == 99


def test_the_meter_section():
    d = config.parse({}).meter
    assert (d.active_timeout, d.inactive_timeout, d.max_flows, d.snaplen, d.bpf, d.count,
            d.interfaces) == (300, 30, 131072, 256, None, 0, ())
    assert config.load(SAMPLE).meter == d
    m = config.parse({"meter": {"active_timeout": 60, "inactive_timeout": 15, "max_flows": 1000,
                                "snaplen": 128, "bpf": "not port 22", "count": 10,
                                "interfaces": ["eth1", {"name": "eth2", "bpf": "udp"}]}}).meter
    assert (m.active_timeout, m.inactive_timeout, m.max_flows, m.snaplen, m.bpf, m.count) == \
        (60, 15, 1000, 128, "not port 22", 10)
    assert m.interfaces == (config.MeterInterface("eth1"), config.MeterInterface("eth2", "udp"))


def test_the_sample_documents_every_meter_key():
    text = SAMPLE.read_text()
    section = text[text.index("\nmeter:"):text.index("\npidfile:")]
    for key in ("active_timeout", "inactive_timeout", "max_flows", "snaplen", "bpf", "count",
                "interfaces", "name", "bpf:", "if_index"):
        assert key in section, key
    assert (ROOT / "nfflowd" / "_data" / "nfflowd.yaml").read_text() == text


def test_meter_options_default_to_the_config(tmp_path, capsys):
    p = tmp_path / "m.yaml"
    p.write_text("export:\n  collectors: []\nsyslog:\n  enabled: false\n"
                 "meter:\n  bpf: 'udp prot 53'\n")
    assert main(["-c", str(p), "meter", "-r", "x.pcap"]) == 2
    assert "meter.bpf: bad BPF filter 'udp prot 53'" in capsys.readouterr().err
    http = ROOT / "tests" / "data" / "pcaps" / "http.pcap"
    p.write_text("export:\n  collectors: []\nsyslog:\n  enabled: false\n"
                 "meter:\n  count: 5\n  bpf: tcp\n")
    assert main(["-c", str(p), "meter", "-r", str(http)]) == 0
    err = capsys.readouterr().err
    assert "5 frames" in err and "filter 'tcp'" in err
    # the command line wins: -n 0 is no limit
    assert main(["-c", str(p), "meter", "-r", str(http), "-n", "0", "--bpf", "src port 80",
                 "--active-timeout", "300"]) == 0
    err = capsys.readouterr().err
    assert "46 frames" not in err and "filter 'src port 80'" in err
    assert "active timeout" not in err and "stopped after" not in err
    p.write_text("export:\n  collectors: []\nsyslog:\n  enabled: false\n"
                 "meter:\n  active_timeout: 1\n")
    assert main(["-c", str(p), "meter", "-r", str(http)]) == 0
    assert "flows ended by: active timeout 12, end of capture 5" in capsys.readouterr().err


def test_v9_and_ipfix_collectors_default_to_flows_and_nat_events():
    cfg = config.parse({"export": {"observation_domain": 7, "collectors": [
        {"host": "127.0.0.1", "port": 9995, "version": 9},
        {"host": "127.0.0.1", "port": 4739, "version": 10, "transport": "tcp",
         "records": ["nat_events"], "nat_event_codes": "legacy", "observation_domain": 9}]}})
    v9, ipfix = cfg.export.collectors
    assert (v9.records, v9.transport, v9.nat_event_codes) == (("flows", "nat_events"), "udp",
                                                              "rfc8158")
    assert (ipfix.records, ipfix.transport, ipfix.nat_event_codes, ipfix.observation_domain) \
        == (("nat_events",), "tcp", "legacy", 9)
    assert cfg.export.observation_domain == 7
    assert ipfix.name == "127.0.0.1:4739/v10/tcp"


def test_collectors_and_ipv6_hosts():
    cfg = config.parse({"export": {"collectors": [
        {"host": "::1", "port": 9995}, {"host": "127.0.0.1", "port": 2056, "version": 5}]}})
    assert [c.name for c in cfg.export.collectors] == ["[::1]:9995/v5", "127.0.0.1:2056/v5"]


@pytest.mark.parametrize("data, key, words", [
    ({"export": {"collectors": [{"host": "127.0.0.1", "port": 70000}]}},
     "export.collectors[0].port", "from 1 to 65535"),
    ({"export": {"collectors": [{"port": 2055}]}}, "export.collectors[0].host", "host"),
    ({"export": {"collectors": [{"host": "h", "version": 7}]}},
     "export.collectors[0].version", "10 (IPFIX)"),
    ({"export": {"collectors": [{"host": "h", "version": 9, "transport": "tcp"}]}},
     "export.collectors[0].transport", "IPFIX (version 10) only"),
    ({"export": {"collectors": [{"host": "h", "version": 5, "records": ["nat_events"]}]}},
     "export.collectors[0].records", "v5 cannot carry"),
    ({"export": {"collectors": [{"host": "h", "version": 10, "records": ["flow"]}]}},
     "export.collectors[0].records", "flows, nat_events"),
    ({"export": {"collectors": [{"host": "h", "version": 10, "nat_event_codes": "old"}]}},
     "export.collectors[0].nat_event_codes", "legacy"),
    ({"export": {"max_datagram": 100}}, "export.max_datagram", "512"),
    ({"export": {"collectors": "127.0.0.1"}}, "export.collectors", "a list"),
    ({"export": {"source": "not-an-ip"}}, "export.source", "IPv4 or IPv6 address"),
    ({"export": {"engine_id": 300}}, "export.engine_id", "0 to 255"),
    ({"syslog": {"facility": "local9"}}, "syslog.facility", "local6"),
    ({"syslog": {"priority": "loud"}}, "syslog.priority", "info"),
    ({"syslog": {"enabled": "yes"}}, "syslog.enabled", "true or false"),
    ({"syslog": {"address": "loghost"}}, "syslog.address", "host:port"),
    ({"syslog": {"backlog": -1}}, "syslog.backlog", "from 0 to 10000000"),
    ({"syslog": {"backlog": "lots"}}, "syslog.backlog", "an integer"),
    ({"conntrack": {"ttl": -1}}, "conntrack.ttl", "seconds"),
    ({"conntrack": {"poll_interval": "often"}}, "conntrack.poll_interval", "seconds"),
    ({"conntrack": {"tll": 5}}, "conntrack.tll", "unknown key"),
    ({"exprot": {}}, "exprot", "unknown key"),
    ({"log": {"level": "chatty"}}, "log.level", "debug"),
    ({"syslog": []}, "syslog", "a mapping"),
    ({"meter": {"active_timeout": 0}}, "meter.active_timeout", "seconds from 1"),
    ({"meter": {"inactive_timeout": "long"}}, "meter.inactive_timeout", "seconds"),
    ({"meter": {"max_flows": 0}}, "meter.max_flows", "from 1"),
    ({"meter": {"snaplen": 20}}, "meter.snaplen", "from 64 to 262144"),
    ({"meter": {"count": -1}}, "meter.count", "from 0"),
    ({"meter": {"bpf": "udp prot 53"}}, "meter.bpf", "bad BPF filter 'udp prot 53'"),
    ({"meter": {"bpf": 53}}, "meter.bpf", "a non-empty string"),
    ({"meter": {"interfaces": "eth0"}}, "meter.interfaces", "a list"),
    ({"meter": {"interfaces": [{"name": "eth0/1"}]}}, "meter.interfaces[0].name",
     "interface name"),
    ({"meter": {"interfaces": [{"name": "a-name-over-15-bytes"}]}}, "meter.interfaces[0].name",
     "1 to 15"),
    ({"meter": {"interfaces": ["eth0", {"name": "eth1", "bpf": "port 99999"}]}},
     "meter.interfaces[1].bpf", "99999"),
    ({"meter": {"interfaces": ["eth0", "eth0"]}}, "meter.interfaces[1].name", "twice"),
    ({"meter": {"interfaces": [{"name": "eth0", "filter": "udp"}]}},
     "meter.interfaces[0].filter", "unknown key"),
    ({"meter": {"timeout": 5}}, "meter.timeout", "unknown key"),
    ({"sched_priority": 100}, "sched_priority", "from 0 to 99"),
    ({"sched_priority": "high"}, "sched_priority", "an integer"),
])
def test_each_error_names_its_key(data, key, words):
    with pytest.raises(ConfigError) as e:
        config.parse(data, "/etc/x.yaml")
    assert [k for k, _ in e.value.problems] == [key]
    assert f"/etc/x.yaml: {key}: " in str(e.value)
    assert words in str(e.value)


def test_all_errors_are_listed_at_once():
    with pytest.raises(ConfigError) as e:
        config.parse({"export": {"engine_id": -1}, "conntrack": {"ttl": 0}, "bogus": 1})
    assert sorted(k for k, _ in e.value.problems) == ["bogus", "conntrack.ttl", "export.engine_id"]


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("export:\n  collectors: [\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(p) in str(e.value) and "line" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.yaml")


def test_bad_config_stops_start_with_status_2_naming_file_and_key(tmp_path):
    p = tmp_path / "nfflowd.yaml"
    p.write_text("export:\n  collectors:\n    - {host: 127.0.0.1, port: 0}\n")
    r = subprocess.run([sys.executable, "-m", "nfflowd.cli", "-f", "-c", str(p), "start"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2
    assert f"{p}: export.collectors[0].port: expected an integer from 1 to 65535" in r.stderr


def test_check_accepts_the_sample(capsys):
    # the kernel and daemon parts of check are tested in test_lifecycle.py;
    # here only that the config part passes (2 would be a bad config)
    assert main(["-c", str(SAMPLE), "check"]) != 2
    assert f"configuration: {SAMPLE}: valid" in capsys.readouterr().out


def test_check_lists_every_config_error_with_status_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("export:\n  engine_id: 999\nconntrack:\n  ttl: 0\n")
    assert main(["-c", str(p), "check"]) == 2
    out = capsys.readouterr().out
    assert f"{p}: export.engine_id: " in out and f"{p}: conntrack.ttl: " in out


def test_help_and_version(capsys):
    assert main(["help"]) == 0
    assert "start" in capsys.readouterr().out
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("nfflowd ")


# -- bad input: a clear error and status 2, never a traceback or a hang (#15 item 16) --

def cli(*args, timeout=30, env=None, **kw):
    """The command line in a subprocess (a hang is a failure, not a stuck test); its
    address space is capped so that an unbounded read fails fast instead of eating
    the machine's memory."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    return subprocess.run([sys.executable, "-m", "nfflowd.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          preexec_fn=cap, env=env, **kw)


def test_a_config_not_in_utf8_is_refused_naming_the_byte(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("export:\n  source: café\n".encode("latin-1"))
    for cmd in ("check", "start"):
        r = cli("-f", "-c", p, cmd)
        assert r.returncode == 2, r
        assert f"{p}: not UTF-8: byte 0xe9 at offset 21 (line 2): invalid continuation " \
            "byte" in r.stdout + r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory"])
def test_only_a_regular_file_is_read(tmp_path, kind):
    # a FIFO would block the open (no writer comes), /dev/zero never ends
    if kind == "fifo":
        path, what = tmp_path / "fifo.yaml", "a FIFO (named pipe)"
        os.mkfifo(path)
    elif kind == "directory":
        path, what = tmp_path, "a directory"
    else:
        path, what = Path(kind), "a character device"
    r = cli("-c", path, "check", timeout=20)
    assert r.returncode == 2, r
    assert f"{path}: is {what}, not a regular file" in r.stdout
    assert "Traceback" not in r.stderr


def test_a_config_file_is_read_up_to_a_mebibyte(tmp_path):
    p = tmp_path / "huge.yaml"
    with open(p, "wb") as f:
        f.truncate(config.MAX_BYTES + 1)            # sparse: no disk used
    with pytest.raises(ConfigError, match=f"larger than {config.MAX_BYTES} bytes"):
        config.load(p)
    p.write_text("# " + "x" * (config.MAX_BYTES - 3) + "\n")      # exactly the limit
    assert config.load(p) == config.parse({}, str(p))


def test_a_key_given_twice_is_refused_with_its_path(tmp_path):
    p = tmp_path / "twice.yaml"
    p.write_text("export:\n"
                 "  engine_id: 1\n"
                 "  collectors:\n"
                 "    - {host: 127.0.0.1, port: 2055}\n"
                 "    - {host: 127.0.0.1, port: 2056, port: 2057}\n"
                 "  engine_id: 2\n"
                 "syslog: {enabled: true}\n"
                 "syslog: {enabled: false}\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert e.value.problems == [
        ("export.collectors[1].port", "given twice on line 5; keep one"),
        ("export.engine_id", "given twice (lines 2 and 6); keep one"),
        ("syslog", "given twice (lines 7 and 8); keep one")]
    r = cli("-c", p, "check")
    assert r.returncode == 2 and f"{p}: export.engine_id: given twice" in r.stdout
    # a merge key (<<) may be overridden: that is no duplicate
    p.write_text("export:\n  collectors:\n"
                 "    - &v9 {host: 127.0.0.1, port: 9995, version: 9}\n"
                 "    - <<: *v9\n      port: 9996\n")
    assert [c.name for c in config.load(p).export.collectors] == \
        ["127.0.0.1:9995/v9", "127.0.0.1:9996/v9"]


def test_yaml_nested_too_deeply_is_an_error_not_a_crash(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("export: " + "[" * 100000)
    r = cli("-c", p, "check")
    assert r.returncode == 2, r
    assert f"{p}: not valid YAML: nested too deeply" in r.stdout


def test_the_daemon_refuses_a_config_that_records_nowhere(tmp_path, capsys):
    """collectors: [] with the syslog mirror on is a syslog-only daemon; with it
    off too the daemon would lose every connection: check, start, restart
    and reload refuse it.  The meter may still use it (it counts, or prints)."""
    p = tmp_path / "nowhere.yaml"
    p.write_text(f"export:\n  collectors: []\nsyslog:\n  enabled: false\n"
                 f"pidfile: {tmp_path}/nfflowd.pid\n")
    words = (f"{p}: export.collectors: empty, and syslog.enabled is false: the daemon would "
             "record nothing")
    assert main(["-c", str(p), "check"]) == 2
    assert words in capsys.readouterr().out
    r = cli("-f", "-c", p, "start", timeout=20)
    assert r.returncode == 2 and words in r.stderr, r
    assert not (tmp_path / "nfflowd.pid").exists()
    # the meter: counted only, and it says so; with --print there is an output
    http = ROOT / "tests" / "data" / "pcaps" / "http.pcap"
    assert main(["-c", str(p), "meter", "-r", str(http)]) == 0
    assert "the flows are counted, not recorded" in capsys.readouterr().err
    assert main(["-c", str(p), "meter", "-r", str(http), "--print"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 17 and "counted, not recorded" not in err
    # a syslog-only daemon is fine
    p.write_text("export:\n  collectors: []\nsyslog:\n  enabled: true\n")
    assert main(["-c", str(p), "check"]) != 2
    assert f"configuration: {p}: valid" in capsys.readouterr().out


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_check_into_a_closed_pipe_stops_quietly(unbuffered):
    """nfflowd check | head -1, head gone before check writes: no
    BrokenPipeError traceback (with stdout buffered or not)."""
    r, w = os.pipe()
    os.close(r)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    try:
        p = subprocess.run([sys.executable, "-m", "nfflowd.cli", "-c", str(SAMPLE), "check"],
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=30, cwd=ROOT,
                           env=env)
    finally:
        os.close(w)
    assert p.returncode == 1 and p.stderr == ""


SMALLEST = {"export": {"max_datagram": 512, "collectors": [
    {"host": "127.0.0.1", "port": 2055, "version": 5},
    {"host": "127.0.0.1", "port": 2056, "version": 9},
    {"host": "127.0.0.1", "port": 4739, "version": 10},
    {"host": "127.0.0.1", "port": 4740, "version": 10, "biflow": True}]}}


def test_a_datagram_too_small_for_a_collectors_templates_is_a_config_error():
    """config only parses; the pipeline says whether its encoders fit, with
    the config error every loader reports.  Every max_datagram the config
    accepts (512 and up) holds each collector's largest template and record
    (the templates go in as many datagrams as they need): only a value made
    by hand is too small."""
    import dataclasses
    from nfflowd.app.pipeline import check_encoders
    cfg = config.parse(SMALLEST, "x.yaml")
    check_encoders(cfg)
    with pytest.raises(ConfigError, match="max_datagram"):
        config.parse({"export": {**SMALLEST["export"], "max_datagram": 511}}, "x.yaml")
    # between what IPFIX (145 with vlanId) and biflow (178) need
    small = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, max_datagram=160))
    with pytest.raises(ConfigError) as e:
        check_encoders(small)
    assert str(e.value).startswith("x.yaml: export.max_datagram: 160 is too small for "
                                   "export.collectors[3] (127.0.0.1:4740/v10, biflow): ")
    assert [p[0] for p in e.value.problems] == ["export.max_datagram"]


def yaml_dump(data) -> str:
    import yaml
    return yaml.safe_dump(data)


def test_start_refusing_a_config_leaves_the_callers_signals_as_they_were(tmp_path):
    """start blocks the daemon's control signals before it reads the config;
    refusing the config must unblock them, or the caller (and every child it
    starts, such as a collector told to stop with SIGTERM) stays deaf."""
    import signal
    from nfflowd import cli
    bad = tmp_path / "bad.yaml"
    bad.write_text("export: [\n")
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert cli.main(["-c", str(bad), "start"]) == 2
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
