"""`nfflowd install` into a temp root for real: the files, their modes, the
service pointing at the given nfflowd, idempotence, --dry-run changing
nothing, the old nfflowd.conf converted; commands recorded, not run on the
host (except `systemctl --root=TMP enable`, which only writes into TMP)."""

import os
import shutil
import stat
from pathlib import Path

import pytest

from nfflowd.app import config
from nfflowd.app import install as inst

ROOT = Path(__file__).resolve().parent.parent
EXE = "/opt/nfflowd/venv/bin/nfflowd"


class Recorder:
    def __init__(self, rc=0):
        self.calls = []
        self.rc = rc

    def __call__(self, argv):
        self.calls.append(argv)
        return self.rc, ""


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(p) \
                if stat.S_ISLNK(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), data)
    return out


def run(tmp_path, **kw):
    lines = []
    kw.setdefault("exe", EXE)
    kw.setdefault("runner", Recorder())
    rc = inst.install(root=str(tmp_path), out=lines.append, **kw)
    return rc, lines


def test_systemd_install_for_real(tmp_path):
    rec = Recorder()
    rc, lines = run(tmp_path, init_system="systemd", runner=rec)
    assert rc == 0, lines
    unit = (tmp_path / "etc/systemd/system/nfflowd.service").read_text()
    assert f"ExecStart={EXE} -f -c /etc/nfflowd.yaml start" in unit
    assert "/usr/local/bin/nfflowd" not in unit
    assert unit.replace(EXE, "/usr/local/bin/nfflowd") == (ROOT / "init/nfflowd.service").read_text()
    assert (tmp_path / "etc/rsyslog.d/30-nfflowd.conf").read_bytes() == \
        (ROOT / "init/rsyslog-nfflowd.conf").read_bytes()
    assert (tmp_path / "etc/logrotate.d/nfflowd").read_bytes() == \
        (ROOT / "init/logrotate-nfflowd").read_bytes()
    assert (tmp_path / "etc/nfflowd.yaml").read_bytes() == (ROOT / "conf/nfflowd.yaml").read_bytes()
    modes = {rel: stat.S_IMODE((tmp_path / rel).stat().st_mode) for rel in (
        "etc/systemd/system/nfflowd.service", "etc/rsyslog.d/30-nfflowd.conf",
        "etc/logrotate.d/nfflowd", "etc/nfflowd.yaml", "var/log/nfflowd")}
    assert modes == {"etc/systemd/system/nfflowd.service": 0o644,
                     "etc/rsyslog.d/30-nfflowd.conf": 0o644, "etc/logrotate.d/nfflowd": 0o644,
                     "etc/nfflowd.yaml": 0o644, "var/log/nfflowd": 0o750}
    assert not (tmp_path / "etc/init.d/nfflowd").exists()
    # not the running system: no daemon-reload; an offline enable into the root
    if shutil.which("systemctl"):
        assert rec.calls == [["systemctl", f"--root={tmp_path}", "enable", "nfflowd.service"]]
    else:
        assert rec.calls == []
    assert any(line.startswith("installed ") and line.endswith("nfflowd.service")
               for line in lines)


def test_systemctl_enable_offline_creates_the_wants_link(tmp_path):
    if shutil.which("systemctl") is None:
        pytest.skip("systemctl is not installed")
    rc, lines = run(tmp_path, init_system="systemd", runner=inst._run)
    assert rc == 0, lines
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/nfflowd.service"
    assert link.is_symlink() and os.readlink(link) == "/etc/systemd/system/nfflowd.service"


def test_second_run_changes_nothing_and_says_unchanged(tmp_path):
    assert run(tmp_path, init_system="systemd")[0] == 0
    before = snapshot(tmp_path)
    rc, lines = run(tmp_path, init_system="systemd")
    assert rc == 0
    assert snapshot(tmp_path) == before
    assert sum(line.startswith("unchanged ") for line in lines) == 4   # 3 files + log dir
    assert any(line.startswith("kept ") and line.endswith("etc/nfflowd.yaml (exists; not replaced)")
               for line in lines)
    assert not any(line.startswith(("installed ", "updated ")) for line in lines)


def test_changed_files_are_updated_but_the_config_is_kept(tmp_path):
    run(tmp_path, init_system="systemd")
    (tmp_path / "etc/nfflowd.yaml").write_text("# mine\n")
    (tmp_path / "etc/logrotate.d/nfflowd").write_text("old\n")
    os.chmod(tmp_path / "etc/rsyslog.d/30-nfflowd.conf", 0o600)
    rc, lines = run(tmp_path, init_system="systemd", exe="/usr/bin/nfflowd")
    assert rc == 0
    assert (tmp_path / "etc/nfflowd.yaml").read_text() == "# mine\n"
    assert (tmp_path / "etc/logrotate.d/nfflowd").read_bytes() == \
        (ROOT / "init/logrotate-nfflowd").read_bytes()
    assert stat.S_IMODE((tmp_path / "etc/rsyslog.d/30-nfflowd.conf").stat().st_mode) == 0o644
    assert "ExecStart=/usr/bin/nfflowd -f" in \
        (tmp_path / "etc/systemd/system/nfflowd.service").read_text()
    assert sum(line.startswith("updated ") for line in lines) == 2


