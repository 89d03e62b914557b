"""The ctnetlink socket (nfflowd.io.netlink): recvmmsg into slots over a
loopback UDP socket standing in for netlink, and, as root, a live
subscription and table dump in a network namespace."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from nfflowd import conntrack as ct
from nfflowd.ctblocks import decode_blocks
from nfflowd.conntrack import EV_DESTROY, EV_DUMP, EV_NEW
from nfflowd.io.netlink import ConntrackSocket, Datagrams, MultiRecv
from test_conntrack import CT_MSGS, NLHDR

ROOT = Path(__file__).resolve().parent.parent


def _netns_skip_reason():
    if os.geteuid() != 0:
        return "needs root (network namespaces, conntrack)"
    for tool in ("ip", "nft", "conntrack"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


LIVE_SCRIPT = r"""
import json, socket, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from nfflowd import conntrack as ct
from nfflowd.io import netlink
out = {"new": [], "destroy": [], "dump": [], "errors": []}
s = netlink.ConntrackSocket(rcvbuf=4 << 20)
def recv():
    return s.recv().decoded(ct.decode_datagrams)
out["rcvbuf"] = s.rcvbuf
out["nonblocking"] = recv().events == []
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(("127.0.0.1", 0))
port = srv.getsockname()[1]
cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cli.bind(("127.0.0.1", 0))
cport = cli.getsockname()[1]
cli.sendto(b"x" * 100, ("127.0.0.1", port))
srv.settimeout(5)
data, peer = srv.recvfrom(1000)
srv.sendto(b"y" * 50, peer)
cli.settimeout(5)
cli.recv(1000)
out["ports"] = [cport, port]
# what the queued NEW event takes of the receive buffer, then none once drained
deadline = time.monotonic() + 5
while not s.queued_bytes() and time.monotonic() < deadline:
    time.sleep(0.01)
out["queued"] = s.queued_bytes()
def collect(until):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for e in recv().events:
            key = {ct.EV_NEW: "new", ct.EV_DESTROY: "destroy"}.get(e.kind, "other")
            out.setdefault(key, []).append(
                [e.kind, e.family, e.orig.proto, e.orig.sport, e.orig.dport,
                 e.orig_packets, e.reply_packets, e.ct_id])
        if until():
            return
        time.sleep(0.05)
mine = lambda recs: [r for r in recs if r[3:5] == [cport, port]]
collect(lambda: mine(out["new"]))
while recv().events:
    pass
out["queued_drained"] = s.queued_bytes()
out["dump"] = [[e.kind, e.orig.proto, e.orig.sport, e.orig.dport, e.ct_id]
               for e in netlink.dump_table() if e.orig.dport == port]
