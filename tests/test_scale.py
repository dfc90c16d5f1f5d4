"""Scaling out: --dask ADDRESS on a LocalCluster, a killed worker, --shard I/N, checks.

The clusters are real ``distributed.LocalCluster`` s with worker processes (spawned: they
get this process's ``sys.path`` and environment), so the workers import ``dicompressor``
by name from the repo root, as they would on other machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import synth
from conftest import ROOT, SCRIPT, hash_files, need_module

import dicompressor

distributed = need_module("distributed", "distributed")

MARKER = dicompressor.DONE_MARKER
LOCK = dicompressor.LOCK_FILE
JOURNAL = dicompressor.JOURNAL_FILE
MERGED = "*_multiframe*.dcm"
OK_LINE = re.compile(r"^\[OK\] (\S+) \(\d+ files\) -> ", re.M)


# ---- helpers ----


def cli_env(pythonpath: Path = ROOT) -> dict[str, str]:
    """The environment of a CLI child: this one, with PYTHONPATH at the given folder."""
    return {**os.environ, "PYTHONPATH": str(pythonpath)}


def cli(*args: str | Path, timeout: float = 120) -> tuple[int, str, str]:
    """Run dicompressor.py with PYTHONPATH=<repo>; return (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *(str(a) for a in args)],
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def make_tree(root: Path, count: int, *, n: int = 8, size: int = 32) -> list[Path]:
    """Write count job folders (one series each, different pixels) under root/pNN/ct."""
    folders = []
    for i in range(count):
        folder = root / f"p{i:02d}" / "ct"
        synth.make_series(folder, n=n, rows=size, cols=size, seed=i + 1, series_number=i + 1)
        folders.append(folder)
    return folders


def input_hashes(root: Path) -> dict[Path, str]:
    """sha256 of every input slice under root (the IMG*.dcm files synth wrote)."""
    return hash_files(sorted(root.rglob("IMG*.dcm")))


def merged_in(folder: Path) -> list[Path]:
    """The merged outputs in a job folder."""
    return sorted(folder.glob(MERGED))


def pixel_hashes(root: Path, folders: list[Path]) -> dict[str, list[str]]:
    """{folder relative to root: sha256 of each merged file's PixelData, sorted}."""
    found = {}
    for folder in folders:
        digests = []
        for path in merged_in(folder):
            ds = pydicom.dcmread(path)
            digests.append(hashlib.sha256(ds.PixelData).hexdigest())
        found[folder.relative_to(root).as_posix()] = sorted(digests)
    return found


def ok_folders(stdout: str) -> list[Path]:
    """The folders of the ``[OK]`` lines of a run."""
    return [Path(m) for m in OK_LINE.findall(stdout)]


def assert_processed_once(folders: list[Path], n: int) -> None:
    """Every folder: one merged file of n frames, one marker, no lock, journal or temp."""
    for folder in folders:
        outputs = merged_in(folder)
        assert len(outputs) == 1, f"{folder}: {[p.name for p in outputs]}"
        ds = pydicom.dcmread(outputs[0])
        assert int(ds.NumberOfFrames) == n
        assert len(ds.PixelData) == n * int(ds.Rows) * int(ds.Columns) * 2
        marker = json.loads((folder / MARKER).read_text())
        assert marker["action"] == "merge"
        assert marker["outputs"] == [str(outputs[0])]
        leftovers = [p.name for p in folder.iterdir() if p.name in (LOCK, JOURNAL)]
        assert leftovers == [], f"{folder}: {leftovers}"
    root = folders[0].parent.parent
    assert sorted(root.rglob("*.part")) == []


@contextlib.contextmanager
def local_cluster(pythonpath: Path = ROOT) -> Iterator[tuple[object, object]]:
    """A 2-process LocalCluster whose workers import dicompressor from pythonpath.

    Spawned workers take this process's sys.path (not only PYTHONPATH), so both are set
    while the cluster starts, and put back afterwards.
    """
    saved_path, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(pythonpath))
    os.environ["PYTHONPATH"] = str(pythonpath)
    try:
        cluster = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        )
        client = distributed.Client(cluster)
    finally:
        sys.path[:] = saved_path
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env


