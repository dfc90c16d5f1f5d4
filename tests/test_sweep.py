"""Every action over pydicom's bundled files and pydicom-data's files: no traceback, every
failure one line naming its file, every DICOM output read back by pydicom.

Each file is its own job folder under one corpus root, and each action runs ONCE as a
subprocess over a copy of the corpus (two actions at a time), as tests/test_fuzz.py does.
Sampled to stay near a minute: of pydicom's 50 dicomdirtests images (copies stripped of
their pixel data) the first 3 are taken; pydicom-data's files over 1 MiB (9 of 68: large
radiographs, a 3-D colour JPEG) go to the actions that do not decode pixels only. The
counts per action (files tried, done, passed over, refused in one line, tracebacks) are
printed and written to ``test-artifacts/sweep-summary.json``.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import ROOT, SCRIPT, pydicom_file, run_limited

ARTIFACTS = ROOT / "test-artifacts"
#: Wall-clock limit of one action's run over the whole corpus (a hang fails the test).
RUN_LIMIT_S = 300
#: Files larger than this are left to the actions that do not decode pixels.
HEAVY_LIMIT_BYTES = 1 << 20
#: Endings in pydicom's test folders that are no DICOM files (dumps, JSON, ICC profiles).
NOT_DICOM = frozenset({".dump", ".json", ".txt", ".gz", ".icc", ".py", ".pyc", ".md"})

#: Each action's flags, and whether it decodes pixels (heavy: small files only).
ACTIONS: dict[str, tuple[list[str], bool]] = {
    "merge": (["-j"], True),
    "split": (["-s"], True),
    "compress_lossless": (["-x"], True),
    "compress_rle": (["-x", "--codec", "rle"], True),
    "compress_lossy": (["-z"], True),
    "decompress": (["-u"], True),
    "export_png": (["-I", "png"], True),
    "export_video": (["-E"], True),
    "anonymize": (["-a", "{params}"], False),
    "headers": (["-t"], False),
    "headers_json": (["-t", "--format", "json"], False),
    "dicomdir": (["-d"], False),
    "info": (["--info"], False),
    "summary": (["--summary"], False),
}

ERROR_LINE = re.compile(r"^\[ERROR\] (?P<path>/\S.*?): (?P<message>.+)$")


def sweep_files() -> list[Path]:
    """Return pydicom's bundled files (never downloaded) and pydicom-data's, sampled."""
    from pydicom.data import get_testdata_file

    found: list[Path] = []
    bundled = Path(get_testdata_file("CT_small.dcm", download=False)).parent
    stripped = 0
    for path in sorted(p for p in bundled.rglob("*") if p.is_file()):
        if path.suffix.lower() in NOT_DICOM or "__pycache__" in path.parts:
            continue
        if re.fullmatch(r"IM0000\w\w", path.name):  # 50 pixel-less copies: 3 of them
            stripped += 1
            if stripped > 3:
                continue
        found.append(path)
    extra = get_testdata_file("gdcm-US-ALOKA-16.dcm", download=False)
    if extra is not None:  # pydicom-data (requirements-dev.txt)
        found.extend(sorted(Path(extra).parent.glob("*.dcm")))
    return found


@dataclass
class Run:
    action: str
    root: Path
    inputs: list[Path]
    code: int | None
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    """Every sweep file in a job folder of its own; returns (root, params, sizes)."""

    pydicom_file("gdcm-US-ALOKA-16.dcm")  # pydicom-data's: fails if it is not installed
    work = tmp_path_factory.mktemp("sweep")
    root = work / "corpus"
    sizes = {}
    for index, source in enumerate(sweep_files()):
        folder = root / f"job{index:03d}"
        folder.mkdir(parents=True)
        shutil.copyfile(source, folder / source.name)
        sizes[f"job{index:03d}"] = source.stat().st_size
    params = work / "params.txt"
    params.write_text("PatientName=SWEEP^TEST\n(0010,0020)=SWEEP1\n", encoding="utf-8")
    return root, params, sizes


def run_action(action: str, corpus: tuple[Path, Path, dict[str, int]], work: Path) -> Run:
    """Copy the corpus (without the large files for pixel actions) and run one action."""
    root, params, sizes = corpus
    flags, heavy = ACTIONS[action]
    target = work / action
    for job in sorted(sizes):
        if heavy and sizes[job] > HEAVY_LIMIT_BYTES:
            continue
        shutil.copytree(root / job, target / job)
    inputs = sorted(p for p in target.rglob("*") if p.is_file())
    args = [a.replace("{params}", str(params)) for a in flags]
    command = [sys.executable, str(SCRIPT), "-f", str(target), *args, "--jobs", "1"]
    code, out, err, seconds = run_limited(command, RUN_LIMIT_S)
    return Run(action, target, inputs, code, out, err, seconds)


@pytest.fixture(scope="module")
def sweep_runs(
    corpus: tuple[Path, Path, dict[str, int]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Run]:
    """Every action once over the corpus, two at a time (two cores)."""
    work = tmp_path_factory.mktemp("sweep-runs")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {a: pool.submit(run_action, a, corpus, work) for a in ACTIONS}
        return {a: f.result() for a, f in futures.items()}


def is_dicom_output(path: Path) -> bool:
    """Tell whether a new file is a DICOM output (not an image, video or dump)."""
    if path.suffix.lower() in (".png", ".jpg", ".mp4", ".txt", ".json"):
        return False
    return not path.name.startswith(".")


def read_back(path: Path, source: Path, *, copied: bool) -> str | None:
    """Read an output with pydicom; return the problem, or None.

    Every value must convert. Pixels copied as they are (copied: anonymize, DICOMDIR)
    must equal the source's; others must decode, unless the source's do not decode
    here either (a codec this machine lacks, or data pydicom cannot decode).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            for elem in ds.iterall():  # every value converts
                _ = elem.value
            if copied:
                original = pydicom.dcmread(source, force=True)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if copied:
        if ds.get("PixelData") != original.get("PixelData"):
            return "its pixel data differs from the source's"
        return None
    problem = decode_problem(path) if "PixelData" in ds else None
    if problem is not None and decode_problem(source) is None:
        return f"pixels do not decode, the source's do: {problem}"
    return None


