"""Unattended batch mode: jobs, markers, --output-dir, locks, --jobs, --watch, crash safety."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import synth
from conftest import (
    SCRIPT,
    STRICT,
    dciodvfy_errors,
    dicompressor,
    run_cli,
    run_main,
    sha256_tree,
    wait_for,
)

DONE = ".dicompressor_done"
LOCK = ".dicompressor_lock"
STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"
OK_LINE = re.compile(r"^\[OK\] (?P<folder>.+) \((?P<n>\d+) files\) -> (?P<outputs>.+)$")
FAILED_LINE = re.compile(r"^\[FAILED\] (?P<folder>.+?): (?P<reason>.+)$")
SKIPPED_DONE = "SKIPPED (already processed) {}"


# ---- helpers ----


def make_tree(
    root: Path, folders: int, *, n: int = 6, rows: int = 16, cols: int = 16, age_s: float = 0
) -> list[Path]:
    """Write one series per job folder root/pK/series (patient PATK); return the folders."""
    jobs = []
    for k in range(folders):
        paths = synth.make_series(
            root / f"p{k}" / "series", n=n, rows=rows, cols=cols, patient=f"PAT{k}", seed=k
        )
        if age_s:
            old = time.time() - age_s
            for p in paths:
                os.utime(p, (old, old))
        jobs.append(paths[0].parent)
    return jobs


def merged(folder: Path) -> list[Path]:
    """Return the merged outputs in a folder."""
    return sorted(folder.glob("*_multiframe*.dcm"))


def lines(text: str) -> list[str]:
    """Return the non-empty lines of a text."""
    return [line for line in text.splitlines() if line.strip()]


def dead_pid() -> int:
    """Return the pid of a process that has just ended."""
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=10)
    return proc.pid


def write_lock(folder: Path, *, host: str, pid: int, started: float, age_s: float = 0) -> Path:
    """Write a lock file by hand, its mtime set back by age_s."""
    lock = folder / LOCK
    lock.write_text(json.dumps({"host": host, "pid": pid, "started": started}), encoding="utf-8")
    if age_s:
        old = time.time() - age_s
        os.utime(lock, (old, old))
    return lock


def start_cli(*args: str | Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the CLI in its own session; stdout to log.out, stderr to log.err."""
    out = log.with_suffix(".out").open("wb")
    err = log.with_suffix(".err").open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), *(str(a) for a in args)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        out.close()
        err.close()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a started process and its children (its session); wait until all are gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # orphaned workers are reaped by init, not by us
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def part_files(*roots: Path) -> list[Path]:
    """Return every temp (.part) file or folder under the roots."""
    return [p for root in roots if root.exists() for p in root.rglob("*") if ".part" in p.name]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; killed at the end whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        kill_group(proc)


