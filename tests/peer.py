"""Traffic for the namespace tests: a bounded echo server and a client.

    python peer.py serve ADDR [ADDR ...] --port P --lifetime S
        TCP and UDP echo on every ADDR, port P; exits after S seconds.
    python peer.py tcp ADDR PORT NBYTES      one TCP connection, NBYTES echoed, closed
    python peer.py udp ADDR PORT NBYTES N    N datagrams of NBYTES, each echoed
    python peer.py hold ADDR PORT SECONDS    a TCP connection held open SECONDS

Every client prints its local address and port as ``LOCAL addr port``.
Every socket has a timeout; nothing loops without a bound.
"""

import argparse
import selectors
import socket
import sys
import time


def serve(addrs, port, lifetime):
    sel = selectors.DefaultSelector()
    for a in addrs:
        fam = socket.AF_INET6 if ":" in a else socket.AF_INET
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((a, port))
        t.listen(64)
        t.setblocking(False)
        sel.register(t, selectors.EVENT_READ, "accept")
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.bind((a, port))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, "udp")
    print("READY", flush=True)
    end = time.monotonic() + lifetime
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            if key.data == "accept":
                c, _ = s.accept()
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ, "conn")
            elif key.data == "udp":
                data, peer = s.recvfrom(65535)
                s.sendto(data, peer)
            else:
                try:
                    data = s.recv(65535)
                except OSError:
                    data = b""
                if data:
                    s.setblocking(True)
                    s.settimeout(5)
                    s.sendall(data)
                    s.setblocking(False)
                else:
                    sel.unregister(s)
                    s.close()


def _family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp(addr, port, nbytes):
    s = socket.create_connection((addr, port), timeout=5)
    print("LOCAL", *s.getsockname()[:2], flush=True)
    payload = b"x" * nbytes
    s.sendall(payload)
    got = 0
    while got < nbytes:
        chunk = s.recv(65535)
        if not chunk:
            break
        got += len(chunk)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65535):
        pass
    s.close()
    if got != nbytes:
        sys.exit(f"echoed {got} of {nbytes}")


def udp(addr, port, nbytes, count, timeout=5.0):
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.connect((addr, port))
    print("LOCAL", *s.getsockname()[:2], flush=True)
    for _ in range(count):
        s.send(b"u" * nbytes)
        s.recv(65535)
    s.close()


def hold(addr, port, seconds):
    s = socket.create_connection((addr, port), timeout=5)
    print("LOCAL", *s.getsockname()[:2], flush=True)
    s.sendall(b"hello")
    s.recv(100)
    time.sleep(seconds)
    s.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("addrs", nargs="+")
    sv.add_argument("--port", type=int, required=True)
    sv.add_argument("--lifetime", type=float, default=60)
    t = sub.add_parser("tcp")
    t.add_argument("addr"), t.add_argument("port", type=int), t.add_argument("nbytes", type=int)
    u = sub.add_parser("udp")
    u.add_argument("addr"), u.add_argument("port", type=int), u.add_argument("nbytes", type=int)
    u.add_argument("count", type=int)
    u.add_argument("--timeout", type=float, default=5.0)
    h = sub.add_parser("hold")
    h.add_argument("addr"), h.add_argument("port", type=int), h.add_argument("seconds", type=float)
    a = p.parse_args()
    if a.cmd == "serve":
        serve(a.addrs, a.port, a.lifetime)
    elif a.cmd == "tcp":
        tcp(a.addr, a.port, a.nbytes)
    elif a.cmd == "udp":
        udp(a.addr, a.port, a.nbytes, a.count, a.timeout)
    else:
        hold(a.addr, a.port, a.seconds)


if __name__ == "__main__":
    main()