def decode_problem(path: Path) -> str | None:
    """Return why pydicom cannot decode a file's pixels, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ = pydicom.dcmread(path).pixel_array
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def check_run(run: Run) -> tuple[dict[str, Any], list[str], list[str]]:
    """Check one action's run; return (counts, problems, odd refusals).

    Odd refusals are one-line failures that carry a Python exception's name (a library
    message passed on, or a bug): listed for the report, not failed.
    """
    problems: list[str] = []
    odd: list[str] = []
    text = run.stdout + run.stderr
    tracebacks = text.count("Traceback (most recent call last)")
    if run.code is None:
        problems.append(f"{run.action}: no exit within {RUN_LIMIT_S} s")
    elif run.code not in (0, 1, 3):
        problems.append(f"{run.action}: exit code {run.code}")
    if tracebacks:
        problems.append(f"{run.action}: {tracebacks} traceback(s)")
    if "internal error" in text:
        problems.extend(
            f"{run.action}: {line}" for line in text.splitlines() if "internal error" in line
        )
    refused: dict[Path, str] = {}
    for line in run.stderr.splitlines():
        if not line.startswith("[ERROR]"):
            continue
        match = ERROR_LINE.match(line)
        if match is None or Path(match["path"]) not in run.inputs:
            problems.append(f"{run.action}: an error line that names no input: {line[:300]}")
            continue
        path = Path(match["path"])
        if path in refused:
            problems.append(f"{run.action}: {path.name} failed on two lines: {line[:300]}")
        refused[path] = match["message"]
        if re.search(r"\b[A-Z]\w+(Error|Exception): ", match["message"]):
            odd.append(f"{run.action}: {path.name}: {match['message'][:240]}")
    passed_over = {
        path
        for path in run.inputs
        if f"Skipping {path.name}: " in run.stderr or f"{path.name}: left alone" in run.stderr
    } - set(refused)
    made = (p for p in run.root.rglob("*") if p.is_file() and p not in run.inputs)
    outputs = sorted(p for p in made if is_dicom_output(p))
    sources = {p.parent.name: p for p in run.inputs}  # one file per job folder
    unreadable = 0
    if run.action not in ("headers", "headers_json", "info", "summary"):
        for path in outputs:
            job = path.relative_to(run.root).parts[0].removesuffix("_DICOMDIR")
            copied = run.action in ("anonymize", "dicomdir") and path.name != "DICOMDIR"
            problem = read_back(path, sources[job], copied=copied)
            if problem is not None:
                unreadable += 1
                problems.append(f"{run.action}: output {path.relative_to(run.root)}: {problem}")
    counts = {
        "tried": len(run.inputs),
        "done": len(run.inputs) - len(refused) - len(passed_over),
        "passed_over": len(passed_over),
        "refused_in_one_line": len(refused),
        "tracebacks": tracebacks,
        "dicom_outputs": len(outputs),
        "dicom_outputs_unreadable": unreadable,
        "exit_code": run.code,
        "seconds": round(run.seconds, 1),
    }
    return counts, problems, odd


SUMMARY: dict[str, Any] = {}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_sweep(action: str, sweep_runs: dict[str, Run]) -> None:
    counts, problems, odd = check_run(sweep_runs[action])
    SUMMARY[action] = {**counts, "odd_refusals": odd}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "sweep-summary.json").write_text(
        json.dumps(SUMMARY, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    print(f"\nsweep {action}: {json.dumps(counts, sort_keys=True)}")
    for line in odd:
        print(f"  odd refusal: {line}")
    assert counts["tried"] >= 100, counts
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"
