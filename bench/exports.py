#!/usr/bin/env python3
"""Benchmark DicomPressor's exports (``-I png``, ``-E``) against a dcmj2pnm loop.

Usage::

    python3 bench/exports.py                  # 400 slices, 3 rounds
    python3 bench/exports.py --slices 200     # a smaller series
    python3 bench/exports.py --jobs 4 --keep  # more workers; keep the work folder

``bench/merge.py`` writes the series (512x512 int16 CT, BitsStored 12, two windows, a
padding value); ``dicompressor.py -j`` merges it into one multi-frame file (via
``bench/codecs.py``'s ``make_multiframe``). Neither step is timed. Then, each as a child
measured by ``merge.py``'s fork/exec launcher (wall time, CPU time, peak RSS):

* ``dicompressor -I png``: PNG of every slice of the folder, ``--jobs N`` workers;
* ``dcmj2pnm loop``: dcmtk's ``dcmj2pnm +on +Wi 1`` (8-bit PNG, first window) once per
  slice in a ``sh`` loop, when dcmtk is installed;
* ``dicompressor -E``: MP4 of the multi-frame file (``--no-video``: left out).

The dicompressor contenders run the CLI of a snapshot of dicompressor.py taken at start.
The table shows median wall time, median CPU time, peak RSS, the outputs, and wall / dcmj2pnm loop;
the target (PNG <= 0.3x the dcmj2pnm loop, issue 21) is printed PASS/FAIL. The contenders
run in rounds (one run each per round), so their runs alternate on a shared machine;
``--script`` (repeatable) measures other versions of dicompressor.py in the same run.
Results are saved in ``bench/results/exports-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge as mb  # noqa: E402  (bench/merge.py: series, launcher, helpers)

REPO = mb.REPO
PNG_TARGET = 0.3  # issue 21: dicompressor -I png wall <= this x the dcmj2pnm loop's

RUNNER = textwrap.dedent(
    '''
    """Run one export through the CLI of a snapshot of dicompressor.py."""
    import sys

    repo, action, source, out, jobs = sys.argv[1:6]
    sys.path.insert(0, repo)
    import dicompressor as d

    flag = {"png": ["-I", "png"], "mp4": ["-E"]}[action]
    sys.exit(d.main([*flag, "-F", source, "--output-dir", out, "--jobs", jobs, "--quiet"]))
    '''
).lstrip()


@dataclass
class ExportResult(mb.Result):
    """All runs of one contender, plus what its first run wrote."""

    case: str = ""
    outputs: int = 0
    out_bytes: int = 0


def load_codecs_bench() -> object:
    """Import bench/codecs.py (its name clashes with the stdlib's codecs module)."""
    spec = importlib.util.spec_from_file_location("bench_codecs", mb.BENCH_DIR / "codecs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_once(result: ExportResult, argv_for: object, work: Path, log: Path, expect: int) -> None:
    """Run a contender once into a fresh folder, check the output count, add the run."""
    name, case, i = result.contender, result.case, len(result.samples)
    out = work / "out" / f"{case}-{name.replace(' ', '_').replace(':', '_')}-{i}"
    out.mkdir(parents=True)
    argv = argv_for(out)  # type: ignore[operator]
    with log.open("a") as sink:
        sink.write(f"\n==== {name} run {i + 1}: {' '.join(argv[:8])}\n")
    mb.flush_disk()
    sample = mb.measure(argv, log)
    result.samples.append(sample)
    files = [p for p in out.iterdir() if not p.name.startswith(".")]
    if i == 0:
        result.outputs = len(files)
        result.out_bytes = sum(p.stat().st_size for p in files)
    good = sample.returncode == 0 and len(files) == expect
    if not good and not result.note:
        result.note = f"run {i + 1}: exit {sample.returncode}, {len(files)} outputs"
    result.verified = good if result.verified in (None, True) else False
    shutil.rmtree(out)


def report(results: list[ExportResult]) -> tuple[list[str], list[dict[str, object]]]:
    """Format the table and the target; return the lines and the target as dicts."""
    loop = next((r for r in results if r.contender == "dcmj2pnm loop"), None)
    width = max(len(r.contender) for r in results)
    head = (
        f"{'input':<7} {'contender':<{width}} {'frames':>6} {'wall s':>8} {'CPU s':>7} "
        f"{'peak RSS MB':>11} {'outputs':>7} {'out MB':>7}  {'runs':>4} {'check':<5} wall/dcmj2pnm"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.wall_s / loop.wall_s:.2f}x" if loop and r.case == loop.case else "-"
        lines.append(
            f"{r.case:<7} {r.contender:<{width}} {r.slices:>6} {r.wall_s:>8.3f} {r.cpu_s:>7.2f} "
            f"{r.peak_rss_mb:>11.1f} {r.outputs:>7} {r.out_bytes / mb.MB:>7.1f}  "
            f"{len(r.samples):>4} {'ok' if r.ok else 'BAD':<5} {ratio}"
        )
        if r.note:
            lines.append(f"        note: {r.note}")
    lines += ["", "targets:"]
    checks: list[dict[str, object]] = []
    for mine in [r for r in results if r.contender.endswith(" -I png")]:
        name = f"{mine.contender} wall <= {PNG_TARGET:g}x dcmj2pnm loop"
        if loop is None:
            lines.append(f"  SKIP  {name} (not run)")
            checks.append({"target": name, "value": None, "pass": None})
            continue
        rel = mine.wall_s / loop.wall_s if loop.wall_s > 0 else float("inf")
        ok = mine.ok and loop.ok and rel <= PNG_TARGET
        lines.append(
            f"  {mb.verdict(ok)}  {name}: {mine.wall_s:.3f} s / {loop.wall_s:.3f} s = {rel:.2f}x"
            f" (CPU {mine.cpu_s:.2f} s / {loop.cpu_s:.2f} s)"
        )
        checks.append({"target": name, "value": round(rel, 3), "pass": ok})
    return lines, checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=400, help="slices in the series")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    mb.add_script_option(parser)
    parser.add_argument("--no-video", action="store_true", help="leave -E out")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="dicompressor --jobs"
    )
    mb.add_work_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate, measure, print, save."""
    args = parse_args(argv)
    repo_state = mb.git_state()
    dcmj2pnm = shutil.which("dcmj2pnm")
    if dcmj2pnm is None:
        print("dcmj2pnm not found (dcmtk): running without it")
    work = mb.make_work("dicompressor-exports-", args.tmpdir)
    log = work / "children.log"
    print(f"work folder: {work}  (child output in {log.name}); {mb.load_average()}")
    sources = mb.script_labels([p.resolve() for p in (args.script or [mb.DEFAULT_SCRIPT])])
    snapshots = {}
    for i, (label, source) in enumerate(sources.items()):
        snapshot = work / f"repo{i}"
        snapshot.mkdir(parents=True)
        shutil.copy2(source, snapshot / "dicompressor.py")  # the runner imports it by name
        snapshots[label] = snapshot
    runner = work / "runner.py"
    runner.write_text(RUNNER)
    floor = mb.measure(["true"], log)
    print(f"measurement floor: peak RSS {floor.peak_rss_mb:.1f} MB, wall {floor.wall_s:.3f} s")
    try:
        start = time.perf_counter()
        paths = mb.generate_series(work / "single", args.slices, args.size)
        codecs_bench = load_codecs_bench()
        first = next(iter(snapshots.values()))
        multi = codecs_bench.make_multiframe(  # type: ignore[attr-defined]
            first / "dicompressor.py", work / "single", work / "multi", log
        )
        print(
            f"generated {args.slices} slices of {args.size}x{args.size} and merged them in "
            f"{time.perf_counter() - start:.1f} s (not measured)"
        )
        jobs = str(args.jobs)
        folder = str(work / "single")

        def ours(snapshot: Path, action: str, source: str) -> object:
            python = [sys.executable, str(runner), str(snapshot)]
            return lambda out: [*python, action, source, str(out), jobs]

        def installed(command: Path, action: str, source: str) -> object:
            flag = {"png": ["-I", "png"], "mp4": ["-E"]}[action]
            rest = ["--jobs", jobs, "--quiet"]
            return lambda out: [str(command), *flag, "-F", source, "--output-dir", str(out), *rest]

        versions = {label: (ours, snapshot) for label, snapshot in snapshots.items()}
        if args.installed:
            scripts = {label: where / "dicompressor.py" for label, where in snapshots.items()}
            commands = mb.install_commands(scripts, work)
            versions |= {label: (installed, command) for label, command in commands.items()}
        contenders = [
            (f"{label} -I png", "single", run(where, "png", folder))
            for label, (run, where) in versions.items()
        ]
        if dcmj2pnm:
            loop = (
                f'for f in "$1"/*.dcm; do {dcmj2pnm} +on +Wi 1 "$f" "$2/${{f##*/}}.png" '
                "|| exit 1; done"
            )
            contenders.append(
                ("dcmj2pnm loop", "single", lambda out: ["sh", "-c", loop, "sh", folder, str(out)])
            )
        if not args.no_video:
            contenders += [
                (f"{label} -E", "multi", run(where, "mp4", str(multi)))
                for label, (run, where) in versions.items()
            ]
        results = [ExportResult(name, len(paths), case=case) for name, case, _ in contenders]
        for _ in range(args.repeat):  # rounds: every contender's runs alternate
            for (name, _, argv_for), result in zip(contenders, results, strict=True):
                expect = 1 if name.endswith(" -E") else len(paths)
                run_once(result, argv_for, work, log, expect)
        for result in results:
            walls = ", ".join(f"{s.wall_s:.2f}" for s in result.samples)
            print(
                f"  {result.case:<6} {result.contender:<24} wall [{walls}] s, CPU "
                f"{result.cpu_s:.2f} s, peak RSS {result.peak_rss_mb:.1f} MB"
                f"{'' if result.ok else '  (FAILED: ' + result.note + ')'}",
                flush=True,
            )
        lines, checks = report(results)
        print(f"\n{mb.load_average()} (after the runs)")
        print("\n".join(lines))
        if not args.no_json:
            params = {
                "slices": args.slices,
                "size": args.size,
                "repeat": args.repeat,
                "jobs": args.jobs,
            }
            environment = {"dcmj2pnm": dcmj2pnm, **repo_state}
            target = mb.save_results(
                "exports",
                params,
                floor,
                environment,
                results,
                checks,
                outputs=lambda r: r.outputs,
                cpu_s=lambda r: r.cpu_s,
            )
            print(f"\nresults: {target.relative_to(REPO)}")
    finally:
        mb.remove_work(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
