"""nfflowd.l7.http against tshark: the repository's HTTP capture and
requests built here; malformed and random bytes never raise."""

import pytest
from hypothesis import given, strategies as st

from nfflowd.l7 import http
from l7wire import FUZZ, PCAPS, frame, mutated, needs_tshark, payloads, tshark, write_pcap

FIELDS = {"http.request.method": "http_method", "http.host": "http_host",
          "http.request.uri": "http_path", "http.user_agent": "http_user_agent",
          "http.response.code": "http_status"}
# the status on the response's first segment, not on the body's last
NO_BODY = ("-o", "http.desegment_body:FALSE")


def expected(row) -> dict:
    want = {}
    for name, field in FIELDS.items():
        if row[name]:
            want[field] = int(row[name][0]) if field == "http_status" else row[name][0]
    return want


def against_tshark(path) -> int:
    rows = {r["frame"]: r for r in tshark(path, list(FIELDS) + ["tcp.analysis.retransmission"],
                                          *NO_BODY)}
    found = 0
    for n, _proto, _sp, _dp, payload in payloads(path):
        if rows[n]["tcp.analysis.retransmission"]:
            continue
        fields, reason = http.inspect(payload)
        assert reason is None, n
        assert (fields or {}) == expected(rows[n]), n
        found += bool(fields)
    return found


@needs_tshark
@pytest.mark.parametrize("name,least", [("http", 17), ("idpcontent", 2)])
def test_the_captures_read_as_tshark_reads_them(name, least):
    assert against_tshark(PCAPS / f"{name}.pcap") >= least


REQUESTS = [
    b"GET /index.html?q=1&r=%20 HTTP/1.1\r\nHost: www.example.com\r\n"
    b"User-Agent: curl/8.0 (x86_64)\r\nAccept: */*\r\n\r\n",
    b"POST /form HTTP/1.0\r\nhost:   Example.ORG:8080  \r\nuser-agent:Mozilla/5.0\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    b"HEAD http://203.0.113.9/x HTTP/1.1\r\nAccept: */*\r\nHost: 203.0.113.9\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"DELETE /r/1 HTTP/1.1\r\nX-Host: not-this\r\nHost: this\r\nHost: not-this-either\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nUser-Agent: only-ua\r\n\r\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\xc3\xa9\r\nUser-Agent: a\xffb\x01c\r\n\r\n",
]
RESPONSES = [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
             b"HTTP/1.0 301 Moved\r\nLocation: /\r\n\r\n",
             b"HTTP/1.1 204 \r\n\r\n"]


@needs_tshark
def test_built_requests_and_responses_read_as_tshark_reads_them(tmp_path):
    frames_ = [frame(6, p, sp=40000 + i, dp=80) for i, p in enumerate(REQUESTS)]
    frames_ += [frame(6, p, sp=80, dp=41000 + i) for i, p in enumerate(RESPONSES)]
    assert against_tshark(write_pcap(tmp_path / "built.pcap", frames_)) == len(frames_)


def test_fields():
    assert http.inspect(REQUESTS[1]) == ({"http_method": "POST", "http_path": "/form",
                                          "http_host": "Example.ORG:8080  ",
                                          "http_user_agent": "Mozilla/5.0"}, None)
    assert http.inspect(RESPONSES[0]) == ({"http_status": 404}, None)
    # headers cut by the segment: those before the cut
    assert http.inspect(REQUESTS[0][:60]) == ({"http_method": "GET",
                                               "http_path": "/index.html?q=1&r=%20",
                                               "http_host": "www.example.com"}, None)


def test_headers_beyond_max_head_are_not_read():
    p = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * http.MAX_HEAD + b"\r\nHost: late\r\n\r\n"
    assert http.inspect(p) == ({"http_method": "GET", "http_path": "/"}, None)


def test_not_http_and_malformed():
    for p in (b"", b"GE", b"\x16\x03\x01\x00\x05", b"SSH-2.0-OpenSSH_9.2\r\n",
              b"BREW /pot HTTP/1.1\r\n\r\n", b"x" * 500):
        assert http.inspect(p) == (None, None), p
    for p in (b"GET \xff\xfe\r\n\r\n", b"GET / FTP/1.0\r\n", b"GET /a\tb HTTP/1.1\r\n", b"GET  / HTTP/1.1\r\n",
              b"POST /a b HTTP/1.1\r\n", b"GET / HTTP/1.1 extra\r\n"):
        assert http.inspect(p) == (None, "http_bad_request_line"), p
    for p in (b"HTTP/1.1 20 OK\r\n", b"HTTP/1.1 abc\r\n", b"HTTP/1.x 200 OK\r\n",
              b"HTTP/1.1\r\n"):
        assert http.inspect(p) == (None, "http_bad_status_line"), p


def check(p: bytes) -> None:
    fields, reason = http.inspect(p)
    assert fields is None or (isinstance(fields, dict) and reason is None)
    assert reason is None or reason in http.REASONS
    if fields and "http_status" in fields:
        assert 0 <= fields["http_status"] <= 999




@FUZZ
@given(st.binary(max_size=400), st.sampled_from([b"", b"GET ", b"HTTP/1.1 ", b"POST / HTTP/1.1\r\n"]))
def test_random_bytes_never_raise(data, head):
    check(head + data)


@FUZZ
@given(mutated(REQUESTS + RESPONSES, 300))
def test_mutated_messages_never_raise(payload):
    check(payload)
