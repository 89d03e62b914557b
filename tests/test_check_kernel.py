"""``nfflowd check``'s kernel facts, each with and without its condition, in
a network namespace the test makes (real nft rulesets, the real kernel):
the ``ct event set new,destroy`` rules it recommends where events are off or
left at 2 (and recognises when present), nft flowtables without the counter
flag, and the per-event timestamp (CTA_TIMESTAMP_EVENT) the decoder reads.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from natlab import run, skip_reason
from nfflowd import conntrack as ct
from nfflowd.app.check import EVENT_RULES, event_rules
from nfflowd.io.kernelstate import FLOWTABLE_COUNTER, Flowtable, parse_flowtables

ROOT = Path(__file__).resolve().parent.parent
EXIT_NOT_RUNNING, EXIT_PREREQUISITES = 3, 4
_reason = skip_reason()
needs_root = pytest.mark.skipif(_reason is not None, reason=_reason or "")


class Ns:
    """One network namespace with conntrack on (a ct rule), loopback up,
    acct and timestamps on; every nft table and sysctl set in it goes with it."""

    def __init__(self):
        self.name = f"nff{os.getpid()}-chk"
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        run("ip", "netns", "add", self.name)
        self.sh("ip", "link", "set", "lo", "up")
        # a rule with a ct expression has conntrack track the namespace's packets
        self.nft("table inet nfflowd_test_ct {\n chain out {\n"
                 "  type filter hook output priority filter; policy accept;\n"
                 "  ct state invalid counter\n }\n}\n")
        self.sysctl(acct=1, timestamp=1)

    def sh(self, *cmd, **kw):
        return run("ip", "netns", "exec", self.name, *cmd, **kw)

    def nft(self, text):
        return self.sh("nft", "-f", "-", input=text)

    def sysctl(self, **values):
        for k, v in values.items():
            self.sh("sysctl", "-qw", f"net.netfilter.nf_conntrack_{k}={v}")

    def check(self, tmp_path) -> subprocess.CompletedProcess:
        cfg = tmp_path / "check.yaml"
        cfg.write_text("export:\n  collectors:\n    - {host: 127.0.0.1, port: 20999, "
                       f"version: 5}}\npidfile: {tmp_path}/nfflowd.pid\n")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-m",
                               "nfflowd.cli", "-c", str(cfg), "check"], capture_output=True,
                              text=True, timeout=60, cwd=ROOT, env=env)

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def ns():
    n = Ns()
    try:
        yield n
    finally:
        n.close()


def kernel_lines(r) -> str:
    return "\n".join(line for line in r.stdout.splitlines() if not line.startswith("daemon:"))


# -- conntrack events and the ct event rules ---------------------------------------

@pytest.mark.root
@needs_root
@pytest.mark.parametrize("events", [0, 2])
def test_events_off_or_2_without_rules_recommend_them(ns, tmp_path, events):
    ns.sysctl(events=events)
    r = ns.check(tmp_path)
    out = kernel_lines(r)
    assert EVENT_RULES in out, r.stdout
    if events == 0:
        assert "conntrack events are off (nf_conntrack_events=0)" in out
        assert r.returncode == EXIT_PREREQUISITES, r.stdout
    else:
        assert "nf_conntrack_events=2 (ok;" in out and "advice:" in out
        assert r.returncode == EXIT_NOT_RUNNING, r.stdout


@pytest.mark.root
@needs_root
@pytest.mark.parametrize("events", [0, 2])
def test_the_rules_present_are_recognised_and_no_advice_given(ns, tmp_path, events):
    ns.sysctl(events=events)
    ns.nft(EVENT_RULES)
    r = ns.check(tmp_path)
    out = kernel_lines(r)
    assert r.returncode == EXIT_NOT_RUNNING, r.stdout
    assert ("kernel: nft rules set conntrack events new,destroy: inet nfflowd_events "
            "prerouting; inet nfflowd_events output\n") in out + "\n"
    assert f"nf_conntrack_events={events} (ok: the nft rules above ask for the events)" in out
    assert "advice" not in out and "table inet nfflowd_events {" not in out


@pytest.mark.root
@needs_root
def test_events_1_needs_no_rules(ns, tmp_path):
    ns.sysctl(events=1)
    r = ns.check(tmp_path)
    assert r.returncode == EXIT_NOT_RUNNING, r.stdout
    assert "kernel: nf_conntrack_events=1 (ok)" in r.stdout and "advice" not in r.stdout


@pytest.mark.root
@needs_root
def test_rules_that_miss_a_path_or_do_nothing_or_drop_destroy_are_said(ns, tmp_path):
    ns.sysctl(events=0)
    ns.nft("""table ip part {
    chain pre {
        type filter hook prerouting priority filter; policy accept;
        ct event set new,destroy
    }
    chain early {
        type filter hook output priority raw; policy accept;
        ct event set new,destroy
    }
    chain nodestroy {
        type filter hook output priority filter; policy accept;
        ct event set new
    }
}
""")
    r = ns.check(tmp_path)
    out = kernel_lines(r)
    assert r.returncode == EXIT_PREREQUISITES
    assert ("nft rules set conntrack events new,destroy: ip part pre (not on: IPv4 made here, "
            "IPv6 forwarded, IPv6 delivered here, IPv6 made here)") in out
    assert "ip part early sets ct events at priority -300, before conntrack" in out
    assert "ip part nodestroy sets ct events new without destroy" in out
    assert "no nft rule asks for them on IPv4 made here, IPv6 forwarded" in out


@pytest.mark.root
@needs_root
def test_the_recommended_rules_bring_new_and_destroy_events_with_events_off(ns):
    """What check recommends does what it says: with nf_conntrack_events=0
    a connection sends NEW and DESTROY (and no UPDATE) events, without the
    rules none."""
    ns.sysctl(events=0)
    assert events_of_a_connection(ns) == []
    ns.nft(EVENT_RULES)
    assert [e.kind for e in events_of_a_connection(ns)] == [ct.EV_NEW, ct.EV_DESTROY]


PROBE = r"""
import select, socket, subprocess, sys, time
from nfflowd.io.netlink import ConntrackSocket
from nfflowd import conntrack as ct
s = ConntrackSocket(rcvbuf=1 << 20, groups=(1, 2, 3), multi=False)
before = time.time_ns()
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(("127.0.0.1", 0))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.sendto(b"x", srv.getsockname())
srv.recvfrom(10)
srv.sendto(b"y", c.getsockname())
c.recv(10)
subprocess.run(["conntrack", "-F"], capture_output=True, timeout=10)
after = time.time_ns()
evs = []
end = time.monotonic() + 2
while time.monotonic() < end:
    if select.select([s], [], [], 0.2)[0]:
        evs.extend(s.recv().decoded(ct.decode_datagrams).events)
    elif evs and evs[-1].kind == ct.EV_DESTROY:
        break