subprocess.run(["conntrack", "-F"], check=True, timeout=10, capture_output=True)
collect(lambda: mine(out["destroy"]))
print(json.dumps(out))
"""


@pytest.mark.root
def test_live_subscription_in_a_namespace():
    reason = _netns_skip_reason()
    if reason:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    ns = f"nfct-test-{uuid.uuid4().hex[:8]}"
    try:
        r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, timeout=10)
        if r.returncode:
            reason = f"cannot create a network namespace: {r.stderr.decode().strip()}"
            print(f"skipped: {reason}")
            pytest.skip(reason)
        def run(*a):
            subprocess.run(["ip", "netns", "exec", ns, *a], check=True, capture_output=True,
                           timeout=10)
        run("ip", "link", "set", "lo", "up")
        run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
        # conntrack hooks register in a namespace once a rule needs them
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, timeout=10,
                       input=b"table inet t {\n chain o {\n  type filter hook output priority 0;\n"
                             b"  ct state new counter accept\n }\n}\n", capture_output=True)
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", LIVE_SCRIPT, str(ROOT)],
                           capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr.decode()
        out = json.loads(p.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    cport, port = out["ports"]
    assert out["nonblocking"] and out["rcvbuf"] >= 4 << 20
    assert out["queued"] > 0 and out["queued_drained"] == 0, out
    new = [r for r in out["new"] if r[3:5] == [cport, port]]
    destroy = [r for r in out["destroy"] if r[3:5] == [cport, port]]
    assert len(new) == 1 and new[0][:3] == [EV_NEW, 4, 17]
    assert len(destroy) == 1 and destroy[0][:3] == [EV_DESTROY, 4, 17]
    assert destroy[0][5:7] == [1, 1]                       # one datagram each way
    assert new[0][7] == destroy[0][7]                      # same conntrack id
    assert [d[:4] for d in out["dump"]] == [[EV_DUMP, 17, cport, port]]
    assert out["dump"][0][4] == new[0][7]


def test_dump_table_without_permission_says_why():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop CAP_NET_ADMIN")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from nfflowd.io import netlink\n"
            "try:\n    netlink.dump_table()\nexcept netlink.SourceError as e:\n    print(e)\n")
    p = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin",
                        sys.executable, "-c", code, str(ROOT)], capture_output=True, timeout=30)
    assert "CAP_NET_ADMIN" in p.stdout.decode(), (p.stdout, p.stderr)


def test_multi_recv_takes_queued_datagrams_into_slots():
    """recvmmsg through ctypes (ConntrackSocket's receive path), checked on a
    loopback UDP socket pair: every queued datagram, in order, whole (its
    first HEAD bytes in its slot of ``view``, the rest in its overflow slot)
    with its length; one longer than SLOT flagged MSG_TRUNC; nothing queued
    gives 0."""
    mr = MultiRecv.create()
    if mr is None:
        pytest.skip("libc without recvmmsg")
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.bind(("127.0.0.1", 0))
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sizes = [1, 244, mr.HEAD, mr.HEAD + 1, 4, mr.SLOT, mr.SLOT + 100, 3000] * 3
        sent = [bytes([i % 251]) * (n - 1) + bytes([n % 256]) for i, n in enumerate(sizes)]
        for d in sent:
            s.sendto(d, r.getsockname())
        import numpy as np

        def recv(n):
            got = mr.recv(r.fileno(), n)
            return (got, *(a.tolist() for a in mr.arrays(np, got)))
        got, lens, _ = recv(7)
        got2, lens2, flags2 = recv(100) if got == 7 else (0, [], [])
        assert (got, got2) == (7, len(sent) - 7)
        assert len(lens2) == len(flags2) == got2
        # the second call reused the slots: check it, then the first one's lengths
        for i, (ln, flags) in enumerate(zip(lens2, flags2)):
            d = sent[7 + i]
            assert bool(flags & socket.MSG_TRUNC) == (len(d) > mr.SLOT)
            assert ln == min(len(d), mr.SLOT)
            assert mr.datagram(i, ln) == d[:ln]
            head = min(ln, mr.HEAD)
            assert bytes(mr.view[i * mr.HEAD:i * mr.HEAD + head]) == d[:head]
        assert lens == [min(len(d), mr.SLOT) for d in sent[:7]]
        assert recv(10) == (0, [], [])
    finally:
        r.close()
        s.close()


def _long(msg: bytes, extra: int) -> bytes:
    """``msg`` lengthened by an attribute the decoder skips (type 60), put
    first (after the nfgenmsg header), so that the ones that matter lie
    after it."""
    m = msg[:20] + struct.pack("=HH", 4 + extra, 60) + bytes(extra) + msg[20:]
    return struct.pack("=I", len(m)) + m[4:]


@pytest.mark.parametrize("blocks,long_ones", [(False, True), (True, True), (True, False)])
def test_recv_takes_datagrams_longer_than_a_slot_head_whole(blocks, long_ones):
    """ConntrackSocket's recvmmsg path with datagrams past the HEAD bytes a
    slot keeps in line (the rest goes to the overflow slot): the batch decodes
    as conntrack.decode decodes each datagram, long or not, in order, through
    either decoder; one longer than SLOT is counted as truncated and malformed.  The datagrams
    come over a loopback UDP socket standing in for the netlink one."""
    mr = MultiRecv.create()
    if mr is None:
        pytest.skip("libc without recvmmsg")
    destroy = [m for m in CT_MSGS if NLHDR.unpack_from(m)[1] == ct.MSG_CT_DELETE]
    dgrams = []
    for i, m in enumerate(destroy * 6):
        # every third one long: past HEAD, up to just under SLOT
        dgrams.append(_long(m, (mr.HEAD, 1000, mr.SLOT - len(m) - 4)[i % 3 // 2 + i % 2])
                      if i % 3 == 2 and long_ones else m)
    if not long_ones:
        for m in destroy:
            ct.decode(m)        # shapes learnt: the slots are read as a matrix
    too_long = _long(destroy[0], mr.SLOT)
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.bind(("127.0.0.1", 0))
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        r.setblocking(False)
        for d in dgrams[:5] + [too_long] + dgrams[5:]:
            w.sendto(d, r.getsockname())
        cs = ConntrackSocket.over(r)
        batch = cs.recv(4 * len(dgrams))
        assert isinstance(batch, Datagrams)
        res = batch.decoded(decode_blocks if blocks else ct.decode_datagrams)
        got = []
        for e in res.events:
            got.extend(e.events() if hasattr(e, "events") else [e])
        want = [e for d in dgrams for e in ct.decode(d).events]
        assert (max(map(len, dgrams)) > mr.HEAD) == long_ones and len(want) == len(dgrams)
        assert got == want
        if not long_ones:
            assert any(hasattr(e, "events") for e in res.events)
        assert (res.malformed, cs.truncated, batch.count) == (1, 1, len(dgrams))
    finally:
        r.close()
        w.close()


def test_recv_without_recvmmsg_takes_datagrams_back_to_back():
    """ConntrackSocket's per-datagram path (where libc has no recvmmsg): the
    datagrams back to back in one buffer, 4-aligned, each decoded as
    conntrack.decode decodes it, in order, through either decoder."""
    destroy = [m for m in CT_MSGS if NLHDR.unpack_from(m)[1] == ct.MSG_CT_DELETE]
    dgrams = [_long(m, 4 * (1 + i % 7)) if i % 3 == 0 else m for i, m in enumerate(destroy * 4)]
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r.bind(("127.0.0.1", 0))
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        r.setblocking(False)
        for d in dgrams:
            w.sendto(d, r.getsockname())
        cs = ConntrackSocket.over(r, multi=False)
        batch = cs.recv(4 * len(dgrams))
        assert batch.count == len(dgrams) and batch.stride == 0 and batch.dropped == 0
        assert all(s % 4 == 0 for s in batch.starts)
        want = [e for d in dgrams for e in ct.decode(d).events]
        for decoder in (ct.decode_datagrams, decode_blocks):
            res = batch.decoded(decoder)
            got = [x for e in res.events for x in (e.events() if hasattr(e, "events") else [e])]
            assert got == want and res.malformed == 0
        assert cs.recv(10).count == 0
    finally:
        r.close()
        w.close()
