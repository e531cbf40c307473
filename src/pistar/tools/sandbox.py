"""Run untrusted Python (an agent's "python" tool) inside a bubblewrap sandbox with resource limits.

Each call starts a fresh interpreter under `bwrap` (Linux namespaces) plus rlimits set in the child.

What is isolated:
- Network: a new, empty network namespace (only its own loopback). No outside host, and not the host's
  127.0.0.1 either: services listening on the host are unreachable.
- Filesystem: the sandbox sees a new root with only what the interpreter needs, read-only: /usr and the
  /bin /lib /lib64 /sbin links, a few /etc files (ld.so.cache, alternatives, localtime; passwd, group and
  hosts are generated), `sys.base_prefix`, `sys.prefix` (the venv, so installed packages import) and the real
  interpreter binary. Nothing else of /root, /home, /work, /etc or the project is visible. Writable are only
  /sandbox (the per-run working directory, a host directory, also the cwd and HOME), and private size-capped
  tmpfs mounts at /tmp and /dev/shm. The rest of the root is remounted read-only.
- Processes: own PID namespace (host processes are invisible and unsignalable; when the sandbox ends the
  kernel kills every process left in it), own IPC and UTS namespaces, a new session (no TTY injection),
  all capabilities dropped, a cleared environment, and, where the kernel allows, a user namespace in which
  creating further user namespaces is disabled.
- Limits: wall-clock timeout (the whole process group is SIGKILLed), RLIMIT_AS (address space, i.e. memory),
  RLIMIT_CPU, RLIMIT_FSIZE (largest file), RLIMIT_CORE 0, and captured output capped; a program that keeps
  writing after the cap is killed, so the host never buffers unbounded output.

What is NOT isolated:
- It is namespaces, not a VM: the same kernel runs the code, so a kernel exploit escapes.
- CPU: there is no share or quota; the code competes with the host for cores until the timeout or
  RLIMIT_CPU (which is per process) ends it.
- Process count: RLIMIT_NPROC is not set, because it counts all processes of the real uid system-wide (as root
  that is every root process on the host) and would make runs fail at random. A fork bomb stays inside the
  PID namespace and dies at the timeout, but until then it is bounded only by the per-process memory limit
  and the host's pid_max. RLIMIT_AS is per process too, so N children can use N times the memory.
- Disk: RLIMIT_FSIZE caps each file, not the number of files written to the host working directory.
- The readable parts (/usr, the Python installation, the venv) are not secret from the code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pistar.tools.base import Tool, ToolError, tool

__all__ = [
    "SandboxResult",
    "SandboxUnavailable",
    "format_result",
    "make_python_tool",
    "python_tool",
    "run_python",
]

SANDBOX_DIR = "/sandbox"  # the working directory inside the sandbox
SCRIPT_PATH = "/tmp/main.py"  # where the code is mounted: a real file gives tracebacks with source lines
FILE_SIZE_LIMIT = 64 * 1024 * 1024  # RLIMIT_FSIZE: no single file larger than this
TMPFS_BYTES = 64 * 1024 * 1024  # /tmp and /dev/shm are RAM-backed and outside RLIMIT_AS, so they get a size
FLOOD_FACTOR = 16  # kill a program once it has written this many times max_output_bytes (at least 1 MiB)
_ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")
_ROOT_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; the message says how to fix it."""


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int  # the program's exit status; 128+N if it died of signal N; -9 if we killed it
    timed_out: bool
    memory_exceeded: bool
    output_truncated: bool
    duration_s: float


# ---------------------------------------------------------------- bubblewrap discovery

_probe_lock = threading.Lock()
_userns_flags: list[str] | None = None  # cached once bwrap has been shown to work


def _bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed; fix: apt-get install bubblewrap")
    return path