for e in evs:
    print(e.kind, e.event_ns, e.stop_ns, before, after)
"""


def events_of_a_connection(ns) -> list:
    """The conntrack events (kind, event_ns, stop_ns, before, after) of one
    UDP exchange over loopback in ``ns``, flushed at the end."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", PROBE],
                       capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.split("\n"):
        if line.strip():
            kind, event_ns, stop_ns, before, after = map(int, line.split())
            out.append(Ev(kind, event_ns, stop_ns, before, after))
    return out


class Ev(tuple):
    def __new__(cls, *v):
        return tuple.__new__(cls, v)

    kind = property(lambda s: s[0])
    event_ns = property(lambda s: s[1])
    stop_ns = property(lambda s: s[2])
    before = property(lambda s: s[3])
    after = property(lambda s: s[4])


@pytest.mark.root
@needs_root
def test_event_rules_of_a_ruleset_nft_printed(ns):
    """event_rules over what the real nft prints for an inet and an ip6
    table: the paths covered, per IP version."""
    ns.nft("""table inet a {
    chain out {
        type filter hook output priority filter; policy accept;
        ct event set destroy,new
    }
}
table ip6 b {
    chain fw {
        type filter hook forward priority 10; policy accept;
        ct state new ct event set new,related,destroy
    }
}
""")
    covered, where, problems = event_rules(ns_ruleset(ns))
    assert covered == {(4, "made here"), (6, "made here"), (6, "forwarded")}
    assert where == ["inet a out", "ip6 b fw"] and problems == []


def ns_ruleset(ns) -> list:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c",
                        "import json; from nfflowd.io.kernelstate import nft_ruleset; "
                        "print(json.dumps(nft_ruleset()))"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# -- flowtables -------------------------------------------------------------------------

def flowtable_refusal(ns) -> str | None:
    """Why this kernel takes no flowtable, or None (a veth pair to hook)."""
    ns.sh("ip", "link", "add", "ft0", "type", "veth", "peer", "name", "ft1")
    r = ns.sh("nft", "-f", "-", check=False, input=(
        "table inet probe {\n flowtable f {\n  hook ingress priority 0; devices = { ft0 };\n"
        " }\n}\n"))
    if r.returncode != 0:
        return f"the kernel refuses nft flowtables: {r.stderr.strip()}"
    ns.sh("nft", "delete", "table", "inet", "probe")
    return None


