"""QUIC Initial packets: the client's server name, user agent and version.

A client's first datagrams carry its TLS ClientHello in CRYPTO frames of
Initial packets, protected with keys that anyone can derive from the packet's
Destination Connection ID (RFC 9001 section 5.2; QUIC v2: RFC 9369 section
3.3; drafts 29 to 34).  ``inspect_datagram`` takes one UDP payload and the
flow's ``QuicState``: it walks the long-header packets of the datagram
(coalesced packets, RFC 9000 section 12.2), removes the header protection of
each Initial (AES-ECB mask), decrypts its payload (AES-128-GCM), walks its
frames (PADDING, PING, ACK, CRYPTO; anything else ends the packet) and puts the
CRYPTO data in place by offset.  Once the ClientHello is whole (one Initial or
several, over the flow's first few datagrams), it goes to the TLS parser of
``nfflowd.l7.tls`` (``parse_client_hello(message) -> (hello, reason)``, the
hello with ``sni`` and ``extensions``, {type: data}); the transport parameters
extension (57; 0xffa5 in drafts) gives Google's user agent (parameter 0x3129,
tshark's ``tls.quic.parameter.google.user_agent``).

Sans-IO: bytes in, fields out.  Nothing raises on any input: what cannot be
read gives a reason string for the caller to count.  Work is bounded: at most
``MAX_PACKETS`` packets per datagram, ``MAX_DATAGRAMS`` datagrams per flow,
``MAX_CRYPTO`` bytes of CRYPTO data kept per flow.

The crypto is the ``cryptography`` library's (AES-GCM, AES-ECB, HKDF-Expand);
HKDF-Extract is one HMAC-SHA256 (RFC 5869 section 2.2), from ``hmac``.
"""
from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from nfflowd.l7 import tls

__all__ = ["QuicState", "inspect_datagram", "initial_keys", "initial_key_material",
           "initial_secrets", "InitialKeys",
           "transport_parameters", "VERSION_1", "VERSION_2", "SALTS",
           "MAX_CRYPTO", "MAX_DATAGRAMS", "MAX_PACKETS", "REASONS"]

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF

_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")

# version -> Initial salt; drafts 29-32 share one salt, 33 and 34 use v1's
SALTS: dict[int, bytes] = {VERSION_1: _SALT_V1, VERSION_2: _SALT_V2}
for _d in range(29, 33):
    SALTS[0xFF000000 | _d] = _SALT_D29
for _d in (33, 34):
    SALTS[0xFF000000 | _d] = _SALT_V1

# HKDF-Expand-Label info prefixes (RFC 8446 section 7.1 "tls13 " + label)
_LABELS_V1 = (b"quic key", b"quic iv", b"quic hp")
_LABELS_V2 = (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")

# the transport parameters extension: 57 (RFC 9001 section 8.2), 0xffa5 in drafts
EXT_TRANSPORT_PARAMETERS = 57
EXT_TRANSPORT_PARAMETERS_DRAFT = 0xFFA5
# Google's user agent transport parameter (Chromium's kGoogleUserAgentId)
PARAM_GOOGLE_USER_AGENT = 0x3129

MAX_CRYPTO = 16384      # CRYPTO bytes kept per flow (a ClientHello must fit)
MAX_DATAGRAMS = 4       # datagrams of a flow looked at (the inspector's MAX_PACKETS)
MAX_PACKETS = 8         # coalesced packets walked per datagram
MAX_PIECES = 64         # CRYPTO frames kept per flow

# what the caller counts (the TLS parser's own reasons come through as they are)
REASONS = (
    "quic_truncated",          # a header or packet longer than the datagram
    "quic_decrypt_failed",     # the AEAD tag does not match (not a client Initial)
    "quic_bad_frame",          # a frame runs past its packet
    "quic_crypto_too_long",    # the ClientHello is larger than MAX_CRYPTO
    "quic_not_client_hello",   # the CRYPTO stream starts with another message
    "quic_incomplete",         # MAX_DATAGRAMS seen and the ClientHello still not whole
)


class InitialKeys:
    """The packet protection of one direction's Initial packets."""

    __slots__ = ("version", "dcid", "aead", "iv", "hp")

    def __init__(self, version: int, dcid: bytes, key: bytes, iv: bytes, hp: bytes):
        self.version = version
        self.dcid = dcid
        self.aead = AESGCM(key)
        self.iv = iv
        self.hp = Cipher(algorithms.AES(hp), modes.ECB())

    def mask(self, sample: bytes) -> bytes:
        enc = self.hp.encryptor()
        return enc.update(sample) + enc.finalize()


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 section 7.1) with an empty context."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def initial_secrets(version: int, dcid: bytes) -> tuple[bytes, bytes]:
    """(client_initial_secret, server_initial_secret) for ``dcid`` (RFC 9001
    section 5.2); ``version`` must be one of ``SALTS``."""
    initial = hmac.digest(SALTS[version], dcid, "sha256")
    return (_expand_label(initial, b"client in", 32),
            _expand_label(initial, b"server in", 32))