def _extra_isolation_flags(bwrap: str) -> list[str]:
    """Probe once whether bwrap works here and whether it can add a user namespace without nested userns.

    A user namespace with --disable-userns keeps the code from creating its own user namespaces, which is
    where many kernel exploits start; some containers forbid user namespaces, so it is optional.
    """
    global _userns_flags
    with _probe_lock:
        if _userns_flags is not None:
            return _userns_flags
        base = [bwrap, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--die-with-parent"]
        error = ""
        for flags in (["--unshare-user", "--disable-userns"], []):
            try:
                proc = subprocess.run([*base, *flags, "true"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as e:
                error = str(e)
                continue
            if proc.returncode == 0:
                _userns_flags = flags
                return flags
            error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise SandboxUnavailable(
            f"bubblewrap cannot create namespaces here ({error}); fix: run as root, or enable unprivileged "
            "user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        )


# ---------------------------------------------------------------- the bwrap command line


def _python_roots() -> list[str]:
    """The directories the interpreter and its packages live in, minus ones already inside another."""
    candidates = [sys.base_prefix, sys.prefix, sys.exec_prefix, sys.base_exec_prefix]
    real_exe = os.path.realpath(sys.executable)
    candidates.append(os.path.dirname(os.path.dirname(real_exe)))  # <prefix>/bin/python3.11 -> <prefix>
    roots: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates if p}, key=len):
        if path == "/" or not os.path.isdir(path):
            continue
        if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
            roots.append(path)
    # A venv's path may itself be a symlink; bind the unresolved path too so sys.executable resolves.
    for p in (sys.prefix, sys.base_prefix):
        if p and os.path.realpath(p) != p and os.path.isdir(p) and p not in roots:
            roots.append(p)
    return roots


def _etc_files(run_dir: Path) -> list[str]:
    """Generated /etc/passwd, group and hosts: enough for getpass, pwd and 'localhost', with no host data."""
    uid, gid = os.getuid(), os.getgid()
    etc = run_dir / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(f"sandbox:x:{uid}:{gid}:sandbox:{SANDBOX_DIR}:/bin/sh\n")
    (etc / "group").write_text(f"sandbox:x:{gid}:\n")
    (etc / "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost\n")
    args: list[str] = []
    for name in ("passwd", "group", "hosts"):
        args += ["--ro-bind", str(etc / name), f"/etc/{name}"]
    return args


def _bwrap_args(bwrap: str, run_dir: Path, workdir: Path, extra: list[str], info_fd: int) -> list[str]:
    args = [
        bwrap,
        *extra,
        "--info-fd",
        str(info_fd),
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--dev",
        "/dev",
        "--size",
        str(TMPFS_BYTES),
        "--tmpfs",
        "/dev/shm",
        "--proc",
        "/proc",
        "--size",
        str(TMPFS_BYTES),
        "--tmpfs",
        "/tmp",
    ]
    for name in _ROOT_DIRS:
        host = f"/{name}"
        if os.path.islink(host):  # /bin -> usr/bin on merged-/usr systems
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    for name in _ETC_ENTRIES:
        if os.path.exists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    args += _etc_files(run_dir)
    for root in _python_roots():
        args += ["--ro-bind", root, root]
    real_exe = os.path.realpath(sys.executable)
    args += ["--ro-bind", real_exe, real_exe]  # harmless if already inside a bound root
    args += [
        "--ro-bind",
        str(run_dir / "main.py"),
        SCRIPT_PATH,
        "--bind",
        str(workdir),
        SANDBOX_DIR,
        "--remount-ro",
        "/",
        "--remount-ro",
        "/dev",
        "--chdir",
        SANDBOX_DIR,
        "--clearenv",
    ]
    env = {
        "PATH": f"{os.path.join(sys.prefix, 'bin')}:/usr/local/bin:/usr/bin:/bin",
        "HOME": SANDBOX_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": SANDBOX_DIR,  # sys.path[0] is the script's dir; modules written to the cwd import too
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "MPLBACKEND": "Agg",
    }
    for key, value in env.items():
        args += ["--setenv", key, value]
    # -u: unbuffered, so what was printed before a timeout kill is still captured.
    return [*args, "--", sys.executable, "-u", SCRIPT_PATH]


def _limits(memory_mb: int, cpu_s: int) -> None:
    """Runs in the forked child before exec (preexec_fn); bwrap and everything it starts inherit these."""
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL a second later
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # RLIMIT_NPROC is deliberately not set: it counts every process of the real uid on the host (see top).


# ---------------------------------------------------------------- running


class _Drain(threading.Thread):
    """Reads one pipe to EOF, keeping the first `cap` bytes and counting (not storing) the rest."""

    def __init__(self, fd: int, cap: int, flood: threading.Event, flood_bytes: int):
        super().__init__(daemon=True)
        self.fd, self.cap, self.flood, self.flood_bytes = fd, cap, flood, flood_bytes
        self.kept = bytearray()
        self.total = 0

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, 65536):
                self.total += len(chunk)
                if len(self.kept) < self.cap:
                    self.kept += chunk[: self.cap - len(self.kept)]
                if self.total > self.flood_bytes:
                    self.flood.set()
        except OSError:
            pass


def _write_files(workdir: Path, files: dict[str, str]) -> None:
    root = workdir.resolve()
    for name, content in files.items():
        target = (root / name).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"file name {name!r} leaves the working directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")


