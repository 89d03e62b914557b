"""The UDP export sink: datagrams from an encoder -> one collector.

Strategy: the encoders are sans-IO and return bytes; this is the only place
they meet a socket.  One ``UdpCollector`` per configured collector.  The socket
is non-blocking, so a dead or slow collector never stalls the daemon's loop;
every failure is counted (``send_errors``, ``last_error``) and the next
``send`` simply tries again.  Nothing here raises on the data path.

The export source address: when configured and an address of this host, the
socket is bound to it (port 0) so datagrams leave from it.  When it is not
local (EADDRNOTAVAIL) or of the other address family, the socket is left
unbound (the kernel chooses) and ``bind_problem`` says why, for the daemon to
log once.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from .errors import NfflowdError


class ExportError(NfflowdError):
    """A collector cannot be set up at all (its host name does not resolve)."""


class UdpCollector:
    def __init__(self, host: str, port: int, source: str | None = None):
        self.host = host
        self.port = port
        self.source = source
        try:
            ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as e:
            raise ExportError(f"collector {host}:{port}: cannot resolve: {e}") from None
        self.family, _, _, _, self.sockaddr = ai[0]
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.records_sent = 0
        self.send_errors = 0
        self.last_error: str | None = None
        self.bound = False
        self.bind_problem: str | None = None
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        if source is not None:
            self._bind(source)
        # Connected UDP: ICMP errors (port unreachable...) come back as errors
        # on later sends, which are counted.  connect() itself only fails when
        # there is no route; then sendto is used and connect is retried.
        self._connected = self._try_connect()

    def _bind(self, source: str) -> None:
        try:
            ip = ipaddress.ip_address(source)
        except ValueError:
            self.bind_problem = f"export source {source!r} is not an IP address"
            return
        fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        if fam != self.family:
            self.bind_problem = (f"export source {source} is IPv{ip.version} but the collector "
                                 f"{self.host} is not: the kernel chooses the source address")
            return
        try:
            self.sock.bind((source, 0))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                self.bind_problem = (f"export source {source} is not an address of this host: "
                                     "the kernel chooses the source address")
            else:
                self.bind_problem = f"cannot bind to export source {source}: {e.strerror}"
            return
        self.bound = True

    def _try_connect(self) -> bool:
        try:
            self.sock.connect(self.sockaddr)
            return True
        except OSError as e:
            self._error(e)
            return False

    def _error(self, e: OSError) -> None:
        self.send_errors += 1
        self.last_error = errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)

    def send(self, datagram: bytes, records: int = 0) -> bool:
        """Send one datagram (``records``: how many flow records it carries, for
        the counters).  Returns whether it left; never raises."""
        try:
            if self._connected:
                self.sock.send(datagram)
            else:
                self._connected = self._try_connect()
                if not self._connected:
                    return False
                self.sock.send(datagram)
        except OSError as e:
            # ECONNREFUSED (an earlier datagram hit a closed port), ENETUNREACH,
            # EHOSTUNREACH, EAGAIN/ENOBUFS (socket buffer full), EMSGSIZE...:
            # counted; the datagram is lost; the next send tries again.
            self._error(e)
            return False
        self.datagrams_sent += 1
        self.bytes_sent += len(datagram)
        self.records_sent += records
        return True

    def stats(self) -> dict:
        return {"datagrams_sent": self.datagrams_sent, "records_sent": self.records_sent,
                "bytes_sent": self.bytes_sent, "send_errors": self.send_errors,
                "last_error": self.last_error}

    def close(self) -> None:
        self.sock.close()
