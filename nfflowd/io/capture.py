"""Packets in from a live interface: the meter's capture edge.

Strategy: the flow table (``nfflowd.meter``) never reads a socket or the
clock; this module reads the socket and hands out batches of
``(timestamp_ns, linktype, data, original_length)`` frames, the same tuples
``CaptureReader`` yields for files, so one table and one loop serve
``meter -r`` and ``meter -i`` (``nfflowd.app.meters``).

Live capture: ``RingCapture`` is an AF_PACKET socket with a memory-mapped
TPACKET_V3 receive ring (packet(7), Documentation/networking/packet_mmap.rst):
the kernel fills blocks of packets and hands a block over when it is full or
``block_timeout_ms`` after its first packet; we read a block's packets
straight out of the shared memory and give the block back.  One wake-up (and
one system call, the ``select``) per block instead of one ``recvfrom`` per
packet.  libpcap does the same on Linux; bench/bench_capture.py measures the
two on a flooded veth pair (packets/s, CPU per packet, kernel drops), which is
why this adapter, and not a libpcap binding, is the one nfflowd uses.

- The BPF filter (tcpdump syntax, compiled by libpcap: ``nfflowd.io.bpf``) runs in
  the kernel (SO_ATTACH_FILTER); its accept value is the snapshot length, so
  the kernel copies at most ``snaplen`` bytes of each packet into the ring.
  It is compiled on a libpcap handle activated on the interface
  (``compile_for_interface``), so that ``vlan`` tests the tag the kernel
  took out of the frame, as tcpdump's filters do.
  Without a filter the program is libpcap's for the empty expression (accept
  all, up to ``snaplen``).
- No packet can slip in unfiltered: the socket is opened with protocol 0
  (receives nothing), gets its filter and its ring, and only then is bound to
  the interface with ETH_P_ALL.
- Kernel statistics: PACKET_STATISTICS (reset by each read; accumulated
  here): packets the socket received and packets dropped because the ring was
  full.  Packets the filter rejected are not counted by the kernel.
- VLAN: the kernel strips an 802.1Q tag a NIC (or veth) offloaded and reports
  it in ``tp_vlan_tci``; it is put back in the frame, as libpcap does, so the
  parser sees the frames a capture file would hold.
- Both directions are captured (incoming and outgoing), as tcpdump does.

``InterfaceMeters`` holds the daemon's captures and their flow tables.
"""

from __future__ import annotations

import mmap
import socket
import struct
import threading

from nfflowd.errors import SourceError
from nfflowd.packet import PacketParser

__all__ = ["RingCapture", "InterfaceMeters", "linktype_of"]

# <linux/if_packet.h>, <linux/if_ether.h>, <asm-generic/socket.h>
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6

# ARPHRD_* (<linux/if_arp.h>) -> LINKTYPE_* of the frames an AF_PACKET
# SOCK_RAW socket delivers on such a device
_LINKTYPES = {1: 1,            # ARPHRD_ETHER -> Ethernet
              772: 1,          # ARPHRD_LOOPBACK: an Ethernet header of zeros
              65534: 101,      # ARPHRD_NONE (tun, wireguard): raw IP
              }

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
# block_status (8), num_pkts (12), offset_to_first_pkt (16)
_BLOCK = struct.Struct("=III")          # at offset 8
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len,
# tp_status, tp_mac (u16), tp_net (u16), hv1: tp_rxhash, tp_vlan_tci, tp_vlan_tpid (u16)
_PKT = struct.Struct("=IIIIIIH")
_VLAN = struct.Struct("=IH")            # tp_vlan_tci, tp_vlan_tpid at offset 32
_RELEASE = struct.pack("=I", TP_STATUS_KERNEL)


def linktype_of(iface: str) -> int:
    """The LINKTYPE_* of ``iface``'s frames, from its ARPHRD type in sysfs."""
    try:
        with open(f"/sys/class/net/{iface}/type") as f:
            arphrd = int(f.read())
    except (OSError, ValueError):
        raise SourceError(f"no such network interface: {iface!r}") from None
    lt = _LINKTYPES.get(arphrd)
    if lt is None:
        raise SourceError(f"interface {iface!r} has link type ARPHRD {arphrd}, which the "
                          "meter cannot parse (Ethernet, loopback and raw IP devices only)")
    return lt