def run_python(
    code: str,
    *,
    timeout_s: float = 10,
    memory_mb: int = 512,
    max_output_bytes: int = 64_000,
    workdir: str | Path | None = None,
    files: dict[str, str] | None = None,
) -> SandboxResult:
    """Run `code` in a fresh sandboxed interpreter; never raises for anything the code does.

    `workdir` (created if missing) is mounted read-write at /sandbox, the cwd; without it a temporary
    directory is used and deleted afterwards. `files` (name -> text) are written into it first.
    Raises SandboxUnavailable if bubblewrap is missing or unusable, ValueError for bad arguments.
    """
    if timeout_s <= 0 or memory_mb <= 0 or max_output_bytes < 0:
        raise ValueError("timeout_s and memory_mb must be positive, max_output_bytes non-negative")
    bwrap = _bwrap()
    extra = _extra_isolation_flags(bwrap)
    run_dir = Path(tempfile.mkdtemp(prefix="pistar-sandbox-"))
    try:
        if workdir is None:
            work = run_dir / "work"
            work.mkdir()
        else:
            work = Path(workdir).absolute()
            work.mkdir(parents=True, exist_ok=True)
        _write_files(work, files or {})
        (run_dir / "main.py").write_text(code, encoding="utf-8", errors="surrogateescape")
        info_r, info_w = os.pipe()
        try:
            args = _bwrap_args(bwrap, run_dir, work, extra, info_w)
            return _execute(args, info_r, info_w, timeout_s, memory_mb, max_output_bytes)
        finally:
            os.close(info_r)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _sandbox_init_pid(info_r: int) -> int | None:
    """The host pid of the sandbox's PID-namespace init, from what bwrap wrote to --info-fd."""
    os.set_blocking(info_r, False)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(info_r, 4096):
            data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _wait_namespace_gone(pid: int | None, timeout_s: float = 5) -> None:
    """Wait until the namespace init is dead: the kernel kills and reaps every process in the namespace first.

    bwrap can exit (and its pipes reach EOF) while detached processes in the sandbox are still being killed;
    waiting here means none of them outlives run_python.
    """
    if pid is None:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.005)


