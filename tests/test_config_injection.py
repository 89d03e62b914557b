"""#15 item 11: control characters in configuration strings are refused.

A newline in syslog.ident went into the header of every syslog message the
mirror sends: ``ident: "nfflowd\\n<182>..."`` forged a second, well-formed
line (facility local6, any text) into the NAT log.  Collector hosts, the
pidfile and the other string keys end up in log lines too.  Every such key is
refused with its name, the character shown escaped."""

import pytest

from nfflowd.app import config
from nfflowd.errors import ConfigError

FORGED = "nfflowd\n<182>Dec  4 12:00:00 fw nfflowd: 1,0,0,0.0.0.0,1,1"


@pytest.mark.parametrize("data, key", [
    ({"syslog": {"ident": FORGED}}, "syslog.ident"),
    ({"syslog": {"ident": "nfflowd\r"}}, "syslog.ident"),
    ({"syslog": {"address": "/dev/log\n"}}, "syslog.address"),
    ({"export": {"collectors": [{"host": "127.0.0.1\nforged", "port": 2055}]}},
     "export.collectors[0].host"),
    ({"export": {"collectors": [{"host": "collector\x1b[2J", "port": 2055}]}},
     "export.collectors[0].host"),
    ({"pidfile": "/run/nfflowd.pid\nforged"}, "pidfile"),
    ({"pidfile": "/run/nfflowd\x00.pid"}, "pidfile"),
    ({"metrics": {"listen": "127.0.0.1:9469\n"}}, "metrics.listen"),
    ({"user": "nobody\n"}, "user"),
    ({"syslog": {"ident": "nfflowd\x85forged"}}, "syslog.ident"),     # C1 NEL
])
def test_control_characters_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        config.parse(data, "/etc/x.yaml")
    assert [k for k, _ in e.value.problems] == [key], e.value.problems
    text = str(e.value)
    assert f"/etc/x.yaml: {key}: control character" in text
    # the message itself shows the character escaped, never raw
    assert "\n<182>" not in text and "\x1b" not in text and "\x00" not in text


def test_printable_strings_are_still_accepted():
    cfg = config.parse({"syslog": {"ident": "nfflowd-fw1 été"},
                        "export": {"collectors": [{"host": "collector.example", "port": 2055}]},
                        "pidfile": "/run/nfflowd/nfflowd.pid"})
    assert cfg.syslog.ident == "nfflowd-fw1 été"
    assert cfg.pidfile == "/run/nfflowd/nfflowd.pid"

