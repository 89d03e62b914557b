"""``nfflowd install``: set nfflowd up to start after reboot, with systemd
(the unit, enabled) or SysV init (the script, update-rc.d), plus the
rsyslog and logrotate snippets, the log directory and /etc/nfflowd.yaml.
Every step is printed and idempotent; ``dry_run`` changes nothing.  The
files come from the package (``nfflowd/_data/``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

DEFAULT_EXE = "/usr/local/bin/nfflowd"
UNIT_NAME = "nfflowd.service"

# data file -> (destination relative to root, mode)
SERVICE = ("nfflowd.service", "etc/systemd/system/nfflowd.service", 0o644)
INIT = ("nfflowd.init", "etc/init.d/nfflowd", 0o755)
RSYSLOG = ("rsyslog-nfflowd.conf", "etc/rsyslog.d/30-nfflowd.conf", 0o644)
LOGROTATE = ("logrotate-nfflowd", "etc/logrotate.d/nfflowd", 0o644)
CONFIG = ("nfflowd.yaml", "etc/nfflowd.yaml", 0o644)
LEGACY_CONFIG = "etc/nfflowd.conf"
LOG_DIR = "var/log/nfflowd"


def data_file(name: str) -> bytes:
    return resources.files("nfflowd").joinpath("_data", name).read_bytes()


def find_executable() -> str | None:
    """The installed ``nfflowd`` command: the one running, else the PATH's."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "nfflowd" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    found = shutil.which("nfflowd")
    return os.path.abspath(found) if found else None


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=120)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: timed out"
    return p.returncode, (p.stdout + p.stderr).strip()


class _Installer:
    def __init__(self, dry_run, root, out, runner):
        self.dry_run = dry_run
        self.root = Path(root)
        self.live = self.root.resolve() == Path("/")
        self.out = out
        self.run_cmd = runner
        self.failed = 0

    def dest(self, rel: str) -> Path:
        return self.root / rel

    def show(self, rel: str) -> str:
        return "/" + rel if self.live else str(self.dest(rel))

    def say(self, msg: str) -> None:
        self.out(msg)

    def fail(self, msg: str) -> None:
        self.failed += 1
        self.out(f"error: {msg}")

    def put(self, content: bytes, rel: str, mode: int, keep_existing: bool = False) -> bool:
        """Install a file; True when it was (or would be) written."""
        path, shown = self.dest(rel), self.show(rel)
        try:
            exists = path.exists()
            same = exists and path.read_bytes() == content
            mode_ok = exists and (path.stat().st_mode & 0o7777) == mode
        except OSError as e:
            self.fail(f"{shown}: {e.strerror or e}")
            return False
        if exists and keep_existing:
            self.say(f"kept {shown} (exists; not replaced)")
            return False
        if same and mode_ok:
            self.say(f"unchanged {shown}")
            return False
        verb = "update" if exists else "install"
        if same:
            verb = f"set mode {mode:o} on"
        if self.dry_run:
            self.say(f"would {verb} {shown}")
            return True
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if same:
                os.chmod(path, mode)
            else:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(content)
                    os.chmod(tmp, mode)
                    os.replace(tmp, path)
                except BaseException:
                    os.unlink(tmp)
                    raise
        except OSError as e:
            self.fail(f"cannot {verb} {shown}: {e.strerror or e}")
            return False
        done = {"install": "installed", "update": "updated"}.get(verb, verb)
        self.say(f"{done} {shown}")
        return True

    def mkdir(self, rel: str, mode: int, owner: tuple[int, int] | None = None) -> None:
        path, shown = self.dest(rel), self.show(rel)
        if path.is_dir():
            self.say(f"unchanged {shown}/")
            return
        if self.dry_run:
            self.say(f"would create {shown}/")
            return
        try:
            path.mkdir(parents=True, mode=mode)
            os.chmod(path, mode)
            if owner is not None and os.geteuid() == 0:
                os.chown(path, *owner)
        except OSError as e:
            self.fail(f"cannot create {shown}/: {e.strerror or e}")
            return
        self.say(f"created {shown}/")

    def command(self, argv: list[str], why: str = "", required: bool = True) -> bool:
        shown = " ".join(argv)
        if self.dry_run:
            self.say(f"would run {shown}")
            return True
        rc, output = self.run_cmd(argv)
        if rc == 0:
            self.say(f"ran {shown}")
            return True
        detail = f": {output}" if output else ""
        if required:
            self.fail(f"{shown} failed (exit status {rc}){detail}")
        else:
            self.say(f"note: {shown} failed (exit status {rc}){detail}{why}")
        return False


def detect_init_system(root: str = "/") -> str:
    """``systemd`` when it runs the system (sd_booted: /run/systemd/system), else ``sysv``."""
    return "systemd" if (Path(root) / "run/systemd/system").is_dir() else "sysv"


def _with_exe(text: bytes, exe: str) -> bytes:
    return text.replace(DEFAULT_EXE.encode(), exe.encode())


