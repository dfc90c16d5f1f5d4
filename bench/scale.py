#!/usr/bin/env python3
"""Benchmark DicomPressor's folder-level scaling: ``--jobs 1``, ``--jobs 2``, ``--dask``.

Usage::

    python3 bench/scale.py                    # 8 folders x 100 slices, 1 run each
    python3 bench/scale.py --slices 50        # smaller folders
    python3 bench/scale.py --repeat 3 --keep  # more runs; keep the work folder

A tree of ``--folders`` job folders is generated, each holding one synthetic CT series
of ``--slices`` slices (512x512 int16, BitsStored 12: ``bench/merge.py``'s generator);
generating it is not timed. Each contender then works on a fresh copy of the tree (the
copy is not timed) with two CLI runs, timed together:

1. ``dicompressor.py -j -f <tree> --quiet`` (merge each folder), then
2. ``dicompressor.py -x -f <tree> --quiet`` (JPEG 2000 lossless: each folder's slices
   and its merged file).

The contenders add ``--jobs 1``, ``--jobs 2``, or ``--dask <address>`` of a 2-worker
``LocalCluster`` (processes=True, 1 thread each) started by this script before the runs
(start-up not timed; its workers import the same copy of dicompressor.py as the driver).
Each CLI run is measured by ``merge.py``'s fork/exec launcher; the peak RSS shown is the
CLI process's only (Dask workers are other processes). After each contender the tree is
checked: one ``*_multiframe.dcm`` per folder with NumberOfFrames = slices, slices + 1
``*_jll.dcm`` files per folder, and the merged pixel data identical across contenders.

Targets (printed, never asserted): ``--jobs 2`` at least 1.8x faster than ``--jobs 1``;
``--dask`` within 15 % of ``--jobs 2``. Results go to ``bench/results/scale-<time>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge as mb  # noqa: E402  (bench/merge.py: series, launcher, helpers)

REPO = mb.REPO
MB = mb.MB
SPEEDUP_TARGET = 1.8  # --jobs 2 vs --jobs 1
DASK_TOLERANCE = 0.15  # --dask wall within 15 % of --jobs 2's


@dataclass
class ScaleResult(mb.Result):
    """All runs of one contender: each sample is the merge and the compression together."""

    merge_s: list[float] = field(default_factory=list)
    compress_s: list[float] = field(default_factory=list)
    folders: int = 0


def make_tree(root: Path, folders: int, slices: int, size: int) -> list[Path]:
    """Write the job folders (one series each, a different seed per folder)."""
    made = []
    for i in range(folders):
        folder = root / f"patient{i:02d}" / "ct"
        mb.generate_series(folder, slices, size, seed=7 + i)
        made.append(folder)
    return made


def check_tree(root: Path, folders: list[Path], slices: int) -> tuple[str, dict[str, str]]:
    """Check the outputs of one contender; return a problem ("" if none) and pixel hashes."""
    hashes = {}
    for folder in folders:
        merged = sorted(folder.glob("*_multiframe.dcm"))
        if len(merged) != 1:
            return f"{folder.relative_to(root)}: {len(merged)} merged files", hashes
        ds = pydicom.dcmread(merged[0])
        if int(ds.get("NumberOfFrames", 1) or 1) != slices:
            return f"{merged[0].name}: {ds.NumberOfFrames} frames, not {slices}", hashes
        compressed = list(folder.glob("*_jll.dcm"))
        if len(compressed) != slices + 1:
            return f"{folder.relative_to(root)}: {len(compressed)} _jll files", hashes
        hashes[folder.relative_to(root).as_posix()] = hashlib.sha256(ds.PixelData).hexdigest()
    return "", hashes


def run_contender(
    name: str,
    extra: list[str],
    script: Path,
    pristine: Path,
    work: Path,
    args: argparse.Namespace,
    log: Path,
) -> tuple[ScaleResult, dict[str, str]]:
    """Run one contender args.repeat times on fresh copies of the tree."""
    result = ScaleResult(name, args.slices, folders=args.folders)
    hashes: dict[str, str] = {}
    for i in range(args.repeat):
        tree = work / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(pristine, tree)
        folders = sorted(p.parent for p in tree.glob("*/ct/IM*.dcm"))
        folders = list(dict.fromkeys(folders))
        mb.flush_disk()
        samples = []
        for action in ("-j", "-x"):
            argv = [sys.executable, str(script), action, "-f", str(tree), *extra, "--quiet"]
            with log.open("a") as sink:
                sink.write(f"\n==== {name} run {i + 1}: {' '.join(argv[1:])}\n")
            samples.append(mb.measure(argv, log))
        merge, compress = samples
        result.merge_s.append(merge.wall_s)
        result.compress_s.append(compress.wall_s)
        result.samples.append(
            mb.Sample(
                round(merge.wall_s + compress.wall_s, 4),
                max(merge.peak_rss_mb, compress.peak_rss_mb),
                merge.returncode or compress.returncode,
            )
        )
        problem, hashes = check_tree(tree, folders, args.slices)
        if merge.returncode or compress.returncode:
            problem = f"exit {merge.returncode} (-j), {compress.returncode} (-x)"
        if problem:
            result.verified = False
            result.note = result.note or f"run {i + 1}: {problem}"
        elif result.verified is None:
            result.verified = True
        shutil.rmtree(tree)
    return result, hashes


def start_cluster(script: Path) -> tuple[Any, Any]:
    """A 2-worker LocalCluster whose workers import the snapshot of dicompressor.py."""
    from distributed import Client, LocalCluster

    # spawned workers take this process's sys.path and environment
    sys.path.insert(0, str(script.parent))
    os.environ["PYTHONPATH"] = str(script.parent)
    cluster = LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    )
    return cluster, Client(cluster)


def report(results: list[ScaleResult]) -> tuple[list[str], list[dict[str, object]]]:
    """Format the table and the target checks."""
    width = max(len(r.contender) for r in results)
    lines = [
        f"{'contender':<{width}} {'folders':>7} {'slices':>6} {'merge s':>8} {'-x s':>8} "
        f"{'total s':>8} {'peak RSS MB':>11}  {'check':<5}  vs --jobs 1",
        "-" * (width + 76),
    ]
    by_name = {r.contender: r for r in results}
    base = by_name.get("--jobs 1")
    for r in results:
        speedup = f"{base.wall_s / r.wall_s:.2f}x" if base and r.wall_s > 0 else "-"
        lines.append(
            f"{r.contender:<{width}} {r.folders:>7} {r.slices:>6} "
            f"{statistics.median(r.merge_s):>8.2f} {statistics.median(r.compress_s):>8.2f} "
            f"{r.wall_s:>8.2f} {r.peak_rss_mb:>11.1f}  {'ok' if r.ok else 'BAD':<5}  {speedup}"
        )
        if r.note:
            lines.append(f"    note: {r.note}")
    checks: list[dict[str, object]] = []
    lines += ["", "targets (printed, not asserted):"]
    two, dask = by_name.get("--jobs 2"), by_name.get("--dask")
    if base and two:
        speedup = base.wall_s / two.wall_s
        ok = base.ok and two.ok and speedup >= SPEEDUP_TARGET
        checks.append({"target": "--jobs 2 >= 1.8x --jobs 1", "value": speedup, "pass": ok})
        lines.append(
            f"  {mb.verdict(ok)}  --jobs 2 is {speedup:.2f}x faster than --jobs 1 "
            f"(target >= {SPEEDUP_TARGET:g}x)"
        )
    if two and dask:
        ratio = dask.wall_s / two.wall_s
        ok = two.ok and dask.ok and ratio <= 1 + DASK_TOLERANCE
        checks.append({"target": "--dask within 15% of --jobs 2", "value": ratio, "pass": ok})
        lines.append(
            f"  {mb.verdict(ok)}  --dask takes {ratio:.2f}x the wall of --jobs 2 "
            f"(target <= {1 + DASK_TOLERANCE:.2f}x)"
        )
    return lines, checks


def _usable_cpus() -> int | None:
    """CPUs this process may run on (Linux), else the CPU count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", type=int, default=8, help="job folders (default 8)")
    parser.add_argument("--slices", type=int, default=100, help="slices per folder (100)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (default 1)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["jobs1", "jobs2", "dask"],
        help="run only these contenders",
    )
    mb.add_work_options(parser, "the generated tree")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate, measure, print, save."""
    args = parse_args(argv)
    repo_state = mb.git_state()
    work = mb.make_work("dicompressor-scale-", args.tmpdir)
    log = work / "children.log"
    print(f"work folder: {work}  (child output in {log.name})")
    source = mb.DEFAULT_SCRIPT
    script = mb.snapshot_scripts({"dicompressor": source}, work)["dicompressor"]
    print(f"dicompressor: {source} (sha256 {mb.sha256_of(source)[:12]}, copied before the runs)")
    floor = mb.measure(["true"], log)
    cluster = client = None
    results: list[ScaleResult] = []
    try:
        pristine = work / "pristine"
        start = time.perf_counter()
        make_tree(pristine, args.folders, args.slices, args.size)
        size_mb = sum(p.stat().st_size for p in pristine.rglob("*.dcm")) / MB
        print(
            f"generated {args.folders} folders x {args.slices} slices of {args.size}x{args.size}"
            f" ({size_mb:.0f} MB) in {time.perf_counter() - start:.1f} s (not measured)"
        )
        contenders: list[tuple[str, str, list[str]]] = [
            ("jobs1", "--jobs 1", ["--jobs", "1"]),
            ("jobs2", "--jobs 2", ["--jobs", "2"]),
            ("dask", "--dask", []),
        ]
        reference: dict[str, str] | None = None
        for key, name, extra in contenders:
            if args.only and key not in args.only:
                continue
            if key == "dask":
                start = time.perf_counter()
                cluster, client = start_cluster(script)
                print(
                    f"LocalCluster {cluster.scheduler_address} (2 workers) started in "
                    f"{time.perf_counter() - start:.1f} s (not measured)"
                )
                extra = ["--dask", cluster.scheduler_address]
            result, hashes = run_contender(name, extra, script, pristine, work, args, log)
            if reference is None:
                reference = hashes
            elif result.ok and hashes != reference:
                result.verified = False
                result.note = "merged pixel data differs from the first contender's"
            results.append(result)
            walls = ", ".join(f"{s.wall_s:.2f}" for s in result.samples)
            print(
                f"  {name:<9} wall [{walls}] s (merge {result.merge_s[-1]:.2f} + "
                f"-x {result.compress_s[-1]:.2f}), peak RSS {result.peak_rss_mb:.1f} MB"
                f"{'' if result.ok else '  (FAILED: ' + result.note + ')'}"
            )
        lines, checks = report(results)
        print()
        print("\n".join(lines))
        if not args.no_json:
            params = {
                "folders": args.folders,
                "slices": args.slices,
                "size": args.size,
                "repeat": args.repeat,
                "script": {"path": str(source), "sha256": mb.sha256_of(script)},
            }
            target = mb.save_results(
                "scale",
                params,
                floor,
                {"cpus_usable": _usable_cpus(), **repo_state},
                results,
                checks,
                merge_s=lambda r: r.merge_s,
                compress_s=lambda r: r.compress_s,
            )
            print(f"\nresults: {target.relative_to(REPO)}")
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        mb.remove_work(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