@pytest.fixture
def sleeper() -> Iterator[int]:
    """The pid of a live process on this host (a running sleep)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _reset_logger() -> Iterator[None]:
    """Close the handlers main() adds to the dicompressor logger."""
    yield
    for handler in list(dicompressor.LOG.handlers):
        handler.close()
        dicompressor.LOG.removeHandler(handler)


# ---- jobs ----


class TestJobs:
    """-f: every folder holding DICOM files directly is one job; -F: only that folder."""

    def test_job_folders_are_the_folders_holding_dicom_files(self, tmp_path):
        root = tmp_path / "root"
        a = synth.make_series(root / "a", n=2)[0].parent
        b = synth.make_series(root / "a" / "b", n=2)[0].parent
        (root / "empty").mkdir()
        (root / "notes").mkdir()
        (root / "notes" / "readme.txt").write_text("not a job", encoding="utf-8")
        synth.make_series(root / ".hidden", n=2)
        assert dicompressor.job_folders(root, recursive=True) == [a, b]
        assert dicompressor.job_folders(a, recursive=False) == [a]

    def test_one_line_per_job_on_stdout_and_in_the_log(self, tmp_path):
        jobs = make_tree(tmp_path / "root", 3)
        log = tmp_path / "logs" / "batch.log"
        code, out, err = run_cli("-j", "-f", tmp_path / "root", "--jobs", "1", "--log-file", log)
        assert code == 0, err
        found = lines(out)
        assert len(found) == 3, out
        for line, folder in zip(found, jobs, strict=True):
            match = OK_LINE.match(line)
            assert match, line
            assert match["folder"] == str(folder)
            assert match["n"] == "6"
            assert match["outputs"] == str(merged(folder)[0])
        logged = log.read_text(encoding="utf-8").splitlines()
        for line in found:
            assert any(re.fullmatch(rf"{STAMP} \[INFO\] {re.escape(line)}", x) for x in logged)
        assert all(re.match(rf"{STAMP} \[", x) for x in logged), logged

    def test_log_file_rotates(self, tmp_path):
        folder = make_tree(tmp_path / "root", 1)[0]
        from logging.handlers import RotatingFileHandler

        code, _, _ = run_main("-j", "-F", folder, "--log-file", tmp_path / "x.log")
        assert code == 0
        handlers = [h for h in dicompressor.LOG.handlers if isinstance(h, RotatingFileHandler)]
        assert len(handlers) == 1
        assert handlers[0].maxBytes > 0 and handlers[0].backupCount > 0

    def test_capital_f_runs_only_the_given_folder(self, tmp_path):
        outer = synth.make_series(tmp_path / "outer", n=3, patient="OUTER")[0].parent
        inner = synth.make_series(outer / "inner", n=3, patient="INNER")[0].parent
        code, out, err = run_cli("-j", "-F", outer)
        assert code == 0, err
        assert len(lines(out)) == 1
        assert OK_LINE.match(out.strip())["folder"] == str(outer)
        assert merged(inner) == []
        assert len(merged(outer)) == 1

    def test_failed_job_line_and_exit_codes(self, tmp_path):
        root = tmp_path / "root"
        good = make_tree(root, 1)[0]
        bad = root / "bad"
        bad.mkdir()
        (bad / "broken.dcm").write_bytes(b"not dicom at all" * 10)
        code, out, err = run_cli("-j", "--skip-if-done", "--jobs", "1", "-f", root)
        assert code == 3, err
        found = lines(out)
        assert len(found) == 2, out
        failed = [FAILED_LINE.match(x) for x in found if x.startswith("[FAILED]")]
        assert len(failed) == 1 and failed[0]["folder"] == str(bad)
        assert failed[0]["reason"].startswith("broken.dcm: ")
        assert (good / DONE).is_file()
        assert not (bad / DONE).exists()
        assert not (bad / LOCK).exists()
        code, out, _ = run_cli("-j", "--skip-if-done", "-F", bad)
        assert code == 1
        assert FAILED_LINE.match(out.strip())["folder"] == str(bad)
        assert not (bad / DONE).exists()


# ---- --skip-if-done ----


class TestSkipIfDone:
    """A done marker after success; later runs skip; deleting it runs the folder again."""

    def test_marker_then_skip_then_rerun(self, tmp_path):
        folder = make_tree(tmp_path / "root", 1, n=5)[0]
        before = sha256_tree(folder)
        code, out, err = run_cli("-j", "--skip-if-done", "-f", tmp_path / "root")
        assert code == 0, err
        output = merged(folder)
        assert len(output) == 1
        marker = json.loads((folder / DONE).read_text(encoding="utf-8"))
        assert set(marker) >= {"version", "action", "finished_at", "inputs", "outputs"}
        assert marker["version"] == dicompressor.__version__
        assert marker["action"] == "merge"
        assert marker["inputs"] == 5
        assert [Path(p).name for p in marker["outputs"]] == [output[0].name]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}.*", marker["finished_at"])
        hidden = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        assert hidden == [DONE], hidden  # no lock, journal or temp file left
        after_first = sha256_tree(folder)

        code, out, err = run_cli("-j", "--skip-if-done", "-f", tmp_path / "root")
        assert code == 0, err
        assert lines(out) == [SKIPPED_DONE.format(folder)]
        assert sha256_tree(folder) == after_first

        (folder / DONE).unlink()
        code, out, err = run_cli("-j", "--skip-if-done", "-f", tmp_path / "root")
        assert code == 0, err
        assert OK_LINE.match(out.strip())["folder"] == str(folder)
        assert (folder / DONE).is_file()
        assert len(merged(folder)) == 2
        assert all(sha256_tree(folder)[k] == v for k, v in before.items())  # inputs untouched

    def test_failed_job_writes_no_marker(self, tmp_path):
        folder = tmp_path / "bad"
        folder.mkdir()
        (folder / "x.dcm").write_bytes(b"\0" * 200)
        code, out, _ = run_cli("-j", "--skip-if-done", "-F", folder)
        assert code == 1
        assert FAILED_LINE.match(out.strip())
        assert sorted(p.name for p in folder.iterdir()) == ["x.dcm"]


class TestOriginalMarker:
    """A folder marked done by the original DicomPressor 1.0.3 counts as done."""

    ORIGINAL = {
        "processed_at": "2026-01-05T07:03:07.272475",
        "action": "merge",
        "results": ["ROE_JANE_series5_multiframe.dcm"],
        "dicompressor_version": "1.0.3",
    }

    def test_merge_skips_and_another_action_keeps_it(self, tmp_path):
        folder = make_tree(tmp_path / "root", 1, n=3)[0]
        (folder / DONE).write_text(json.dumps(self.ORIGINAL, indent=2), encoding="utf-8")
        code, out, err = run_cli("-j", "--skip-if-done", "-f", tmp_path / "root")
        assert code == 0, err
        assert lines(out) == [SKIPPED_DONE.format(folder)]
        assert merged(folder) == []
        code, out, err = run_cli("-x", "--codec", "rle", "--skip-if-done", "-f", tmp_path / "root")
        assert code == 0, err
        marker = json.loads((folder / DONE).read_text(encoding="utf-8"))
        assert marker["action"] == "compress_lossless"
        assert marker["earlier"] == [self.ORIGINAL]
        code, out, err = run_cli("-j", "--skip-if-done", "-f", tmp_path / "root")
        assert lines(out) == [SKIPPED_DONE.format(folder)]  # still done for merge


class TestScanState:
    """--scan-state-file: a pass lists only the folders whose time changed."""

    def test_second_pass_lists_nothing_and_finds_the_same_jobs(self, tmp_path):
        root = tmp_path / "root"
        folders = make_tree(root, 4, n=2, rows=8, cols=8)
        (root / "p9" / "empty").mkdir(parents=True)  # a folder without DICOM files
        state_file = tmp_path / "state" / "scan.json"
        first = dicompressor.ScanState(state_file, root)
        found = dicompressor.job_folders(root, recursive=True, state=first)
        assert found == folders == dicompressor.job_folders(root, recursive=True)
        assert first.listed == 11  # root, p0..p3 with their series, p9, p9/empty
        first.save()
        second = dicompressor.ScanState(state_file, root)
        assert dicompressor.job_folders(root, recursive=True, state=second) == folders
        assert second.listed == 0
        synth.make_series(root / "p9" / "empty", n=2, rows=8, cols=8, seed=9)
        (folders[0] / "note.txt").write_text("x")  # a non-DICOM file changes p0/series
        found = dicompressor.job_folders(root, recursive=True, state=second)
        assert found == sorted([*folders, root / "p9" / "empty"])
        assert second.listed == 2

    def test_cli_skip_if_done_with_the_cache(self, tmp_path):
        root = tmp_path / "root"
        folders = make_tree(root, 3, n=2, rows=8, cols=8)
        state_file = tmp_path / "scan.json"
        args = ("-j", "--skip-if-done", "--scan-state-file", state_file, "-f", root)
        code, out, err = run_cli(*args)
        assert code == 0, err
        assert all(len(merged(f)) == 1 for f in folders)
        data = json.loads(state_file.read_text(encoding="utf-8"))
        assert (data["version"], data["root"]) == (1, str(root.absolute()))
        code, out, err = run_cli(*args)
        assert code == 0, err
        assert sorted(lines(out)) == sorted(SKIPPED_DONE.format(f) for f in folders)
        data = json.loads(state_file.read_text(encoding="utf-8"))
        entry = data["folders"][str(folders[0].absolute())]
        assert (entry["done"], entry["empty"], entry["actions"]) == (True, False, ["merge"])

    def test_original_state_file_and_other_root(self, tmp_path):
        root = tmp_path / "root"
        folders = make_tree(root, 2, n=2, rows=8, cols=8)
        state_file = tmp_path / "scan.json"
        mtime = folders[0].stat().st_mtime_ns
        original = {  # the original's entries: no subfolder list, so listed again
            "version": 1,
            "root": str(root.absolute()),
            "folders": {str(folders[0].absolute()): {"mtime_ns": mtime, "empty": True}},
        }
        state_file.write_text(json.dumps(original), encoding="utf-8")
        state = dicompressor.ScanState(state_file, root)
        assert dicompressor.job_folders(root, recursive=True, state=state) == folders
        seen: list[str] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
        dicompressor.LOG.addHandler(handler)
        try:
            other = dicompressor.ScanState(state_file, tmp_path)
        finally:
            dicompressor.LOG.removeHandler(handler)
        assert other.folders == {}
        assert seen == [
            f"{state_file} is for {root.absolute()}, not {tmp_path.absolute()}; starting afresh"
        ]

    def test_watch_pass_with_the_cache(self, tmp_path):
        root = tmp_path / "root"
        folders = make_tree(root, 2, n=2, rows=8, cols=8)
        (folders[0] / DONE).write_text(json.dumps({"action": "merge"}), encoding="utf-8")
        memory = dicompressor.WatchState(scan=dicompressor.ScanState(tmp_path / "s.json", root))
        ready = dicompressor.ready_folders(
            "merge", root, recursive=True, settle_s=0, memory=memory
        )
        assert ready == [folders[1]]
        memory.scan.save()
        again = dicompressor.WatchState(scan=dicompressor.ScanState(tmp_path / "s.json", root))
        assert dicompressor.ready_folders(
            "merge", root, recursive=True, settle_s=0, memory=again
        ) == [folders[1]]
        assert again.scan.listed == 0


# ---- --output-dir ----


class TestOutputDir:
    """Results copied to --output-dir (created if missing); collisions get _1, _2."""

    def test_created_and_never_overwritten(self, tmp_path):
        folder = make_tree(tmp_path / "root", 1, n=4)[0]
        out_dir = tmp_path / "a" / "b" / "merged"
        code, out, err = run_cli("-j", "-F", folder, "--output-dir", out_dir)
        assert code == 0, err
        first = sorted(out_dir.iterdir())
        assert [p.name for p in first] == ["PAT0_series3_multiframe.dcm"]
        assert first[0].read_bytes() == merged(folder)[0].read_bytes()
        first[0].write_bytes(b"placeholder")  # the copy must never be overwritten
        for _ in range(2):
            code, _, err = run_cli("-j", "-F", folder, "--output-dir", out_dir)
            assert code == 0, err
        names = sorted(p.name for p in out_dir.iterdir())
        assert names == [
            "PAT0_series3_multiframe.dcm",
            "PAT0_series3_multiframe_1.dcm",
            "PAT0_series3_multiframe_2.dcm",
        ]
        assert (out_dir / names[0]).read_bytes() == b"placeholder"
        for name in names[1:]:
            assert pydicom.dcmread(out_dir / name).NumberOfFrames == 4

    def test_same_names_from_two_folders(self, tmp_path):
        a = synth.make_series(tmp_path / "root" / "a", n=3, seed=1)[0].parent
        b = synth.make_series(tmp_path / "root" / "b", n=3, seed=2)[0].parent
        out_dir = tmp_path / "out"
        code, _, err = run_cli("-j", "-f", tmp_path / "root", "--output-dir", out_dir)
        assert code == 0, err
        names = sorted(p.name for p in out_dir.iterdir())
        assert names == ["DOE_JANE_series3_multiframe.dcm", "DOE_JANE_series3_multiframe_1.dcm"]
        copies = {(out_dir / n).read_bytes() for n in names}
        assert copies == {merged(a)[0].read_bytes(), merged(b)[0].read_bytes()}

    def test_output_dir_inside_the_tree_is_no_job(self, tmp_path):
        """-j --skip-if-done twice with --output-dir inside -f's tree: the second run
        skips the done folder, and the output folder is never a job."""
        root = tmp_path / "root"
        folder = make_tree(root, 1, n=4)[0]
        out_dir = root / "merged"
        for _ in range(2):
            code, out, err = run_cli(
                "-j", "-f", root, "--output-dir", out_dir, "--skip-if-done", "--jobs", "1"
            )
            assert code == 0, out + err
            assert str(out_dir) not in out, out
        assert lines(out) == [SKIPPED_DONE.format(folder)]
        assert [p.name for p in out_dir.iterdir()] == ["PAT0_series3_multiframe.dcm"]
        assert not (out_dir / DONE).exists()

    def test_anonymized_outputs_are_never_inputs(self, tmp_path):
        root = tmp_path / "root"
        make_tree(root, 2, n=2)
        params = tmp_path / "params.txt"
        params.write_text("PatientName=ANON\n", encoding="utf-8")
        out_dir = root / "p0" / "anon"  # inside a job folder's own tree
        for _ in range(2):
            code, out, err = run_cli("-a", params, "-f", root, "--output-dir", out_dir)
            assert code == 0, out + err
        names = sorted(p.name for p in out_dir.iterdir())
        assert len(names) == 8 and not any("_anon_anon" in n for n in names), names
        code, out, err = run_cli("--summary", root, "--output-dir", out_dir, "--json")
        assert code == 0 and json.loads(out)["files"] == 4, out + err

    def test_watch_passes_over_the_output_dir(self, tmp_path):
        root = tmp_path / "root"
        folder = make_tree(root, 1, n=3, age_s=600)[0]
        out_dir = root / "merged"
        outcomes: list = []
        clock = [time.time() + 600]
        dicompressor.watch(
            "merge",
            root,
            recursive=True,
            options=dicompressor.Options(output_dir=out_dir),
            batch=dicompressor.BatchOptions(skip_if_done=True),
            interval_s=1.0,
            settle_s=30,
            workers=1,
            on_outcome=outcomes.append,
            stop=FakeStop(clock, passes=3),
            clock=lambda: clock[0],
        )
        assert [(o.folder, o.status) for o in outcomes] == [(folder, "OK")]
        assert [p.name for p in out_dir.iterdir()] == ["PAT0_series3_multiframe.dcm"]


# ---- locks ----


class TestLocks:
    """One O_EXCL lock file per job folder; dead or old locks are taken over."""

    def test_lock_file_content_and_exclusivity(self, tmp_path):
        lock, holder = dicompressor.acquire_lock(tmp_path, 3600)
        assert lock == tmp_path / LOCK and holder == ""
        data = json.loads(lock.read_text(encoding="utf-8"))
        assert data["host"] == socket.gethostname()
        assert data["pid"] == os.getpid()
        assert abs(float(data["started"]) - time.time()) < 60
        again, holder = dicompressor.acquire_lock(tmp_path, 3600)
        assert again is None
        assert holder.startswith(f"{socket.gethostname()} pid {os.getpid()}")
        dicompressor.release_lock(lock)
        assert not lock.exists()

    def test_release_leaves_a_lock_of_another_process(self, tmp_path, sleeper):
        lock = write_lock(tmp_path, host=socket.gethostname(), pid=sleeper, started=time.time())
        dicompressor.release_lock(lock)
        assert lock.exists()

    def test_dead_process_lock_is_taken_over(self, tmp_path):
        folder = make_tree(tmp_path / "root", 1, n=3)[0]
        write_lock(folder, host=socket.gethostname(), pid=dead_pid(), started=time.time())
        code, out, err = run_cli("-j", "--skip-if-done", "-F", folder)
        assert code == 0, err
        assert OK_LINE.match(out.strip())
        assert "took over a stale lock" in err
        assert (folder / DONE).is_file()
        assert not (folder / LOCK).exists()

    @pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
    def test_lock_of_a_killed_unreaped_process_is_taken_over(self, tmp_path):
        """A worker killed a moment ago is a zombie until its parent reaps it: os.kill(pid, 0)
        still finds it, but its lock is stale (a Dask task retried on another worker)."""
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            proc.kill()
            stat = Path(f"/proc/{proc.pid}/stat")
            wait_for(
                lambda: stat.read_bytes().rpartition(b")")[2].split()[0] == b"Z", 10, "zombie"
            )
            write_lock(tmp_path, host=socket.gethostname(), pid=proc.pid, started=time.time())
            assert not dicompressor.pid_alive(proc.pid)
            lock, holder = dicompressor.acquire_lock(tmp_path, 3600)
            assert lock == tmp_path / LOCK and holder == ""
            assert json.loads(lock.read_text(encoding="utf-8"))["pid"] == os.getpid()
            dicompressor.release_lock(lock)
        finally:
            proc.wait(10)

    def test_old_lock_is_taken_over(self, tmp_path, sleeper):
        folder = make_tree(tmp_path / "root", 1, n=3)[0]
        old = time.time() - 7200
        write_lock(folder, host=socket.gethostname(), pid=sleeper, started=old, age_s=7200)
        code, out, err = run_cli("-j", "--skip-if-done", "-F", folder)
        assert code == 0, err
        assert OK_LINE.match(out.strip())
        assert (folder / DONE).is_file()

    def test_lock_timeout_flag(self, tmp_path, sleeper):
        folder = make_tree(tmp_path / "root", 1, n=3)[0]
        old = time.time() - 120
        write_lock(folder, host=socket.gethostname(), pid=sleeper, started=old, age_s=120)
        code, out, _ = run_cli("-j", "--skip-if-done", "-F", folder)  # default 1 h: live
        assert code == 0
        assert out.strip().startswith("SKIPPED (locked by ")
        code, out, err = run_cli("-j", "--skip-if-done", "--lock-timeout", "60", "-F", folder)
        assert code == 0, err
        assert OK_LINE.match(out.strip())

    def test_live_lock_skips_the_folder(self, tmp_path, sleeper):
        folder = make_tree(tmp_path / "root", 1, n=3)[0]
        lock = write_lock(folder, host=socket.gethostname(), pid=sleeper, started=time.time())
        content = lock.read_bytes()
        code, out, err = run_cli("-j", "--skip-if-done", "-f", tmp_path / "root")
        assert code == 0, err
        host = re.escape(socket.gethostname())
        pattern = rf"SKIPPED \(locked by {host} pid {sleeper} since .+\) {re.escape(str(folder))}"
        assert re.fullmatch(pattern, out.strip()), out
        assert merged(folder) == [] and not (folder / DONE).exists()
        assert lock.read_bytes() == content

    def test_fresh_lock_of_another_host_skips(self, tmp_path):
        folder = make_tree(tmp_path / "root", 1, n=3)[0]
        write_lock(folder, host="elsewhere.invalid", pid=dead_pid(), started=time.time())
        code, out, _ = run_cli("-j", "--skip-if-done", "-F", folder)
        assert code == 0
        assert out.strip().startswith("SKIPPED (locked by elsewhere.invalid pid ")
        assert merged(folder) == []

    def test_racing_takeover_has_one_winner(self, tmp_path):
        write_lock(tmp_path, host=socket.gethostname(), pid=dead_pid(), started=time.time())
        code = (
            "import sys, time; sys.path.insert(0, sys.argv[1]); import dicompressor as d;"
            "from pathlib import Path; t = float(sys.argv[3])\n"
            "while time.time() < t: pass\n"
            "lock, _ = d.acquire_lock(Path(sys.argv[2]), 3600)\n"
            "print('WON' if lock else 'LOST', flush=True); time.sleep(1.5)\n"
            "lock and d.release_lock(lock)"
        )
        go = str(time.time() + 2.0)
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(SCRIPT.parent), str(tmp_path), go],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        try:
            results = [p.communicate(timeout=30)[0].strip() for p in racers]
        finally:
            for p in racers:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
        assert sorted(results) == ["LOST", "LOST", "LOST", "WON"]


# ---- --jobs and several runners ----


class TestSeveralRunners:
    """--jobs N in parallel; two watchers and a cron-style run process each folder once."""

    def test_jobs_in_parallel_match_a_serial_run(self, tmp_path):
        make_tree(tmp_path / "serial", 4, n=5)
        shutil.copytree(tmp_path / "serial", tmp_path / "parallel")
        code, _, err = run_cli("-j", "--skip-if-done", "--jobs", "1", "-f", tmp_path / "serial")
        assert code == 0, err
        code, out, err = run_cli(
            "-j", "--skip-if-done", "--jobs", "3", "-f", tmp_path / "parallel"
        )
        assert code == 0, err
        assert len([x for x in lines(out) if OK_LINE.match(x)]) == 4
        for k in range(4):
            one = merged(tmp_path / "serial" / f"p{k}" / "series")
            many = merged(tmp_path / "parallel" / f"p{k}" / "series")
            assert len(one) == len(many) == 1
            assert (tmp_path / "parallel" / f"p{k}" / "series" / DONE).is_file()
            a, b = pydicom.dcmread(one[0]), pydicom.dcmread(many[0])
            assert a.NumberOfFrames == b.NumberOfFrames == 5
            assert a.PixelData == b.PixelData

    def test_two_watchers_and_a_cron_run_process_each_folder_once(self, tmp_path, procs):
        root = tmp_path / "root"
        jobs = make_tree(root, 8, n=4, age_s=120)
        out_dir = tmp_path / "out"
        common = ("-j", "--output-dir", out_dir, "--settle", "1", "--jobs", "1")
        for name in ("w1", "w2"):
            procs.append(start_cli(*common, "--watch", "1", "-f", root, log=tmp_path / name))
        for _ in range(3):
            code, _, err = run_cli(*common, "--skip-if-done", "-f", root)
            assert code == 0, err
        wait_for(lambda: all((j / DONE).exists() for j in jobs), 30, "all markers")
        time.sleep(1.5)  # a further pass of both watchers
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=20) == 0
        for k, job in enumerate(jobs):
            assert len(merged(job)) == 1, sorted(job.iterdir())
            assert len(list(out_dir.glob(f"PAT{k}_*"))) == 1
            assert not (job / LOCK).exists()
        assert part_files(root, out_dir) == []


# ---- --watch ----


def watch_merge(
    root: Path,
    settle_s: float,
    stop: FakeStop,
    clock: list[float],
    on_outcome: Callable[[object], None],
) -> None:
    """Run the merge watch over root (1 s interval, one worker) on a fake clock and stop."""
    dicompressor.watch(
        "merge",
        root,
        recursive=True,
        options=dicompressor.Options(),
        batch=dicompressor.BatchOptions(skip_if_done=True),
        interval_s=1.0,
        settle_s=settle_s,
        workers=1,
        on_outcome=on_outcome,
        stop=stop,
        clock=lambda: clock[0],
    )


class FakeStop:
    """A stop event for watch(): it advances a fake clock instead of sleeping."""

    def __init__(self, clock: list[float], passes: int) -> None:
        self.clock = clock
        self.passes = passes
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return len(self.waits) >= self.passes

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        self.clock[0] += timeout
        return self.is_set()


class TestWatch:
    """--watch N: passes every N s, settle time, retries, clean stop on signals."""

    def test_sleeps_only_the_rest_of_the_interval(self, tmp_path, monkeypatch):
        folder = make_tree(tmp_path / "root", 1, n=3, age_s=600)[0]
        clock = [time.time() + 600]
        stop = FakeStop(clock, passes=3)
        seen: list[str] = []

        def slow_run_jobs(action, jobs, options, batch, *, on_outcome, **_):
            clock[0] += 0.3  # a job that takes 0.3 s
            for job_folder, _files in jobs:
                seen.append(str(job_folder))
            return []

        monkeypatch.setattr(dicompressor, "run_jobs", slow_run_jobs)
        watch_merge(tmp_path / "root", 30, stop, clock, on_outcome=lambda o: None)
        assert stop.waits == pytest.approx([0.7, 0.7, 0.7])
        assert seen == [str(folder)] * 3

    def test_unsettled_folder_waits(self, tmp_path):
        folder = make_tree(tmp_path / "root", 1, n=3)[0]  # files written just now
        outcomes = []
        clock = [time.time()]

        def two_passes() -> None:
            watch_merge(tmp_path / "root", 30, FakeStop(clock, passes=2), clock, outcomes.append)

        two_passes()
        assert outcomes == [] and merged(folder) == []
        clock[0] = time.time() + 31
        two_passes()
        assert [o.status for o in outcomes] == ["OK"]
        assert (folder / DONE).is_file()

    def test_failed_folder_is_retried_only_when_it_changes(self, tmp_path):
        folder = tmp_path / "root" / "bad"
        folder.mkdir(parents=True)
        (folder / "broken.dcm").write_bytes(b"garbage" * 20)
        outcomes: list = []
        clock = [time.time() + 100]
        stop = FakeStop(clock, passes=4)
        original_wait = stop.wait

        def wait_then_change(timeout: float) -> bool:
            if len(stop.waits) == 2:
                (folder / "broken.dcm").write_bytes(b"other garbage" * 20)
                clock[0] = time.time() + 100
            return original_wait(timeout)

        stop.wait = wait_then_change  # type: ignore[method-assign]
        watch_merge(tmp_path / "root", 1, stop, clock, outcomes.append)
        assert [o.status for o in outcomes] == ["FAILED", "FAILED"]
        assert not (folder / DONE).exists()

    @staticmethod
    def _copy_slowly_while_watching(tmp_path, procs, copy) -> Path:
        source = tmp_path / "source"
        paths = synth.make_series(source, n=20, rows=16, cols=16)
        old = time.time() - 3600
        for p in paths:
            os.utime(p, (old, old))
        root = tmp_path / "root"
        root.mkdir()
        proc = start_cli(
            "-j", "--watch", "1", "--settle", "3", "--jobs", "1", "-f", root, log=tmp_path / "w"
        )
        procs.append(proc)
        target = root / "patient" / "series"
        target.mkdir(parents=True)
        for p in sorted(paths):
            copy(p, target / p.name)
            time.sleep(0.2)
        wait_for(lambda: (target / DONE).exists(), 15, "the done marker")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        return target

    def test_folder_copied_in_slowly_is_merged_whole(self, tmp_path, procs):
        target = self._copy_slowly_while_watching(tmp_path, procs, shutil.copy)
        outputs = merged(target)
        assert len(outputs) == 1
        assert pydicom.dcmread(outputs[0]).NumberOfFrames == 20

    def test_folder_copied_in_slowly_keeping_mtimes_is_merged_whole(self, tmp_path, procs):
        target = self._copy_slowly_while_watching(tmp_path, procs, shutil.copy2)
        outputs = merged(target)
        assert len(outputs) == 1
        assert pydicom.dcmread(outputs[0]).NumberOfFrames == 20

    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
    def test_signal_stops_after_the_current_job(self, tmp_path, procs, sig):
        root = tmp_path / "root"
        jobs = make_tree(root, 6, n=20, rows=64, cols=64, age_s=120)
        log = tmp_path / "watch.log"
        proc = start_cli(
            "-j", "--watch", "1", "--settle", "1", "--jobs", "1", "-f", root,
            "--log-file", log, log=tmp_path / "w",
        )  # fmt: skip
        procs.append(proc)
        stdout = tmp_path / "w.out"
        wait_for(lambda: "[OK]" in stdout.read_text(), 20, "the first job line")
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        done = [j for j in jobs if (j / DONE).exists()]
        assert 1 <= len(done) < len(jobs) or len(done) == len(jobs)
        for job in jobs:
            assert len(merged(job)) == (1 if job in done else 0)
            assert not (job / LOCK).exists()
        assert part_files(root) == []
        ok = [x for x in lines(stdout.read_text()) if OK_LINE.match(x)]
        assert len(ok) == len(done)
        err = lines((tmp_path / "w.err").read_text())
        assert all(re.match(rf"{STAMP} \[(INFO|WARNING)\] ", x) for x in err), err
        assert err[-1].endswith("[INFO] Stopped.")
        stopping = f"[WARNING] Stopping after the current job (signal {int(sig)})..."
        assert sum(x.endswith(stopping) for x in err) == 1, err
        logged = log.read_text(encoding="utf-8")
        for line in ok:
            assert re.search(rf"^{STAMP} \[INFO\] {re.escape(line)}$", logged, re.M)

    def test_sigterm_while_idle_stops_at_once(self, tmp_path, procs):
        (tmp_path / "root").mkdir()
        proc = start_cli("-j", "--watch", "60", "-f", tmp_path / "root", log=tmp_path / "w")
        procs.append(proc)
        wait_for(lambda: "Watching" in (tmp_path / "w.err").read_text(), 15, "the watch start")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5

    def test_signal_while_waiting_does_not_deadlock(self):
        # A signal may land while the main thread is inside stop.wait(); the handler must
        # not block on a lock the interrupted code holds (threading.Event.set() would).
        code = (
            "import os, signal, sys, threading, time; sys.path.insert(0, sys.argv[1])\n"
            "import dicompressor as d\n"
            "stop = getattr(d, 'StopFlag', threading.Event)()\n"
            "def storm():\n"
            "    time.sleep(0.3)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "with d._stop_on_signals(stop):\n"
            "    threading.Thread(target=storm, daemon=True).start()\n"
            "    while not stop.is_set():\n"
            "        stop.wait(0)\n"
            "print('stopped', stop.is_set(), flush=True)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(SCRIPT.parent)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            out = "hung"
        assert out.strip() == "stopped True"

    def test_watch_of_a_missing_folder(self, tmp_path):
        code, _, err = run_cli("-j", "--watch", "1", "-f", tmp_path / "nope")
        assert code == 1
        assert f"error: {tmp_path / 'nope'}: not a folder to watch" in err

    @pytest.mark.parametrize("interval", ["0", "-1"])
    def test_bad_interval_is_a_usage_error(self, tmp_path, interval):
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "-j", "--watch", interval, "-f", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
            pytest.fail(f"--watch {interval} still running after 3 s")
        assert proc.returncode == 2
        assert "error:" in err and "--watch" in err


# ---- crash safety ----


KILL_POINTS = {
    "merged file published": "write_merged",
    "between link and unlink of a temp": "publish_new",
    "copy half written": "copy_unique:mid",
    "copy published": "copy_unique",
    "marker half written": "write_json_file:marker",
    "marker written": "write_marker",
    "lock written, not yet named": "lock:temp",
}

DRIVER = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import dicompressor as d
point = sys.argv[2]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "copy_unique:mid":
    def copy_unique(source, folder, **kwargs):
        out = d.OutputFile(folder / source.name, replace=False)
        handle = out.__enter__()
        handle.write(source.read_bytes()[:1000])
        handle.flush()
        die()
    d.copy_unique = copy_unique
elif point == "write_json_file:marker":
    original = d.write_json_file
    def write_json_file(path, value):
        if path.name == d.DONE_MARKER:
            out = d.OutputFile(path, replace=True)
            out.__enter__().write(b'{"vers')
            die()
        return original(path, value)
    d.write_json_file = write_json_file
elif point == "lock:temp":
    real_link = os.link
    def link(source, target, *args, **kwargs):
        if str(target).endswith(d.LOCK_FILE):
            die()
        return real_link(source, target, *args, **kwargs)
    d.os.link = link
elif point == "publish_new":
    def publish_new(tmp, target):
        os.link(tmp, target)
        die()
    d.publish_new = publish_new
else:
    original = getattr(d, point)
    def killer(*args, **kwargs):
        original(*args, **kwargs)
        die()
    setattr(d, point, killer)
sys.exit(d.main(sys.argv[3:]))
"""


