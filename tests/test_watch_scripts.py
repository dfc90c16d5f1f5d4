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
from conftest import ROOT, need_module, wait_for

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

    def test_no_arguments_prints_the_help(self):
        proc = run_sh()
        assert proc.returncode == 0
        assert proc.stdout.splitlines()[0] == (
            "usage: dicompressor-watch.sh WATCH_DIR [INTERVAL_SECONDS] [OUTPUT_DIR] "
            "[LOG_FILE] [SCAN_STATE_FILE]"
        )
        assert "SCAN_STATE_FILE   cache of folder times" in proc.stdout
        assert proc.stderr == ""

    def test_too_many_arguments(self, tmp_path):
        proc = run_sh(tmp_path, "5", tmp_path / "out", "log", "state", "extra")
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


ARGV_PRINTER = """#!/bin/sh
# stands in for python: prints the arguments the wrapper hands over, one a line
for arg in "$@"; do printf '%s\\n' "$arg"; done
"""


@needs_bash
class TestBashOriginalArguments:
    """The original's 4th and 5th arguments: LOG_FILE and SCAN_STATE_FILE."""

    def handed_over(self, tmp_path: Path, *args: str | Path) -> list[str]:
        printer = tmp_path / "argv.sh"
        printer.write_text(ARGV_PRINTER)
        printer.chmod(0o755)
        proc = subprocess.run(
            [BASH or "bash", str(SH), *(str(a) for a in args)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHON": str(printer)},
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        return lines[lines.index(str(ROOT / "dicompressor.py")) + 1 :]

    def test_log_file_derives_the_scan_state(self, tmp_path):
        logs = tmp_path / "logs"
        got = self.handed_over(tmp_path, tmp_path, "60", tmp_path / "out", logs / "dp.log")
        assert got == [
            "-j", "--watch", "60", "-f", str(tmp_path), "--output-dir", str(tmp_path / "out"),
            "--log-file", str(logs / "dp.log"),
            "--scan-state-file", str(logs / "dp.scan-state.json"),
        ]  # fmt: skip

    def test_scan_state_given_or_turned_off(self, tmp_path):
        state = tmp_path / "state.json"
        got = self.handed_over(tmp_path, tmp_path, "60", "", tmp_path / "dp.log", state)
        assert got[-2:] == ["--scan-state-file", str(state)]
        got = self.handed_over(tmp_path, tmp_path, "60", "", tmp_path / "dp.log", "")
        assert got == ["-j", "--watch", "60", "-f", str(tmp_path), "--log-file",
                       str(tmp_path / "dp.log")]  # fmt: skip
        default = self.handed_over(tmp_path, tmp_path)
        assert default == ["-j", "--watch", "300", "-f", str(tmp_path)]


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
    line = re.search(r'usage_line="usage: \$name (?P<args>[^"]+)"', text)
    assert line, "no usage line"
    return line["args"].split()


def test_wrappers_take_the_same_parameters():
    ps1_text = PS1.read_text(encoding="utf-8")
    ps1 = ps1_params(ps1_text)
    sh_text = SH.read_text(encoding="utf-8")
    usage = sh_usage(sh_text)
    assert usage == [
        "WATCH_DIR", "[INTERVAL_SECONDS]", "[OUTPUT_DIR]", "[LOG_FILE]", "[SCAN_STATE_FILE]"
    ]  # fmt: skip
    names = [name for name, _ in ps1]
    assert names == ["WatchDir", "IntervalSeconds", "OutputDir", "LogFile", "ScanStateFile"]
    as_sh = [re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() for name in names]
    assert as_sh == [u.strip("[]") for u in usage]
    ps1_defaults = dict(ps1)
    assert ps1_defaults["IntervalSeconds"] == re.search(r"interval=\$\{2:-(\d+)\}", sh_text)[1]
    assert ps1_defaults["OutputDir"] == ps1_defaults["LogFile"] == '""'
    # both hand the same flags to dicompressor.py, and print their help without arguments
    assert "(-j --watch" in sh_text and '"-j", "--watch"' in ps1_text
    for flag in ("--output-dir", "--log-file", "--scan-state-file"):
        assert flag in sh_text and f'"{flag}"' in ps1_text, flag
    assert "scan-state.json" in sh_text and "scan-state.json" in ps1_text
    assert "DICOMPRESSOR_OPTS" in sh_text and "$env:DICOMPRESSOR_OPTS" in ps1_text
    assert "exit 0" in ps1_text.split("if (-not $WatchDir)")[1].split("}")[0]


def test_ps1_parses_as_powershell():
    """PowerShell itself cannot be installed here: its tree-sitter grammar checks the syntax."""
    tree_sitter = need_module("tree_sitter", "tree-sitter")
    grammar = need_module("tree_sitter_powershell", "tree-sitter-powershell")
    parser = tree_sitter.Parser(tree_sitter.Language(grammar.language()))
    tree = parser.parse(PS1.read_bytes())
    assert not tree.root_node.has_error, "dicompressor-watch.ps1 has a syntax error"
    broken = PS1.read_bytes().replace(b"if ($LogFile) {", b"if ($LogFile {", 1)
    assert parser.parse(broken).root_node.has_error  # the check sees a broken script
