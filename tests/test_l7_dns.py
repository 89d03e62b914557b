"""nfflowd.l7.dns against tshark: the repository's DNS capture, messages
built here over UDP and TCP (compression, odd labels); hostile names
(compression loops, forward pointers, overlong names) give reasons; random
bytes never raise."""

import struct

import pytest
from hypothesis import given, strategies as st

from nfflowd.l7 import dns
from l7wire import FUZZ, PCAPS, frame, mutated, needs_tshark, payloads, tshark, write_pcap

FIELDS = ["dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.count.answers",
          "dns.flags.response"]


def expected(row) -> dict:
    want = {}
    if row["dns.qry.name"]:
        want["dns_qname"] = row["dns.qry.name"][0]
        want["dns_qtype"] = int(row["dns.qry.type"][0])
    if row["dns.count.answers"]:
        want["dns_answers"] = int(row["dns.count.answers"][0])
    if row["dns.flags.response"][:1] in (["1"], ["True"]):
        want["dns_rcode"] = int(row["dns.flags.rcode"][0])
    return want


def against_tshark(path, least=0) -> int:
    rows = {r["frame"]: r for r in tshark(path, FIELDS)}
    n = 0
    for fr, proto, sp, dp, payload in payloads(path):
        if least and 53 not in (sp, dp):
            continue
        fields, reason = dns.inspect(payload, tcp=proto == 6)
        assert reason is None, fr
        assert fields == expected(rows[fr]), fr
        n += 1
    return n


@needs_tshark
@pytest.mark.parametrize("name,least", [("dns", 16), ("smtp", 2), ("vlan", 6)])
def test_the_captures_read_as_tshark_reads_them(name, least):
    """dns.pcap, and the DNS lookups of smtp.pcap and vlan.pcap (802.1Q)."""
    assert against_tshark(PCAPS / f"{name}.pcap", least) >= least


def header(qd=1, an=0, flags=0x0100, ident=0x1234) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, 0, 0)


def name(text: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in text.split(".")) + b"\0"


def query(qname=b"\x03www\x07example\x03com\x00", qtype=28) -> bytes:
    return header() + qname + struct.pack("!HH", qtype, 1)


def response(rcode=0) -> bytes:
    """www.example.com A, two answers: a CNAME to cdn.example.com (the
    suffix by pointer), then an A record for it (pointer to a pointer)."""
    q = name("www.example.com")
    cname = b"\x03cdn\xc0\x10"                  # cdn + example.com at 16
    rr1 = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, len(cname)) + cname
    at = 12 + len(q) + 4 + 12                     # where cname's labels start
    rr2 = struct.pack("!H", 0xC000 | at) + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([203, 0, 113, 7])
    return header(an=2, flags=0x8180 | rcode) + q + struct.pack("!HH", 1, 1) + rr1 + rr2


ODD = [b"\x00", b"\x03a.b\x03com\x00", b"\x03a\\b\x00", b"\x04a b\xff\x00", b"\x03a\x00b\x00",
       b"\x02\xc3\xa9\x00", b"\x03a\tb\x00", b"\x03a\x1fb\x00", b"\x03a\x7fb\x00",
       b"\x04a\xc2\x80b\x00", b"\x03A_z\x00", name("x" * 63 + ".y")]


@needs_tshark
def test_built_messages_over_udp_and_tcp_read_as_tshark_reads_them(tmp_path):
    msgs = [query(), response(), response(rcode=3), header(qd=0, flags=0x8182)]
    msgs += [query(o, qtype=16) for o in ODD]
    frames_ = [frame(17, m, sp=40000 + i, dp=53) for i, m in enumerate(msgs)]
    frames_ += [frame(6, struct.pack("!H", len(m)) + m, sp=41000 + i, dp=53, seq=1)
                for i, m in enumerate(msgs[:3])]
    assert against_tshark(write_pcap(tmp_path / "built.pcap", frames_)) == len(frames_)
    assert dns.inspect(response(3)) == ({"dns_qname": "www.example.com", "dns_qtype": 1,
                                         "dns_answers": 2, "dns_rcode": 3}, None)