def check_after_crash(root: Path, out_dir: Path, jobs: list[Path], slices: int) -> list[str]:
    """Check the invariants after a killed run and a rerun; return what is wrong."""
    problems = []
    for k, job in enumerate(jobs):
        outputs = merged(job)
        if len(outputs) != 1:
            problems.append(f"{job}: {len(outputs)} merged files")
        if not (job / DONE).is_file():
            problems.append(f"{job}: no marker")
        copies = sorted(out_dir.glob(f"PAT{k}_*"))
        if len(copies) != 1:
            problems.append(f"output dir: {[c.name for c in copies]} for {job}")
        for path in outputs + copies:
            try:
                frames = int(pydicom.dcmread(path).NumberOfFrames)
            except Exception as exc:
                problems.append(f"{path}: unreadable ({exc})")
                continue
            if frames != slices:
                problems.append(f"{path}: {frames} frames, not {slices}")
    for part in part_files(root, out_dir):
        where = "output dir" if out_dir in part.parents else "job folder"
        problems.append(f"{where}: temp {part.name} left")
    for path in [*root.rglob("*"), *out_dir.rglob("*")]:
        if path.is_file() and path.stat().st_size == 0:
            problems.append(f"empty file {path}")
    return problems


#: Problems that the known bugs explain (see the xfail reasons).
KNOWN = re.compile(r"^output dir: temp ")


