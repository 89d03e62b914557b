"""TLS ClientHello and ServerHello: server name, ALPN, version, JA3, JA4.

Two levels, both sans-IO, never raising, bounded by their input:

- ``parse_client_hello(message)`` / ``parse_server_hello(message)``: one bare
  Handshake message (type, 3-byte length, body), as a TLS record carries it
  or a QUIC Initial's CRYPTO frames do: ``(hello, None)`` or ``(None,
  reason)``.  The hello keeps what the fingerprints need (``ClientHello``,
  ``ServerHello``) and ``extensions`` ({type: data}, the first of a type).
- ``inspect(payload, quic=False)``: the first payload of a TCP direction, a
  stream of TLS records: ``(fields, reason)``, the fields named as
  ``FlowBatch.l7`` names them (client: ``tls_sni``, ``tls_alpn``,
  ``tls_version``, ``tls_ja3``, ``tls_ja4``; server: ``tls_alpn``,
  ``tls_version``).  ``(None, None)``: not a TLS handshake.  A handshake
  record longer than the payload gives ``reason`` ``"tls_truncated"``;
  ``needed(payload)`` then says how many bytes the whole record takes (at
  most ``MAX_RECORD``) so the caller can join the next segment and retry.

JA3 is Salesforce's string (legacy version, ciphers, extensions, groups,
point formats; GREASE values left out) and its md5, as tshark's
``tls.handshake.ja3_full`` / ``tls.handshake.ja3``; JA4 is FoxIO's
``JA4`` (the ``a_b_c`` form with truncated sha256 hashes).
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["ClientHello", "ServerHello", "parse_client_hello", "parse_server_hello",
           "inspect", "needed", "ja3_string", "ja4", "is_grease", "GREASE", "MAX_RECORD", "REASONS"]

# a TLS record's payload is at most 2^14 bytes (RFC 8446 section 5.1), plus its header
MAX_RECORD = 5 + 16384
# the handshake bytes gathered over consecutive records of one payload
MAX_HANDSHAKE = 65536

EXT_SNI = 0x0000
EXT_GROUPS = 0x000A
EXT_POINT_FORMATS = 0x000B
EXT_SIG_ALGS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B

REASONS = ("tls_truncated", "tls_bad_record", "tls_not_hello", "tls_bad_hello",
           "tls_bad_extension", "tls_too_long", "tls_parser_error")


GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))


def is_grease(v: int) -> bool:
    """A GREASE value (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa."""
    return v in GREASE


class ClientHello:
    """What a ClientHello says: ``legacy_version``, ``ciphers`` and
    ``ext_types`` (in order, GREASE included), ``extensions`` ({type: data}),
    ``sni`` (str or None), ``alpn`` (the protocols, in order), ``versions``
    (supported_versions), ``groups``, ``point_formats``, ``sig_algs``."""

    __slots__ = ("legacy_version", "ciphers", "ext_types", "extensions", "sni", "alpn",
                 "versions", "groups", "point_formats", "sig_algs")

    def __init__(self):
        self.legacy_version = 0
        self.ciphers: list[int] = []
        self.ext_types: list[int] = []
        self.extensions: dict[int, bytes] = {}
        self.sni: str | None = None
        self.alpn: list[str] = []
        self.versions: list[int] = []
        self.groups: list[int] = []
        self.point_formats: list[int] = []
        self.sig_algs: list[int] = []

    @property
    def version(self) -> int:
        """The highest version offered: supported_versions (GREASE left out)
        if there, else the legacy version."""
        real = [v for v in self.versions if not is_grease(v)]
        return max(real) if real else self.legacy_version


class ServerHello:
    """What a ServerHello says: ``legacy_version``, ``cipher``,
    ``extensions``, ``alpn`` (the chosen protocol or None), ``selected``
    (supported_versions' one version, or None)."""

    __slots__ = ("legacy_version", "cipher", "ext_types", "extensions", "alpn", "selected")

    def __init__(self):
        self.legacy_version = 0
        self.cipher = 0
        self.ext_types: list[int] = []
        self.extensions: dict[int, bytes] = {}
        self.alpn: str | None = None
        self.selected: int | None = None

    @property
    def version(self) -> int:
        return self.selected if self.selected is not None else self.legacy_version


def _u16_list(data: bytes, off: int, end: int) -> list[int]:
    return list(struct.unpack_from(f"!{(end - off) >> 1}H", data, off))


def _extensions(body: bytes, off: int, end: int, h) -> list | None:
    """The extension block at ``off`` into ``h.ext_types`` (every type, in
    order) and ``h.extensions`` (the first of each type): those first
    ``(type, data)``, or None if malformed.  Its absence (``off == end``)
    is an empty block."""
    if off == end:
        return []
    if off + 2 > end:
        return None
    total = (body[off] << 8) | body[off + 1]
    off += 2
    if off + total > end:
        return None
    stop = off + total
    out = []
    while off < stop:
        if off + 4 > stop:
            return None
        t = (body[off] << 8) | body[off + 1]
        n = (body[off + 2] << 8) | body[off + 3]
        off += 4
        if off + n > stop:
            return None
        h.ext_types.append(t)
        if t not in h.extensions:
            h.extensions[t] = body[off:off + n]
            out.append((t, h.extensions[t]))
        off += n
    return out


def _alpn_list(data: bytes):
    """ALPN's protocol_name_list (RFC 7301): the names or None."""
    if len(data) < 2:
        return None
    n = (data[0] << 8) | data[1]
    if n + 2 != len(data):
        return None
    out = []
    off = 2
    while off < len(data):
        ln = data[off]
        off += 1
        if ln == 0 or off + ln > len(data):
            return None
        out.append(data[off:off + ln].decode("ascii", "replace"))
        off += ln
    return out


def _server_name(data: bytes):
    """The host_name of server_name's list (RFC 6066 section 3), "" if none,
    None if malformed."""
    if len(data) < 2:
        return None
    n = (data[0] << 8) | data[1]
    if n + 2 != len(data):
        return None
    off = 2
    while off + 3 <= len(data):
        kind = data[off]
        ln = (data[off + 1] << 8) | data[off + 2]
        off += 3
        if off + ln > len(data):
            return None
        if kind == 0:
            return data[off:off + ln].decode("ascii", "replace")
        off += ln
    return "" if off == len(data) else None


def _hello(message: bytes, kind: int):
    """The body of a hello Handshake message of type ``kind`` and the offset
    past its session id: ``(body, offset, None)`` or ``(None, 0, reason)``."""
    if len(message) < 4:
        return None, 0, "tls_truncated"
    if message[0] != kind:
        return None, 0, "tls_not_hello"
    n = int.from_bytes(message[1:4], "big")
    if 4 + n > len(message):
        return None, 0, "tls_truncated"
    body = message[4:4 + n]
    # version 2, random 32, session id 1+n
    if n < 35:
        return None, 0, "tls_bad_hello"
    return body, 35 + body[34], None


def parse_client_hello(message: bytes):
    """A bare ClientHello Handshake message (type 1): ``(ClientHello, None)``
    or ``(None, reason)``.  Bytes past the message are ignored."""
    try:
        body, off, reason = _hello(message, 1)
        if body is None:
            return None, reason
        end = len(body)
        h = ClientHello()
        h.legacy_version = (body[0] << 8) | body[1]
        if off + 2 > end:
            return None, "tls_bad_hello"
        n = (body[off] << 8) | body[off + 1]
        off += 2
        if n % 2 or off + n > end:
            return None, "tls_bad_hello"
        h.ciphers = _u16_list(body, off, off + n)
        off += n
        if off + 1 > end:
            return None, "tls_bad_hello"
        off += 1 + body[off]                       # compression methods
        if off > end:
            return None, "tls_bad_hello"
        exts = _extensions(body, off, end, h)
        if exts is None:
            return None, "tls_bad_extension"
        for t, data in exts:
            if t == EXT_SNI:
                name = _server_name(data)
                if name is None:
                    return None, "tls_bad_extension"
                h.sni = name or None
            elif t == EXT_ALPN:
                names = _alpn_list(data)
                if names is None:
                    return None, "tls_bad_extension"
                h.alpn = names
            elif t == EXT_SUPPORTED_VERSIONS:
                if not data or data[0] + 1 != len(data) or data[0] % 2:
                    return None, "tls_bad_extension"
                h.versions = _u16_list(data, 1, len(data))
            elif t == EXT_GROUPS or t == EXT_SIG_ALGS:
                if len(data) < 2 or ((data[0] << 8) | data[1]) + 2 != len(data) or len(data) % 2:
                    return None, "tls_bad_extension"
                if t == EXT_GROUPS:
                    h.groups = _u16_list(data, 2, len(data))
                else:
                    h.sig_algs = _u16_list(data, 2, len(data))
            elif t == EXT_POINT_FORMATS:
                if not data or data[0] + 1 != len(data):
                    return None, "tls_bad_extension"
                h.point_formats = list(data[1:])
        return h, None
    except Exception:           # a bug here must not stop a meter: counted, not raised
        return None, "tls_parser_error"


def parse_server_hello(message: bytes):
    """A bare ServerHello Handshake message (type 2): ``(ServerHello, None)``
    or ``(None, reason)``."""
    try:
        body, off, reason = _hello(message, 2)
        if body is None:
            return None, reason
        end = len(body)
        h = ServerHello()
        h.legacy_version = (body[0] << 8) | body[1]
        if off + 3 > end:
            return None, "tls_bad_hello"
        h.cipher = (body[off] << 8) | body[off + 1]
        off += 3                                   # cipher, compression method
        exts = _extensions(body, off, end, h)
        if exts is None:
            return None, "tls_bad_extension"
        for t, data in exts:
            if t == EXT_ALPN:
                names = _alpn_list(data)
                if names is None or len(names) != 1:
                    return None, "tls_bad_extension"
                h.alpn = names[0]
            elif t == EXT_SUPPORTED_VERSIONS:
                if len(data) != 2:
                    return None, "tls_bad_extension"
                h.selected = (data[0] << 8) | data[1]
        return h, None
    except Exception:
        return None, "tls_parser_error"


def ja3_string(h: ClientHello) -> str:
    """Salesforce's JA3 string of a ClientHello (tshark's ja3_full)."""
    def j(vals):
        return "-".join([str(v) for v in vals if v not in GREASE])
    return ",".join((str(h.legacy_version), j(h.ciphers), j(h.ext_types), j(h.groups),
                     "-".join(str(v) for v in h.point_formats)))


_JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
                 0x0002: "s2", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}


_HEX4 = "{:04x}".format


def _ja4_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def ja4(h: ClientHello, proto: str = "t") -> str:
    """FoxIO's JA4 of a ClientHello; ``proto``: ``t`` (TCP), ``q`` (QUIC)
    or ``d`` (DTLS)."""
    ciphers = [c for c in h.ciphers if c not in GREASE]
    exts = [e for e in h.ext_types if e not in GREASE]
    version = _JA4_VERSIONS.get(h.version, "00")
    alpn = "00"
    if h.alpn and h.alpn[0]:
        raw = h.alpn[0].encode("ascii", "replace")
        if chr(raw[0]).isalnum() and chr(raw[-1]).isalnum() and raw[0] < 128 and raw[-1] < 128:
            alpn = chr(raw[0]) + chr(raw[-1])
        else:
            hx = raw.hex()
            alpn = hx[0] + hx[-1]
    a = (f"{proto}{version}{'d' if EXT_SNI in h.extensions else 'i'}"
         f"{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{alpn}")
    b = _ja4_hash(",".join(map(_HEX4, sorted(ciphers))))
    ext_text = ",".join(map(_HEX4, sorted(e for e in exts if e != EXT_SNI and e != EXT_ALPN)))
    sigs = ",".join(map(_HEX4, h.sig_algs))
    c = _ja4_hash(ext_text + ("_" + sigs if sigs else ""))
    return f"{a}_{b}_{c}"


def needed(payload: bytes) -> int:
    """The bytes the first TLS record of ``payload`` takes (header
    included), at most ``MAX_RECORD``; 0 if ``payload`` does not start with
    a handshake record header."""
    if len(payload) < 5 or payload[0] != 0x16 or payload[1] != 3:
        return 0
    return min(5 + ((payload[3] << 8) | payload[4]), MAX_RECORD)


def _handshake(payload: bytes):
    """The handshake bytes of the records at the start of ``payload`` (until
    the first handshake message is whole or another content type comes):
    (bytes, reason)."""
    out = bytearray()
    off = 0
    while off < len(payload):
        if off + 5 > len(payload):
            return bytes(out), "tls_truncated"
        if payload[off] != 0x16:
            break
        if payload[off + 1] != 3:
            return bytes(out), "tls_bad_record"
        n = (payload[off + 3] << 8) | payload[off + 4]
        if n == 0 or n > 16384 + 2048:
            return bytes(out), "tls_bad_record"
        if off + 5 + n > len(payload):
            out += payload[off + 5:]
            return bytes(out), "tls_truncated"
        out += payload[off + 5:off + 5 + n]
        off += 5 + n
        if len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[1:4], "big"):
            break
        if len(out) > MAX_HANDSHAKE:
            return bytes(out), "tls_too_long"
    if len(out) < 4 or len(out) < 4 + int.from_bytes(out[1:4], "big"):
        return bytes(out), "tls_truncated"
    return bytes(out), None