def test_tcp_message_cut_by_the_segment_gives_its_question():
    m = response()
    assert dns.inspect(struct.pack("!H", len(m)) + m[:40], tcp=True)[0]["dns_qname"] == \
        "www.example.com"
    assert dns.inspect(struct.pack("!H", len(m)) + m[:20], tcp=True) == (None, "dns_truncated")
    assert dns.inspect(b"\x00\x05abcde", tcp=True) == (None, "dns_truncated")
    assert dns.inspect(b"\x00", tcp=True) == (None, None)
    assert dns.inspect(b"\x00" * 11) == (None, None)


def test_read_name_follows_pointers_backwards():
    msg = response()
    end = 12 + len(name("www.example.com")) + 4 + 12
    assert dns.read_name(msg, end) == ("cdn.example.com", end + 6, None)


HOSTILE = {
    header() + b"\xc0\x0c" + b"\0\x01\0\x01": "dns_compression_loop",     # itself
    header() + b"\x01a\xc0\x0c" + b"\0\x01\0\x01": "dns_compression_loop",  # its own start
    header() + b"\xc0\x20" + b"\0" * 40: "dns_bad_pointer",                 # forward
    header() + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63
    + b"\x3f" + b"d" * 63 + b"\x00\0\x01\0\x01": "dns_name_too_long",      # 257 bytes
    header() + b"\x40abc\x00": "dns_bad_label",
    header() + b"\x80abc\x00": "dns_bad_label",
    header() + b"\x05ab": "dns_truncated",
    header() + b"\x01a": "dns_truncated",
    header() + b"\x01a\xc0": "dns_truncated",
    header() + b"\x01a\x00\x00": "dns_truncated",                          # no type/class
}


def test_hostile_names_give_reasons():
    for msg, reason in HOSTILE.items():
        assert dns.inspect(msg) == (None, reason), msg
        assert reason in dns.REASONS
    # a name just at the limit: 255 bytes on the wire
    ok = b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3d" + b"d" * 61
    f, reason = dns.inspect(header() + ok + b"\0\0\x01\0\x01")
    assert reason is None and len(f["dns_qname"]) == 253
    # two pointers pointing at each other: the second jump goes forward
    loop2 = header() + b"\x01a\x00\0\x01\0\x01" + b"\xc0\x15" + b"\xc0\x13"
    assert dns.read_name(loop2, 21) == (None, 0, "dns_bad_pointer")


def test_pointer_chains_are_bounded():
    msg = bytearray(header() + b"\x01a\x00")
    for _ in range(dns.MAX_POINTERS + 1):
        msg += struct.pack("!H", 0xC000 | (len(msg) - 2 if len(msg) > 15 else 12))
    at = len(msg) - 2
    assert dns.read_name(bytes(msg), at)[2] == "dns_too_many_pointers"
    # within the bound, the chain reads
    assert dns.read_name(bytes(msg), 15 + 2 * (dns.MAX_POINTERS - 1))[0] == "a"


def check(payload: bytes, tcp: bool) -> None:
    fields, reason = dns.inspect(payload, tcp=tcp)
    assert fields is None or (isinstance(fields, dict) and reason is None)
    assert reason is None or reason in dns.REASONS
    if fields and "dns_qname" in fields:
        assert len(fields["dns_qname"].encode()) <= 4 * dns.MAX_NAME




@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_never_raise(data, tcp):
    check(data, tcp)
    check(header() + data, tcp)


@FUZZ
@given(mutated([query(), response(), response(2)], 120), st.booleans())
def test_mutated_messages_never_raise(msg, tcp):
    check(struct.pack("!H", len(msg)) + msg if tcp else msg, tcp)
