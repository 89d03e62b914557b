"""Application payloads for the L7 benchmark's capture: the first messages of
TLS, HTTP/1.1 and DNS exchanges as a browser, a server, curl and a resolver
send them (sizes and extension lists of Chrome's ClientHello, a TLS 1.3
ServerHello with its first encrypted records, DNS answers with name
compression).  Seeded by the caller's ``random.Random``; no I/O.
"""

from __future__ import annotations

import struct

__all__ = ["client_hello", "server_hello", "http_request", "http_response", "dns_query",
           "dns_response"]

_GREASE = [0x0A0A + 0x1010 * i for i in range(16)]
_SUITES = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013,
           0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
_SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def _u16list(values, width: int = 2) -> bytes:
    body = b"".join(struct.pack("!H", v) for v in values)
    return struct.pack("!H" if width == 2 else "!B", len(body)) + body


def client_hello(sni: str, rng, alpn=(b"h2", b"http/1.1")) -> bytes:
    """A TLS record holding a Chrome-like ClientHello for ``sni`` (padded to
    512 bytes of handshake, as Chrome pads)."""
    g = rng.choice(_GREASE)
    name = sni.encode()
    alpn_list = b"".join(bytes([len(a)]) + a for a in alpn)
    exts = [
        _ext(g, b""),
        _ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name),
        _ext(23, b""), _ext(0xFF01, b"\x00"),
        _ext(10, _u16list([rng.choice(_GREASE), 29, 23, 24])),
        _ext(11, b"\x01\x00"), _ext(35, b""),
        _ext(16, struct.pack("!H", len(alpn_list)) + alpn_list),
        _ext(5, b"\x01\x00\x00\x00\x00"),
        _ext(13, _u16list(_SIGALGS)), _ext(18, b""),
        _ext(51, struct.pack("!H", 4 + 1 + 4 + 32) + struct.pack("!HH", rng.choice(_GREASE), 1)
             + b"\x00" + struct.pack("!HH", 29, 32) + rng.randbytes(32)),
        _ext(45, b"\x01\x01"),
        _ext(43, b"\x06" + struct.pack("!HHH", rng.choice(_GREASE), 0x0304, 0x0303)),
        _ext(27, b"\x02\x00\x02"),
        _ext(17513, b"\x00\x03\x02h2"),
        _ext(rng.choice(_GREASE), b"\x00"),
    ]
    suites = _u16list([g] + _SUITES)
    head = b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32) + suites + b"\x01\x00"
    body_len = len(head) + 2 + sum(map(len, exts))
    pad = 512 - 4 - body_len - 4
    if pad > 0:
        exts.append(_ext(21, bytes(pad)))
    ext = b"".join(exts)
    body = head + struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def server_hello(rng, size: int = 1400) -> bytes:
    """A TLS 1.3 ServerHello record, ChangeCipherSpec and the start of the
    encrypted handshake: ``size`` bytes (the server's first segment)."""
    ext = _ext(43, b"\x03\x04") + _ext(51, struct.pack("!HH", 29, 32) + rng.randbytes(32))
    body = (b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32) + b"\x13\x01\x00"
            + struct.pack("!H", len(ext)) + ext)
    hs = b"\x02" + struct.pack("!I", len(body))[1:] + body
    out = b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs + b"\x14\x03\x03\x00\x01\x01"
    rest = max(5, size - len(out))
    return out + b"\x17\x03\x03" + struct.pack("!H", 4000) + rng.randbytes(rest - 5)


def http_request(host: str, path: str, agent: str = "curl/8.5.0") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n"
            "Accept: */*\r\n\r\n").encode()


def http_response(rng, size: int = 1400) -> bytes:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Length: 48213\r\nCache-Control: max-age=600\r\n\r\n")
    return head + rng.randbytes(max(0, size - len(head)))


def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def dns_query(name: str, qid: int, qtype: int = 1) -> bytes:
    return (struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1) + _qname(name)
            + struct.pack("!HH", qtype, 1) + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")


def dns_response(name: str, qid: int, rng, qtype: int = 1, answers: int = 2,
                 rcode: int = 0) -> bytes:
    out = (struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, answers if not rcode else 0, 0, 0)
           + _qname(name) + struct.pack("!HH", qtype, 1))
    for _ in range(answers if not rcode else 0):
        if qtype == 28:
            out += b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 300, 16) + rng.randbytes(16)
        else:
            out += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + rng.randbytes(4)
    return out
