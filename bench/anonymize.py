#!/usr/bin/env python3
"""Benchmark DicomPressor's anonymize (``-a``), headers (``-t``) and DICOMDIR (``-d``)
against GDCM and dcmtk.

Usage::

    python3 bench/anonymize.py                 # 400 slices, 3 rounds
    python3 bench/anonymize.py --slices 100    # a smaller series
    python3 bench/anonymize.py --only headers --script /tmp/old.py --script dicompressor.py

``bench/merge.py`` writes the series (512x512 int16 CT); it is not timed. Each contender
runs as a child measured by merge.py's fork/exec launcher (wall time, CPU time, peak
RSS). The contenders run in rounds, one run each per round, so that their runs alternate
and a change of load on a shared machine hits all of them alike:

* ``dicompressor -a``: the PS3.15 Basic Profile plus two replacements, on the folder,
  into ``--output-dir``;
* ``gdcmanon -e``: GDCM's Basic Profile de-identification of the folder (with a
  throw-away self-signed certificate, which its E.1.1 mode needs), when installed;
* ``dicompressor -t``: a text dump of every file's header;
* ``dcmdump``: one dcmtk process dumping all the files, when installed;
* ``dicompressor -d``: a DICOMDIR in a folder of the same files under conformant File
  IDs (``IM000123``, hard links), which references them in place;
* ``dcmmkdir``: dcmtk's DICOMDIR of that folder (``+I``: placeholders for missing Type 1
  keys, as -d gives them), when installed.

Targets (issue 21; printed PASS/FAIL, never asserted): anonymize <= 2x gdcmanon on a
directory, headers <= 3x one dcmdump process over the files, DICOMDIR <= 3x dcmmkdir.
After them, the fixed costs of -t: ``dicompressor.py -c`` (Python start, imports,
compiling the script) and creating as many empty files as there are inputs (dcmdump
writes its dumps into one file, -t one per input), next to dcmdump's whole run. With
several ``--script``, each version is a contender of its own (``dicompressor:<stem>``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge as mb  # noqa: E402  (bench/merge.py: series, launcher, helpers)

ANONYMIZE_TARGET = 2.0
HEADERS_TARGET = 3.0
DICOMDIR_TARGET = 3.0
PARAMS = "(0010,0010)=ANONYMOUS^PATIENT\n(0010,0020)=ANON001\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["anonymize", "headers", "dicomdir"],
        help="run only these groups (each with its anchor)",
    )
    mb.add_script_option(parser)
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


def conformant_copy(series: Path, folder: Path) -> Path:
    """Hard-link the series into folder under conformant File IDs (IM000123); return it."""
    folder.mkdir()
    for path in sorted(series.glob("*.dcm")):
        os.link(path, folder / path.stem.upper())
    return folder


def contenders(
    scripts: dict[str, Path], series: Path, work: Path
) -> list[tuple[str, str, list[str]]]:
    """Return (group, name, argv) of every contender that can run here."""
    params = work / "params.txt"
    params.write_text(PARAMS)
    out = work / "out"
    cd = conformant_copy(series, work / "CD")
    found = []
    for label, script in scripts.items():
        ours = mb.command(script)
        found += [
            (
                "anonymize",
                f"{label} -a",
                [*ours, "-a", str(params), "-F", str(series), "--output-dir",
                 str(out / "anon"), "--quiet"],
            ),
            (
                "headers",
                f"{label} -t",
                [*ours, "-t", "-F", str(series), "--output-dir", str(out / "txt"),
                 "--quiet"],
            ),
            ("dicomdir", f"{label} -d",
             [*ours, "-d", "-F", str(cd), "--quiet"]),
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
    dcmmkdir = shutil.which("dcmmkdir")
    if dcmmkdir is not None:
        found.append(
            ("dicomdir", "dcmmkdir",
             [dcmmkdir, "+r", "+I", "+id", str(cd), "+D", str(out / "DICOMDIR")]),
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
    starts = sorted(mb.measure([*mb.command(script), "-c"], log).wall_s for _ in range(5))
    creates = sorted(create_files_s(work / f"touch{i}", count) for i in range(5))
    start, create = starts[2], creates[2]
    fixed = start + create
    print(
        f"\nfixed costs of -t: start-up (`{script.name} -c`) {start:.3f} s + creating "
        f"{count} files here {create:.3f} s ({create / count * 1e3:.2f} ms each) = "
        f"{fixed:.3f} s = {fixed / dcmdump.wall_s:.2f}x dcmdump's whole run"
    )


#: (our flag, theirs, limit): the targets, each ours <= limit x theirs on the wall clock.
TARGETS = (
    ("-a", "gdcmanon -e", ANONYMIZE_TARGET),
    ("-t", "dcmdump (one process)", HEADERS_TARGET),
    ("-d", "dcmmkdir", DICOMDIR_TARGET),
)


def main(argv: list[str] | None = None) -> int:
    """Generate, measure, print, save."""
    args = parse_args(argv)
    repo_state = mb.git_state()
    work = mb.make_work("dicompressor-anon-", args.tmpdir)
    log = work / "children.log"
    print(f"work folder: {work}; {mb.load_average()}")
    try:
        sources = mb.script_labels([p.resolve() for p in (args.script or [mb.DEFAULT_SCRIPT])])
        scripts = mb.snapshot_scripts(sources, work)
        if args.installed:
            scripts |= mb.install_commands(scripts, work)
        series = work / "series"
        mb.generate_series(series, args.slices, args.size)
        floor = mb.measure(["true"], log)
        chosen = [
            (group, name, argv_)
            for group, name, argv_ in contenders(scripts, series, work)
            if not args.only or group in args.only
        ]
        results = [mb.Result(name, args.slices) for _, name, _ in chosen]
        groups = {name: group for group, name, _ in chosen}
        for _ in range(args.repeat):  # rounds: every contender's runs alternate
            for (_, _, argv_), result in zip(chosen, results, strict=True):
                shutil.rmtree(work / "out", ignore_errors=True)
                (work / "out").mkdir()
                (work / "CD" / "DICOMDIR").unlink(missing_ok=True)
                mb.flush_disk()
                result.samples.append(mb.measure(argv_, log))
        print(f"{mb.load_average()} (after the runs)")
        by_name = {r.contender: r for r in results}
        width = max(len(r.contender) for r in results)
        print(
            f"\n{'contender':<{width}} {'files':>5} {'wall s':>8} {'CPU s':>7} "
            f"{'peak RSS MB':>11}  runs  check"
        )
        for r in results:
            walls = ", ".join(f"{s.wall_s:.2f}" for s in r.samples)
            print(f"{r.contender:<{width}} {r.slices:>5} {r.wall_s:>8.3f} {r.cpu_s:>7.2f} "
                  f"{r.peak_rss_mb:>11.1f}  {len(r.samples):>4}  {'ok' if r.ok else 'FAILED'}"
                  f"  [{walls}]")  # fmt: skip
        checks = []
        print("\ntargets:")
        for flag, theirs, limit in TARGETS:
            for ours in [n for n in by_name if n.startswith("dicompressor") and n.endswith(flag)]:
                if theirs not in by_name:
                    print(f"  SKIP  {ours} <= {limit:g}x {theirs} ({theirs} not run)")
                    continue
                a, b = by_name[ours], by_name[theirs]
                ratio = a.wall_s / b.wall_s
                passed = a.ok and b.ok and ratio <= limit
                checks.append({"target": f"{ours} <= {limit:g}x {theirs}", "ratio": ratio,
                               "cpu_ratio": a.cpu_s / b.cpu_s if b.cpu_s else None,
                               "pass": passed})  # fmt: skip
                walls = f"{a.wall_s:.3f} s / {b.wall_s:.3f} s"
                cpu = f"CPU {a.cpu_s:.2f} s / {b.cpu_s:.2f} s"
                print(f"  {mb.verdict(passed)}  {ours} wall <= {limit:g}x {theirs}: "
                      f"{walls} = {ratio:.2f}x ({cpu})")  # fmt: skip
        if "dcmdump (one process)" in by_name:
            first = next(iter(scripts.values()))
            print_fixed_costs(first, work, args.slices, by_name["dcmdump (one process)"], log)
        if not args.no_json:
            params = {"slices": args.slices, "size": args.size, "repeat": args.repeat}
            target = mb.save_results(
                "anonymize", params, floor, repo_state, results, checks,
                group=lambda r: groups[r.contender], cpu_s=lambda r: r.cpu_s,
            )  # fmt: skip
            print(f"\nresults: {target.relative_to(mb.REPO)}")
    finally:
        mb.remove_work(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