class RingCapture:
    """A live capture on ``iface`` through a TPACKET_V3 ring.

    ``read()`` returns the frames of every block the kernel has handed over
    (possibly none) as ``(ts_ns, linktype, data, orig_len)``; ``fileno()`` is
    readable when a block is ready.  ``kernel_stats()`` returns (packets,
    drops) since the socket opened.  Needs CAP_NET_RAW.  Raises SourceError
    (no such interface, no permission) or ``bpf.FilterError``."""

    def __init__(self, iface: str, bpf: str | None = None, snaplen: int = 256,
                 block_size: int = 1 << 20, block_nr: int = 16, block_timeout_ms: int = 50):
        from nfflowd.io.bpf import compile_for_interface
        self.iface = iface
        self.linktype = linktype_of(iface)
        self.snaplen = int(snaplen)
        self.program = compile_for_interface(bpf or "", iface, self.linktype, self.snaplen)
        self.block_size = int(block_size)
        self.block_nr = int(block_nr)
        self.kernel_packets = 0
        self.kernel_drops = 0
        # PACKET_STATISTICS resets the kernel's counts on every read, and a
        # metrics scrape reads them from another thread: read and add under a lock
        self._stats_lock = threading.Lock()
        self.frames = 0
        self._block = 0
        self._ring = None
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise SourceError(f"capturing on {iface} needs root (CAP_NET_RAW)") from None
        try:
            fprog, _keep = self.program.sock_fprog()
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_size = 2048
            req = struct.pack("=7I", self.block_size, self.block_nr, frame_size,
                              self.block_size * self.block_nr // frame_size,
                              int(block_timeout_ms), 0, 0)
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._ring = mmap.mmap(self.sock.fileno(), self.block_size * self.block_nr,
                                   mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.sock.bind((iface, ETH_P_ALL))
            self.sock.setblocking(False)
            # the records' ingress interface: this one's index, in this namespace
            self.ifindex = socket.if_nametoindex(iface)
        except OSError as e:
            self.close()
            raise SourceError(f"cannot capture on {iface}: {e.strerror or e}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, max_blocks: int | None = None) -> list:
        """The frames of the blocks ready now, in order; the blocks go back
        to the kernel."""
        ring = self._ring
        bs = self.block_size
        nr = self.block_nr
        lt = self.linktype
        unpack_block = _BLOCK.unpack_from
        unpack_pkt = _PKT.unpack_from
        out: list = []
        append = out.append
        left = nr if max_blocks is None else max_blocks
        while left > 0:
            base = self._block * bs
            status, num, p = unpack_block(ring, base + 8)
            if not status & TP_STATUS_USER:
                break
            p += base
            for _ in range(num):
                nxt, sec, nsec, caplen, wirelen, st, mac = unpack_pkt(ring, p)
                start = p + mac
                data = ring[start:start + caplen]
                if st & TP_STATUS_VLAN_VALID:
                    tci, tpid = _VLAN.unpack_from(ring, p + 32)
                    if not st & TP_STATUS_VLAN_TPID_VALID:
                        tpid = 0x8100
                    if lt == 1:
                        data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
                        wirelen += 4
                append((sec * 1_000_000_000 + nsec, lt, data, wirelen))
                p += nxt
            ring[base + 8:base + 12] = _RELEASE
            self._block = (self._block + 1) % nr
            left -= 1
        self.frames += len(out)
        return out

    def kernel_stats(self) -> tuple[int, int]:
        """(packets received by the socket, packets dropped: ring full),
        accumulated since the start.  tp_packets counts the drops too."""
        with self._stats_lock:
            if self.sock.fileno() >= 0:
                raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
                packets, drops, _freeze = struct.unpack("=III", raw)
                self.kernel_packets += packets
                self.kernel_drops += drops
            return self.kernel_packets, self.kernel_drops

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.kernel_stats()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InterfaceMeters:
    """The daemon's meters: one ``RingCapture`` and one flow table per
    interface of the config's ``meter.interfaces``, for a select loop that
    owns the clock.

    ``sockets`` go into the loop's read set; ``receive(readable, now_ns)``
    meters what the readable ones hold and returns the flows that ended;
    ``next_deadline()`` is the earliest flow deadline (wall-clock ns) and
    ``expire(now_ns)`` the flows due by then; ``flush_all`` ends every flow
    (shutdown).  Opening needs CAP_NET_RAW: open before dropping privileges
    (the sockets keep working after)."""

    def __init__(self, mcfg):
        from nfflowd.meter import FlowTable
        self.meters = []
        try:
            for itf in mcfg.interfaces:
                cap = RingCapture(itf.name, bpf=itf.bpf if itf.bpf is not None else mcfg.bpf,
                                  snaplen=mcfg.snaplen)
                table = FlowTable(active_timeout=mcfg.active_timeout,
                                  inactive_timeout=mcfg.inactive_timeout,
                                  max_flows=mcfg.max_flows, in_if=cap.ifindex)
                self.meters.append((cap, table, PacketParser()))
        except BaseException:
            self.close()
            raise
        self.sockets = [m[0] for m in self.meters]

    def receive(self, readable, now_ns: int) -> list:
        """Meter the readable captures; the flows of every table due by ``now_ns``."""
        for cap, table, parser in self.meters:
            if cap in readable:
                batch = cap.read()
                if batch:
                    table.meter_frames(batch, parser)
        return self.expire(now_ns)

    def next_deadline(self) -> int | None:
        dls = [d for d in (t.next_deadline() for _c, t, _p in self.meters) if d is not None]
        return min(dls) if dls else None

    def expire(self, now_ns: int) -> list:
        out: list = []
        for _cap, table, _parser in self.meters:
            out += table.expire(now_ns)
        return out

    def flush_all(self, now_ns: int) -> list:
        out: list = []
        for cap, table, parser in self.meters:
            batch = cap.read()
            if batch:
                table.meter_frames(batch, parser)
            out += table.flush_all(now_ns)
        return out

    def counters(self) -> dict:
        out = {}
        for cap, table, parser in self.meters:
            kp, kd = cap.kernel_stats()
            p = f"meter.{cap.iface}."
            out.update({p + "frames": cap.frames, p + "packets": table.packets,
                        p + "octets": table.octets, p + "flows_active": len(table),
                        p + "flows_exported": table.flows_exported,
                        p + "flows_evicted": table.evicted,
                        p + "frames_skipped": sum(parser.skipped.values()),
                        p + "length_mismatch": parser.length_mismatch,
                        p + "kernel_packets": kp, p + "kernel_drops": kd})
        return out

    def close(self) -> None:
        for cap, _table, _parser in self.meters:
            cap.close()
        self.meters = []
        self.sockets = []
