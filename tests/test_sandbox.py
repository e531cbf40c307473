"""The python sandbox against real bubblewrap: each test tries an escape or a limit and checks it holds."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import threading
import uuid
from pathlib import Path

import pytest

from pistar.tools.sandbox import SandboxUnavailable, make_python_tool, python_tool, run_python

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap: apt-get install bubblewrap")
PROJECT_DIR = Path(__file__).resolve().parents[1]


def _processes_with(marker: str) -> list[str]:
    """Host pids whose command line contains `marker` (zombies have none, so they do not count)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


@needs_bwrap
def test_normal_code_returns_stdout_and_exit_code() -> None:
    ok = run_python("import sys\nprint('hello', 6 * 7)\nprint('warn', file=sys.stderr)")
    assert (ok.stdout, ok.stderr, ok.exit_code) == ("hello 42\n", "warn\n", 0)
    assert not (ok.timed_out or ok.memory_exceeded or ok.output_truncated)
    bad = run_python("x = 1\n1 / 0")
    assert bad.exit_code == 1 and not bad.memory_exceeded
    assert 'File "/tmp/main.py", line 2' in bad.stderr and "ZeroDivisionError" in bad.stderr


@needs_bwrap
def test_venv_packages_import() -> None:
    pytest.importorskip("numpy")
    r = run_python("import numpy as np\nprint(int(np.arange(10).sum()))")
    assert (r.stdout, r.exit_code) == ("45\n", 0), r.stderr


@needs_bwrap
def test_cannot_see_host_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sandbox-secret-{uuid.uuid4().hex}"
    planted = [tmp_path / name, PROJECT_DIR / name]
    monkeypatch.setenv("PISTAR_SANDBOX_SECRET", "hunter2")
    try:
        for p in planted:
            p.write_text("hunter2")
            assert p.read_text() == "hunter2"  # readable on the host
        code = f"""
import os
for p in {[str(p) for p in planted] + ["/etc/shadow", str(PROJECT_DIR / "pyproject.toml")]!r}:
    try:
        print("READ", p, open(p).read()[:20])
    except OSError as e:
        print("denied", type(e).__name__)
for d in {[str(PROJECT_DIR), str(tmp_path), str(Path.home()), "/tmp"]!r}:
    try:
        print("LIST", d, sorted(os.listdir(d)))
    except OSError as e:
        print("nolist", type(e).__name__)
print("ENV", sorted(os.environ))
print("PIDS", len([p for p in os.listdir("/proc") if p.isdigit()]))
for p in ["/usr/evil", "/evil", "/etc/evil"]:
    try:
        open(p, "w")
        print("WROTE", p)
    except OSError:
        pass
"""
        r = run_python(code)
    finally:
        for p in planted:
            p.unlink(missing_ok=True)
    assert r.exit_code == 0, r.stderr
    assert "READ" not in r.stdout and "hunter2" not in r.stdout and "WROTE" not in r.stdout
    assert r.stdout.count("denied FileNotFoundError") == 4
    assert name not in r.stdout
    env = next(line for line in r.stdout.splitlines() if line.startswith("ENV"))
    assert "PISTAR_SANDBOX_SECRET" not in env and "HOME" in env
    pids = int(next(line for line in r.stdout.splitlines() if line.startswith("PIDS")).split()[1])
    assert pids < 5  # bwrap's init, python, the listing itself: no host processes


@needs_bwrap
def test_no_network() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # the server really listens
            pass
        code = f"""
import socket
print("ifaces", [n for _, n in socket.if_nameindex()])
for addr in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
    try:
        socket.create_connection(addr, timeout=2).close()
        print("CONNECTED", addr)
    except OSError as e:
        print("refused", type(e).__name__)
try:
    socket.getaddrinfo("pypi.org", 443)
    print("RESOLVED")
except OSError:
    print("no dns")
"""
        r = run_python(code, timeout_s=8)
    finally:
        server.close()
    assert r.exit_code == 0, r.stderr
    assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout
    assert r.stdout.count("refused") == 3 and "ifaces ['lo']" in r.stdout
    assert len(accepted) == 1  # only the host's own connection got through


@needs_bwrap
def test_killed_at_time_limit() -> None:
    r = run_python("print('started')\nwhile True:\n    pass", timeout_s=2)
    assert r.timed_out and r.exit_code == -9 and not r.memory_exceeded
    assert 1.9 < r.duration_s < 5
    assert r.stdout == "started\n"  # output before the kill is kept (unbuffered)


