"""The Perl nfflowd's /etc/nfflowd.conf (Config::General), converted.

The samples follow the original's documentation (Net::Netfilter::NetFlow,
nfflowd 1.x): the flow_send block of its SYNOPSIS, the ct2ft ttl and the
built-in defaults (conntrack, ptee with the Log::Dispatch syslog dispatcher,
flow_import, flow_send format)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from nfflowd.app import config
from nfflowd.app import legacy
from nfflowd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# The original's SYNOPSIS: source address, collector address, collector port.
SYNOPSIS = """\
<flow_send>
    # source interface on this server
    args 172.16.1.1
    # netflow collector address
    args 192.168.0.1
    # netflow collector port number
    args 65001
</flow_send>
"""

# Its built-in defaults, written out in full (a file overriding all of them).
DEFAULTS = """\
<conntrack>
    progname    conntrack
    init_format -L
    format      -E -e NEW,DESTROY -o timestamp -n
</conntrack>
<ct2ft>
    ttl 604800
</ct2ft>
<ptee>
    <conf>
        dispatchers screen
        dispatchers syslog
        <screen>
            stderr    0
            class     Log::Dispatch::Screen
            min_level debug
        </screen>
        <syslog>
            class     Log::Dispatch::Syslog
            ident     nfflowd
            min_level debug
            facility  local6
        </syslog>
    </conf>
</ptee>
<flow_import>
    progname flow-import
    format   -z0 -f2 -V5 -m0xFF31EF
</flow_import>
<flow_send>
    progname flow-send
    format   -V5 -s %s/%s/%s
    args 203.0.113.1
    args 127.0.0.1
    args 2055
</flow_send>
"""


def test_the_original_synopsis():
    assert legacy.looks_legacy(SYNOPSIS)
    d = legacy.parse_legacy(SYNOPSIS, "/etc/nfflowd.conf")
    assert d["export"] == {"source": "172.16.1.1", "collectors": [
        {"host": "192.168.0.1", "port": 65001, "version": 5}]}
    cfg = config.parse(d, "/etc/nfflowd.conf")
    assert cfg.export.collectors == (config.Collector("192.168.0.1", 65001, 5),)
    assert cfg.export.source == "172.16.1.1"
    # the original's syslog copy: local6, ident nfflowd, logged at notice
    assert (cfg.syslog.enabled, cfg.syslog.facility, cfg.syslog.ident,
            cfg.syslog.priority) == (True, "local6", "nfflowd", "notice")
    assert cfg.conntrack.ttl == 604800        # the original's one week


def test_the_full_defaults_and_the_brief_example():
    notes = []
    d = legacy.parse_legacy(DEFAULTS, "/etc/nfflowd.conf", notes)
    cfg = config.parse(d)
    assert cfg.export.source == "203.0.113.1"
    assert cfg.export.collectors == (config.Collector("127.0.0.1", 2055, 5),)
    assert cfg.conntrack.ttl == 604800
    assert any("<conntrack>" in n for n in notes) and any("<flow_import>" in n for n in notes)
    brief = textwrap.dedent("""\
        <flow_send>
          args SOURCE 203.0.113.1
        </flow_send>
    """)
    # "args SOURCE x" is not the original's syntax: named args are refused
    with pytest.raises(ConfigError) as e:
        legacy.parse_legacy(brief, "/etc/nfflowd.conf")
    assert "line 2: flow_send.args" in str(e.value) and "by position" in str(e.value)


def test_ttl_syslog_overrides_and_config_general_syntax():
    text = """\
/* written by hand */
<flow_send>
    args = "198.51.100.7"      # quoted, with =
    args=collector.example.net
    args \\
        9995
</flow_send>
<ct2ft>
    ttl 86400
</ct2ft>
<ptee>
  <conf>
    dispatchers screen
    dispatchers syslog
    <screen>
      class Log::Dispatch::Screen
    </screen>
    <syslog>
      class Log::Dispatch::Syslog
      ident conntrack
      facility local3
      min_level info
    </syslog>
  </conf>