def inspect(payload: bytes, quic: bool = False):
    """The first payload of a TCP direction: ``(fields, reason)``; ``(None,
    None)`` when it is not a TLS handshake record."""
    if len(payload) < 2 or payload[0] != 0x16 or payload[1] != 3:
        return None, None
    if len(payload) >= 6 and payload[5] not in (1, 2):
        return None, None       # another handshake message (or an encrypted one)
    try:
        data, reason = _handshake(payload)
    except Exception:
        return None, "tls_parser_error"
    if reason is not None:
        return None, reason
    kind = data[0]
    if kind == 1:
        h, reason = parse_client_hello(data)
        if h is None:
            return None, reason
        fields = {"tls_version": h.version}
        if h.sni:
            fields["tls_sni"] = h.sni
        if h.alpn:
            fields["tls_alpn"] = h.alpn[0]
        fields["tls_ja3"] = hashlib.md5(ja3_string(h).encode()).hexdigest()
        fields["tls_ja4"] = ja4(h, "q" if quic else "t")
        return fields, None
    if kind == 2:
        s, reason = parse_server_hello(data)
        if s is None:
            return None, reason
        fields = {"tls_version": s.version}
        if s.alpn:
            fields["tls_alpn"] = s.alpn
        return fields, None
    return None, None
