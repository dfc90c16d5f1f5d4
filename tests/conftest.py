"""Shared fixtures and helpers: generated series, the CLI in a subprocess, validators, servers."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "dicompressor.py"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth  # noqa: E402

import dicompressor  # noqa: E402

LEGACY_CT = "1.2.840.10008.5.1.4.1.1.2.2"
LEGACY_MR = "1.2.840.10008.5.1.4.1.1.4.4"
LEGACY_PET = "1.2.840.10008.5.1.4.1.1.128.1"
MF_GRAY_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
MF_GRAY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
MF_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"


# ---- running the tool ----


def run_cli(*args: str | Path, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run dicompressor.py in a subprocess with pipes; return (exit code, stdout, stderr).

    The output is decoded by hand: text mode would turn a progress line's "\r" into "\n".
    """
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *(str(a) for a in args)],
        capture_output=True,
        cwd=cwd,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, _decode(proc.stdout), _decode(proc.stderr)


def run_limited(
    command: list[str], timeout_s: float, cwd: Path | None = None
) -> tuple[int | None, str, str, float]:
    """Run a command with pipes under a time limit; return (exit code, None when it ran out
    of time, stdout, stderr, seconds taken)."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL, cwd=cwd
        )
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = None, exc.stdout or b"", exc.stderr or b""
    return code, _decode(out), _decode(err), time.monotonic() - started


def run_without_imagecodecs(
    shim_root: Path, *args: str | Path
) -> subprocess.CompletedProcess[str]:
    """Run dicompressor.py where ``import imagecodecs`` fails (a package made in shim_root)."""
    shim = shim_root / "imagecodecs"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(shim_root)},
    )


def _decode(data: bytes) -> str:
    """Decode captured output as UTF-8 without touching line endings."""
    return data.decode("utf-8", errors="replace")


def run_main(*args: str | Path) -> tuple[int, str, str]:
    """Run ``dicompressor.main(argv)`` in this process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = dicompressor.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


LIGHT_RUN = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("EXIT", code, "pydicom" in sys.modules, "numpy" in sys.modules)
"""


def light_run(*args: str | Path) -> tuple[int, bool, bool]:
    """Run ``python3 dicompressor.py ARGS``; return (exit code, pydicom loaded, numpy loaded)."""
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_RUN, str(SCRIPT), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "EXIT", proc.stdout + proc.stderr
    return int(last[1]), last[2] == "True", last[3] == "True"


def merge_folder(folder: Path, *extra: str | Path) -> list[Path]:
    """Merge a folder (no recursion) in process, assert success, return the new outputs."""
    before = set(folder.glob("*_multiframe*.dcm"))
    code, out, err = run_main("-j", "-F", folder, *extra)
    assert code == 0, f"merge exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return sorted(set(folder.glob("*_multiframe*.dcm")) - before)


def merge_one(folder: Path, *extra: str | Path) -> Path:
    """Merge a folder that holds one stack; return the single output."""
    outputs = merge_folder(folder, *extra)
    assert len(outputs) == 1, outputs
    return outputs[0]


def split_file(path: Path, *extra: str | Path) -> list[Path]:
    """Split one file in process, assert success, return its frames in name order."""
    code, out, err = run_main("-s", "-f", path, *extra)
    assert code == 0, f"split exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    folder = path.parent / f"{path.stem}_frames"
    assert folder.is_dir(), f"no {folder.name}/ beside {path.name}: {out}"
    return sorted(folder.glob("*.dcm"))


# ---- validators ----


#: CI (.ci/run) sets DICOMPRESSOR_STRICT=1: what it installs must be there, so a test that
#: needs a missing tool fails instead of skipping.
STRICT = os.environ.get("DICOMPRESSOR_STRICT") == "1"


def missing(reason: str) -> NoReturn:
    """Skip the test for something not installed; fail it under DICOMPRESSOR_STRICT=1."""
    if STRICT:
        pytest.fail(f"{reason} (DICOMPRESSOR_STRICT=1: .ci/run installs it)")
    pytest.skip(reason, allow_module_level=True)


def need_tool(*names: str) -> str:
    """Return the path of the first of names on PATH, else skip (fail when strict)."""
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    missing(f"{' or '.join(names)} not on PATH")


def need_module(name: str, package: str) -> ModuleType:
    """Import a module of requirements-dev.txt, else skip (fail when strict)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} cannot be imported: pip install {package}")


