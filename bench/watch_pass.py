#!/usr/bin/env python3
"""Measure a pass over a large settled tree with and without ``--scan-state-file``.

Usage::

    python3 bench/watch_pass.py                   # 10,000 folders, 3 runs each
    python3 bench/watch_pass.py --folders 2000    # a smaller tree
    python3 bench/watch_pass.py --repeat 5 --keep

A tree of ``--folders`` job folders (100 patients, each with its series folders) is
written, each holding one small DICOM file and a ``.dicompressor_done`` marker of a
merge: what a watched archive looks like once everything in it has been merged.
Writing it is not timed. Then, each ``--repeat`` times:

* ``cli``: ``dicompressor.py -j --skip-if-done -f <tree> --quiet`` (a cron run that finds
  every folder done), without the cache and with a warm ``--scan-state-file``;
* ``watch pass``: one watch pass in this process (``ready_folders``: find the job
  folders, skip the done ones), without the cache and with a warm one.

The first run with the cache (which lists every folder and writes the file) is shown on
its own. The page cache is warm in every run. Results: median wall time and the number
of folders listed by the pass; written to ``bench/results/watch-pass-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge as mb  # noqa: E402  (bench helpers: work folder, launcher, results)

sys.path.insert(0, str(mb.REPO))
import dicompressor  # noqa: E402

MARKER = {"version": dicompressor.__version__, "action": "merge", "finished_at": "x"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    mb.add_work_options(parser, "the tree")
    return parser.parse_args(argv)


def make_tree(root: Path, folders: int) -> None:
    """Write the settled tree: patients/series folders, one slice and a marker each."""
    seed = root.parent / "seed"
    (sample,) = mb.generate_series(seed, 1, 16)
    data = sample.read_bytes()
    marker = json.dumps(MARKER).encode()
    per_patient = max(1, folders // 100)
    for index in range(folders):
        folder = root / f"patient{index // per_patient:03d}" / f"series{index:05d}"
        folder.mkdir(parents=True)
        (folder / "IM000001.dcm").write_bytes(data)
        (folder / dicompressor.DONE_MARKER).write_bytes(marker)
    shutil.rmtree(seed)


def time_cli(root: Path, state: Path | None, log: Path) -> float:
    """Run the cron-like CLI pass once; return its wall time."""
    argv = [sys.executable, str(mb.DEFAULT_SCRIPT), "-j", "--skip-if-done", "-f", str(root)]
    argv += ["--quiet", "--jobs", "1"]
    if state is not None:
        argv += ["--scan-state-file", str(state)]
    return mb.measure(argv, log).wall_s


def time_watch_pass(root: Path, state: Path | None) -> tuple[float, int]:
    """Run one watch pass in this process; return (wall time, folders listed)."""
    scan = dicompressor.ScanState(state, root) if state is not None else None
    memory = dicompressor.WatchState(scan=scan)
    start = time.perf_counter()
    ready = dicompressor.ready_folders("merge", root, recursive=True, settle_s=0, memory=memory)
    elapsed = time.perf_counter() - start
    assert ready == [], ready
    if scan is not None:
        scan.save()
    return elapsed, scan.listed if scan is not None else -1


def main(argv: list[str] | None = None) -> int:
    """Write the tree, time the passes, print the table."""
    args = parse_args(argv)
    work = mb.make_work("watch-pass-", args.tmpdir)
    log = work / "log.txt"
    try:
        root = work / "tree"
        started = time.perf_counter()
        make_tree(root, args.folders)
        print(f"tree: {args.folders} folders written in {time.perf_counter() - started:.1f} s")
        state = work / "scan-state.json"
        cold_pass, cold_listed = time_watch_pass(root, state)
        state.unlink()
        cold_cli = time_cli(root, state, log)
        rows = {
            "cli, no cache": [time_cli(root, None, log) for _ in range(args.repeat)],
            "cli, warm cache": [time_cli(root, state, log) for _ in range(args.repeat)],
            "watch pass, no cache": [time_watch_pass(root, None)[0] for _ in range(args.repeat)],
        }
        warm = [time_watch_pass(root, state) for _ in range(args.repeat)]
        rows["watch pass, warm cache"] = [w for w, _ in warm]
        print(f"first run with the cache (lists every folder): cli {cold_cli:.2f} s, "
              f"watch pass {cold_pass:.2f} s ({cold_listed} folders listed)")  # fmt: skip
        print(f"{'pass over ' + str(args.folders) + ' folders':<32}{'median':>10}{'runs':>28}")
        for name, times in rows.items():
            shown = " ".join(f"{t:.2f}" for t in times)
            print(f"{name:<32}{statistics.median(times):>9.2f}s{shown:>28}")
        print(f"folders listed by a warm watch pass: {warm[-1][1]}")
        speedup = statistics.median(rows["watch pass, no cache"]) / statistics.median(
            rows["watch pass, warm cache"]
        )
        print(f"watch pass: {speedup:.1f}x faster with a warm cache")
        if not args.no_json:
            results = mb.RESULTS_DIR / f"watch-pass-{time.strftime('%Y%m%d-%H%M%S')}.json"
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text(json.dumps({"folders": args.folders, "runs": rows}, indent=2))
        return 0
    finally:
        mb.remove_work(work, args.keep)


if __name__ == "__main__":
    sys.exit(main())