KILL_POINT_BUGS: dict[str, str] = {}


class TestCrashSafety:
    """kill -9 at any moment, rerun: each folder once, valid outputs, no temp files."""

    @pytest.mark.parametrize(
        "point",
        [
            pytest.param(p, marks=pytest.mark.xfail(reason=KILL_POINT_BUGS[p], strict=True))
            if p in KILL_POINT_BUGS
            else p
            for p in KILL_POINTS
        ],
    )
    def test_kill_at_a_chosen_point_then_rerun(self, tmp_path, point):
        root, out_dir = tmp_path / "root", tmp_path / "out"
        jobs = make_tree(root, 2, n=5)
        inputs = sha256_tree(root)
        args = ["-j", "--skip-if-done", "--jobs", "1", "-f", root, "--output-dir", out_dir]
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                DRIVER,
                str(SCRIPT.parent),
                KILL_POINTS[point],
                *map(str, args),
            ],
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        code, _, err = run_cli(*args)
        assert code == 0, err
        assert check_after_crash(root, out_dir, jobs, 5) == []
        after = sha256_tree(root)
        assert all(after[k] == v for k, v in inputs.items())

    def test_kill_9_at_random_moments_then_rerun(self, tmp_path):
        template = tmp_path / "template"
        jobs_template = make_tree(template, 6, n=20, rows=64, cols=64)
        inputs = sha256_tree(template)
        seed = int(os.environ.get("DICOMPRESSOR_KILL_SEED", "20240611"))
        rng = random.Random(seed)
        print(f"kill -9 trials: seed {seed}")
        known: list[str] = []
        sampled = False
        for trial in range(10):
            root, out_dir = tmp_path / f"t{trial}" / "root", tmp_path / f"t{trial}" / "out"
            shutil.copytree(template, root)
            jobs = [root / j.relative_to(template) for j in jobs_template]
            workers = str(1 + trial % 2)
            args = ["-j", "--skip-if-done", "--jobs", workers, "-f", root, "--output-dir", out_dir]
            delay = rng.uniform(0.3, 1.1)
            print(f"trial {trial}: --jobs {workers}, kill -9 after {delay:.3f} s")
            proc = start_cli(*args, log=tmp_path / f"t{trial}" / "killed")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=delay)
            kill_group(proc)
            code, out, err = run_cli(*args)
            assert code == 0, f"trial {trial}: {err}"
            problems = check_after_crash(root, out_dir, jobs, 20)
            after = sha256_tree(root)
            problems += [f"input {k} changed" for k, v in inputs.items() if after.get(k) != v]
            unknown = [p for p in problems if not KNOWN.match(p)]
            assert unknown == [], f"trial {trial} (seed {seed}, delay {delay:.3f}):\n{out}"
            known += [f"trial {trial}: {p}" for p in problems]
            if not sampled and (STRICT or shutil.which("dciodvfy")):
                assert dciodvfy_errors(merged(jobs[trial % 6])[0]) == []
                sampled = True
        assert not known, known


