#!/usr/bin/env python3
"""Benchmark DicomPressor's anonymize (``-a``) and headers (``-t``) against GDCM and dcmtk.

Usage::

    python3 bench/anonymize.py                 # 400 slices, 2 runs per contender
    python3 bench/anonymize.py --slices 100    # a smaller series

``bench/merge.py`` writes the series (512x512 int16 CT); it is not timed. Each contender
runs as a child measured by merge.py's fork/exec launcher (wall time, peak RSS), in one
run:

* ``dicompressor -a``: the PS3.15 Basic Profile plus two replacements, on the folder,
  into ``--output-dir``;
* ``gdcmanon -e``: GDCM's Basic Profile de-identification of the folder (with a
  throw-away self-signed certificate, which its E.1.1 mode needs), when installed;
* ``dicompressor -t``: a text dump of every file's header;
* ``dcmdump``: one dcmtk process dumping all the files, when installed.

Targets (printed PASS/FAIL, never asserted): anonymize <= 4x gdcmanon on a directory,
headers <= 5x one dcmdump process over the files. After them, the fixed costs of -t:
``dicompressor.py -c`` (Python start, imports, compiling the script) and creating as many
empty files as there are inputs (dcmdump writes its dumps into one file, -t one per
input), next to dcmdump's whole run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge as mb  # noqa: E402  (bench/merge.py: series, launcher, helpers)

ANONYMIZE_TARGET = 4.0
HEADERS_TARGET = 5.0
PARAMS = "(0010,0010)=ANONYMOUS^PATIENT\n(0010,0020)=ANON001\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    mb.add_work_options(parser)
    return parser.parse_args(argv)


def certificate(work: Path) -> tuple[Path, Path] | None:
    """Make a throw-away self-signed certificate and key for gdcmanon, or None."""
    if shutil.which("openssl") is None:
        return None
    key, cert = work / "key.pem", work / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=bench", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def contenders(script: Path, series: Path, work: Path) -> list[tuple[str, str, list[str]]]:
    """Return (group, name, argv) of every contender that can run here."""
    python = sys.executable
    params = work / "params.txt"
    params.write_text(PARAMS)
    out = work / "out"
    found = [
        ("anonymize", "dicompressor -a",
         [python, str(script), "-a", str(params), "-F", str(series), "--output-dir",
          str(out / "anon"), "--quiet"]),
        ("headers", "dicompressor -t",
         [python, str(script), "-t", "-F", str(series), "--output-dir", str(out / "txt"),
          "--quiet"]),
    ]  # fmt: skip
    pair = certificate(work) if shutil.which("gdcmanon") else None
    if pair is not None:
        key, cert = pair
        found.append(
            ("anonymize", "gdcmanon -e",
             ["gdcmanon", "-e", "-c", str(cert), "-k", str(key), "--continue", "-i",
              str(series), "-o", str(out / "gdcm")]),
        )  # fmt: skip
    dcmdump = shutil.which("dcmdump")
    if dcmdump is not None:
        files = " ".join(f"'{p}'" for p in sorted(series.glob("*.dcm")))
        found.append(
            ("headers", "dcmdump (one process)",
             ["sh", "-c", f"{dcmdump} +F {files} > '{out / 'dcmdump.txt'}'"]),
        )  # fmt: skip
    return found


def create_files_s(folder: Path, count: int) -> float:
    """Return the time to create count empty files in a new folder (file system cost)."""
    folder.mkdir()
    start = time.perf_counter()
    for index in range(count):
        (folder / f"{index}.txt").touch(exist_ok=False)
    seconds = time.perf_counter() - start
    shutil.rmtree(folder)
    return seconds


def print_fixed_costs(script: Path, work: Path, count: int, dcmdump: mb.Result, log: Path) -> None:
    """Print what -t pays whatever its speed: start-up and creating one file per input.

    dcmdump writes all dumps into one file; -t writes one per input, as the issue asks.
    """
    starts = sorted(mb.measure([sys.executable, str(script), "-c"], log).wall_s for _ in range(5))
    creates = sorted(create_files_s(work / f"touch{i}", count) for i in range(5))
    start, create = starts[2], creates[2]
    fixed = start + create
    print(
        f"\nfixed costs of -t: start-up (`{script.name} -c`) {start:.3f} s + creating "
        f"{count} files here {create:.3f} s ({create / count * 1e3:.2f} ms each) = "
        f"{fixed:.3f} s = {fixed / dcmdump.wall_s:.2f}x dcmdump's whole run"
    )


def main(argv: list[str] | None = None) -> int:
    """Generate, measure, print, save."""
    args = parse_args(argv)
    repo_state = mb.git_state()
    work = mb.make_work("dicompressor-anon-", args.tmpdir)
    log = work / "children.log"
    try:
        script = work / "dicompressor.py"
        shutil.copy2(mb.DEFAULT_SCRIPT, script)
        series = work / "series"
        mb.generate_series(series, args.slices, args.size)
        floor = mb.measure(["true"], log)
        results: list[mb.Result] = []
        groups: dict[str, str] = {}
        for group, name, argv_ in contenders(script, series, work):
            result = mb.Result(name, args.slices)
            for _ in range(args.repeat):
                shutil.rmtree(work / "out", ignore_errors=True)
                (work / "out").mkdir()
                mb.flush_disk()
                result.samples.append(mb.measure(argv_, log))
            results.append(result)
            groups[name] = group
            print(f"  {name:<24} wall {result.wall_s:.3f} s, peak RSS {result.peak_rss_mb:.1f} MB")
        by_name = {r.contender: r for r in results}
        print(f"\n{'contender':<24} {'files':>5} {'wall s':>8} {'peak RSS MB':>11}  check")
        for r in results:
            print(f"{r.contender:<24} {r.slices:>5} {r.wall_s:>8.3f} {r.peak_rss_mb:>11.1f}"
                  f"  {'ok' if r.ok else 'FAILED'}")  # fmt: skip
        checks = []
        for ours, theirs, limit in (
            ("dicompressor -a", "gdcmanon -e", ANONYMIZE_TARGET),
            ("dicompressor -t", "dcmdump (one process)", HEADERS_TARGET),
        ):
            if theirs not in by_name:
                print(f"  SKIP  {ours} <= {limit:g}x {theirs} ({theirs} not run)")
                continue
            ratio = by_name[ours].wall_s / by_name[theirs].wall_s
            passed = ratio <= limit
            checks.append({"target": f"{ours} <= {limit:g}x {theirs}", "ratio": ratio,
                           "pass": passed})  # fmt: skip
            walls = f"{by_name[ours].wall_s:.3f} s / {by_name[theirs].wall_s:.3f} s"
            print(f"  {mb.verdict(passed)}  {ours} wall <= {limit:g}x {theirs}: "
                  f"{walls} = {ratio:.2f}x")  # fmt: skip
        if "dcmdump (one process)" in by_name:
            print_fixed_costs(script, work, args.slices, by_name["dcmdump (one process)"], log)
        if not args.no_json:
            params = {"slices": args.slices, "size": args.size, "repeat": args.repeat}
            target = mb.save_results(
                "anonymize", params, floor, repo_state, results, checks,
                group=lambda r: groups[r.contender],
            )  # fmt: skip
            print(f"\nresults: {target.relative_to(mb.REPO)}")
    finally:
        mb.remove_work(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
