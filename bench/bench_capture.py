"""Live capture: nfflowd's TPACKET_V3 ring against libpcap, under a flood.

    sudo python bench/bench_capture.py [--packets N] [--senders K] [--rounds R]

As root: creates two network namespaces joined by a veth pair (documentation
addresses, nothing leaves them), floods frames from one end and captures them
at the other, one receiver at a time, each in a process of its own:

- ``ring``:  ``nfflowd.io.capture.RingCapture`` (AF_PACKET, memory-mapped
  TPACKET_V3 ring, 16 x 1 MiB blocks, snaplen 256) reading every block;
- ``pcap``:  libpcap 1.10 (the Debian libpcap0.8 nfflowd already uses for
  BPF) through ctypes: ``pcap_create`` with the same snaplen and a 16 MiB
  buffer (libpcap uses a TPACKET_V3 ring itself on Linux), non-blocking,
  ``select`` on its fd, ``pcap_next_ex`` until empty, each packet copied to
  a bytes object (what the meter needs);
- ``pcapy``: libpcap through the pcapy-ng binding (PyPI, a C extension whose
  wheel bundles libpcap 1.9.1), run when it is installed, ``next()`` per packet;
- ``recv``:  a plain AF_PACKET socket, one ``recv`` system call per packet
  (8 MiB receive buffer): the baseline without a ring;
- ``ring+meter``, ``pcap+meter``, ``pcapy+meter``: the same, each batch also metered
  by ``FlowTable.meter_frames``: what ``nfflowd meter -i`` does.

The flood: K sender processes (default 1), each a loop of ``send`` on a raw
AF_PACKET socket of 64-byte-IP UDP frames over 1024 source ports (1024
flows), addressed to a MAC address that is not the receiver's (the receiver's
IP stack drops them at once; the capture sees them all, as on a mirror port).
The sender is as fast as Python's ``send`` loop allows; its rate is printed.

Printed per receiver: packets sent, received by the program, dropped by the
kernel (the socket's own count: PACKET_STATISTICS, pcap_stats), received
packets per second over the receiver's busy time, and CPU time per received
packet (user + system of the receiver process, getrusage).

And the two meters as a user runs them, ``--meters`` (default both; every
``--rounds`` alternates them): ``nfflowd``, ``python -m nfflowd meter -i
brx`` (the ``ring+meter`` path with the export: NetFlow v9 to a UDP socket
on 127.0.0.1 in the receiver's namespace, drained there), and ``softflowd``,
``softflowd -i brx -v 9 -n 127.0.0.1:PORT -m 131072 -d`` on the same
flooded interface, each started before the flood and stopped (SIGTERM;
softflowd through its control socket) a second after it.  Printed: packets
sent, the meter's own count of packets received and dropped (nfflowd's
summary: the ring's PACKET_STATISTICS; softflowd's statistics: pcap_stats),
the drop rate, and the meter's CPU time (os.wait4) per packet sent.

Then the BPF filter on capture files (``meter -r --bpf``), CPU per frame over
the flood's frames: libpcap's ``bpf_filter`` through ctypes (what
``nfflowd.io.bpf`` does) against a classic-BPF interpreter written in Python.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

TX_NS, RX_NS = "nffbench-tx", "nffbench-rx"
IDLE_END = 1.0            # a receiver stops this long after its last packet
MAX_WAIT = 120.0          # ... or this long after it started, whatever happens
SNAPLEN = 256
BUFFER = 16 << 20


# -- receivers (run inside RX_NS) --------------------------------------------------
class _PcapPkthdr(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long),
                ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class _PcapStat(ctypes.Structure):
    _fields_ = [("ps_recv", ctypes.c_uint), ("ps_drop", ctypes.c_uint),
                ("ps_ifdrop", ctypes.c_uint)]


class PcapCapture:
    """libpcap through ctypes, the interface of RingCapture."""

    def __init__(self, iface: str):
        from nfflowd.io.bpf import libpcap
        lib = self.lib = libpcap()
        vp = ctypes.c_void_p
        lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.pcap_create.restype = vp
        for name in ("pcap_set_snaplen", "pcap_set_buffer_size", "pcap_set_timeout",
                     "pcap_set_promisc", "pcap_set_immediate_mode"):
            getattr(lib, name).argtypes = [vp, ctypes.c_int]
            getattr(lib, name).restype = ctypes.c_int
        lib.pcap_activate.argtypes = [vp]
        lib.pcap_get_selectable_fd.argtypes = [vp]
        lib.pcap_setnonblock.argtypes = [vp, ctypes.c_int, ctypes.c_char_p]
        lib.pcap_next_ex.argtypes = [vp, ctypes.POINTER(ctypes.POINTER(_PcapPkthdr)),
                                     ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte))]
        lib.pcap_stats.argtypes = [vp, ctypes.POINTER(_PcapStat)]
        lib.pcap_datalink.argtypes = [vp]
        errbuf = ctypes.create_string_buffer(256)
        self.p = lib.pcap_create(iface.encode(), errbuf)
        lib.pcap_set_snaplen(self.p, SNAPLEN)
        lib.pcap_set_buffer_size(self.p, BUFFER)
        lib.pcap_set_timeout(self.p, 50)
        rc = lib.pcap_activate(self.p)
        if rc < 0:
            raise RuntimeError(f"pcap_activate: {rc}")
        lib.pcap_setnonblock(self.p, 1, errbuf)
        self.fd = lib.pcap_get_selectable_fd(self.p)
        self.linktype = lib.pcap_datalink(self.p)
        self._hdr = ctypes.POINTER(_PcapPkthdr)()
        self._data = ctypes.POINTER(ctypes.c_ubyte)()

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list:
        out = []
        nxt = self.lib.pcap_next_ex
        p, hdr, data = self.p, ctypes.byref(self._hdr), ctypes.byref(self._data)
        string_at = ctypes.string_at
        lt = self.linktype
        while nxt(p, hdr, data) == 1:
            h = self._hdr.contents
            out.append(((h.tv_sec * 1_000_000 + h.tv_usec) * 1000, lt,
                        string_at(self._data, h.caplen), h.len))
        return out

    def kernel_stats(self):
        st = _PcapStat()
        self.lib.pcap_stats(self.p, ctypes.byref(st))
        return st.ps_recv, st.ps_drop


class PcapyCapture:
    """libpcap through the pcapy-ng binding (a C extension; its wheel bundles
    libpcap 1.9.1): one ``next()`` per packet."""

    def __init__(self, iface: str):
        import pcapy
        self.p = pcapy.create(iface)
        self.p.set_snaplen(SNAPLEN)
        self.p.set_buffer_size(BUFFER)
        self.p.set_timeout(50)
        self.p.activate()
        self.p.setnonblock(1)
        self.linktype = self.p.datalink()

    def fileno(self) -> int:
        return self.p.getfd()

    def read(self) -> list:
        out = []
        nxt = self.p.next
        lt = self.linktype
        while True:
            hdr, data = nxt()
            if hdr is None:
                break
            sec, usec = hdr.getts()
            out.append(((sec * 1_000_000 + usec) * 1000, lt, data, hdr.getlen()))
        return out

    def kernel_stats(self):
        recv, drop, _ifdrop = self.p.stats()
        return recv, drop


class RecvCapture:
    """A plain AF_PACKET socket, one recv per packet."""

    def __init__(self, iface: str):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER // 2)
        self.sock.bind((iface, 3))
        self.sock.setblocking(False)
        self.drops = self.packets = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list:
        out = []
        recv = self.sock.recv
        now = time.time_ns()
        try:
            for _ in range(4096):
                d = recv(SNAPLEN)
                out.append((now, 1, d, len(d)))
        except BlockingIOError:
            pass
        return out

    def kernel_stats(self):
        raw = self.sock.getsockopt(263, 6, 8)               # PACKET_STATISTICS (v1/v2)
        p, d = struct.unpack("=II", raw)
        self.packets += p
        self.drops += d
        return self.packets, self.drops


def receive(kind: str, iface: str) -> dict:
    if kind.startswith("ring"):
        from nfflowd.io.capture import RingCapture
        cap = RingCapture(iface, snaplen=SNAPLEN)
    elif kind.startswith("pcapy"):
        cap = PcapyCapture(iface)
    elif kind.startswith("pcap"):
        cap = PcapCapture(iface)
    else:
        cap = RecvCapture(iface)
    table = parser = None
    if kind.endswith("+meter"):
        from nfflowd.meter import FlowTable
        from nfflowd.packet import PacketParser
        table, parser = FlowTable(), PacketParser()
    print("READY", flush=True)
    start = time.monotonic()
    received = 0
    first = last = None
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    while True:
        now = time.monotonic()
        if now - start > MAX_WAIT or (last is not None and now - last > IDLE_END):
            break
        select.select([cap], [], [], 0.1)
        before = time.monotonic()
        batch = cap.read()
        if batch:
            if first is None:
                first = before
            received += len(batch)
            if table is not None:
                table.meter_frames(batch, parser)
                table.expire(batch[-1][0])
            last = time.monotonic()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    kp, kd = cap.kernel_stats()
    # CPU from READY to the end: the idle waits (select, 0.1 s timeouts)
    # before the flood and in the last second cost next to nothing
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"received": received, "kernel_packets": kp, "kernel_drops": kd,
            "busy": (last - first) if first is not None else 0.0, "cpu": cpu,

            "flows": (table.flows_created if table is not None else None)}


# -- sender (run inside TX_NS) ---------------------------------------------------
def frames(n_flows: int = 1024) -> list[bytes]:
    out = []
    for i in range(n_flows):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 64, 0, 0, 64, 17, 0,
                         socket.inet_aton("198.51.100.1"), socket.inet_aton("198.51.100.2"))
        udp = struct.pack("!HHHH", 10000 + i, 9, 44, 0) + bytes(36)
        # destination 02:00:00:00:00:99: not the receiver's address
        out.append(b"\x02\x00\x00\x00\x00\x99" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
                   + ip + udp)
    return out


def send(iface: str, count: int) -> dict:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    fr = frames()
    m = len(fr)
    snd = s.send
    t0 = time.monotonic()
    for i in range(count):
        snd(fr[i % m])
    return {"sent": count, "seconds": time.monotonic() - t0}


# -- driver ----------------------------------------------------------------------
def sh(*cmd, check=True):
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=True, text=True,
                          timeout=60)


def setup():
    teardown()
    sh("ip", "netns", "add", TX_NS)
    sh("ip", "netns", "add", RX_NS)
    sh("ip", "link", "add", "btx", "netns", TX_NS, "type", "veth", "peer", "name", "brx",
       "netns", RX_NS)
    for ns, dev in ((TX_NS, "btx"), (RX_NS, "brx")):
        # no IPv6 (no neighbour discovery, no MLD reports) and no address:
        # the flood is the only traffic on the link
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
        sh("ip", "-n", ns, "link", "set", dev, "up")
    time.sleep(1.0)


def teardown():
    for ns in (TX_NS, RX_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def one(kind: str, packets: int, senders: int) -> dict:
    me = [sys.executable, str(Path(__file__).resolve())]
    rx = subprocess.Popen(["ip", "netns", "exec", RX_NS, *me, "_rx", kind, "brx"],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert "READY" in rx.stdout.readline()
        per = packets // senders
        txs = [subprocess.Popen(["ip", "netns", "exec", TX_NS, *me, "_tx", "btx", str(per)],
                                stdout=subprocess.PIPE, text=True) for _ in range(senders)]
        sent = [json.loads(t.communicate(timeout=MAX_WAIT)[0]) for t in txs]
        out = json.loads(rx.communicate(timeout=MAX_WAIT + 10)[0])
    finally:
        for p in [rx, *locals().get("txs", [])]:
            if p.poll() is None:
                p.kill()
                p.wait()
    out["sent"] = sum(s["sent"] for s in sent)
    out["send_rate"] = out["sent"] / max(s["seconds"] for s in sent)
    return out


DRAIN_PORT = 9995
DRAIN = ("import socket\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)\n"
         f"s.bind(('127.0.0.1', {DRAIN_PORT}))\n"
         "s.settimeout(1.0)\n"
         "import time\n"
         f"end = time.monotonic() + {MAX_WAIT * 2}\n"
         "while time.monotonic() < end:\n"
         "    try:\n"
         "        s.recv(65536)\n"
         "    except OSError:\n"
         "        pass\n")


def meter_process(kind: str, packets: int, senders: int, tmp: Path) -> dict:
    """``nfflowd meter -i`` or ``softflowd -i`` on brx during a flood:
    what the meter says it received and dropped, its CPU (os.wait4)."""
    sh("ip", "-n", RX_NS, "link", "set", "lo", "up")
    drain = subprocess.Popen(["ip", "netns", "exec", RX_NS, sys.executable, "-c", DRAIN])
    ctl = tmp / "softflowd.ctl"
    if kind == "nfflowd":
        cfg = tmp / "meter.yaml"
        cfg.write_text("export:\n  collectors:\n    - {host: 127.0.0.1, port: %d, version: 9}\n"
                       "syslog:\n  enabled: false\n" % DRAIN_PORT)
        argv = [sys.executable, "-m", "nfflowd", "-c", str(cfg), "meter", "-i", "brx"]
    else:
        argv = ["softflowd", "-i", "brx", "-v", "9", "-n", f"127.0.0.1:{DRAIN_PORT}",
                "-m", "131072", "-d", "-p", str(tmp / "softflowd.pid"), "-c", str(ctl)]
    log = tmp / f"{kind}.log"
    txs = []
    with open(log, "w") as out:
        rx = subprocess.Popen(["ip", "netns", "exec", RX_NS, *argv], stdout=out,
                              stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            time.sleep(2.0)                         # started, capturing
            me = [sys.executable, str(Path(__file__).resolve())]
            per = packets // senders
            txs = [subprocess.Popen(["ip", "netns", "exec", TX_NS, *me, "_tx", "btx", str(per)],
                                    stdout=subprocess.PIPE, text=True) for _ in range(senders)]
            sent = [json.loads(t.communicate(timeout=MAX_WAIT)[0]) for t in txs]
            time.sleep(IDLE_END)
            stats = ""
            if kind == "softflowd":
                stats = sh("softflowctl", "-c", ctl, "statistics", check=False).stdout
                sh("softflowctl", "-c", ctl, "shutdown", check=False)
            else:
                rx.send_signal(signal.SIGTERM)
            _pid, status, ru = os.wait4(rx.pid, 0)
            rx.returncode = os.waitstatus_to_exitcode(status)
        finally:
            for p in [rx, drain, *txs]:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    text = log.read_text() + stats
    if kind == "nfflowd":
        m = re.search(r"kernel: (\d+) packets received by the socket, (\d+) dropped", text)
        got = re.search(r"(\d+) packets captured", text)
        received, drops = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        metered = int(got.group(1)) if got else None
    else:
        m = re.search(r"Packets received by libpcap: (\d+)", text)
        d = re.search(r"Packets dropped by libpcap: (\d+)", text)
        got = re.search(r"Packets processed: (\d+)", text)
        received, drops = (int(m.group(1)) if m else None), (int(d.group(1)) if d else None)
        metered = int(got.group(1)) if got else None
    if received is None:
        print(f"{kind}: no statistics (exit {rx.returncode}):\n{text}", file=sys.stderr)
    total = sum(s["sent"] for s in sent)
    return {"sent": total, "send_rate": total / max(s["seconds"] for s in sent),
            "received": received, "drops": drops, "metered": metered,
            "cpu": ru.ru_utime + ru.ru_stime}


def py_bpf(prog, data: bytes, wirelen: int) -> int:
    """A minimal classic BPF interpreter (the loads, jumps, ALU and returns
    libpcap emits for simple filters): the alternative to bpf_filter through
    ctypes for capture files, measured here."""
    a = x = 0
    pc = 0
    n = len(data)
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00 or cls == 0x01:                       # LD / LDX
            mode, size = code & 0xE0, code & 0x18
            if mode == 0x00:                                 # IMM
                v = k
            elif mode == 0x80:                               # LEN
                v = wirelen
            elif mode == 0xA0 and cls == 0x01:               # MSH: 4*([k]&0xf)
                if k >= n:
                    return 0
                v = (data[k] & 0x0F) << 2
            else:                                            # ABS / IND
                off = k + (x if mode == 0x40 else 0)
                width = 4 if size == 0x00 else 2 if size == 0x08 else 1
                if off + width > n:
                    return 0
                v = int.from_bytes(data[off:off + width], "big")
            if cls == 0x00:
                a = v
            else:
                x = v
        elif cls == 0x05:                                    # JMP
            op = code & 0xF0
            src = x if code & 0x08 else k
            if op == 0x00:
                pc += k
                continue
            cond = (a == src if op == 0x10 else a > src if op == 0x20
                    else a >= src if op == 0x30 else bool(a & src))
            pc += jt if cond else jf
        elif cls == 0x06:                                    # RET
            return a if code & 0x18 == 0x10 else k
        elif cls == 0x04:                                    # ALU
            op = code & 0xF0
            src = x if code & 0x08 else k
            a = {0x00: a + src, 0x10: a - src, 0x20: a * src, 0x50: a & src,
                 0x40: a | src, 0x60: a << src, 0x70: a >> src}.get(op, a) & 0xFFFFFFFF
        elif cls == 0x07:                                    # MISC: TAX / TXA
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
        else:
            raise ValueError(f"instruction 0x{code:02x} not handled")


def have_pcapy() -> bool:
    import importlib.util
    return importlib.util.find_spec("pcapy") is not None


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_rx":
        print(json.dumps(receive(sys.argv[2], sys.argv[3])))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_tx":
        print(json.dumps(send(sys.argv[2], int(sys.argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=400_000)
    ap.add_argument("--senders", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--kinds", default="ring,pcap,pcapy,recv,ring+meter,pcap+meter,pcapy+meter",
                    help="receivers to run, comma-separated (pcapy: only if pcapy-ng is "
                         "installed; '' none)")
    ap.add_argument("--meters", default="nfflowd,softflowd",
                    help="meter processes to run on the flood, comma-separated ('' none)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    from nfflowd.io.bpf import libpcap
    print(f"libpcap: {libpcap().pcap_lib_version().decode()}; {os.cpu_count()} CPUs; "
          f"{a.packets} packets from {a.senders} sender(s), snaplen {SNAPLEN}")
    setup()
    try:
        print(f"{'receiver':<12} {'sent':>8} {'sent/s':>9} {'received':>9} {'dropped':>8} "
              f"{'recv/s':>9} {'CPU us/pkt':>10}")
        for r in range(a.rounds):
            for kind in filter(None, a.kinds.split(",")):
                if kind.startswith("pcapy") and not have_pcapy():
                    continue
                o = one(kind, a.packets, a.senders)
                rate = o["received"] / o["busy"] if o["busy"] else 0.0
                cpu = o["cpu"] / o["received"] * 1e6 if o["received"] else 0.0
                print(f"{kind:<12} {o['sent']:>8} {o['send_rate']:>9.0f} {o['received']:>9} "
                      f"{o['kernel_drops']:>8} {rate:>9.0f} {cpu:>10.2f}", flush=True)
        meters = [m for m in a.meters.split(",") if m]
        if "softflowd" in meters and not shutil.which("softflowd"):
            print("softflowd not installed: nfflowd alone")
            meters.remove("softflowd")
        if meters:
            import tempfile
            print(f"{'meter':<12} {'sent':>8} {'sent/s':>9} {'received':>9} {'dropped':>8} "
                  f"{'drop %':>7} {'metered':>9} {'CPU s':>6} {'CPU us/pkt sent':>15}")
            for r in range(a.rounds):
                for kind in meters:
                    with tempfile.TemporaryDirectory(prefix="bench_capture.") as tmp:
                        o = meter_process(kind, a.packets, a.senders, Path(tmp))
                    rate = (100 * o["drops"] / o["received"] if o["received"] else 0.0)
                    print(f"{kind:<12} {o['sent']:>8} {o['send_rate']:>9.0f} "
                          f"{o['received']!s:>9} {o['drops']!s:>8} {rate:>7.1f} "
                          f"{o['metered']!s:>9} {o['cpu']:>6.2f} "
                          f"{o['cpu'] / o['sent'] * 1e6:>15.2f}", flush=True)
    finally:
        teardown()
    # the BPF filter on capture files: libpcap's bpf_filter per frame
    from nfflowd.io.bpf import Filter
    fr = [(0, 1, f, len(f)) for f in frames()] * 100
    expr = "udp and src portrange 10000-10511"
    f = Filter(expr)
    t0 = time.process_time()
    kept = f.keep(fr)
    dt = time.process_time() - t0
    print(f"file filter {expr!r} (bpf_filter via ctypes): {len(kept)} of {len(fr)} "
          f"frames kept, {dt / len(fr) * 1e9:.0f} ns CPU per frame")
    prog = f.program(1).instructions()
    t0 = time.process_time()
    n = sum(1 for x in fr if py_bpf(prog, x[2], x[3]))
    dt = time.process_time() - t0
    print(f"the same, a classic-BPF interpreter in Python ({len(prog)} instructions): "
          f"{n} kept, {dt / len(fr) * 1e9:.0f} ns CPU per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