class TestDurability:
    """What is synced to disk: replacing writes at once, new files before a done marker."""

    @staticmethod
    def _synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
        names: list[str] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            names.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        return names

    @pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
    def test_replacing_writes_are_synced_new_files_are_not(self, tmp_path, monkeypatch):
        synced = self._synced(monkeypatch)
        with dicompressor.OutputFile(tmp_path / "new.dcm", replace=False) as handle:
            handle.write(b"new")
        assert synced == []
        (tmp_path / "old.dcm").write_bytes(b"old")
        with dicompressor.OutputFile(tmp_path / "old.dcm", replace=True) as handle:
            handle.write(b"replaced")
        assert len(synced) == 1 and synced[0].startswith(".old.dcm")
        assert (tmp_path / "old.dcm").read_bytes() == b"replaced"

    @pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
    def test_outputs_are_synced_before_the_done_marker(self, tmp_path, monkeypatch):
        synth.make_series(tmp_path / "job", n=3)
        synced = self._synced(monkeypatch)
        code, _, err = run_main("-j", "-F", tmp_path / "job", "--skip-if-done", "--quiet")
        assert code == 0, err
        [merged] = (tmp_path / "job").glob("*_multiframe.dcm")
        marker = [i for i, name in enumerate(synced) if name.startswith(".")]
        assert merged.name in synced and "job" in synced  # the file and its folder
        assert synced.index(merged.name) < marker[-1]  # the marker's temp file comes last
        assert (tmp_path / "job" / dicompressor.DONE_MARKER).exists()
