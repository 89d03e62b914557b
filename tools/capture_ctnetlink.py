#!/usr/bin/env python3
"""Record raw ctnetlink datagrams to a file, for tests and benchmarks.

Standard library only (it does not use nfflowd's decoder, so a decoder bug
cannot shape what is recorded).  Needs CAP_NET_ADMIN in the network namespace
whose conntrack table it reads (run it under ``ip netns exec NS``).

File format (also in tests/data/README.md): a sequence of records, one per
netlink datagram exactly as recv() returned it::

    u32 length (little-endian) | length bytes of datagram

No file header.  The netlink headers inside are in the recording host's byte
order (little-endian on x86-64 and arm64).

Modes:
  events  subscribe to conntrack multicast groups and record every datagram
          until --count datagrams, --seconds elapsed, or SIGTERM/SIGINT
  dump    send IPCTNL_MSG_CT_GET with NLM_F_DUMP and record the reply
          datagrams up to and including the one with NLMSG_DONE
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_BROADCAST_ERROR = 4
SO_RCVBUFFORCE = 33
GROUPS = {"new": 1, "update": 2, "destroy": 3}
NLMSG_ERROR, NLMSG_DONE = 2, 3
FRAME = struct.Struct("<I")


def open_socket(groups: int) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind((0, groups))
    return s


def record_events(out, groups: int, count: int, seconds: float, ready: str | None) -> int:
    s = open_socket(groups)
    s.setsockopt(SOL_NETLINK, NETLINK_BROADCAST_ERROR, 1)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    if ready:  # tell the recording script that we are subscribed
        with open(ready, "w") as f:
            f.write(str(os.getpid()))
    deadline = time.monotonic() + seconds
    n = 0
    while not stop and n < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            r, _, _ = select.select([s], [], [], min(left, 0.2))
        except InterruptedError:
            continue
        if not r:
            continue
        try:
            data = s.recv(1 << 20)
        except OSError as e:  # ENOBUFS: the kernel dropped events
            print(f"capture: recv: {e}", file=sys.stderr)
            continue
        out.write(FRAME.pack(len(data)) + data)
        out.flush()
        n += 1
    # drain what is already queued (bounded)
    s.setblocking(False)
    for _ in range(100000):
        if n >= count:
            break
        try:
            data = s.recv(1 << 20)
        except (BlockingIOError, OSError):
            break
        out.write(FRAME.pack(len(data)) + data)
        n += 1
    return n


def record_dump(out, family: int, seconds: float) -> int:
    s = open_socket(0)
    s.settimeout(seconds)
    seq = int(time.time()) & 0x7FFFFFFF
    nfgen = struct.pack("BBH", family, 0, 0)
    hdr = struct.pack("=IHHII", 16 + len(nfgen), (1 << 8) | 1, 0x1 | 0x300, seq, 0)
    s.send(hdr + nfgen)
    n = 0
    for _ in range(1000000):
        data = s.recv(1 << 20)
        out.write(FRAME.pack(len(data)) + data)
        n += 1
        off, done = 0, False
        while off + 16 <= len(data):
            ln, typ = struct.unpack_from("=IH", data, off)
            if typ in (NLMSG_DONE, NLMSG_ERROR):
                done = True
            if ln < 16:
                break
            off += (ln + 3) & ~3
        if done:
            break
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("events", "dump"))
    ap.add_argument("-o", "--output", required=True, help="file to write (appended to with -a)")
    ap.add_argument("-a", "--append", action="store_true")
    ap.add_argument("-g", "--groups", default="new,update,destroy",
                    help="events mode: comma-separated of new,update,destroy")
    ap.add_argument("-c", "--count", type=int, default=100000, help="events mode: stop after N datagrams")
    ap.add_argument("-t", "--seconds", type=float, default=30.0,
                    help="events: stop after this long; dump: recv timeout")
    ap.add_argument("--family", type=int, default=0, help="dump mode: 0 (both), 2 (IPv4) or 10 (IPv6)")
    ap.add_argument("--ready-file", help="events mode: write our pid here once subscribed")
    a = ap.parse_args(argv)
    with open(a.output, "ab" if a.append else "wb") as out:
        if a.mode == "events":
            groups = 0
            for g in a.groups.split(","):
                groups |= 1 << (GROUPS[g.strip()] - 1)
            n = record_events(out, groups, a.count, a.seconds, a.ready_file)
        else:
            n = record_dump(out, a.family, a.seconds)
    print(f"capture: {n} datagrams -> {a.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
