"""BPF filters in tcpdump syntax: compiled by libpcap, run by the kernel or here.

Strategy: libpcap is the one compiler of tcpdump's filter language (pcap-filter(7));
nothing here parses an expression.  ``compile_filter(expr, linktype, snaplen)``
calls ``pcap_compile`` on a ``pcap_open_dead`` handle through ctypes and
returns a ``Program``: the classic BPF instructions (``struct bpf_insn``,
8 bytes each, the same layout as Linux's ``struct sock_filter``), which

- ``Program.sock_fprog()`` hands to the kernel for a live socket
  (``SO_ATTACH_FILTER``, see ``nfflowd.io.capture``): filtered-out packets never
  reach user space, and the program's accept value (the snaplen given here)
  caps how much of each packet is copied;
- ``Filter.keep(batch)`` runs it on each captured frame of a capture file,
  through libpcap's own interpreter (``bpf_filter``); one ctypes call per
  frame (bench/bench_capture.py prints its cost).

A filter is compiled per link type, so ``Filter`` (a capture file may mix link
types in pcapng) compiles lazily and caches one program per link type.  An
expression libpcap rejects raises ``FilterError`` carrying libpcap's message;
the command line reports it with exit status 2.

libpcap is found by ``ctypes.util.find_library('pcap')`` and, failing that,
by its Debian soname ``libpcap.so.0.8`` (package libpcap0.8).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct

from nfflowd.errors import NfflowdError

__all__ = ["FilterError", "Program", "Filter", "compile_filter", "libpcap"]

PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
# pcap_open_dead takes a DLT_* value; capture files carry LINKTYPE_* values,
# equal except for these (tcpdump.org linktypes: LINKTYPE_RAW is DLT_RAW, 12
# on Linux)
_DLT = {101: 12}
DEFAULT_SNAPLEN = 262144           # libpcap's MAXIMUM_SNAPLEN


class FilterError(NfflowdError):
    """A filter expression that cannot be compiled (or no libpcap to compile it)."""


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_lib = None


def libpcap():
    """The loaded libpcap (ctypes.CDLL), with the prototypes used here declared."""
    global _lib
    if _lib is not None:
        return _lib
    names = [n for n in (ctypes.util.find_library("pcap"), "libpcap.so.0.8", "libpcap.so.1",
                         "libpcap.so") if n]
    problems = []
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            problems.append(str(e))
    else:
        raise FilterError("libpcap is needed to compile BPF filters and was not found "
                          f"({'; '.join(problems) or 'no candidate'}); Debian: "
                          "apt-get install libpcap0.8")
    vp = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_open_dead.restype = vp
    lib.pcap_compile.argtypes = [vp, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_geterr.argtypes = [vp]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_freecode.restype = None
    lib.pcap_close.argtypes = [vp]
    lib.pcap_close.restype = None
    lib.bpf_image.argtypes = [vp, ctypes.c_int]
    lib.bpf_image.restype = ctypes.c_char_p
    lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.pcap_create.restype = vp
    for name in ("pcap_set_snaplen", "pcap_set_buffer_size", "pcap_set_timeout"):
        getattr(lib, name).argtypes = [vp, ctypes.c_int]
        getattr(lib, name).restype = ctypes.c_int
    lib.pcap_activate.argtypes = [vp]
    lib.pcap_activate.restype = ctypes.c_int
    lib.pcap_statustostr.argtypes = [ctypes.c_int]
    lib.pcap_statustostr.restype = ctypes.c_char_p
    lib.pcap_datalink.argtypes = [vp]
    lib.pcap_datalink.restype = ctypes.c_int
    lib.pcap_lib_version.argtypes = []
    lib.pcap_lib_version.restype = ctypes.c_char_p
    _lib = lib
    return lib


class Program:
    """One compiled classic BPF program (instructions owned by Python)."""

    def __init__(self, expression: str, linktype: int, snaplen: int, code: bytes):
        self.expression = expression
        self.linktype = linktype
        self.snaplen = snaplen
        self.code = code                               # n * 8 bytes of struct bpf_insn
        self._insns = ctypes.create_string_buffer(code, len(code))
        self._addr = ctypes.addressof(self._insns)
        # bpf_filter without argtypes, the instructions as a ready c_void_p:
        # 0.8 us a call here instead of 2 us with ctypes converting each argument
        self._run = libpcap()["bpf_filter"]
        self._run.restype = ctypes.c_uint
        self._ptr = ctypes.c_void_p(self._addr)

    def __len__(self) -> int:
        return len(self.code) // 8

    def instructions(self) -> list[tuple[int, int, int, int]]:
        """(code, jt, jf, k) per instruction."""
        return list(struct.iter_unpack("=HBBI", self.code))

    def sock_fprog(self) -> tuple[bytes, object]:
        """(the ``struct sock_fprog`` for setsockopt(SO_ATTACH_FILTER), the
        buffer it points to: keep it alive until the call returns)."""
        return struct.pack("HL", len(self), self._addr), self._insns

    def dump(self) -> str:
        """The program as ``tcpdump -d`` prints it."""
        lib = libpcap()
        arr = (_BpfInsn * len(self)).from_buffer_copy(self.code)
        return "\n".join(lib.bpf_image(ctypes.byref(arr[i]), i).decode()
                         for i in range(len(self)))


def compile_filter(expression: str, linktype: int = 1,
                   snaplen: int = DEFAULT_SNAPLEN, optimize: bool = True) -> Program:
    """Compile a tcpdump filter expression for frames of ``linktype``
    (LINKTYPE_*; 1 Ethernet).  Accepted packets are kept up to ``snaplen``
    bytes (what the kernel copies for a live socket).  Raises FilterError
    with libpcap's message when the expression is not valid."""
    lib = libpcap()
    handle = lib.pcap_open_dead(_DLT.get(int(linktype), int(linktype)), int(snaplen))
    if not handle:
        raise FilterError(f"libpcap cannot open a handle for link type {linktype}")
    return _compile(lib, handle, expression, int(linktype), snaplen, optimize)


