"""The netfilter state ``nfflowd check`` reports on: the nftables ruleset (as
``nft -j list ruleset`` gives it), the flowtables with their flags (over
nf_tables netlink: nft's JSON leaves the flags out), and whether the kernel
stamps each conntrack event (a probe in a private network namespace).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import socket
import struct
import subprocess
from typing import NamedTuple

from nfflowd import conntrack as ct
from nfflowd.errors import NfflowdError
from nfflowd.io.netlink import NETLINK_NETFILTER, NFNLGRP_CONNTRACK_NEW, ConntrackSocket

__all__ = ["StateError", "nft_ruleset", "Flowtable", "parse_flowtables", "flowtables",
           "probe_event_time", "FLOWTABLE_HW_OFFLOAD", "FLOWTABLE_COUNTER"]


class StateError(NfflowdError):
    """The state could not be read (the reason is the message)."""


def nft_ruleset(timeout: float = 10.0) -> list:
    """The objects of ``nft -j list ruleset`` (a list of one-key dicts:
    table, chain, rule, flowtable, ...).  Raises StateError."""
    try:
        r = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True,
                           timeout=timeout)
    except FileNotFoundError as e:
        raise StateError("the nft command is not installed (Debian: nftables)") from e
    except subprocess.TimeoutExpired as e:
        raise StateError(f"nft -j list ruleset did not answer within {timeout} s") from e
    if r.returncode != 0:
        raise StateError(f"nft -j list ruleset failed: {r.stderr.strip() or r.returncode}")
    try:
        objects = json.loads(r.stdout or '{"nftables": []}')["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise StateError(f"nft -j list ruleset: not the JSON expected ({e})") from e
    if not isinstance(objects, list):
        raise StateError("nft -j list ruleset: not the JSON expected (no list)")
    return objects


# -- flowtables over nf_tables netlink -----------------------------------------------
# Numbers from linux include/uapi/linux/netfilter/nf_tables.h and nfnetlink.h.

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETFLOWTABLE = 23
NFT_MSG_NEWFLOWTABLE = 22
NFTA_FLOWTABLE_TABLE = 1
NFTA_FLOWTABLE_NAME = 2
NFTA_FLOWTABLE_FLAGS = 7
FLOWTABLE_HW_OFFLOAD = 0x1      # NFT_FLOWTABLE_HW_OFFLOAD
FLOWTABLE_COUNTER = 0x2         # NFT_FLOWTABLE_COUNTER: offloaded packets counted
_FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


class Flowtable(NamedTuple):
    family: str          # inet, ip, ip6, ...
    table: str
    name: str
    flags: int           # FLOWTABLE_* bits


def parse_flowtables(buf: bytes) -> tuple[list, bool, list]:
    """The flowtables in a buffer of nf_tables netlink messages:
    (flowtables, NLMSG_DONE seen, error numbers (positive) of NLMSG_ERROR
    messages that are not ACKs).  Bad framing ends the buffer."""
    out: list = []
    done = False
    errors: list = []
    off = 0
    want = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWFLOWTABLE
    while off + 16 <= len(buf):
        ln, typ, _flags, _seq, _pid = _HDR.unpack_from(buf, off)
        if ln < 16 or off + ln > len(buf):
            break
        if typ == ct.NLMSG_DONE:
            done = True
        elif typ == ct.NLMSG_ERROR and ln >= 20:
            err = -struct.unpack_from("=i", buf, off + 16)[0]
            if err:
                errors.append(err)
        elif typ == want and ln >= 20:
            attrs = {}
            pos = off + 20
            while pos + 4 <= off + ln:
                alen, atyp = _NLA.unpack_from(buf, pos)
                if alen < 4 or pos + alen > off + ln:
                    break
                attrs[atyp & ct.NLA_TYPE_MASK] = bytes(buf[pos + 4:pos + alen])
                pos += (alen + 3) & ~3
            flags = attrs.get(NFTA_FLOWTABLE_FLAGS, b"")
            out.append(Flowtable(
                _FAMILIES.get(buf[off + 16], str(buf[off + 16])),
                attrs.get(NFTA_FLOWTABLE_TABLE, b"").split(b"\0")[0].decode(errors="replace"),
                attrs.get(NFTA_FLOWTABLE_NAME, b"").split(b"\0")[0].decode(errors="replace"),
                struct.unpack(">I", flags)[0] if len(flags) == 4 else 0))
        off += (ln + 3) & ~3
    return out, done, errors


def flowtables(timeout: float = 5.0) -> list:
    """Every flowtable of the current network namespace (NFT_MSG_GETFLOWTABLE
    dump).  Raises StateError (EPERM: needs CAP_NET_ADMIN)."""
    what = "cannot list the nftables flowtables (netlink)"
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as e:
        raise StateError(f"{what}: {e.strerror or e}") from e
    try:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        seq = (os.getpid() ^ id(sock)) & 0x7FFFFFFF or 1
        sock.send(_HDR.pack(20, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETFLOWTABLE,
                            ct.NLM_F_REQUEST | ct.NLM_F_DUMP, seq, 0)
                  + struct.pack("BBH", 0, 0, 0))
        found: list = []
        for _ in range(1 << 16):            # a datagram holds at least one flowtable
            data = sock.recv(1 << 20)
            got, done, errors = parse_flowtables(data)
            if errors:
                raise StateError(f"{what}: {os.strerror(errors[0])}")
            found.extend(got)
            if done:
                return found
        raise StateError(f"{what}: no end of the dump")
    except socket.timeout as e:
        raise StateError(f"{what}: no answer within {timeout} s") from e
    except OSError as e:
        raise StateError(f"{what}: {e.strerror or e}") from e
    finally:
        sock.close()


# -- does the kernel stamp each event? --------------------------------------------------

_CLONE_NEWNET = 0x40000000
_PROBE_TUPLE = (socket.inet_aton("198.51.100.7"), socket.inet_aton("203.0.113.7"), 17,
                40007, 4007)


def probe_event_time(timeout: float = 5.0) -> int:
    """Whether this kernel sends CTA_TIMESTAMP_EVENT: a child process enters
    a network namespace of its own (nothing it does is seen here: no
    listener, no daemon gets its events), turns nf_conntrack_timestamp on
    there, subscribes to NEW events, makes a conntrack entry over ctnetlink
    and reads its event.  Returns the event's time (ns, wall clock), 0 when
    the kernel sent none.  Raises StateError when the probe cannot run
    (needs CAP_SYS_ADMIN and CAP_NET_ADMIN)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                        # the child
        try:
            os.close(r)
            answer = _probe_child(timeout)
        except BaseException as e:                      # noqa: BLE001: said to the parent
            answer = f"E {e}"
        try:
            os.write(w, answer.encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout + 2)
        data = os.read(r, 4096).decode(errors="replace") if ready else ""
    finally:
        os.close(r)
        if not data:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
    if not data:
        raise StateError(f"the probe did not answer within {timeout + 2} s")
    if data.startswith("E "):
        raise StateError(data[2:])
    return int(data)


def _probe_child(timeout: float) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise StateError(f"cannot make a network namespace to probe in: {os.strerror(err)}")
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_timestamp", "w") as f:
            f.write("1")
    except OSError as e:
        raise StateError(f"cannot turn nf_conntrack_timestamp on: {e.strerror or e}") from e
    events = ConntrackSocket(rcvbuf=1 << 20, groups=(NFNLGRP_CONNTRACK_NEW,), multi=False)
    req = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        req.settimeout(timeout)
        req.bind((0, 0))
        req.send(ct.create_request(1, *_PROBE_TUPLE, timeout_s=30))
        res = ct.decode(req.recv(1 << 16))
        if any(res.errors):
            raise StateError("ctnetlink refused the probe's entry: "
                             f"{os.strerror(next(e for e in res.errors if e))}")
        ready, _, _ = select.select([events], [], [], timeout)
        if not ready:
            raise StateError(f"no NEW event within {timeout} s")
        got = events.recv(16).decoded(ct.decode_datagrams).events
        new = [e for e in got if e.kind == ct.EV_NEW]
        if not new:
            raise StateError("the probe's NEW event did not come")
        return str(new[0].event_ns)
    finally:
        req.close()
        events.close()
