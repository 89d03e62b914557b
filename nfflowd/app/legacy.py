"""The Perl nfflowd's configuration file (/etc/nfflowd.conf), read once more:
``parse_general`` reads Config::General's syntax, ``parse_legacy`` maps its
blocks onto the YAML-shaped dict that ``config.parse`` validates, and
``to_yaml`` prints that for ``check`` and ``install``.  ``parse_any`` and
``load_any`` take either format.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import yaml

from nfflowd.errors import ConfigError

LEGACY_PATH = "/etc/nfflowd.conf"
BLOCKS = ("conntrack", "ct2ft", "ptee", "flow_import", "flow_send")
DEFAULT_FLOW_SEND_FORMAT = "-V5 -s %s/%s/%s"
SYSLOG_CLASS = "Log::Dispatch::Syslog"
# Log::Dispatch levels, lowest first; the records were logged at "notice".
LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LEVEL_ALIASES = {"warn": "warning", "err": "error", "crit": "critical", "emerg": "emergency"}

# [^>\n]: a tag is on one line (and so each line is scanned once)
_LOOKS = re.compile(r"^[ \t]*<[ \t]*/?[ \t]*(%s)\b[^>\n]*>" % "|".join(BLOCKS), re.M)


def looks_legacy(text: str) -> bool:
    """Whether the text is an old nfflowd.conf (it has one of its blocks)."""
    return bool(_LOOKS.search(text))


# -- Config::General, the subset nfflowd.conf files use -----------------------

@dataclass
class Block:
    name: str
    line: int
    options: dict = field(default_factory=dict)   # key -> [(value, line), ...]
    blocks: dict = field(default_factory=dict)    # name -> [Block, ...]


_OPTION = re.compile(r"^([^\s=]+)(?:\s*=\s*|\s+|$)(.*)$")
_HEREDOC = re.compile(r"^<<\s*(\w+)\s*;?$")


def _tag(line: str):
    """A block tag line: ("open", name) for ``<name [argument]>`` (the name
    then "name argument"), ("close", name) for ``</name>``, else None.
    String operations, not a regular expression, so that a long line costs
    its length and no more."""
    if not line.startswith("<") or line.startswith("<<") or not line.endswith(">"):
        return None
    inner = line[1:-1].strip()
    if not inner or ">" in inner:
        return None
    if inner.startswith("/"):
        name = inner[1:].strip()
        return ("close", name) if name and len(name.split()) == 1 else None
    return ("open", " ".join(inner.split(None, 1)))


def _strip_c_comments(line: str, in_comment: bool) -> tuple[str | None, bool]:
    """One line through Config::General's C-comment rules (CComments, on by
    default): ``/* ... */`` within a line goes, from the first ``/*`` to the
    last ``*/`` with the blanks around; a line beginning with ``/*`` and no
    ``*/`` opens a comment; a line with ``*/`` (and no ``/*`` before it) closes
    it, the text after the last ``*/`` staying.  A ``/*`` inside a comment
    does not nest: the first closing line ends it.  Returns (the line, or None
    when it is all comment; whether a comment is open after it).  A few
    find/rfind calls: linear in the line."""
    start = line.find("/*")
    end = line.rfind("*/")
    if start >= 0 and end >= start + 2:            # /* ... */ on the line
        line = line[:start].rstrip() + line[end + 2:].lstrip()
    elif line.lstrip().startswith("/*"):            # a comment opens here
        in_comment = not line.rstrip().endswith("*/")
    elif end >= 0:                                  # ... and closes here
        in_comment = False
        line = line[end + 2:]
    return (None if in_comment else line), in_comment


def _logical_lines(text: str):
    """(line number, text) with comments removed and continuations joined."""
    pending, start = "", 0
    in_c_comment = False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        n = i + 1
        line, in_c_comment = _strip_c_comments(lines[i], in_c_comment)
        i += 1
        if line is None:
            continue
        line = re.sub(r"(?<!\\)#.*$", "", line).replace("\\#", "#").strip()
        if line.endswith("\\"):
            if not pending:
                start = n
            pending += line[:-1].rstrip() + " "
            continue
        if pending:
            line, pending = pending + line, ""
            yield start, line.strip(), lines, i
            continue
        if line:
            yield n, line, lines, i


def parse_general(text: str, path: str = "<string>") -> Block:
    """Config::General text into a tree of Blocks (raises ConfigError)."""
    root = Block("", 0)
    stack = [root]
    problems: list[tuple[str, str]] = []
    gen = _logical_lines(text)
    skip_to = 0
    for n, line, lines, nxt in gen:
        if n <= skip_to:
            continue
        where = f"line {n}"
        if line.lower().startswith("<<include"):
            problems.append((where, "<<include>> is not supported; paste the included file in"))
            continue
        tag = _tag(line)
        if tag is not None and tag[0] == "close":
            name = tag[1]
            if len(stack) == 1 or name != stack[-1].name:
                want = f"</{stack[-1].name}>" if len(stack) > 1 else "no closing tag"
                problems.append((where, f"unexpected </{name}> (expected {want})"))
                if len(stack) > 1 and any(b.name == name for b in stack[1:]):
                    while stack[-1].name != name:
                        stack.pop()
                    stack.pop()
                continue
            stack.pop()
            continue
        if tag is not None:
            name = tag[1]
            block = Block(name, n)
            stack[-1].blocks.setdefault(name, []).append(block)
            stack.append(block)
            continue
        m = _OPTION.match(line)
        if not m:
            problems.append((where, f"cannot read {line!r}"))
            continue
        key, value = m.group(1), m.group(2).strip()
        h = _HEREDOC.match(value)
        if h:  # key <<EOF ... EOF
            body, j = [], nxt
            while j < len(lines) and lines[j].strip() != h.group(1):
                body.append(lines[j])
                j += 1
            if j >= len(lines):
                problems.append((where, f"here-document <<{h.group(1)} is not closed"))
            value, skip_to = "\n".join(body), j + 1
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        stack[-1].options.setdefault(key, []).append((value, n))
    for b in stack[1:]:
        problems.append((f"line {b.line}", f"<{b.name}> is not closed"))
    if problems:
        raise ConfigError(path, problems)
    return root


# -- the old configuration into the new one ------------------------------------

class _Reader:
    def __init__(self, path, notes):
        self.path = path
        self.problems: list[tuple[str, str]] = []
        self.notes = notes

    def bad(self, line, key, msg):
        self.problems.append((f"line {line}: {key}", msg))

    def one(self, block: Block, key: str, prefix: str):
        """A single-valued option: (value, line) or None."""
        values = block.options.get(key)
        if not values:
            return None
        if len(values) > 1:
            self.bad(values[1][1], f"{prefix}.{key}",
                     f"given {len(values)} times (lines {', '.join(str(v[1]) for v in values)}); "
                     "expected once")
        return values[-1]

    def single_block(self, parent: Block, name: str, prefix: str = ""):
        blocks = parent.blocks.get(name)
        if not blocks:
            return None
        if len(blocks) > 1:
            self.bad(blocks[1].line, prefix + name,
                     f"<{name}> given {len(blocks)} times; expected once (merge them into one)")
        return blocks[0]

    def unknown(self, block: Block, prefix: str, allowed_options, allowed_blocks=()):
        for key, values in block.options.items():
            if key not in allowed_options:
                self.bad(values[0][1], f"{prefix}{key}",
                         "unknown key (expected one of: "
                         f"{', '.join(allowed_options) or 'none here'})")
        for name, blocks in block.blocks.items():
            if name not in allowed_blocks:
                self.bad(blocks[0].line, f"{prefix}{name}",
                         f"unknown block <{name}> (expected one of: "
                         f"{', '.join(allowed_blocks) or 'none here'})")


# The original (Net::Netfilter::NetFlow, nfflowd 1.x) read a Config::General
# file merged over built-in defaults.  The one required part names the export
# source and the collector for ``flow-send``, as three ``args`` lines in this
# exact order (the original refused anything but three)::
#
#     <flow_send>
#         # source interface on this server
#         args 172.16.1.1
#         # netflow collector address
#         args 192.168.0.1
#         # netflow collector port number
#         args 65001
#     </flow_send>
#
# The ``flow_send`` ``format`` (default ``-V5 -s %s/%s/%s``) fills flow-send's
# ``localip/remoteip/port`` from them; ``-V`` is the NetFlow version.
# Optional parts: ``<ct2ft> ttl SECONDS </ct2ft>`` (0 or absent: one week)
# and the syslog copy, a Log::Dispatch configuration under ``<ptee><conf>``:
# ``dispatchers`` lines name blocks; the one of ``class
# Log::Dispatch::Syslog`` gives ``ident`` and ``facility`` (Log::Dispatch's
# default facility is ``user``); the records were logged at priority
# ``notice``.  ``<conntrack>`` and ``<flow_import>`` only configured helper
# programs nfflowd no longer runs.
def parse_legacy(text: str, path: str = LEGACY_PATH, notes: list | None = None) -> dict:
    """An old nfflowd.conf as the equivalent YAML-shaped dict (for
    ``nfflowd.app.config.parse``).  Raises ConfigError naming the file, the line
    and the key.  Settings with no equivalent are described in ``notes``."""
    path = str(path)
    notes = [] if notes is None else notes
    root = parse_general(text, path)
    r = _Reader(path, notes)
    r.unknown(root, "", (), BLOCKS)
    out: dict = {}

    # <flow_send>: three args lines, source / collector / port, in that order
    fs = r.single_block(root, "flow_send")
    if fs is None:
        r.problems.append(("flow_send", "no <flow_send> block: three args lines are needed, "
                                        "in this order: source address, collector address, "
                                        "collector port"))
    else:
        r.unknown(fs, "flow_send.", ("args", "format", "progname"))
        args = fs.options.get("args", [])
        if len(args) != 3:
            line = args[0][1] if args else fs.line
            hint = ""
            if len(args) == 1 and len(args[0][0].split()) == 3:
                hint = " (one per line, not all on one line)"
            elif any(len(v.split()) == 2 for v, _ in args):
                hint = " (values only, by position: args 172.16.1.1)"
            r.bad(line, "flow_send.args",
                  f"expected three args lines{hint}, in this order: source address, "
                  f"collector address, collector port; got {len(args)}")
        else:
            (src, src_line), (host, host_line), (port, port_line) = args
            try:
                source = str(ipaddress.ip_address(src))
            except ValueError:
                r.bad(src_line, "flow_send.args[0]",
                      f"expected the source address (an IPv4 or IPv6 address), got {src!r}")
                source = None
            if not host or any(c.isspace() for c in host):
                r.bad(host_line, "flow_send.args[1]",
                      f"expected the collector address, got {host!r}")
            if not port.isdigit() or not 0 < int(port) < 65536:
                r.bad(port_line, "flow_send.args[2]",
                      f"expected the collector port, from 1 to 65535, got {port!r}")
            version = 5
            fmt = r.one(fs, "format", "flow_send")
            if fmt is not None:
                m = re.search(r"(?:^|\s)-V\s*(\S+)", fmt[0])
                if m and m.group(1) != "5":
                    r.bad(fmt[1], "flow_send.format",
                          f"NetFlow version {m.group(1)}: nfflowd exports version 5 "
                          "(v9 and IPFIX are not built yet)")
                if fmt[0].split() != DEFAULT_FLOW_SEND_FORMAT.split():
                    notes.append(f"line {fmt[1]}: flow_send.format {fmt[0]!r}: only the "
                                 "NetFlow version is kept")
            if r.one(fs, "progname", "flow_send") is not None:
                notes.append("flow_send.progname: nfflowd sends the datagrams itself")
            if not r.problems:
                out["export"] = {"source": source, "collectors": [
                    {"host": host, "port": int(port), "version": version}]}

    # <ct2ft> ttl: 0 or absent means one week, as in the original
    ct = r.single_block(root, "ct2ft")
    if ct is not None:
        r.unknown(ct, "ct2ft.", ("ttl",))
        ttl = r.one(ct, "ttl", "ct2ft")
        if ttl is not None and ttl[0] not in ("", "0"):
            try:
                value = float(ttl[0])
                if not value > 0:
                    raise ValueError
            except ValueError:
                r.bad(ttl[1], "ct2ft.ttl", f"expected a number of seconds, got {ttl[0]!r}")
            else:
                out["conntrack"] = {"ttl": int(value) if value.is_integer() else value}

    # <ptee><conf>: the Log::Dispatch syslog copy
    syslog = {"enabled": True, "facility": "local6", "priority": "notice", "ident": "nfflowd"}
    pt = r.single_block(root, "ptee")
    if pt is not None:
        r.unknown(pt, "ptee.", (), ("conf",))
        conf = r.single_block(pt, "conf", "ptee.")
        if conf is not None:
            syslog = _ptee(r, conf, syslog)
    out["syslog"] = syslog

    for name in ("conntrack", "flow_import"):
        b = r.single_block(root, name)
        if b is not None and (b.options or b.blocks):
            notes.append(f"line {b.line}: <{name}> configured a helper program nfflowd no "
                         "longer runs; ignored")
    if r.problems:
        raise ConfigError(path, r.problems)
    return out


def _ptee(r: _Reader, conf: Block, syslog: dict) -> dict:
    names = [v for v, _ in conf.options.get("dispatchers", [])]
    for name, blocks in conf.blocks.items():
        if name not in names:
            r.notes.append(f"line {blocks[0].line}: ptee.conf.{name}: not listed in "
                           "dispatchers; ignored")
    syslog_blocks = []
    for name in names:
        b = r.single_block(conf, name, "ptee.conf.")
        if b is None:
            line = next(n for v, n in conf.options["dispatchers"] if v == name)
            r.bad(line, "ptee.conf.dispatchers", f"dispatcher {name!r} has no <{name}> block")
            continue
        cls = r.one(b, "class", f"ptee.conf.{name}")
        if cls is not None and cls[0] == SYSLOG_CLASS:
            syslog_blocks.append((name, b))
        elif name != "screen":
            r.notes.append(f"line {b.line}: ptee.conf.{name}: only the syslog dispatcher "
                           "is carried over")
    if not syslog_blocks:
        r.notes.append("ptee.conf: no Log::Dispatch::Syslog dispatcher: the syslog copy is off")
        return {"enabled": False}
    if len(syslog_blocks) > 1:
        r.notes.append(f"ptee.conf: {len(syslog_blocks)} syslog dispatchers; only "
                       f"{syslog_blocks[0][0]!r} is carried over")
    name, b = syslog_blocks[0]
    prefix = f"ptee.conf.{name}"
    out = dict(syslog)
    ident = r.one(b, "ident", prefix)
    if ident is not None and ident[0]:
        out["ident"] = ident[0]
    fac = r.one(b, "facility", prefix)
    from nfflowd.app.config import FACILITIES
    facility = fac[0] if fac is not None and fac[0] else "user"  # Log::Dispatch's default
    if facility not in FACILITIES:
        r.bad(fac[1], f"{prefix}.facility",
              f"expected a syslog facility ({', '.join(FACILITIES)}), got {facility!r}")
    out["facility"] = facility
    lvl = r.one(b, "min_level", prefix)
    if lvl is not None:
        level = LEVEL_ALIASES.get(lvl[0], lvl[0])
        if level.isdigit() and int(level) < len(LEVELS):
            level = LEVELS[int(level)]
        if level not in LEVELS:
            r.bad(lvl[1], f"{prefix}.min_level",
                  f"expected a Log::Dispatch level ({', '.join(LEVELS)}), got {lvl[0]!r}")
        elif LEVELS.index(level) > LEVELS.index("notice"):
            r.notes.append(f"line {lvl[1]}: {prefix}.min_level {lvl[0]}: the records (logged "
                           "at notice) were filtered out: the syslog copy is off")
            return {"enabled": False}
    for key in b.options:
        if key not in ("class", "ident", "facility", "min_level", "name"):
            r.notes.append(f"line {b.options[key][0][1]}: {prefix}.{key}: not carried over "
                           "(see syslog.address)")
    return out


def to_yaml(data: dict, source: str | None = None) -> str:
    """The dict as an nfflowd.yaml text."""
    head = f"# nfflowd configuration converted from {source}\n" if source else ""
    return head + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def parse_any(text: str, path) -> tuple:
    """A configuration's text in either format: the YAML one, or an old
    nfflowd.conf (converted).  Returns (Config, notes, legacy: bool)."""
    from nfflowd.app import config
    if not looks_legacy(text):
        return config.loads(text, str(path)), [], False
    notes: list = []
    data = parse_legacy(text, str(path), notes)
    return config.parse(data, str(path)), notes, True


def load_any(path):
    """Read a configuration file in either format (see ``parse_any``)."""
    from nfflowd.app import config
    return parse_any(config.read_text(path), path)
