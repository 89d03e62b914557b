"""nfflowd.l7.tls against tshark: the repository's TLS capture, ClientHellos
built here (one split over two segments), FoxIO's JA4 example; hostile and
random bytes never raise."""

import hashlib
import struct

from hypothesis import given, strategies as st

from nfflowd.l7 import tls
from l7wire import FUZZ, PCAPS, frame, mutated, needs_tshark, payloads, tshark, write_pcap


def ext(t: int, data: bytes) -> bytes:
    return struct.pack("!HH", t, len(data)) + data


def u16s(vals, width=2) -> bytes:
    body = b"".join(struct.pack("!H", v) for v in vals)
    return len(body).to_bytes(width, "big") + body


def client_hello(sni="www.example.com", alpn=("h2", "http/1.1"), ciphers=(0x1301, 0xC02F),
                 versions=(0x0304, 0x0303), groups=(0x001D,), sigs=(0x0403,), legacy=0x0303,
                 extra=(), pad=0) -> bytes:
    """A ClientHello Handshake message (type 1)."""
    exts = b""
    if sni is not None:
        name = sni.encode()
        exts += ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
    if alpn:
        lst = b"".join(bytes([len(a)]) + a.encode() for a in alpn)
        exts += ext(0x10, struct.pack("!H", len(lst)) + lst)
    if versions:
        exts += ext(0x2B, bytes([2 * len(versions)]) + b"".join(struct.pack("!H", v)
                                                                  for v in versions))
    if groups:
        exts += ext(0x0A, u16s(groups))
    exts += ext(0x0B, b"\x01\x00")
    if sigs:
        exts += ext(0x0D, u16s(sigs))
    for t, data in extra:
        exts += ext(t, data)
    if pad:
        exts += ext(0x15, b"\0" * pad)
    body = (struct.pack("!H", legacy) + b"\x11" * 32 + b"\x20" + b"\x22" * 32 + u16s(ciphers)
            + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def server_hello(alpn="h2", selected=0x0304) -> bytes:
    exts = b""
    if alpn:
        exts += ext(0x10, struct.pack("!HB", len(alpn) + 1, len(alpn)) + alpn.encode())
    if selected:
        exts += ext(0x2B, struct.pack("!H", selected))
    body = (b"\x03\x03" + b"\x33" * 32 + b"\x00" + b"\x13\x01\x00" + struct.pack("!H", len(exts))
            + exts)
    return b"\x02" + len(body).to_bytes(3, "big") + body


def record(msg: bytes, version=0x0301) -> bytes:
    return struct.pack("!BHH", 0x16, version, len(msg)) + msg


def oracle_version(row) -> int:
    sv = [int(x, 0) for x in row["tls.handshake.extensions.supported_version"]]
    sv = [v for v in sv if not tls.is_grease(v)]
    return max(sv) if sv else int(row["tls.handshake.version"][0], 0)


FIELDS = ["tls.handshake.type", "tls.handshake.version",
          "tls.handshake.extensions.supported_version", "tls.handshake.extensions_server_name",
          "tls.handshake.extensions_alpn_str", "tls.handshake.ja3", "tls.handshake.ja3_full"]


def expected(row) -> dict | None:
    """The fields tshark's reading of a frame gives, None if no hello."""
    types = row["tls.handshake.type"]
    if "1" in types:
        want = {"tls_version": oracle_version(row), "tls_ja3": row["tls.handshake.ja3"][0]}
        if row["tls.handshake.extensions_server_name"]:
            want["tls_sni"] = row["tls.handshake.extensions_server_name"][0]
        if row["tls.handshake.extensions_alpn_str"]:
            want["tls_alpn"] = row["tls.handshake.extensions_alpn_str"][0].split(",")[0]
        return want
    if "2" in types:
        want = {"tls_version": oracle_version(row)}
        if row["tls.handshake.extensions_alpn_str"]:
            want["tls_alpn"] = row["tls.handshake.extensions_alpn_str"][0]
        return want
    return None


def ours(payload: bytes) -> dict | None:
    fields, reason = tls.inspect(payload)
    assert reason is None
    if fields:
        fields.pop("tls_ja4", None)
    return fields


@needs_tshark
def test_the_tls_capture_reads_as_tshark_reads_it():
    path = PCAPS / "tls.pcap"
    rows = {r["frame"]: r for r in tshark(path, FIELDS + ["tcp.analysis.retransmission"],
                                          "-Y", "tcp")}
    seen = {"1": 0, "2": 0}
    for n, proto, _sp, _dp, payload in payloads(path):
        if proto != 6 or rows[n]["tcp.analysis.retransmission"]:
            continue            # tshark does not dissect a retransmission again
        want = expected(rows[n])
        assert ours(payload) == want, n
        if want:
            seen[rows[n]["tls.handshake.type"][0]] += 1
            if "1" in rows[n]["tls.handshake.type"]:
                h, _ = tls.parse_client_hello(payload[5:])
                assert tls.ja3_string(h) == rows[n]["tls.handshake.ja3_full"][0]
    assert seen["1"] >= 20 and seen["2"] >= 15


@needs_tshark
def test_a_client_hello_split_over_two_segments(tmp_path):
    """The first segment says how long the record is; both together read as
    tshark reads the reassembled record."""
    rec = record(client_hello(sni="split.example.org", alpn=("http/1.1",), pad=900))
    first, second = rec[:300], rec[300:]
    assert tls.inspect(first) == (None, "tls_truncated")
    assert tls.needed(first) == len(rec) and tls.needed(b"GET /") == 0
    path = write_pcap(tmp_path / "split.pcap",
                      [frame(6, b"", flags=0x02, seq=0), frame(6, first, seq=1),
                       frame(6, second, seq=1 + len(first))])
    rows = [r for r in tshark(path, FIELDS) if r["tls.handshake.type"]]
    assert [r["frame"] for r in rows] == [3]                  # reassembled on the second
    got = ours(first + second)
    assert got == expected(rows[0])
    assert got["tls_sni"] == "split.example.org" and got["tls_version"] == 0x0304


@needs_tshark
def test_built_hellos_read_as_tshark_reads_them(tmp_path):
    """No SNI, no ALPN, TLS 1.2 without supported_versions, GREASE values,
    a server's hello with its chosen protocol; two hellos in two records."""
    cases = [record(client_hello(sni=None, alpn=(), versions=(), legacy=0x0303)),
             record(client_hello(ciphers=(0x0A0A, 0x1301), versions=(0x2A2A, 0x0304),
                                 groups=(0x3A3A, 0x001D), extra=((0x4A4A, b""),))),
             record(client_hello(legacy=0x0301, versions=(0x0302, 0x0301))),
             record(server_hello("h2", 0x0304)), record(server_hello("http/1.1", 0))]
    frames_ = [frame(6, c, sp=40000 + i, dp=443) if i < 3 else frame(6, c, sp=443, dp=40000 + i)
               for i, c in enumerate(cases)]
    rows = tshark(write_pcap(tmp_path / "built.pcap", frames_), FIELDS)
    assert len(rows) == len(cases)
    for row, c in zip(rows, cases):
        want = expected(row)
        assert want and ours(c) == want


def test_foxio_ja4_example():
    """FoxIO's JA4 README: the raw form t13d1516h2_002f,..._0005,..._0403,...
    hashes to t13d1516h2_8daaf6152771_e5627efa2ab1."""
    ciphers = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
               0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
    sigs = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
    extra = [(t, b"") for t in (0x0005, 0x0012, 0x0017, 0x001B, 0x0023, 0x002D, 0x0033,
                                0x4469, 0xFF01)]
    h, reason = tls.parse_client_hello(client_hello(ciphers=ciphers, sigs=sigs, extra=extra,
                                                    pad=10, versions=(0x0304,)))
    assert reason is None
    assert len(h.ext_types) == 16
    assert tls.ja4(h) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert tls.ja4(h, "q").startswith("q13d1516h2_")
    bare, _ = tls.parse_client_hello(client_hello(sni=None, alpn=(), ciphers=(), sigs=(),
                                                  groups=(), versions=()))
    assert tls.ja4(bare).startswith("t12i000100_000000000000_")    # point formats only


def test_ja4_alpn_not_alphanumeric():
    h, _ = tls.parse_client_hello(client_hello(alpn=("\x01ab",)))
    assert tls.ja4(h).split("_")[0].endswith("02")      # hex 016162: first and last char


def test_bare_messages_as_quic_carries_them():
    h, reason = tls.parse_client_hello(client_hello(extra=((0x39, b"\x01\x02"),)) + b"trail")
    assert reason is None and h.sni == "www.example.com" and h.alpn == ["h2", "http/1.1"]
    assert h.extensions[0x39] == b"\x01\x02" and h.version == 0x0304
    s, reason = tls.parse_server_hello(server_hello("h3", 0x0304))
    assert reason is None and s.alpn == "h3" and s.version == 0x0304
    assert tls.parse_client_hello(server_hello()) == (None, "tls_not_hello")
    assert tls.parse_client_hello(client_hello()[:50]) == (None, "tls_truncated")


def test_fields_of_a_client_hello():
    f, reason = tls.inspect(record(client_hello()))
    assert reason is None
    h, _ = tls.parse_client_hello(client_hello())
    assert f == {"tls_sni": "www.example.com", "tls_alpn": "h2", "tls_version": 0x0304,
                 "tls_ja3": hashlib.md5(tls.ja3_string(h).encode()).hexdigest(),
                 "tls_ja4": tls.ja4(h)}
    assert len(f["tls_ja3"]) == 32


def test_hello_over_two_records():
    msg = client_hello()
    f, reason = tls.inspect(record(msg[:40]) + record(msg[40:]))
    assert reason is None and f["tls_sni"] == "www.example.com"


def test_not_tls_is_none_cheaply():
    for p in (b"", b"\x16", b"\x16\x01", b"GET / HTTP/1.1\r\n", b"\x17\x03\x03\x00\x10" + b"x" * 16,
              b"\x16\x03\x03\x00\x10\x0b" + b"\0" * 15):          # a Certificate: not a hello
        assert tls.inspect(p) == (None, None), p


HOSTILE = {
    b"\x16\x03\x01\x00\x30\x01\x00\x00\xff" + b"\xff" * 43: "tls_truncated",
    b"\x16\x03\x01\x00\x00": "tls_bad_record",
    b"\x16\x03\x01\xff\xff\x01": "tls_bad_record",
    b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00": "tls_bad_hello",
    record(b"\x01\x00\x00\x25\x03\x03" + b"\0" * 32 + b"\x00\xff\xff"): "tls_bad_hello",
    record(client_hello()[:-3]): "tls_truncated",
}


def test_hostile_hellos_give_reasons():
    for payload, reason in HOSTILE.items():
        assert tls.inspect(payload) == (None, reason), payload
    # an extension length past its block, a server name list longer than its extension
    msg = bytearray(client_hello())
    i = msg.find(b"\x00\x10")                           # the ALPN extension's type
    msg[i + 2:i + 4] = b"\x7f\xff"
    assert tls.inspect(record(bytes(msg))) == (None, "tls_bad_extension")
    bad_sni = client_hello(sni=None, extra=((0, b"\x00\x09\x00\x00\x05abc"),))
    assert tls.inspect(record(bad_sni)) == (None, "tls_bad_extension")
    for reason in {r for r in HOSTILE.values()} | {"tls_bad_extension"}:
        assert reason in tls.REASONS


def check(payload: bytes) -> None:
    fields, reason = tls.inspect(payload)
    assert fields is None or isinstance(fields, dict)
    assert reason is None or reason in tls.REASONS
    if fields:
        assert reason is None and isinstance(fields["tls_version"], int)
    for parse in (tls.parse_client_hello, tls.parse_server_hello):
        h, r = parse(payload[5:])
        assert (h is None) != (r is None)
        assert r is None or r in tls.REASONS
    assert 0 <= tls.needed(payload) <= tls.MAX_RECORD


SEEDS = [record(client_hello()), record(server_hello()), record(client_hello(pad=300)),
         record(client_hello(sni=None, versions=()))]


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    check(data)
    check(b"\x16\x03\x01" + data)


@FUZZ
@given(mutated(SEEDS, 1600))
def test_mutated_hellos_never_raise(payload):
    check(payload)


def test_no_sample_capture_gives_a_reason():
    """Every payload of every sample capture, to the parser the inspector
    would pick: fields or nothing, never a bad-payload reason (a reason
    for a real, well-formed payload would be a false count)."""
    from nfflowd.l7 import dns, http
    from nfflowd.l7.inspect import PROTOCOLS, kind_of
    parse = {"tls": lambda p, tcp: tls.inspect(p), "http": lambda p, tcp: http.inspect(p),
             "dns": lambda p, tcp: dns.inspect(p, tcp=tcp)}
    found = 0
    for path in sorted(PCAPS.glob("*.pcap")):
        for n, proto, sp, dp, payload in payloads(path):
            kind = kind_of(frozenset(PROTOCOLS), proto, sp, dp, payload[:8])
            if kind in parse:
                fields, reason = parse[kind](payload, proto == 6)
                assert reason is None, (path.name, n)
                found += bool(fields)
    assert found >= 120