@needs_bwrap
def test_killed_at_memory_limit() -> None:
    r = run_python("x = bytearray(2 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert r.memory_exceeded and not r.timed_out and r.exit_code != 0
    assert "allocated" not in r.stdout
    small = run_python("x = bytearray(100 * 1024**2)\nprint('allocated')", memory_mb=256)
    assert small.stdout == "allocated\n" and not small.memory_exceeded


@needs_bwrap
def test_rlimits_inside() -> None:
    code = """
import resource
print(resource.getrlimit(resource.RLIMIT_AS)[0] // 2**20, resource.getrlimit(resource.RLIMIT_CORE)[0])
try:
    with open("big", "wb") as f:
        f.write(b"x" * (100 * 2**20))
    print("WROTE 100MB")
except OSError as e:
    print("fsize", e.errno)
"""
    r = run_python(code, memory_mb=300)
    assert r.stdout.splitlines()[0] == "300 0"
    assert "WROTE" not in r.stdout and "fsize 27" in r.stdout  # EFBIG


@needs_bwrap
def test_huge_output_is_truncated_and_killed() -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = run_python("while True:\n    print('x' * 1000)", timeout_s=10, max_output_bytes=10_000)
    assert r.output_truncated and r.exit_code == -9 and not r.timed_out
    assert len(r.stdout) == 10_000 and r.stdout.startswith("x" * 1000 + "\n")
    assert r.duration_s < 5  # killed for flooding, long before the time limit
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB: host kept little
    finished = run_python("print('y' * 50_000)", max_output_bytes=1000)
    assert finished.output_truncated and finished.exit_code == 0 and len(finished.stdout) == 1000


@pytest.mark.parametrize("ending", ["while True:\n    pass", "print('main exits')"])
@needs_bwrap
def test_child_processes_do_not_outlive_the_run(ending: str) -> None:
    marker = f"31{uuid.uuid4().int % 10**8:08d}"  # a unique number for sleep's argument
    code = f"""
import os, subprocess, time
subprocess.Popen(["sleep", "{marker}1"])
for _ in range(10):  # daemons: own session, no inherited output pipes, so not waited for via EOF
    if os.fork() == 0:
        os.setsid()
        fd = os.open("/dev/null", os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.execvp("sleep", ["sleep", "{marker}2"])
time.sleep(0.3)
{ending}
"""
    r = run_python(code, timeout_s=1.5)
    assert r.timed_out == ending.startswith("while")
    assert _processes_with(marker) == []


@needs_bwrap
def test_workdir_files_persist(tmp_path: Path) -> None:
    r = run_python(
        "import os\nprint(os.getcwd(), open('data/in.txt').read())\nopen('out.txt', 'w').write('written inside')",
        workdir=tmp_path,
        files={"data/in.txt": "given"},
    )
    assert r.stdout == "/sandbox given\n", r.stderr
    assert (tmp_path / "out.txt").read_text() == "written inside"
    again = run_python(
        "import helper\nprint(open('out.txt').read(), helper.X)", workdir=tmp_path, files={"helper.py": "X = 7"}
    )
    assert again.stdout == "written inside 7\n", again.stderr
    with pytest.raises(ValueError):
        run_python("pass", workdir=tmp_path, files={"../escape.txt": "x"})
    assert not (tmp_path.parent / "escape.txt").exists()


@needs_bwrap
def test_python_tool_formats_output() -> None:
    assert python_tool.name == "python" and "code" in python_tool.parameters["properties"]
    assert "No network" in python_tool.description
    text = python_tool({"code": "print('hi')\nraise SystemExit(3)"})
    assert text == "hi\n[exit code 3]"
    err = python_tool({"code": "1/0"})
    assert "[stderr]" in err and "ZeroDivisionError" in err and err.endswith("[exit code 1]")
    fast = make_python_tool(timeout_s=1, memory_mb=200)
    assert fast({"code": "while True: pass"}).endswith("[killed: time limit 1s]")
    assert "memory limit 200 MB" in fast({"code": "x = bytearray(1024**3)"})


def test_missing_bwrap_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bwrap to be found
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_python("print(1)")


@needs_bwrap
def test_host_survives_and_sandbox_still_works() -> None:
    """Runs last: after the kills, floods and allocations above, the host process and sandbox are fine."""
    r = run_python("print('still here')")
    assert (r.stdout, r.exit_code) == ("still here\n", 0)
