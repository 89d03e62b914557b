#!/usr/bin/env python3
"""Bounded test traffic for tools/record_testdata.sh (standard library only).

    ct_traffic.py serve SECONDS ADDR...      TCP echo on port 80 and UDP echo on
                                             port 53 of every ADDR, for SECONDS
    ct_traffic.py tcp ADDR PORT              one TCP exchange, then close
    ct_traffic.py udp ADDR PORT              one UDP request/response
    ct_traffic.py raw ADDR PROTO             one raw IPv4 datagram of protocol PROTO

Every socket has a timeout; nothing runs longer than asked.
"""

import socket
import sys
import threading
import time


def _fam(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def serve(seconds, addrs):
    deadline = time.monotonic() + seconds
    socks = []
    for a in addrs:
        t = socket.socket(_fam(a), socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((a, 80))
        t.listen(16)
        t.settimeout(0.2)
        u = socket.socket(_fam(a), socket.SOCK_DGRAM)
        u.bind((a, 53))
        u.settimeout(0.2)
        socks += [t, u]

    def tcp_loop(s):
        while time.monotonic() < deadline:
            try:
                c, _ = s.accept()
            except OSError:
                continue
            c.settimeout(2)
            try:
                d = c.recv(4096)
                c.sendall(d * 3)
            except OSError:
                pass
            c.close()

    def udp_loop(s):
        while time.monotonic() < deadline:
            try:
                d, peer = s.recvfrom(4096)
            except OSError:
                continue
            s.sendto(d * 2, peer)

    threads = [threading.Thread(target=tcp_loop if s.type == socket.SOCK_STREAM else udp_loop,
                                args=(s,), daemon=True) for s in socks]
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + 1)


def tcp(addr, port):
    with socket.create_connection((addr, port), timeout=3) as s:
        s.sendall(b"hello nfflowd\n" * 10)
        s.recv(4096)


def udp(addr, port):
    with socket.socket(_fam(addr), socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"query" * 20, (addr, port))
        try:
            s.recv(4096)
        except socket.timeout:
            pass


def raw(addr, proto):
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, proto) as s:
        s.sendto(b"\x00" * 32, (addr, 0))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(float(args[0]), args[1:])
    elif cmd == "tcp":
        tcp(args[0], int(args[1]))
    elif cmd == "udp":
        udp(args[0], int(args[1]))
    elif cmd == "raw":
        raw(args[0], int(args[1]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