def initial_key_material(version: int, dcid: bytes,
                         server: bool = False) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp): the AES-128-GCM key and IV and the header protection
    key of the client's (or the server's) Initial packets, for a connection
    whose client chose ``dcid``."""
    secret = initial_secrets(version, dcid)[1 if server else 0]
    key_l, iv_l, hp_l = _LABELS_V2 if version == VERSION_2 else _LABELS_V1
    return (_expand_label(secret, key_l, 16), _expand_label(secret, iv_l, 12),
            _expand_label(secret, hp_l, 16))


def initial_keys(version: int, dcid: bytes, server: bool = False) -> InitialKeys:
    """``initial_key_material`` ready to unprotect packets."""
    return InitialKeys(version, dcid, *initial_key_material(version, dcid, server))


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A QUIC variable-length integer (RFC 9000 section 16) at ``pos``:
    (value, next position), or (-1, pos) when it runs past ``end``."""
    if pos >= end:
        return -1, pos
    first = buf[pos]
    n = 1 << (first >> 6)
    if pos + n > end:
        return -1, pos
    v = first & 0x3F
    for i in range(1, n):
        v = (v << 8) | buf[pos + i]
    return v, pos + n


def _initial_type(version: int) -> int:
    """The long packet type bits of an Initial: 0, 1 in v2 (RFC 9369 section 3.2)."""
    return 1 if version == VERSION_2 else 0


def _retry_type(version: int) -> int:
    return 0 if version == VERSION_2 else 3


class QuicState:
    """What one flow's inspection keeps between datagrams: the Initial keys
    (derived once per connection id), the CRYPTO data seen so far, and whether
    the flow is finished with (``done``: the caller stops feeding it).

    ``pieces`` holds (offset, bytes) CRYPTO ranges, clipped to MAX_CRYPTO."""

    __slots__ = ("version", "keys", "pieces", "datagrams", "done")

    def __init__(self):
        self.version = 0
        self.keys: InitialKeys | None = None
        self.pieces: list[tuple[int, bytes]] = []
        self.datagrams = 0
        self.done = False

    def add_crypto(self, offset: int, data: bytes) -> None:
        if offset >= MAX_CRYPTO or not data or len(self.pieces) >= MAX_PIECES:
            return
        self.pieces.append((offset, data[:MAX_CRYPTO - offset]))

    def stream(self) -> bytes:
        """The CRYPTO stream's contiguous bytes from offset 0 (first copy of a
        byte wins on overlap)."""
        out = bytearray()
        for off, data in sorted(self.pieces, key=lambda p: p[0]):
            if off > len(out):
                break
            if off + len(data) > len(out):
                out += data[len(out) - off:]
        return bytes(out)