@pytest.mark.root
@needs_root
def test_a_flowtable_without_counter_is_warned_of_and_one_with_it_is_not(ns, tmp_path):
    why = flowtable_refusal(ns)
    if why:
        print(why)
        pytest.skip(why)
    ns.nft("""table inet fw {
    flowtable plain {
        hook ingress priority 0; devices = { ft0 };
    }
    flowtable counted {
        hook ingress priority 0; devices = { ft1 }; counter
    }
}
""")
    out = kernel_lines(ns.check(tmp_path))
    assert ("kernel: warning: nft flowtable inet fw plain has no counter flag: the packets "
            "of connections it offloads are not counted") in out
    assert "kernel: nft flowtable inet fw counted counts what it offloads (ok)" in out
    assert "warning: nft flowtable inet fw counted" not in out


@pytest.mark.root
@needs_root
def test_no_flowtable_no_warning(ns, tmp_path):
    out = kernel_lines(ns.check(tmp_path))
    assert "nft flowtable" not in out and "could not check: nftables flowtables" not in out


def nl(typ, flags, payload, family=1):
    body = struct.pack("BBH", family, 0, 0) + payload
    return struct.pack("=IHHII", 16 + len(body), typ, flags, 1, 0) + body


def nla(typ, payload):
    return struct.pack("=HH", 4 + len(payload), typ) + payload + bytes(-len(payload) % 4)


def test_flowtable_messages_are_read_with_their_flags():
    """The NFT_MSG_NEWFLOWTABLE messages of a dump, as the kernel builds
    them (nf_tables_fill_flowtable_info: table, name, hook, use, handle,
    flags be32), then NLMSG_DONE; an error is reported, not read."""
    new = (10 << 8) | 22

    def ft(table, name, flags, family=1):
        attrs = (nla(1, table + b"\0") + nla(2, name + b"\0")
                 + nla(3 | 0x8000, nla(1, struct.pack(">I", 0)))
                 + nla(4, struct.pack(">I", 1)) + nla(5, struct.pack(">Q", 7)))
        if flags is not None:
            attrs += nla(7, struct.pack(">I", flags))
        return nl(new, 2, attrs, family)
    buf = (ft(b"fw", b"plain", 0) + ft(b"fw", b"hw", 1, family=2)
           + ft(b"t6", b"counted", FLOWTABLE_COUNTER | 1, family=10) + ft(b"x", b"old", None)
           + struct.pack("=IHHII", 20, 3, 2, 1, 0) + bytes(4))
    got, done, errors = parse_flowtables(buf)
    assert got == [Flowtable("inet", "fw", "plain", 0), Flowtable("ip", "fw", "hw", 1),
                   Flowtable("ip6", "t6", "counted", 3), Flowtable("inet", "x", "old", 0)]
    assert done and errors == []
    err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    assert parse_flowtables(err) == ([], False, [1])
    assert parse_flowtables(buf[:30]) == ([], False, [])      # cut short: nothing read


# -- the per-event timestamp ---------------------------------------------------------------

@pytest.mark.root
@needs_root
def test_event_time_check_says_what_the_kernel_does(ns, tmp_path):
    """check's answer agrees with a real connection's events: stamped (with
    nf_conntrack_timestamp=1) or not; with timestamps off, neither sent nor
    said to be."""
    evs = events_of_a_connection(ns)
    assert [e.kind for e in evs][:1] == [ct.EV_NEW] and evs[-1].kind == ct.EV_DESTROY
    sends = all(e.event_ns for e in evs)
    out = kernel_lines(ns.check(tmp_path))
    if sends:
        assert "each conntrack event carries its time (CTA_TIMESTAMP_EVENT)" in out
    else:
        assert "kernel: no per-event timestamp (CTA_TIMESTAMP_EVENT" in out
    ns.sysctl(timestamp=0)
    assert not any(e.event_ns for e in events_of_a_connection(ns))
    out = kernel_lines(ns.check(tmp_path))
    if sends:
        assert "can stamp each conntrack event (CTA_TIMESTAMP_EVENT), but does so only " \
               "with nf_conntrack_timestamp=1, off here" in out
    else:
        assert "kernel: no per-event timestamp" in out


@pytest.mark.root
@needs_root
def test_the_kernels_event_times_are_decoded(ns):
    """Where the kernel sends CTA_TIMESTAMP_EVENT: a NEW's time lies within
    the exchange, a DESTROY's at its stop time (both read from the real
    kernel's messages)."""
    evs = events_of_a_connection(ns)
    if not all(e.event_ns for e in evs):
        why = f"this kernel ({os.uname().release}) sends no CTA_TIMESTAMP_EVENT (Linux 6.14 on)"
        print(why)
        pytest.skip(why)
    new = [e for e in evs if e.kind == ct.EV_NEW]
    end = [e for e in evs if e.kind == ct.EV_DESTROY]
    assert len(new) == 1 and len(end) == 1
    assert new[0].before <= new[0].event_ns <= new[0].after
    assert new[0].event_ns <= end[0].event_ns <= end[0].after
    assert abs(end[0].event_ns - end[0].stop_ns) < 1_000_000_000

