"""IPFIX over TCP, end to end: nfflowd in fw exports to a TCP collector that
is away at first, comes up, and is restarted mid-run; what it received on
each connection is read by libfixbuf's ipfixDump (templates first on every
connection, every record there, no error)."""

from __future__ import annotations

import re
import shutil
import sys
import textwrap

import pytest

from natlab import WAN4, NatLab, skip_reason, stop, wait_for
from test_e2e_nat import SyslogCatcher, start_nfflowd

_reason = skip_reason() or (None if shutil.which("ipfixDump")
                            else "needs ipfixDump (Debian: libfixbuf-tools)")
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

RECEIVER = textwrap.dedent("""
    import socket, sys, time
    out, port, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port)); srv.listen(1); srv.settimeout(lifetime)
    print("READY", flush=True)
    conn, _ = srv.accept(); conn.settimeout(0.5)
    end = time.monotonic() + lifetime
    with open(out, "wb") as f:
        while time.monotonic() < end:
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            f.write(data); f.flush()
""")


def receiver(lab, path, port, lifetime=60):
    p = lab.spawn(lab.fw, sys.executable, "-c", RECEIVER, path, port, lifetime)
    assert "READY" in p.stdout.readline()
    return p


def ipfix_dump(path) -> tuple[str, str]:
    import subprocess
    r = subprocess.run(["ipfixDump", "--in", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout, r.stderr


def counts(dump: str) -> dict:
    """Template records, data records (flows and NAT events) and options
    records (interface names, sampling, statistics: template ids from 512,
    nfflowd.options) in an ipfixDump listing."""
    tids = [int(t) for t in re.findall(r"^--- data record \d+ ---\nheader:\n\s*count:\s*\d+"
                                       r"\s+tid:\s+(\d+)", dump, re.M)]
    assert len(tids) == len(re.findall(r"^--- data record \d+ ---", dump, re.M)), dump
    return {"templates": len(re.findall(r"^--- template record ---", dump, re.M)),
            "data": sum(t < 512 for t in tids), "options": sum(t >= 512 for t in tids)}


def data_records(path) -> int:
    """Data records received so far (0 while nothing complete has arrived)."""
    import subprocess
    if not path.exists():
        return 0
    r = subprocess.run(["ipfixDump", "--in", str(path)], capture_output=True, text=True,
                       timeout=30)
    return counts(r.stdout)["data"]


@pytest.fixture
def lab():
    with NatLab() as lab:
        lab.start_servers(lifetime=120)
        yield lab


def test_ipfix_over_tcp_reconnects_with_templates_first(lab, tmp_path):
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = tmp_path / "nfflowd.yaml"
    cfg.write_text(f"""
export:
  source: 203.0.113.1
  collectors:
    - {{host: 127.0.0.1, port: 24739, version: 10, transport: tcp}}
syslog: {{enabled: true, address: {catcher.path}}}
conntrack: {{poll_interval: 1}}
pidfile: {tmp_path}/nfflowd.pid
""")
    # the collector is away when nfflowd starts
    daemon, log = start_nfflowd(lab, cfg)
    try:
        first = receiver(lab, tmp_path / "first.ipfix", 24739)
        lab.client("tcp", WAN4, 8080, 500)
        lab.client("udp", WAN4, 8080, 100, 2)
        lab.flush()
        assert wait_for(lambda: data_records(tmp_path / "first.ipfix") >= 8, timeout=20)
        stop(first)                               # the collector goes away ...
        second = receiver(lab, tmp_path / "second.ipfix", 24739)   # ... and comes back
        lab.client("tcp", WAN4, 8080, 700)
        lab.flush()
        assert wait_for(lambda: data_records(tmp_path / "second.ipfix") >= 4, timeout=30)
    finally:
        stop(daemon)
    daemon.log_reader.join(5)
    text = "".join(log)
    assert daemon.returncode == 0, text
    stop(second)

    one, err1 = ipfix_dump(tmp_path / "first.ipfix")
    two, err2 = ipfix_dump(tmp_path / "second.ipfix")
    assert "warn" not in (err1 + err2).lower(), err1 + err2
    c1, c2 = counts(one), counts(two)
    # each connection starts with the templates; two connections then one:
    # two flow records and NAT create + delete events per connection
    assert c1["templates"] >= 2 and c2["templates"] >= 2, (one, two)
    assert c1["data"] == 2 * 2 + 2 * 2, one
    assert c2["data"] == 2 + 2, two
    # the options (sampling, statistics, ...) on each connection, after
    # their templates
    assert c1["options"] >= 2 and c2["options"] >= 2, (one, two)
    assert two.index("options template record") < two.index("tid:   513 (0x0201) \n")
    assert one.index("template record") < one.index("data record")
    assert two.index("template record") < two.index("data record")
    assert re.search(r"\.connects=2\b", text), text
