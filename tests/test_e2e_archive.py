"""The NAT trace archive on a real NAT (network namespaces, root): nfflowd
archives the connections made across it, and `nfflowd trace` names each
one's private address and port from its public ones (TCP, UDP and ICMP over
IPv4 and NAT66, and a DNAT port forward); a time outside a connection finds
nothing; a connection still open is reported open; after kill -9 and a
restart everything is still found; the syslog lines of the same run,
imported, give the same answers.  The same with the archive in a
ClickHouse server run in the firewall's namespace, on its loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.natlab import (FW_WAN4, FW_WAN6, LAN4, LAN6, PEER, WAN4, WAN6, NatLab,
                          skip_reason, stop, wait_for)
from tests.test_clickhouse import CONFIG as CH_CONFIG
from tests.test_clickhouse import SERVER as CH_SERVER
from tests.test_clickhouse import USERS as CH_USERS
from tests.test_e2e_nat import SyslogCatcher, start_nfflowd

pytestmark = [pytest.mark.root, pytest.mark.skipif(skip_reason() is not None,
                                                   reason=skip_reason() or "")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DNAT_PORT = 8081
DNAT_RULES = f"""
table ip nfflowd_test_dnat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "fw-wan" tcp dport {DNAT_PORT} dnat to {LAN4}:{DNAT_PORT}
    }}
}}
"""


class Where:
    """The namespace the commands run in (a ClickHouse archive listens on the
    firewall's loopback) and the audit log they append to."""
    prefix: list = []
    audit = "/dev/null"


def nfflowd(*args, timeout=60):
    return subprocess.run([*Where.prefix, sys.executable, "-m", "nfflowd.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def trace(archive, target, at, *extra):
    r = nfflowd("trace", target, "--at", at, "--archive", archive, "--format", "json",
                "--audit-log", Where.audit, *extra)
    assert "Traceback" not in r.stderr, r.stderr
    rows = json.loads(r.stdout) if r.returncode == 0 else []
    return r.returncode, rows, r.stderr


def write_config(tmp_path, syslog_path, archive):
    where = (f"backend: clickhouse\n  url: {archive}" if str(archive).startswith("clickhouse:")
             else f"path: {archive}")
    cfg = tmp_path / "nfflowd.yaml"
    cfg.write_text(f"""
export:
  source: 203.0.113.1
  collectors: []
  flush_interval: 0.2
syslog:
  enabled: true
  address: {syslog_path}
archive:
  enabled: true
  {where}
  flush_interval: 0.2
  firewall: fw-test
conntrack: {{poll_interval: 1}}
pidfile: {tmp_path}/nfflowd.pid
""")
    return cfg


def public_of(lab, proto, private_port):
    """The translated port (ICMP: the query id) of a connection made from LAN."""
    for e in lab.conntrack_list():
        o, r = e.orig, e.reply
        if e.proto != proto or o["src"] not in (LAN4, LAN6):
            continue
        if proto in (1, 58):
            return r.get("icmp_id", o.get("icmp_id"))
        if o.get("sport") == private_port:
            return r["dport"]
    raise AssertionError(f"no conntrack entry for {proto} port {private_port}")


def ask(archive, c, at=None):
    pub, port = c["public"]
    target = f"[{pub}]:{port}" if ":" in pub else f"{pub}:{port}"
    return trace(archive, target, c["at"] if at is None else at, "--proto", c["proto"])


def start_clickhouse(lab, d) -> str:
    """clickhouse-server in the firewall's namespace; its URL there."""
    port = 19000
    d.mkdir()
    (d / "config.xml").write_text(CH_CONFIG.format(port=port, d=d))
    (d / "users.xml").write_text(CH_USERS)
    cmd = [CH_SERVER, "--config-file", d / "config.xml"]
    if CH_SERVER.endswith("/clickhouse"):
        cmd.insert(1, "server")
    lab.spawn(lab.fw, *cmd, cwd=d)
    probe = ("from clickhouse_driver import Client; "
             f"Client('127.0.0.1', port={port}, connect_timeout=1).execute('SELECT 1')")
    assert wait_for(lambda: lab.ns(lab.fw, sys.executable, "-c", probe, check=False)
                    .returncode == 0, timeout=60), "clickhouse-server did not start"
    return f"clickhouse://127.0.0.1:{port}/default"


@pytest.mark.parametrize("backend", ["embedded", "clickhouse"])
def test_trace_names_the_private_host(tmp_path, backend):
    if backend == "clickhouse" and CH_SERVER is None:
        pytest.skip("needs clickhouse-server (Debian)")
    with NatLab() as lab:
        Where.prefix = ["ip", "netns", "exec", lab.fw]
        Where.audit = str(tmp_path / "audit.log")
        if backend == "clickhouse":
            archive = start_clickhouse(lab, tmp_path / "ch")
            imported = archive + "?table=imported"
        else:
            archive, imported = tmp_path / "archive", tmp_path / "imported"
        lab.ns(lab.fw, "nft", "-f", "-", input=DNAT_RULES)
        lab.start_servers(lifetime=150)
        inside = lab.spawn(lab.lan, sys.executable, PEER, "serve", LAN4, "--port", DNAT_PORT,
                           "--lifetime", 150)
        assert "READY" in inside.stdout.readline()
        catcher = SyslogCatcher(tmp_path / "log.sock")
        cfg = write_config(tmp_path, tmp_path / "log.sock", archive)
        p, log = start_nfflowd(lab, cfg)

        conns = []

        def made(name, proto, fn, public_addr, private_addr, icmp=False):
            t0 = time.time()
            if icmp:
                fn()
                private_port = None
            else:
                _addr, private_port = fn()
            t1 = time.time()
            num = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}[proto]
            conns.append({"name": name, "proto": proto, "num": num, "t0": t0, "t1": t1,
                          "at": round((t0 + t1) / 2, 3), "private": (private_addr, private_port),
                          "public_addr": public_addr})

        made("tcp4", "tcp", lambda: lab.client("tcp", WAN4, 8080, 1500), FW_WAN4, LAN4)
        made("udp4", "udp", lambda: lab.client("udp", WAN4, 8080, 200, 3), FW_WAN4, LAN4)
        made("icmp4", "icmp", lambda: lab.ping(WAN4, 3), FW_WAN4, LAN4, icmp=True)
        made("tcp6", "tcp", lambda: lab.client("tcp", WAN6, 8080, 900), FW_WAN6, LAN6)
        made("udp6", "udp", lambda: lab.client("udp", WAN6, 8080, 120, 2), FW_WAN6, LAN6)
        t0 = time.time()
        lab.ns(lab.wan, sys.executable, PEER, "tcp", FW_WAN4, DNAT_PORT, 700, timeout=15)
        t1 = time.time()
        for c in conns:
            port = c["private"][1] if c["name"] != "icmp4" else None
            c["public"] = (c["public_addr"], public_of(lab, c["num"], port))
        dnat = {"name": "dnat", "proto": "tcp", "num": 6, "t0": t0, "t1": t1,
                "at": round((t0 + t1) / 2, 3), "public": (FW_WAN4, DNAT_PORT)}
        lab.flush()                         # every connection ends now
        ended = time.time()
        # one still open
        holder = lab.spawn(lab.lan, sys.executable, PEER, "hold", WAN4, 8080, 120)
        hold_port = int(holder.stdout.readline().split()[2])
        held = {"name": "held", "proto": "tcp", "num": 6, "at": time.time() + 1,
                "private": (LAN4, hold_port), "public": (FW_WAN4, public_of(lab, 6, hold_port))}

        assert wait_for(lambda: ask(archive, held)[0] == 0, timeout=20), log
        assert wait_for(lambda: all(ask(archive, c)[1] and ask(archive, c)[1][0]["state"]
                                    != "open" for c in conns + [dnat]), timeout=20)

        def check_all():
            for c in conns:
                status, rows, err = ask(archive, c)
                assert status == 0, (c["name"], err)
                mine = [r for r in rows if r["firewall"] == "fw-test"]
                assert len(mine) == 1, (c["name"], rows)
                r = mine[0]
                assert r["src"] == c["private"][0], (c["name"], r)
                if c["private"][1] is not None:
                    assert r["sport"] == c["private"][1], (c["name"], r)
                assert r["end"] is not None and r["state"] != "open", (c["name"], r)
                # before it began, nothing; long after it ended, nothing
                assert ask(archive, c, at=round(c["t0"] - 30, 3))[0] == 1, c["name"]
                assert ask(archive, c, at=round(ended + 30, 3))[0] == 1, c["name"]
            status, rows, _ = ask(archive, dnat)
            assert status == 0 and rows[0]["xdst"] == LAN4 and rows[0]["xdport"] == DNAT_PORT
            assert rows[0]["src"] == WAN4
            status, rows, _ = ask(archive, held)
            assert status == 0 and rows[0]["state"] == "open" and rows[0]["end"] is None
            assert rows[0]["sport"] == hold_port

        check_all()
        # kill -9, restart: all still there; the start-up dump finds the
        # held connection again, and its end completes it
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        os.unlink(tmp_path / "nfflowd.pid") if (tmp_path / "nfflowd.pid").exists() else None
        p, log = start_nfflowd(lab, cfg)
        check_all()
        lab.ns(lab.fw, "conntrack", "-D", "-p", "tcp", "--orig-port-src", str(hold_port),
               check=False)
        assert wait_for(lambda: ask(archive, held)[1] and ask(archive, held)[1][0]["state"]
                        != "open", timeout=20), log
        stop(p)
        stop(holder, signal.SIGKILL)

        # the syslog lines of the run, imported, give the same answers (not
        # ICMP: flow-tools records carry type and code, not the query id)
        lines = tmp_path / "flows.log"
        lines.write_text("\n".join(catcher.collect()) + "\n")
        r = nfflowd("archive", "import", lines, "--archive", imported, "--firewall", "fw-test",
                    timeout=120)
        assert r.returncode == 0, r.stderr
        for c in conns + [dnat]:
            if c["proto"].startswith("icmp"):
                continue
            status, rows, err = ask(imported, c)
            assert status == 0, (c["name"], err, r.stderr)
            if "private" in c:
                assert (rows[0]["src"], rows[0]["sport"]) == c["private"], (c["name"], rows)
            assert ask(imported, c, at=round(c["t0"] - 30, 3))[0] == 1