def compile_for_interface(expression: str, iface: str, linktype: int,
                          snaplen: int = DEFAULT_SNAPLEN) -> Program:
    """Compile for the kernel filter of a live socket on ``iface``.

    On Linux the kernel takes an offloaded 802.1Q tag out of the frame before
    the socket filter runs (it is in the packet's metadata), so ``vlan``
    must test the ancillary VLAN fields rather than the bytes; libpcap
    generates that code only for a handle activated on the interface, which
    is what this does (pcap_create, pcap_activate: needs the capture
    privilege), then compiles and closes it.  If the handle cannot be
    activated, the expression is compiled as ``compile_filter`` does."""
    lib = libpcap()
    errbuf = ctypes.create_string_buffer(512)
    handle = lib.pcap_create(iface.encode(), errbuf)
    if handle:
        lib.pcap_set_snaplen(handle, int(snaplen))
        lib.pcap_set_buffer_size(handle, 1 << 16)
        lib.pcap_set_timeout(handle, 100)
        if lib.pcap_activate(handle) >= 0 and lib.pcap_datalink(handle) == \
                _DLT.get(linktype, linktype):
            return _compile(lib, handle, expression, linktype, snaplen, True)
        lib.pcap_close(handle)
    return compile_filter(expression, linktype, snaplen)


def _compile(lib, handle, expression: str, linktype: int, snaplen: int,
             optimize: bool) -> Program:
    """pcap_compile on ``handle``, which is closed afterwards."""
    prog = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), int(optimize),
                            PCAP_NETMASK_UNKNOWN) != 0:
            why = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
            on = ""
            if linktype != 1:
                from nfflowd.packet import LINKTYPES
                on = f" for link type {linktype} ({LINKTYPES.get(linktype, 'unknown')})"
            raise FilterError(f"bad BPF filter {expression!r}{on}: {why}")
        code = ctypes.string_at(prog.bf_insns, prog.bf_len * 8)
        lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(handle)
    return Program(expression, int(linktype), int(snaplen), code)


class Filter:
    """A filter expression for any link type: compiled once per link type met.

    ``keep(batch)`` returns the frames of a ``CaptureReader`` batch
    (``(ts_ns, linktype, data, orig_len)`` tuples) that pass, and counts the
    others in ``rejected``.  A link type libpcap cannot compile the
    expression for (e.g. ``vlan 10`` on raw IP) raises FilterError."""

    def __init__(self, expression: str, snaplen: int = DEFAULT_SNAPLEN):
        self.expression = expression
        self.snaplen = snaplen
        self.rejected = 0
        self._programs: dict[int, Program] = {}

    def program(self, linktype: int) -> Program:
        p = self._programs.get(linktype)
        if p is None:
            p = self._programs[linktype] = compile_filter(self.expression, linktype,
                                                          self.snaplen)
        return p

    def check(self, linktype: int = 1) -> None:
        """Compile for ``linktype`` now, so a bad expression is reported
        before any input is read."""
        self.program(linktype)

    def keep(self, batch: list, limit: int | None = None) -> list:
        """The frames of ``batch`` that pass, at most ``limit`` of them (the
        frames after the last one kept are neither kept nor counted)."""
        out = []
        append = out.append
        lt = None
        run = addr = None
        seen = 0
        for frame in batch:
            if frame[1] != lt:
                lt = frame[1]
                p = self.program(lt)
                run, addr = p._run, p._ptr
            seen += 1
            data = frame[2]
            if run(addr, data, frame[3], len(data)):
                append(frame)
                if limit is not None and len(out) >= limit:
                    break
        self.rejected += seen - len(out)
        return out