</ptee>
"""
    d = legacy.parse_legacy(text, "x.conf")
    assert d["export"]["source"] == "198.51.100.7"
    assert d["export"]["collectors"] == [{"host": "collector.example.net", "port": 9995,
                                          "version": 5}]
    assert d["conntrack"] == {"ttl": 86400}
    assert d["syslog"] == {"enabled": True, "facility": "local3", "priority": "notice",
                           "ident": "conntrack"}
    config.parse(d)


@pytest.mark.parametrize("ptee, expected", [
    # no syslog dispatcher listed: the copy is off
    ("dispatchers screen\n<screen>\nclass Log::Dispatch::Screen\n</screen>", {"enabled": False}),
    # filtered above notice: nothing was logged
    ("dispatchers syslog\n<syslog>\nclass Log::Dispatch::Syslog\nmin_level warning\n</syslog>",
     {"enabled": False}),
    # Log::Dispatch::Syslog's own default facility is user
    ("dispatchers syslog\n<syslog>\nclass Log::Dispatch::Syslog\n</syslog>",
     {"enabled": True, "facility": "user", "priority": "notice", "ident": "nfflowd"}),
])
def test_syslog_dispatchers(ptee, expected):
    text = SYNOPSIS + f"<ptee>\n<conf>\n{ptee}\n</conf>\n</ptee>\n"
    assert legacy.parse_legacy(text)["syslog"] == expected


def test_ttl_zero_means_the_default_week():
    d = legacy.parse_legacy(SYNOPSIS + "<ct2ft>\nttl 0\n</ct2ft>\n")
    assert "conntrack" not in d
    assert config.parse(d).conntrack.ttl == 604800


@pytest.mark.parametrize("text, where, words", [
    ("<flow_send>\nargs 172.16.1.1\nargs 192.168.0.1\n</flow_send>\n",
     "line 2: flow_send.args", "expected three args lines"),
    ("<flow_send>\nargs 172.16.1.1 192.168.0.1 65001\n</flow_send>\n",
     "line 2: flow_send.args", "one per line"),
    ("<flow_send>\nargs eth0\nargs 192.168.0.1\nargs 65001\n</flow_send>\n",
     "line 2: flow_send.args[0]", "source address"),
    ("<flow_send>\nargs 172.16.1.1\nargs 192.168.0.1\nargs 650010\n</flow_send>\n",
     "line 4: flow_send.args[2]", "from 1 to 65535"),
    (SYNOPSIS + "<ct2ft>\nttl soon\n</ct2ft>\n", "line 10: ct2ft.ttl", "number of seconds"),
    (SYNOPSIS + "<ct2ft>\ntll 60\n</ct2ft>\n", "line 10: ct2ft.tll", "unknown key"),
    (SYNOPSIS + "<flow-send>\n</flow-send>\n", "line 9: flow-send", "unknown block"),
    (SYNOPSIS.replace("</flow_send>", "format -V9 -s %s/%s/%s\n</flow_send>"),
     "line 8: flow_send.format", "NetFlow version 9"),
    (SYNOPSIS + SYNOPSIS, "line 9: flow_send", "given 2 times"),
    (SYNOPSIS + "<ct2ft>\nttl 60\n", "line 9", "<ct2ft> is not closed"),
    (SYNOPSIS + "</ptee>\n", "line 9", "unexpected </ptee>"),
    (SYNOPSIS + "<<include other.conf>>\n", "line 9", "not supported"),
    ("<ct2ft>\nttl 60\n</ct2ft>\n", "flow_send", "no <flow_send> block"),
])
def test_errors_name_the_file_line_and_key(text, where, words):
    with pytest.raises(ConfigError) as e:
        legacy.parse_legacy(text, "/etc/nfflowd.conf")
    msg = str(e.value)
    assert msg.startswith(f"/etc/nfflowd.conf: {where}"), msg
    assert words in msg, msg


def test_every_problem_is_reported_at_once():
    text = "<flow_send>\nargs nope\nargs 192.168.0.1\nargs 0\n</flow_send>\n<ct2ft>\nttl x\n</ct2ft>\n"
    with pytest.raises(ConfigError) as e:
        legacy.parse_legacy(text, "f")
    keys = [k for k, _ in e.value.problems]
    assert keys == ["line 2: flow_send.args[0]", "line 4: flow_send.args[2]", "line 7: ct2ft.ttl"]


def test_looks_legacy_tells_the_formats_apart():
    from pathlib import Path
    sample = (Path(__file__).resolve().parent.parent / "conf" / "nfflowd.yaml").read_text()
    assert not legacy.looks_legacy(sample)
    assert not legacy.looks_legacy("export:\n  source: 10.0.0.1\n")
    assert legacy.looks_legacy("  <ct2ft>\n ttl 5\n</ct2ft>\n")


def test_to_yaml_round_trips_through_the_yaml_loader(tmp_path):
    d = legacy.parse_legacy(DEFAULTS)
    text = legacy.to_yaml(d, "/etc/nfflowd.conf")
    assert text.startswith("# nfflowd configuration converted from /etc/nfflowd.conf\n")
    f = tmp_path / "nfflowd.yaml"
    f.write_text(text)
    assert yaml.safe_load(text) == d
    assert config.load(f) == config.parse(d, str(f))


def test_load_any_reads_both_formats(tmp_path):
    old = tmp_path / "nfflowd.conf"
    old.write_text(SYNOPSIS)
    cfg, notes, was_legacy = legacy.load_any(old)
    assert was_legacy and cfg.export.collectors[0].port == 65001
    new = tmp_path / "nfflowd.yaml"
    new.write_text(legacy.to_yaml(legacy.parse_legacy(SYNOPSIS)))
    cfg2, notes2, was_legacy2 = legacy.load_any(new)
    assert not was_legacy2 and cfg2 == config.parse(legacy.parse_legacy(SYNOPSIS), str(new))


# -- C comments, as Config::General reads them; in time linear in the file (#15 item 16) --

C_COMMENTS = """\
/* a header
   <flow_send>
   /* an opening inside a comment does not nest */
   d 5
