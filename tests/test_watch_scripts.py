"""The watch wrappers: dicompressor-watch.sh run for real, the .ps1 where pwsh exists."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import synth
from conftest import ROOT, wait_for

SH = ROOT / "dicompressor-watch.sh"
PS1 = ROOT / "dicompressor-watch.ps1"
DONE = ".dicompressor_done"
BASH = shutil.which("bash")
PWSH = shutil.which("pwsh")

needs_bash = pytest.mark.skipif(BASH is None, reason="bash not on PATH")


def run_sh(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the Bash wrapper to completion (argument errors); bounded by a timeout."""
    return subprocess.run(
        [BASH or "bash", str(SH), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; their sessions are killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def drop_series(watch_dir: Path, tmp_path: Path, *, n: int = 6) -> Path:
    """Write a series elsewhere, then move its folder into the watched tree in one step."""
    staging = tmp_path / "staging" / "patient"
    synth.make_series(staging / "series", n=n, rows=16, cols=16)
    target = watch_dir / "patient"
    shutil.move(str(staging), str(target))
    return target / "series"


# ---- Bash ----


@needs_bash
class TestBashArguments:
    """Argument errors exit 2 with a message, before anything runs."""

    def test_no_arguments(self):
        proc = run_sh()
        assert proc.returncode == 2
        assert proc.stderr.strip() == (
            "usage: dicompressor-watch.sh WATCH_DIR [INTERVAL_SECONDS] [OUTPUT_DIR]"
        )

    def test_too_many_arguments(self, tmp_path):
        proc = run_sh(tmp_path, "5", tmp_path / "out", "extra")
        assert proc.returncode == 2
        assert proc.stderr.startswith("usage: dicompressor-watch.sh WATCH_DIR")

    def test_missing_folder(self, tmp_path):
        missing = tmp_path / "nope"
        proc = run_sh(missing)
        assert proc.returncode == 2
        assert proc.stderr.strip() == f"error: {missing}: no such folder"

    @pytest.mark.parametrize("interval", ["0", "-5", "abc", "1.5"])
    def test_bad_interval(self, tmp_path, interval):
        proc = run_sh(tmp_path, interval)
        assert proc.returncode == 2
        assert proc.stderr.strip() == (
            f"error: INTERVAL_SECONDS must be a whole number above 0, not '{interval}'"
        )


@needs_bash
class TestBashWatch:
    """The wrapper hands over to `dicompressor.py -j --watch`; signals stop it cleanly."""

    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
    def test_merges_a_dropped_series_then_stops(self, tmp_path, procs, sig):
        watch_dir, out_dir = tmp_path / "watch", tmp_path / "merged"
        watch_dir.mkdir()
        env = {**os.environ, "DICOMPRESSOR_OPTS": "--settle 1"}
        log = (tmp_path / "out.txt").open("wb")
        proc = subprocess.Popen(
            [BASH or "bash", str(SH), str(watch_dir), "1", str(out_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        procs.append(proc)
        text = lambda: (tmp_path / "out.txt").read_text()  # noqa: E731
        wait_for(lambda: "Watching" in text(), 20, "the watch to start")
        series = drop_series(watch_dir, tmp_path)
        wait_for(lambda: (series / DONE).exists(), 20, "the done marker")
        outputs = sorted(series.glob("*_multiframe*.dcm"))
        assert len(outputs) == 1
        assert pydicom.dcmread(outputs[0]).NumberOfFrames == 6
        assert [p.name for p in out_dir.iterdir()] == [outputs[0].name]
        proc.send_signal(sig)  # to the wrapper's pid: exec made it DicomPressor
        assert proc.wait(timeout=20) == 0
        output = text()
        assert output.startswith(f"DicomPressor watch: {watch_dir} every 1s, copies to {out_dir}")
        assert re.search(r"^\[OK\] .*patient/series \(6 files\) -> ", output, re.M)
        assert f"Stopping after the current job (signal {int(sig)})..." in output
        assert output.rstrip().endswith("[INFO] Stopped.")
        leftovers = [
            p for p in tmp_path.rglob("*") if ".part" in p.name or p.name.endswith("lock")
        ]
        assert leftovers == []


# ---- PowerShell ----


@pytest.mark.skipif(PWSH is None, reason="pwsh (PowerShell 7) not on PATH")
class TestPowerShell:
    """The .ps1 wrapper run for real where PowerShell exists."""

    def test_missing_folder(self, tmp_path):
        proc = subprocess.run(
            [PWSH or "pwsh", "-NoProfile", "-File", str(PS1), "-WatchDir", str(tmp_path / "x")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        assert "no such folder" in proc.stderr + proc.stdout

    def test_merges_a_dropped_series(self, tmp_path, procs):
        watch_dir, out_dir = tmp_path / "watch", tmp_path / "merged"
        watch_dir.mkdir()
        env = {**os.environ, "DICOMPRESSOR_OPTS": "--settle 1", "PYTHON": sys.executable}
        proc = subprocess.Popen(
            [PWSH or "pwsh", "-NoProfile", "-File", str(PS1), "-WatchDir", str(watch_dir)]
            + ["-IntervalSeconds", "1", "-OutputDir", str(out_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        procs.append(proc)
        series = drop_series(watch_dir, tmp_path)
        wait_for(lambda: (series / DONE).exists(), 40, "the done marker")
        assert len(list(out_dir.glob("*_multiframe*.dcm"))) == 1


# ---- the two wrappers stay in step ----


def ps1_params(text: str) -> list[tuple[str, str | None]]:
    """Return (name, default) of the parameters in the .ps1 param() block."""
    block = re.search(r"^param\((.*?)^\)", text, re.M | re.S)
    assert block, "no param( ... ) block"
    return [
        (m["name"], m["default"])
        for m in re.finditer(
            r"\$(?P<name>\w+)(?:\s*=\s*(?P<default>[^,\n]+?))?\s*(?:,|$)", block[1], re.M
        )
    ]


def sh_usage(text: str) -> list[str]:
    """Return the arguments of the usage line of the .sh wrapper."""
    line = re.search(r'echo "usage: \$\(basename "\$0"\) (?P<args>[^"]+)"', text)
    assert line, "no usage line"
    return line["args"].split()


def test_wrappers_take_the_same_parameters():
    ps1 = ps1_params(PS1.read_text(encoding="utf-8"))
    sh_text = SH.read_text(encoding="utf-8")
    usage = sh_usage(sh_text)
    assert usage == ["WATCH_DIR", "[INTERVAL_SECONDS]", "[OUTPUT_DIR]"]
    assert [name for name, _ in ps1] == ["WatchDir", "IntervalSeconds", "OutputDir"]
    as_sh = [re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() for name, _ in ps1]
    assert as_sh == [u.strip("[]") for u in usage]
    # the same optional parameters, with the same defaults
    assert [u.startswith("[") for u in usage] == [default is not None for _, default in ps1]
    assert "Mandatory = $true" in PS1.read_text(encoding="utf-8").split("$WatchDir")[0]
    ps1_defaults = dict(ps1)
    assert ps1_defaults["IntervalSeconds"] == re.search(r"interval=\$\{2:-(\d+)\}", sh_text)[1]
    assert ps1_defaults["OutputDir"] == '""'
    assert re.search(r"output_dir=\$\{3:-\}", sh_text)
    # both hand the same flags to dicompressor.py
    assert "-j --watch" in sh_text.replace('"', "") or "(-j --watch" in sh_text
    assert '"-j", "--watch"' in PS1.read_text(encoding="utf-8")
    assert "--output-dir" in sh_text and '"--output-dir"' in PS1.read_text(encoding="utf-8")
    assert "DICOMPRESSOR_OPTS" in sh_text and "$env:DICOMPRESSOR_OPTS" in PS1.read_text(
        encoding="utf-8"
    )
