"""The installed command: ``pip install .`` gives a ``dicompressor`` command.

It runs the same module as ``python3 dicompressor.py``, loaded from the bytecode pip
compiled at install time. These tests install the repository into a venv that sees this
environment's packages (``--no-deps``: the dependencies are the ones installed here), and
check that the command does what the script does: the same outputs from the same inputs,
worker processes included, and a job through ``--serve``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import requests
import synth
from conftest import LIGHT_RUN, ROOT, SCRIPT, missing, run_cli, sha256_tree


def _bin(venv: Path, name: str) -> Path:
    """A program of the venv (bin/ on POSIX, Scripts/ on Windows)."""
    folder = venv / ("Scripts" if os.name == "nt" else "bin")
    return folder / (f"{name}.exe" if os.name == "nt" else name)


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install a copy of the repository's project into a new venv; return its command."""
    root = tmp_path_factory.mktemp("installed")
    project = root / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "dicompressor.py"):
        shutil.copy2(ROOT / name, project / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # The packages this interpreter sees (its venv's, or the system's), after the venv's
    # own: --system-site-packages would give the base interpreter's only.
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = subprocess.run(
        [str(_bin(venv, "python")), "-c", where],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (Path(purelib) / "outer-packages.pth").write_text("\n".join(outer) + "\n")
    proc = subprocess.run(
        [str(_bin(venv, "python")), "-m", "pip", "install", "-q", "--no-deps", str(project)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:  # pip fetches setuptools to build: a registry must answer
        missing(f"pip install of the project failed: {proc.stderr.strip()[-500:]}")
    return _bin(venv, "dicompressor")


def run_command(command: Path, *args: str | Path) -> tuple[int, str, str]:
    """Run the installed command; return (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [str(command), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_the_command_runs_the_installed_compiled_module(command: Path) -> None:
    code, out, err = run_command(command, "--version")
    assert code == 0, err
    _, script_out, _ = run_cli("--version")
    assert out == script_out and out.startswith("dicompressor ")
    python = _bin(command.parent.parent, "python")  # the venv of the command
    where = subprocess.run(
        [str(python), "-c", "import dicompressor, sys; print(dicompressor.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=command.parent,  # not the repository: the installed module must be found
    ).stdout.strip()
    module = Path(where)
    assert module.parent != ROOT and module.read_bytes() == SCRIPT.read_bytes()
    assert list((module.parent / "__pycache__").glob("dicompressor.*.pyc")), "pip compiles it"


def test_header_dumps_are_the_scripts(command: Path, tmp_path: Path) -> None:
    paths = synth.make_series(tmp_path / "in", n=3)
    args = ("-t", "-F", tmp_path / "in", "--output-dir")
    code, _, err = run_command(command, *args, tmp_path / "cmd")
    assert code == 0, err
    code, _, err = run_cli(*args, tmp_path / "script")
    assert code == 0, err
    made = sha256_tree(tmp_path / "script")
    assert sorted(made) == sorted(f"{p.stem}.txt" for p in paths)
    assert sha256_tree(tmp_path / "cmd") == made


def test_merge_compress_decompress_with_workers(command: Path, tmp_path: Path) -> None:
    """-j, then -x and -u with two worker processes: the pixels come back bit for bit."""
    paths = synth.make_series(tmp_path / "series", n=6, rows=64, cols=48)
    originals = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).PixelData for p in paths}
    code, _, err = run_command(command, "-j", "-F", tmp_path / "series", "--quiet")
    assert code == 0, err
    [merged] = (tmp_path / "series").glob("*_multiframe*.dcm")
    assert int(pydicom.dcmread(merged).NumberOfFrames) == 6
    merged.unlink()
    out = tmp_path / "out"
    args = ("--jobs", "2", "--quiet", "--output-dir")
    code, _, err = run_command(command, "-x", "-F", tmp_path / "series", *args, out / "x")
    assert code == 0, err
    compressed = sorted((out / "x").glob("*.dcm"))
    assert len(compressed) == 6
    assert all(pydicom.dcmread(p).file_meta.TransferSyntaxUID.is_compressed for p in compressed)
    code, _, err = run_command(command, "-u", "-F", out / "x", *args, out / "u")
    assert code == 0, err
    back = {}
    for path in (out / "u").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        back[ds.SOPInstanceUID] = ds.PixelData
    assert back == originals


def test_a_merge_through_serve(command: Path, tmp_path: Path) -> None:
    """--serve from the installed command runs a job in its worker process."""
    env = {k: v for k, v in os.environ.items() if k != "DICOMPRESSOR_API_KEYS"}
    proc = subprocess.Popen(
        [str(command), "--serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" on ", 1)[1].split(" ", 1)[0]
        key = proc.stdout.readline().rsplit(" ", 1)[1].strip()
        paths = synth.make_series(tmp_path / "series", n=4)
        with requests.Session() as http:
            http.headers["X-API-Key"] = key
            sid = http.post(f"{url}/api/session", timeout=30).json()["session_id"]
            files = [("files", (p.name, p.read_bytes())) for p in paths]
            assert http.post(f"{url}/api/upload/{sid}", files=files, timeout=60).json()[
                "uploaded"
            ] == len(paths)
            result = http.post(
                f"{url}/api/process/{sid}", json={"action": "merge"}, timeout=120
            ).json()
            assert result["success"], result
            [made] = result["output_files"]
            got = http.get(f"{url}/api/download/{sid}/{made['name']}", timeout=60)
            assert got.status_code == 200
        (tmp_path / "merged.dcm").write_bytes(got.content)
        assert int(pydicom.dcmread(tmp_path / "merged.dcm").NumberOfFrames) == len(paths)
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_command_starts_light_as_the_script_does(command: Path, tmp_path: Path) -> None:
    """Like ``python3 dicompressor.py``, the command leaves numpy and pydicom unloaded for
    a text dump of plain files; a library import of the same module loads them at once."""
    synth.make_series(tmp_path / "in", n=2)
    python = _bin(command.parent.parent, "python")  # the venv of the command

    def launch(*args: str | Path) -> list[str]:
        argv = [str(python), "-c", LIGHT_RUN, str(command), *(str(a) for a in args)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        return proc.stdout.split()[-4:]

    dump = ("-t", "-F", tmp_path / "in", "--output-dir", tmp_path / "txt", "--quiet")
    assert launch(*dump) == ["EXIT", "0", "False", "False"]
    assert len(list((tmp_path / "txt").glob("*.txt"))) == 2
    merge = ("-j", "-F", tmp_path / "in", "--quiet")
    assert launch(*merge) == ["EXIT", "0", "True", "True"]
    library = "import sys, dicompressor; print('pydicom' in sys.modules)"
    imported = subprocess.run(
        [str(python), "-c", library], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert imported.stdout.split() == ["True"]