*/
a 1 /* x */ /* y */
b 2 /* x */ 3 /* y */
c 4 /* opened mid-line: not a comment
f 7
*/ g 8
k 10/**/11
/*/
/* the rest of the file
h 9
"""
C_COMMENTS_READ = {"a": ["1"], "b": ["2"], "c": ["4 /* opened mid-line: not a comment"],
                   "f": ["7"], "g": ["8"], "k": ["1011"], "/*/": [""]}


def test_c_comments_as_config_general_reads_them():
    """From the first /* to the last */ of a line; a comment opens only at the
    start of a line and ends at the first line with */ (an inner one-line
    comment does not end it); one left open runs to the end of the file."""
    root = legacy.parse_general(C_COMMENTS)
    assert {k: [v for v, _ in vs] for k, vs in root.options.items()} == C_COMMENTS_READ
    assert root.blocks == {}
    assert [n for _, vs in root.options.items() for _, n in vs] == [6, 7, 8, 9, 10, 11, 12]


@pytest.mark.skipif(subprocess.run(["perl", "-MConfig::General", "-e", "1"],
                                   capture_output=True).returncode != 0,
                    reason="needs Config::General (Debian: libconfig-general-perl)")
def test_c_comments_are_read_as_the_real_config_general_reads_them(tmp_path):
    p = tmp_path / "nfflowd.conf"
    p.write_text(C_COMMENTS)
    r = subprocess.run(["perl", "-MConfig::General", "-MJSON::PP", "-e",
                        "my %c = Config::General->new(-ConfigFile => $ARGV[0])->getall;"
                        "print JSON::PP->new->canonical->encode(\\%c)", str(p)],
                       capture_output=True, text=True, timeout=30, check=True)
    real = {k: [v or ""] if not isinstance(v, list) else v
            for k, v in json.loads(r.stdout).items()}
    assert real == C_COMMENTS_READ


def test_a_large_file_of_any_shape_is_read_in_linear_time():
    """1.2 MB of each shape that once cost quadratic or cubic time (a line of
    many comments took 20 s, a long unclosed tag line hours).  Run in a
    subprocess so that a regression fails on the time guard instead of hanging
    the suite: the guard is generous (all take about a second); the time
    targets proper are not a test's business."""
    code = textwrap.dedent("""\
        from nfflowd.app import legacy
        from nfflowd.errors import ConfigError
        n = 1_200_000
        shapes = {
            "comments on a line": "/**/" * (n // 4),
            "comments on many lines": "a 1 /* c */ /* c */\\n" * (n // 20),
            "an unclosed tag line of blanks": "< a" + " " * n + "x",
            "unclosed tags": "<flow_send\\n" * (n // 11),
            "nested comment openings": "/* a\\n" * (n // 5) + "*/\\nb 2\\n",
        }
        for name, text in shapes.items():
            try:
                root = legacy.parse_general(text)
                got = sorted((k, len(v)) for k, v in root.options.items())
            except ConfigError as e:
                got = len(e.problems)
            print(name, len(text), legacy.looks_legacy(text), got)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "comments on a line 1200000 False []",
        "comments on many lines 1200000 False [('a', 60000)]",
        "an unclosed tag line of blanks 1200004 False [('<', 1)]",
        "unclosed tags 1199990 False [('<flow_send', 109090)]",
        "nested comment openings 1200007 False [('b', 1)]",
    ]