@pytest.fixture
def cluster() -> Iterator[tuple[object, object]]:
    """A LocalCluster (2 worker processes, 1 thread each) running this repo's script."""
    with local_cluster() as pair:
        yield pair


# ---- --dask ----


class TestDask:
    def test_same_outputs_as_jobs_1(self, tmp_path: Path, cluster: tuple) -> None:
        root, copy = tmp_path / "dask", tmp_path / "serial"
        folders = make_tree(root, 12)
        shutil.copytree(root, copy)
        before = input_hashes(root)
        code, out, err = cli("-j", "--jobs", "1", "--skip-if-done", "-f", copy)
        assert code == 0, err
        local, client = cluster
        code, out, err = cli("-j", "--dask", local.scheduler_address, "--skip-if-done", "-f", root)
        assert code == 0, f"{out}\n{err}"
        assert sorted(ok_folders(out)) == folders
        assert f"Dask: 2 worker(s) at {local.scheduler_address} run DicomPressor" in err
        assert_processed_once(folders, 8)
        serial = [copy / f.relative_to(root) for f in folders]
        assert pixel_hashes(root, folders) == pixel_hashes(copy, serial)
        assert all(len(v) == 1 for v in pixel_hashes(root, folders).values())
        assert input_hashes(root) == before
        # a second run finds every marker and does nothing
        code, out, err = cli("-j", "--dask", local.scheduler_address, "--skip-if-done", "-f", root)
        assert code == 0
        assert out.count("SKIPPED (already processed)") == 12
        assert_processed_once(folders, 8)

    def test_killed_worker_each_folder_once(self, tmp_path: Path, cluster: tuple) -> None:
        root = tmp_path / "root"
        folders = make_tree(root, 12, n=40, size=128)
        before = input_hashes(root)
        local, client = cluster
        workers = set(client.run(os.getpid).values())
        argv = ["-j", "--dask", local.scheduler_address, "--skip-if-done", "-f", root]
        log = tmp_path / "run1.out"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), *map(str, argv)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=cli_env(),
            )
            killed = None
            deadline = time.monotonic() + 60
            while killed is None and proc.poll() is None and time.monotonic() < deadline:
                for folder in folders:  # a journal names the worker in the middle of a job
                    journal = dicompressor.read_json_file(folder / JOURNAL)
                    if journal and journal.get("pid") in workers:
                        killed = (folder, journal["pid"])
                        os.kill(killed[1], signal.SIGKILL)
                        break
                time.sleep(0.002)
            proc.wait(timeout=120)
        assert killed is not None, f"no job caught running:\n{log.read_text()}"
        first = log.read_text()
        if proc.returncode != 0:  # the killed job may be reported failed: run again
            code, out, err = cli(*argv)
            assert code == 0, f"first run:\n{first}\nrerun:\n{out}\n{err}"
        assert_processed_once(folders, 40)
        assert input_hashes(root) == before
        assert killed[1] not in set(client.run(os.getpid).values())

    def test_version_mismatch_refused(self, tmp_path: Path) -> None:
        other = tmp_path / "other"
        other.mkdir()
        source = SCRIPT.read_text(encoding="utf-8")
        version = f'__version__ = "{dicompressor.__version__}"'
        assert version in source
        (other / "dicompressor.py").write_text(source.replace(version, '__version__ = "9.9.9"'))
        folders = make_tree(tmp_path / "root", 3)
        with local_cluster(other) as (local, client):
            versions = client.run(lambda: __import__("dicompressor").__version__)
            assert set(versions.values()) == {"9.9.9"}
            code, out, err = cli(
                "-j", "--dask", local.scheduler_address, "--skip-if-done", "-f", tmp_path / "root"
            )
        assert code == 1
        assert out == ""
        mine = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]
        expected = (
            f"error: 2 Dask worker(s) run another DicomPressor than this one "
            f"({dicompressor.__version__}, sha256 {mine}): tcp://"
        )
        assert err.startswith(expected), err
        assert len(err.strip().splitlines()) == 1
        for folder in folders:
            assert merged_in(folder) == []
            assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []

    def test_without_distributed(self, tmp_path: Path) -> None:
        folders = make_tree(tmp_path / "root", 1)
        wrapper = (
            "import runpy, sys; sys.modules['distributed'] = None; "
            f"sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
        )
        proc = subprocess.run(
            [sys.executable, "-c", wrapper, "-j", "--dask", "tcp://127.0.0.1:1", "-f", folders[0]],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env(),
        )
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert proc.stderr == (
            "error: --dask needs the Dask distributed package: pip install distributed\n"
        )
        assert merged_in(folders[0]) == []

    def test_unreachable_scheduler(self, tmp_path: Path) -> None:
        folders = make_tree(tmp_path / "root", 1)
        code, out, err = cli("-j", "--dask", "tcp://127.0.0.1:9", "-f", folders[0], timeout=90)
        assert code == 1
        assert err.startswith("error: cannot reach the Dask scheduler tcp://127.0.0.1:9: ")
        assert merged_in(folders[0]) == []


