"""io/rtnl against the kernel, in a network namespace the test makes: the
dump and the events parsed into the lookup's messages (links with their
alias, addresses, routes of both families, multipath, replace, a link
going down), and an overrun said as RtnlOverrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from natlab import run, skip_reason

_reason = skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

ROOT = Path(__file__).resolve().parent.parent

# run inside the namespace: the dump, then changes read as events; prints
# JSON lines of what the lookup answers at each step
SCRIPT = r"""
import ipaddress, json, select, subprocess, sys, time
from nfflowd.interfaces import Interfaces
from nfflowd.io import rtnl

def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)

def drain(sock, ifs, quiet=0.3, limit=5.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if not select.select([sock], [], [], quiet)[0]:
            return
        ifs.update(sock.read())

def answers(ifs, *addrs):
    return {a: ifs.lookup(ipaddress.ip_address(a).packed) for a in addrs}

ADDRS = ("198.51.100.9", "198.51.100.130", "203.0.113.7", "2001:db8:5::1", "2001:db8:1::1",
         "192.0.2.1")
sock = rtnl.RtnlSocket()
ifs = Interfaces()
ifs.update(rtnl.dump())
print(json.dumps({"step": "start", "links": ifs.links, "answers": answers(ifs, *ADDRS)}))
sh("ip link add nfr-a type veth peer name nfr-b && ip link set nfr-a up && ip link set nfr-b up"
   " && ip link set nfr-a alias 'inside one'"
   " && ip addr add 198.51.100.1/25 dev nfr-a && ip addr add 203.0.113.1/24 dev nfr-b"
   " && ip -6 addr add 2001:db8:1::1/64 dev nfr-a nodad"
   " && ip route add 198.51.100.128/25 nexthop dev nfr-b nexthop dev nfr-a"
   " && ip -6 route add 2001:db8:5::/48 dev nfr-b")
drain(sock, ifs)
print(json.dumps({"step": "added", "links": ifs.links, "answers": answers(ifs, *ADDRS)}))
sh("ip route replace 198.51.100.128/25 dev nfr-a && ip -6 route replace 2001:db8:5::/48 dev nfr-a")
drain(sock, ifs)
print(json.dumps({"step": "replaced", "answers": answers(ifs, *ADDRS)}))
sh("ip link set nfr-a down")
drain(sock, ifs)
print(json.dumps({"step": "down", "answers": answers(ifs, *ADDRS)}))
fresh = Interfaces()
fresh.update(rtnl.dump())
print(json.dumps({"step": "fresh", "answers": answers(fresh, *ADDRS)}))
sock.close()
# an overrun: a small buffer, many changes unread
small = rtnl.RtnlSocket(rcvbuf=4096)
sh("for i in $(seq 1 200); do echo route add 10.$i.0.0/16 dev nfr-b; done | ip -batch -")
try:
    for _ in range(100):
        small.read()
    print(json.dumps({"step": "overrun", "raised": False}))
except rtnl.RtnlOverrun:
    print(json.dumps({"step": "overrun", "raised": True}))
"""


@pytest.fixture
def netns():
    name = f"nfr{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    run("ip", "netns", "add", name)
    run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_dump_events_and_overrun(netns):
    r = run("ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT, cwd=ROOT, timeout=60)
    steps = {s["step"]: s for s in map(json.loads, r.stdout.splitlines())}
    idx = {name: int(i) for i, (name, _d) in steps["added"]["links"].items()}
    a, b = idx["nfr-a"], idx["nfr-b"]
    assert steps["added"]["links"][str(a)] == ["nfr-a", "inside one"]
    assert steps["start"]["answers"] == dict.fromkeys(steps["start"]["answers"], 0)
    assert steps["added"]["answers"] == {
        "198.51.100.9": a, "198.51.100.130": b,          # multipath: the first nexthop
        "203.0.113.7": b, "2001:db8:5::1": b, "2001:db8:1::1": 0, "192.0.2.1": 0}
    assert steps["replaced"]["answers"]["198.51.100.130"] == a
    assert steps["replaced"]["answers"]["2001:db8:5::1"] == a
    # down: the kernel drops nfr-a's IPv4 routes without a message; what the
    # events left must be what a fresh dump says
    assert steps["down"]["answers"] == steps["fresh"]["answers"]
    assert steps["down"]["answers"]["198.51.100.9"] == 0
    assert steps["overrun"]["raised"] is True