def test_dry_run_changes_nothing(tmp_path):
    rec = Recorder()
    before = snapshot(tmp_path)
    rc, lines = run(tmp_path, dry_run=True, init_system="systemd", runner=rec)
    assert rc == 0
    assert snapshot(tmp_path) == before == {}
    assert rec.calls == []
    steps = lines[1:]
    assert steps and all(line.startswith(("would ", "note: ")) for line in steps), steps
    assert any("would install" in line and "nfflowd.service" in line for line in steps)
    assert any("would create" in line and "var/log/nfflowd" in line for line in steps)
    # and after a real install, a dry run of the same has nothing to do
    run(tmp_path, init_system="systemd")
    before = snapshot(tmp_path)
    rc, lines = run(tmp_path, dry_run=True, init_system="systemd")
    assert snapshot(tmp_path) == before
    assert not any(line.startswith(("would install", "would update")) for line in lines[1:])


def test_sysv_install(tmp_path):
    rec = Recorder()
    rc, lines = run(tmp_path, init_system="sysv", runner=rec)
    assert rc == 0, lines
    script = tmp_path / "etc/init.d/nfflowd"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert f"DAEMON={EXE}\n" in script.read_text()
    assert not (tmp_path / "etc/systemd").exists()
    assert rec.calls == []          # update-rc.d only on the running system
    assert any("update-rc.d nfflowd defaults" in line for line in lines)


def test_live_commands_are_the_expected_ones(tmp_path, monkeypatch):
    """On the running system (root "/"), which commands run: recorded with
    every file write sent to a temp dir instead of /."""
    real_dest = inst._Installer.dest
    monkeypatch.setattr(inst._Installer, "dest", lambda self, rel: real_dest(self, rel)
                        if not self.live else tmp_path / rel)
    rec = Recorder()
    lines = []
    assert inst.install(root="/", exe=EXE, init_system="systemd", out=lines.append,
                        runner=rec) == 0
    assert rec.calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "nfflowd.service"],
                         ["systemctl", "try-restart", "rsyslog.service"]]
    assert (tmp_path / "etc/systemd/system/nfflowd.service").exists()
    assert any(line == "installed /etc/systemd/system/nfflowd.service" for line in lines)
    # a failing command makes the install fail, and says so
    rec = Recorder(rc=1)
    lines = []
    assert inst.install(root="/", exe=EXE, init_system="systemd", out=lines.append,
                        runner=rec) == 1
    assert any(line.startswith("error: systemctl enable nfflowd.service failed") for line in lines)
    # SysV on the running system
    if shutil.which("update-rc.d"):
        rec = Recorder()
        assert inst.install(root="/", exe=EXE, init_system="sysv", out=lambda s: None,
                            runner=rec) == 0
        assert rec.calls == [["update-rc.d", "nfflowd", "defaults"]]


def test_the_old_nfflowd_conf_is_converted(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nfflowd.conf").write_text(
        "<flow_send>\n  args 172.16.1.1\n  args 192.168.0.1\n  args 65001\n</flow_send>\n")
    rc, lines = run(tmp_path, init_system="systemd")
    assert rc == 0, lines
    cfg = config.load(tmp_path / "etc/nfflowd.yaml")
    assert cfg.export.source == "172.16.1.1"
    assert cfg.export.collectors == (config.Collector("192.168.0.1", 65001, 5),)
    assert any(line.startswith("converted ") for line in lines)
    # a broken one is reported and nothing is made up in its place
    (tmp_path / "etc/nfflowd.yaml").unlink()
    (tmp_path / "etc/nfflowd.conf").write_text("<flow_send>\n  args 172.16.1.1\n</flow_send>\n")
    rc, lines = run(tmp_path, init_system="systemd")
    assert rc == 1
    assert not (tmp_path / "etc/nfflowd.yaml").exists()
    assert any("line 2: flow_send.args" in line for line in lines)
    # so is one not in UTF-8 (#15 item 16: a UnicodeDecodeError traceback once)
    (tmp_path / "etc/nfflowd.conf").write_bytes(
        "# Fran\xe7ois\n<flow_send>\n  args 172.16.1.1\n</flow_send>\n".encode("latin-1"))
    rc, lines = run(tmp_path, init_system="systemd")
    assert rc == 1
    assert not (tmp_path / "etc/nfflowd.yaml").exists()
    assert any("nfflowd.conf: not UTF-8: byte 0xe7 at offset 6 (line 1)" in line
               for line in lines), lines


def test_detection_and_executable(tmp_path, monkeypatch):
    assert inst.detect_init_system(str(tmp_path)) == "sysv"
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert inst.detect_init_system(str(tmp_path)) == "systemd"
    fake = tmp_path / "bin" / "nfflowd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setattr("sys.argv", [str(fake), "install"])
    assert inst.find_executable() == str(fake)
    monkeypatch.setattr("sys.argv", ["/usr/lib/python3/pytest"])
    monkeypatch.setenv("PATH", str(fake.parent))
    assert inst.find_executable() == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert inst.find_executable() is None
    with pytest.raises(ValueError):
        inst.install(root=str(tmp_path), exe="nfflowd", out=lambda s: None)