def pydicom_file(name: str) -> Path:
    """Return one of pydicom's or pydicom-data's files (both required), never downloaded."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, (
        f"{name} is in neither pydicom nor pydicom-data: pip install -r requirements-dev.txt"
    )
    return Path(path)


def dciodvfy_errors(path: Path) -> list[str]:
    """Return the lines of ``dciodvfy`` output that start with "Error" (see need_tool)."""
    proc = subprocess.run(
        [need_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def tool_exit_code(name: str, path: Path) -> int:
    """Run a reader (dcmdump, gdcminfo) on a file and return its exit code (see need_tool)."""
    proc = subprocess.run([need_tool(name), str(path)], capture_output=True, timeout=60)
    return proc.returncode


# ---- the HTTP API ----

KEY = "test-key-0123456789"
#: Limits high enough for tests that send many requests.
RELAXED = {"rate_limit_per_min": 100_000, "session_rate_limit_per_min": 100_000}


class Running:
    """A server running in a thread of the test process."""

    def __init__(self, server: dicompressor.ApiServer, key: str) -> None:
        self.server = server
        self.url = server.url
        self.key = key
        self.headers = {"X-API-Key": key}
        self.state = server.state
        self.data_dir = server.state.config.data_dir

    def session(self) -> str:
        """Create a session and return its id."""
        r = requests.post(f"{self.url}/api/session", headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["session_id"]

    def upload(self, sid: str, paths: list[Path], **kw: Any) -> requests.Response:
        """Upload files in one request."""
        handles = [p.open("rb") for p in paths]
        try:
            files = [("files", (p.name, h)) for p, h in zip(paths, handles, strict=True)]
            return requests.post(
                f"{self.url}/api/upload/{sid}", headers=self.headers, files=files, timeout=60, **kw
            )
        finally:
            for h in handles:
                h.close()

    def process(self, sid: str, body: Any) -> requests.Response:
        """Run an action."""
        return requests.post(
            f"{self.url}/api/process/{sid}", headers=self.headers, json=body, timeout=120
        )


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Return a factory starting a server on 127.0.0.1 port 0 in a thread."""
    started: list[dicompressor.ApiServer] = []

    def start(**overrides: Any) -> Running:
        overrides.setdefault("data_dir", tmp_path / "data")
        config = dicompressor.ServerConfig(host="127.0.0.1", port=0, **overrides)
        server = dicompressor.make_server(config, [KEY])
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return Running(server, KEY)

    yield start
    for server in started:
        server.close()


def part_head(name: str, boundary: str = "xyz") -> bytes:
    """Return the opening of one multipart ``files`` part."""
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n'
    ).encode()


def server_process(data_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], str, str]:
    """Start a server in a subprocess with a generated key; return (process, url, key)."""
    config = f"ServerConfig(port=0, data_dir=Path({str(data_dir)!r}){''.join(extra)})"
    code = (
        "import sys; from pathlib import Path; from dicompressor import *; "
        f"sys.exit(run_server({config}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DICOMPRESSOR_API_KEYS"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    second = proc.stdout.readline()
    url = first.split(" on ", 1)[1].split(" ", 1)[0]
    assert second.startswith("API key (generated, shown only now): ")
    return proc, url, second.rsplit(" ", 1)[1].strip()


# ---- reading results ----


def sha256_tree(folder: Path) -> dict[str, str]:
    """Return {relative path: sha256} of every file under folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def hash_files(paths: list[Path]) -> dict[Path, str]:
    """Return {path: sha256} of the given files."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def floats(value: Any) -> list[float]:
    """Return a DICOM multi-value as floats."""
    return [float(v) for v in value]


def normal_of(ds: Dataset) -> np.ndarray:
    """Return the slice normal of a single-frame dataset (row x column cosines)."""
    iop = floats(ds.ImageOrientationPatient)
    return np.cross(iop[:3], iop[3:])


def spatial_order(paths: list[Path]) -> list[Dataset]:
    """Read single-frame files and sort them by position along their slice normal."""
    datasets = [pydicom.dcmread(p) for p in paths]
    normal = normal_of(datasets[0])
    return sorted(datasets, key=lambda d: float(np.dot(normal, floats(d.ImagePositionPatient))))


def frame_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """Return the functional group item for a frame, per-frame first, then shared."""
    per_frame = ds.PerFrameFunctionalGroupsSequence[index]
    if keyword in per_frame:
        return per_frame[keyword][0]
    shared = ds.SharedFunctionalGroupsSequence[0]
    if keyword in shared:
        return shared[keyword][0]
    return None


def encoded_frames(ds: Dataset) -> list[bytes]:
    """Return the encoded frames of an encapsulated dataset, trailing padding removed."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    return [f.rstrip(b"\0") for f in generate_frames(ds.PixelData, number_of_frames=n_frames)]


def frames_of(ds: Dataset) -> np.ndarray:
    """Return the decoded pixel array with a leading frame axis."""
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        arr = arr[np.newaxis, ...]
    return arr


# ---- fixtures ----


@pytest.fixture
def make_series(tmp_path: Path) -> Callable[..., list[Path]]:
    """Return a factory writing a synthetic series into tmp_path/<name>."""

    def factory(name: str = "series", **kwargs: Any) -> list[Path]:
        return synth.make_series(tmp_path / name, **kwargs)

    return factory


@pytest.fixture
def ct_series(make_series: Callable[..., list[Path]]) -> list[Path]:
    """An 8-slice axial CT series with shuffled file names and per-slice windows."""
    return make_series("ct", n=8, vary_window=True)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll predicate until true; fail naming what was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def bundled_files(pattern: str = "*.dcm") -> list[Path]:
    """Return pydicom's bundled test files (the installed ones, never downloaded), sorted."""
    from pydicom.data import get_testdata_file

    return sorted(Path(get_testdata_file("CT_small.dcm", download=False)).parent.glob(pattern))


@pytest.fixture
def testdata(tmp_path: Path) -> Callable[[str], Path]:
    """Return a loader copying one of pydicom's or pydicom-data's files into tmp_path."""

    def load(name: str) -> Path:
        target = tmp_path / "testdata" / name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(pydicom_file(name), target)
        return target

    return load