# ---- --shard ----


class TestShard:
    def test_union_of_shards_is_every_folder_once(self, tmp_path: Path) -> None:
        pristine = tmp_path / "pristine"
        make_tree(pristine, 20, n=3, size=8)
        relative = sorted(f.relative_to(pristine) for f in pristine.glob("p*/ct"))
        for count in (1, 3, 5):
            root = tmp_path / f"n{count}"
            shutil.copytree(pristine, root)
            seen: list[Path] = []
            for index in range(count):
                code, out, err = cli(
                    "-j",
                    "--jobs",
                    "1",
                    "--skip-if-done",
                    "--shard",
                    f"{index}/{count}",
                    "-f",
                    root,
                )
                shard = ok_folders(out)
                assert code == 0 or (code == 1 and shard == []), err
                assert f"Shard {index}/{count}: {len(shard)} job folder(s)" in err
                assert "SKIPPED" not in out
                expected = [root / r for r in relative]
                expected = [f for f in expected if dicompressor.in_shard(f, root, index, count)]
                assert sorted(shard) == expected
                seen += shard
            assert sorted(f.relative_to(root) for f in seen) == relative  # no overlap, no gap
            marked = sorted(m.parent.relative_to(root) for m in root.rglob(MARKER))
            assert marked == relative
            assert_processed_once([root / r for r in relative], 3)

    def test_empty_shard_is_not_a_failure(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        folders = make_tree(root, 1, n=2, size=8)
        empty = next(i for i in range(2) if not dicompressor.in_shard(folders[0], root, i, 2))
        code, out, err = cli("-j", "--skip-if-done", "--shard", f"{empty}/2", "-f", root)
        assert code == 0, err
        assert merged_in(folders[0]) == []

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("3/3", "--shard 3/3: I must be 0 to N-1 and N at least 1"),
            ("a/b", "--shard takes I/N (e.g. 0/4), not 'a/b'"),
            ("-1/2", "--shard takes I/N (e.g. 0/4), not '-1/2'"),
            ("1/0", "--shard 1/0: I must be 0 to N-1 and N at least 1"),
        ],
    )
    def test_bad_values(self, tmp_path: Path, value: str, message: str) -> None:
        folders = make_tree(tmp_path / "root", 1, n=2, size=8)
        code, out, err = cli("-j", f"--shard={value}", "-f", tmp_path / "root")
        assert code == 2
        assert out == ""
        assert err.splitlines()[0].startswith("usage: dicompressor")
        assert err.splitlines()[-1] == f"dicompressor: error: {message}"
        assert merged_in(folders[0]) == []

    def test_negative_index_as_separate_argument(self, tmp_path: Path) -> None:
        make_tree(tmp_path / "root", 1, n=2, size=8)
        code, out, err = cli("-j", "--shard", "-1/2", "-f", tmp_path / "root")
        assert code == 2
        assert (
            err.splitlines()[-1] == "dicompressor: error: argument --shard: expected one argument"
        )