def install(dry_run: bool = False, *, root: str = "/", exe: str | None = None,
            init_system: str | None = None, out=print, runner=None) -> int:
    """Set nfflowd up to start after reboot.  Returns 0, or 1 when a step
    failed (the other steps are still done).

    With systemd as the init system (``/run/systemd/system`` exists): the
    unit file into /etc/systemd/system/ (ExecStart pointing at this
    nfflowd), then ``systemctl daemon-reload`` and ``systemctl enable
    nfflowd``.  Otherwise the SysV script into /etc/init.d/nfflowd and
    ``update-rc.d nfflowd defaults``.  In both cases: the rsyslog snippet
    (/etc/rsyslog.d/30-nfflowd.conf, local6 to /var/log/nfflowd/flows.log),
    the logrotate snippet, /var/log/nfflowd, and /etc/nfflowd.yaml unless it
    exists (converted from the Perl nfflowd's /etc/nfflowd.conf when that
    exists, else the sample).  A file already as it should be is
    "unchanged", so running it twice is harmless; ``dry_run`` prints what
    would be done ("would ...").  ``root`` installs into another tree (a
    chroot, an image, the tests): commands that act on the running system
    are then not run, except ``systemctl --root=ROOT enable``, which works
    offline.  ``init_system`` is
    ``"systemd"``, ``"sysv"`` or None (detected); ``exe`` is the nfflowd
    command the service runs (default: this one); ``runner(argv) -> (status,
    output)`` runs commands (tests record them)."""
    inst = _Installer(dry_run, root, out, runner or _run)
    init_system = init_system or detect_init_system(root)
    if init_system not in ("systemd", "sysv"):
        raise ValueError(f"init_system: expected systemd or sysv, got {init_system!r}")
    if exe is None:
        exe = find_executable()
        if exe is None:
            exe = DEFAULT_EXE
            out(f"note: cannot find the nfflowd command; the service will run {exe}")
    if not os.path.isabs(exe):
        raise ValueError(f"exe: expected an absolute path, got {exe!r}")
    where = "" if inst.live else f" into {inst.root}"
    out(f"{'would install' if dry_run else 'installing'} nfflowd{where} "
        f"({init_system}; the service runs {exe})")

    # 1. the configuration, only if there is none
    _config(inst)

    # 2. syslog and log rotation
    inst.mkdir(LOG_DIR, 0o750, _log_owner())
    rsyslog_changed = inst.put(data_file(RSYSLOG[0]), RSYSLOG[1], RSYSLOG[2])
    inst.put(data_file(LOGROTATE[0]), LOGROTATE[1], LOGROTATE[2])

    # 3. the service
    if init_system == "systemd":
        inst.put(_with_exe(data_file(SERVICE[0]), exe), SERVICE[1], SERVICE[2])
        if inst.live:
            inst.command(["systemctl", "daemon-reload"])
            inst.command(["systemctl", "enable", UNIT_NAME])
            if rsyslog_changed:
                inst.command(["systemctl", "try-restart", "rsyslog.service"],
                             " (restart rsyslog to write /var/log/nfflowd/flows.log)",
                             required=False)
            out("nfflowd starts at boot; start it now with: systemctl start nfflowd")
        elif shutil.which("systemctl"):
            inst.command(["systemctl", f"--root={inst.root}", "enable", UNIT_NAME])
        else:
            out(f"note: systemctl not found: enable {UNIT_NAME} in {inst.root} yourself")
    else:
        inst.put(_with_exe(data_file(INIT[0]), exe), INIT[1], INIT[2])
        if not inst.live:
            out(f"note: not the running system: run 'update-rc.d nfflowd defaults' in "
                f"{inst.root}")
        elif shutil.which("update-rc.d"):
            inst.command(["update-rc.d", "nfflowd", "defaults"])
        elif shutil.which("chkconfig"):
            inst.command(["chkconfig", "--add", "nfflowd"])
        else:
            inst.fail("neither update-rc.d nor chkconfig found: link /etc/init.d/nfflowd "
                      "into the rc?.d directories yourself")
        if inst.live:
            if rsyslog_changed:
                out("note: restart rsyslog to write /var/log/nfflowd/flows.log "
                    "(service rsyslog restart)")
            out("nfflowd starts at boot; start it now with: service nfflowd start")
    if inst.failed:
        out(f"{inst.failed} step(s) failed")
        return 1
    return 0


def _log_owner() -> tuple[int, int]:
    """Who owns /var/log/nfflowd: rsyslog's user where it drops privileges
    (Ubuntu's ``syslog``) else root; group ``adm`` (may read logs) if any."""
    import grp
    import pwd
    try:
        uid = pwd.getpwnam("syslog").pw_uid
    except KeyError:
        uid = 0
    try:
        gid = grp.getgrnam("adm").gr_gid
    except KeyError:
        gid = 0
    return uid, gid


def _config(inst: _Installer) -> None:
    rel, mode = CONFIG[1], CONFIG[2]
    if inst.dest(rel).exists():
        inst.say(f"kept {inst.show(rel)} (exists; not replaced)")
        return
    legacy_path = inst.dest(LEGACY_CONFIG)
    if legacy_path.is_file():
        from nfflowd.app import config
        from nfflowd.app import legacy
        from nfflowd.app.pipeline import check_encoders
        from nfflowd.errors import ConfigError
        try:
            text = config.read_text(legacy_path)      # bounded, UTF-8 or a clear error
            notes: list = []
            data = legacy.parse_legacy(text, inst.show(LEGACY_CONFIG), notes)
            check_encoders(config.parse(data, inst.show(LEGACY_CONFIG)))
        except ConfigError as e:
            inst.fail(f"cannot convert the old configuration:\n{e}")
            return
        for n in notes:
            inst.say(f"note: {inst.show(LEGACY_CONFIG)}: {n}")
        content = legacy.to_yaml(data, inst.show(LEGACY_CONFIG)).encode()
        if inst.put(content, rel, mode):
            inst.say(f"{'would convert' if inst.dry_run else 'converted'} "
                     f"{inst.show(LEGACY_CONFIG)} to {inst.show(rel)}")
        return
    inst.put(data_file(CONFIG[0]), rel, mode)