def _execute(
    args: list[str], info_r: int, info_w: int, timeout_s: float, memory_mb: int, max_output_bytes: int
) -> SandboxResult:
    cpu_s = math.ceil(timeout_s) + 1
    flood = threading.Event()
    flood_bytes = max(FLOOD_FACTOR * max_output_bytes, 1 << 20)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            pass_fds=(info_w,),
            preexec_fn=lambda: _limits(memory_mb, cpu_s),
        )
    finally:
        os.close(info_w)
    assert proc.stdout is not None and proc.stderr is not None
    drains = [_Drain(p.fileno(), max_output_bytes, flood, flood_bytes) for p in (proc.stdout, proc.stderr)]
    for d in drains:
        d.start()
    deadline = start + timeout_s
    killed_at_timeout = killed_for_output = False
    # Poll rather than wait(): only this thread kills and reaps, so a killpg never hits a recycled pgid.
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            killed_at_timeout = True
        elif flood.is_set():
            killed_for_output = True
        if killed_at_timeout or killed_for_output:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        flood.wait(0.01)
    _wait_namespace_gone(_sandbox_init_pid(info_r))
    for d in drains:  # the namespace is gone, so every writer is: EOF follows at once
        d.join(timeout=5)
    proc.stdout.close()
    proc.stderr.close()
    duration = time.monotonic() - start
    rc = proc.returncode
    stdout, stderr = (bytes(d.kept).decode("utf-8", errors="replace") for d in drains)
    truncated = any(d.total > max_output_bytes for d in drains)
    timed_out = killed_at_timeout or rc in (128 + signal.SIGXCPU, -signal.SIGXCPU)
    memory = (rc != 0 and any(m in stderr for m in _MEMORY_MARKERS)) or (
        rc in (128 + signal.SIGKILL, -signal.SIGKILL) and not (killed_at_timeout or killed_for_output)
    )  # an unexplained SIGKILL is the kernel's OOM killer
    return SandboxResult(stdout, stderr, rc, timed_out, memory, truncated or killed_for_output, duration)


# ---------------------------------------------------------------- the agent tool


def format_result(result: SandboxResult, timeout_s: float, memory_mb: int) -> str:
    """Compact text for the model: stdout, stderr, then one status line."""
    parts = [result.stdout.rstrip("\n")] if result.stdout else []
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.timed_out:
        status = f"[killed: time limit {timeout_s:g}s]"
    elif result.memory_exceeded:
        status = (
            f"[killed: memory limit {memory_mb} MB]"
            if result.exit_code in (-9, 137)
            else (f"[memory limit {memory_mb} MB reached; exit code {result.exit_code}]")
        )
    elif result.output_truncated and result.exit_code == -signal.SIGKILL:
        status = "[killed: too much output]"
    elif result.exit_code > 128 and result.exit_code - 128 in signal.valid_signals():
        status = f"[exit code {result.exit_code}: {signal.Signals(result.exit_code - 128).name}]"
    else:
        status = f"[exit code {result.exit_code}]"
    if result.output_truncated:
        status = "[output truncated]\n" + status
    parts.append(status)
    return "\n".join(parts)


def _available(names: tuple[str, ...]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is not None]


def make_python_tool(
    timeout_s: float = 10, memory_mb: int = 512, max_output_bytes: int = 64_000, workdir: str | Path | None = None
) -> Tool:
    """A "python" tool with these limits. With `workdir`, files written by one call are there for the next."""
    libs = _available(("numpy", "pandas", "scipy", "sympy", "matplotlib", "PIL"))
    persist = "files you write there are kept between calls" if workdir is not None else ("it starts empty every call")

    def python(code: str) -> str:
        try:
            result = run_python(
                code, timeout_s=timeout_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes, workdir=workdir
            )
        except SandboxUnavailable as e:
            raise ToolError("tool_failed", str(e)) from None
        return format_result(result, timeout_s, memory_mb)

    python.__doc__ = (
        f"Run a Python {sys.version_info.major}.{sys.version_info.minor} program and get back its stdout, "
        "stderr and exit code. Each call is a fresh process with no state from earlier calls, so print "
        f"what you need to see. No network access. The working directory is /sandbox ({persist}). "
        f"Limits: {timeout_s:g} s, {memory_mb} MB memory, {max_output_bytes} bytes of output."
        + (f" Installed: {', '.join(libs)}." if libs else "")
    )
    return tool(python, name="python")


python_tool = make_python_tool()