def transport_parameters(data: bytes) -> dict[int, bytes]:
    """The QUIC transport parameters (RFC 9000 section 18): id -> value.
    Stops at the first parameter that runs past ``data``."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        pid, p = _varint(data, pos, end)
        if pid < 0:
            break
        ln, p = _varint(data, p, end)
        if ln < 0 or p + ln > end:
            break
        out.setdefault(pid, data[p:p + ln])
        pos = p + ln
    return out


def _frames(plain: bytes, state: QuicState) -> str | None:
    """Walk an Initial's frames, keeping CRYPTO data; a reason on a frame that
    runs past the packet.  Frames an Initial cannot carry end the walk."""
    pos, end = 0, len(plain)
    while pos < end:
        ft = plain[pos]
        if ft == 0x00:                        # PADDING: usually to the end
            rest = plain[pos:].lstrip(b"\x00")
            pos = end - len(rest)
        elif ft == 0x01:                      # PING
            pos += 1
        elif ft == 0x06:                      # CRYPTO
            off, p = _varint(plain, pos + 1, end)
            ln, p = _varint(plain, p, end) if off >= 0 else (-1, p)
            if ln < 0 or p + ln > end:
                return "quic_bad_frame"
            state.add_crypto(off, plain[p:p + ln])
            pos = p + ln
        elif ft in (0x02, 0x03):              # ACK, ACK with ECN counts
            p = pos + 1
            vals = []
            for _ in range(4):                # largest, delay, range count, first range
                v, p = _varint(plain, p, end)
                if v < 0:
                    return "quic_bad_frame"
                vals.append(v)
            extra = 2 * vals[2] + (3 if ft == 0x03 else 0)
            if extra > end - p:               # each varint takes at least one byte
                return "quic_bad_frame"
            for _ in range(extra):
                v, p = _varint(plain, p, end)
                if v < 0:
                    return "quic_bad_frame"
            pos = p
        else:                                 # CONNECTION_CLOSE or not for an Initial
            return None
    return None


def _unprotect(buf: bytes, start: int, pn_off: int, end: int,
               keys: InitialKeys) -> bytes | None:
    """The decrypted payload of the packet buf[start:end] whose packet number
    starts at ``pn_off``, or None when the AEAD tag does not match."""
    mask = keys.mask(buf[pn_off + 4:pn_off + 20])
    first = buf[start] ^ (mask[0] & 0x0F)
    pnlen = (first & 0x03) + 1
    pn_bytes = bytes(b ^ m for b, m in zip(buf[pn_off:pn_off + pnlen], mask[1:1 + pnlen]))
    header = bytes([first]) + buf[start + 1:pn_off] + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ int.from_bytes(pn_bytes, "big")).to_bytes(12, "big")
    try:
        return keys.aead.decrypt(nonce, buf[pn_off + pnlen:end], header)
    except InvalidTag:
        return None


def _client_hello(state: QuicState) -> tuple[dict | None, str | None]:
    """Fields from the CRYPTO stream once its ClientHello is whole: (None,
    None) while more is needed."""
    data = state.stream()
    if len(data) < 4:
        return None, None
    if data[0] != 1:
        return {}, "quic_not_client_hello"
    size = 4 + int.from_bytes(data[1:4], "big")
    if size > MAX_CRYPTO:
        return {}, "quic_crypto_too_long"
    if len(data) < size:
        return None, None
    fields: dict = {}
    hello, reason = tls.parse_client_hello(data[:size])
    if hello is None:
        return fields, reason
    if hello.sni is not None:
        fields["quic_sni"] = hello.sni
    ext = hello.extensions.get(EXT_TRANSPORT_PARAMETERS)
    if ext is None:
        ext = hello.extensions.get(EXT_TRANSPORT_PARAMETERS_DRAFT)
    if ext is not None:
        ua = transport_parameters(ext).get(PARAM_GOOGLE_USER_AGENT)
        if ua is not None:
            fields["quic_user_agent"] = ua.decode("utf-8", "replace")
    return fields, reason


def inspect_datagram(payload: bytes, state: QuicState,
                     server: bool = False) -> tuple[dict | None, str | None]:
    """One UDP payload of a flow: (fields, reason).

    ``fields`` is None while there is nothing to report (not a QUIC Initial,
    or a ClientHello still incomplete); else a dict of ``quic_version`` and,
    when the ClientHello was read, ``quic_sni`` and ``quic_user_agent``
    (fields to merge into what the flow has).  ``reason`` names what could
    not be read (``REASONS`` or the TLS parser's own).  ``state.done`` tells
    that later datagrams add nothing.

    ``server``: the flow is a server's (its source port is the service's).
    Its Initials are protected with keys derived from the connection id the
    client first chose, which only the other direction carries: only the
    version is read, from the first long header."""
    if state.done:
        return None, None
    state.datagrams += 1
    if server:
        fields, reason = _server_version(payload, state)
    else:
        fields, reason = _datagram(payload, state)
        if not state.done and state.datagrams >= MAX_DATAGRAMS:
            state.done = True
            if state.version and reason is None:
                reason = "quic_incomplete"
    return fields, reason


def _server_version(buf: bytes, state: QuicState) -> tuple[dict | None, str | None]:
    if len(buf) >= 7 and buf[0] & 0x80:
        version = int.from_bytes(buf[1:5], "big")
        state.done = True
        if version in SALTS:
            state.version = version
            return {"quic_version": version}, None
    elif state.datagrams >= MAX_DATAGRAMS:
        state.done = True
    return None, None


def _datagram(buf: bytes, state: QuicState) -> tuple[dict | None, str | None]:
    n = len(buf)
    pos = 0
    out: dict | None = None                     # quic_version, on the flow's first Initial
    for _ in range(MAX_PACKETS):
        if n - pos < 7 or not buf[pos] & 0x80:
            break                               # short header, padding, or too short
        start = pos
        first = buf[pos]
        version = int.from_bytes(buf[pos + 1:pos + 5], "big")
        if version not in SALTS:
            if start == 0 and not state.version:
                state.done = True               # not a QUIC version we know
            break
        ptype = (first >> 4) & 0x03
        if ptype == _retry_type(version):
            break
        p = pos + 5
        dlen = buf[p]
        if dlen > 20 or p + 1 + dlen >= n:
            return _version_only(state, version, "quic_truncated")
        dcid = buf[p + 1:p + 1 + dlen]
        p += 1 + dlen
        slen = buf[p]
        if slen > 20 or p + 1 + slen > n:
            return _version_only(state, version, "quic_truncated")
        p += 1 + slen
        initial = ptype == _initial_type(version)
        if initial:
            tlen, p = _varint(buf, p, n)
            if tlen < 0 or p + tlen > n:
                return _version_only(state, version, "quic_truncated")
            p += tlen
        length, p = _varint(buf, p, n)
        end = p + length
        if length < 0 or end > n:
            return _version_only(state, version, "quic_truncated")
        pos = end
        if not initial:
            continue
        if length < 20:                         # 4 bytes before the sample, 16 of sample
            return _version_only(state, version, "quic_truncated")
        plain = _decrypt(buf, start, p, end, version, dcid, state)
        if plain is None:
            if state.keys is None:
                return _version_only(state, version, "quic_decrypt_failed")
            return out, "quic_decrypt_failed"
        if not state.version:
            state.version = version
            out = {"quic_version": version}
        reason = _frames(plain, state)
        fields, hreason = _client_hello(state)
        if fields is not None:
            state.done = True
            return {"quic_version": state.version, **fields}, reason or hreason
        if reason is not None:
            return out, reason
    return out, None


def _decrypt(buf: bytes, start: int, pn_off: int, end: int, version: int,
             dcid: bytes, state: QuicState) -> bytes | None:
    """An Initial's payload, with the flow's keys (a client keeps the keys of
    its first connection id after the server picks another) or else the
    keys of this packet's connection id, which then become the flow's."""
    keys = state.keys
    if keys is not None and keys.version == version:
        plain = _unprotect(buf, start, pn_off, end, keys)
        if plain is not None or keys.dcid == dcid:
            return plain
    keys = initial_keys(version, dcid)
    plain = _unprotect(buf, start, pn_off, end, keys)
    if plain is not None:
        state.keys = keys
    return plain


def _version_only(state: QuicState, version: int, reason: str) -> tuple[dict, str]:
    """A recognised long header that cannot be read any further."""
    state.done = True
    return {"quic_version": state.version or version}, reason
