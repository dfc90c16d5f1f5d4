#!/usr/bin/env python3
"""Benchmark DicomPressor's de-identification (``-a``) against the installed peers.

Usage::

    python3 bench/deid.py                                   # generated + planted copies
    python3 bench/deid.py --generated-only                  # the 5 generated files only
    python3 bench/deid.py --peers-python /tmp/peers/bin/python

The inputs (not timed) are the files of ``tests/planted.py``: three CT slices with
identifiers at the top level, in nested sequences, in private blocks, in an overlay and
a graphic annotation; an enhanced multi-frame file (made by DicomPressor's merge) with
identifiers in its per-frame functional groups; a Comprehensive SR with identifiers in
its content, request and verifier. Unless ``--generated-only``, every file of pydicom's
and pydicom-data's test sets that pydicom can write back is added, with identifiers
planted at the top level, in nested sequences and in a private block. All inputs sit in
one folder under unique names.

Each contender de-identifies the folder once, as a child process, with its defaults:

* ``dicompressor -a``: the PS3.15 Basic Profile (an empty params file), ``--output-dir``;
* ``dicognito``: ``python -m dicognito --in-place`` on a copy of the folder;
* ``dicom-anonymizer``: ``dicom-anonymizer IN OUT``;
* ``deid``: ``deid.dicom.replace_identifiers`` with its default recipe and
  ``remove_private=True``, ``save=True``;
* ``gdcmanon``: ``gdcmanon -e`` (the E.1.1 mode, with a throw-away certificate).

The peers run under ``--peers-python`` (a venv holding them; default this Python) and
are left out when missing. For each contender the table shows: planted identifiers left
(pairs of a file and a value found in its output bytes, of those in the input), original
UIDs left (the same for the input's non-standard UIDs), files without an output,
dciodvfy errors summed over the inputs and over the outputs, the files whose output has
more errors than its input, and the wall time. Results go to ``bench/results/deid-*.json``
(unless ``--no-json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCH_DIR))

import anonymize as anon_bench  # noqa: E402  (its throw-away certificate for gdcmanon)
import merge as mb  # noqa: E402  (bench/merge.py: the work folder options)
import planted  # noqa: E402

import dicompressor as dp  # noqa: E402

DEID_RUNNER = """
import sys
from pathlib import Path
from deid.dicom import replace_identifiers
files = sorted(str(p) for p in Path(sys.argv[1]).iterdir())
replace_identifiers(dicom_files=files, save=True, output_folder=sys.argv[2],
                    remove_private=True, overwrite=True)
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generated-only", action="store_true")
    parser.add_argument("--peers-python", type=Path, default=Path(sys.executable))
    mb.add_work_options(parser)
    return parser.parse_args(argv)


def merge_with_dicompressor(folder: Path) -> Path:
    """Merge a folder of slices with DicomPressor (for the per-frame groups)."""
    result = dp.merge(sorted(folder.glob("*.dcm")), None, dp.Options())
    return result.outputs[0]


def test_files() -> list[Path]:
    """Return pydicom's and pydicom-data's test files (installed ones only)."""
    from pydicom.data import get_testdata_file

    found = sorted(Path(get_testdata_file("CT_small.dcm", download=False)).parent.glob("*.dcm"))
    try:
        import data_store  # pydicom-data

        found += sorted((Path(data_store.__file__).parent / "data").glob("*.dcm"))
    except ImportError:
        print("pydicom-data is not installed: only pydicom's own files are used")
    return found


def write_inputs(folder: Path, generated_only: bool) -> dict[str, list[str]]:
    """Write every input into folder; return file name -> the values planted in it."""
    made, values, _ = planted.write_planted_set(folder / "gen", merge_with=merge_with_dicompressor)
    inputs = folder / "in"
    inputs.mkdir()
    plants: dict[str, list[str]] = {}
    for index, path in enumerate(made):
        name = f"gen{index}_{path.name}"
        shutil.copyfile(path, inputs / name)
        plants[name] = values
    if generated_only:
        return plants
    for index, source in enumerate(test_files()):
        name = f"t{index:03d}_{source.name}"
        values = planted.plant_file(source, inputs / name, ("SOPInstanceUID", "SOPClassUID"))
        if values is not None:
            plants[name] = values
    return plants


def original_uids(path: Path) -> list[str]:
    """Return the non-standard UIDs of a file (those a de-identifier must replace)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    found = set()
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            values = elem.value if isinstance(elem.value, list) else [elem.value]
            found |= {str(v) for v in values if v and not dp.is_standard_uid(str(v))}
    return sorted(u for u in found if len(u) > 8)


def dciodvfy_errors(path: Path) -> int:
    """Return the number of dciodvfy "Error" lines for a file."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return sum(line.startswith("Error") for line in (proc.stdout + proc.stderr).splitlines())


def contenders(work: Path, inputs: Path, peers: Path) -> list[tuple[str, list[str], Path]]:
    """Return (name, argv, output folder) of each contender that can run here."""
    params = work / "empty-params.txt"
    params.write_text("")
    out = work / "out"
    found = [
        (
            "dicompressor -a",
            [sys.executable, str(REPO / "dicompressor.py"), "-a", str(params), "-F", str(inputs),
             "--output-dir", str(out / "dicompressor"), "--quiet", "--jobs", "1"],
            out / "dicompressor",
        ),
    ]  # fmt: skip

    def has(module: str) -> bool:
        probe = [str(peers), "-c", f"import {module}"]
        return subprocess.run(probe, capture_output=True).returncode == 0

    if has("dicognito"):
        shutil.copytree(inputs, out / "dicognito")
        argv = [str(peers), "-m", "dicognito", "--in-place", "--quiet", str(out / "dicognito")]
        found.append(("dicognito", argv, out / "dicognito"))
    anonymizer = peers.parent / "dicom-anonymizer"
    if has("dicomanonymizer") and anonymizer.exists():
        (out / "dicom-anonymizer").mkdir(parents=True)
        argv = [str(anonymizer), str(inputs), str(out / "dicom-anonymizer")]
        found.append(("dicom-anonymizer", argv, out / "dicom-anonymizer"))
    if has("deid"):
        (out / "deid").mkdir(parents=True)
        argv = [str(peers), "-c", DEID_RUNNER, str(inputs), str(out / "deid")]
        found.append(("deid", argv, out / "deid"))
    pair = anon_bench.certificate(work) if shutil.which("gdcmanon") else None
    if pair is not None:  # one call per file: gdcmanon stops at a SOP class it lacks
        key, cert = pair
        (out / "gdcmanon").mkdir(parents=True)
        loop = (
            f'for f in "{inputs}"/*; do gdcmanon -e -c "{cert}" -k "{key}" -i "$f" '
            f'-o "{out / "gdcmanon"}/$(basename "$f")" 2>/dev/null; done'
        )
        found.append(("gdcmanon", ["sh", "-c", loop], out / "gdcmanon"))
    return found


def read(path: Path) -> bytes:
    """Return a file's bytes."""
    return path.read_bytes()


def output_of(folder: Path, name: str) -> Path | None:
    """Return a contender's output for the input called name (same name, or _anon)."""
    for candidate in (folder / name, folder / f"{Path(name).stem}_anon.dcm"):
        if candidate.is_file():
            return candidate
    return None


def main(argv: list[str] | None = None) -> int:
    """Generate, run, check, print, save."""
    args = parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom's notes on the test files' odd values
    work = mb.make_work("dicompressor-deid-", args.tmpdir)
    try:
        plants = write_inputs(work, args.generated_only)
        inputs = work / "in"
        names = sorted(plants)
        present = {
            n: [v for v in plants[n] if v.encode() in (inputs / n).read_bytes()] for n in names
        }
        uids = {n: original_uids(inputs / n) for n in names}
        with ThreadPoolExecutor(2) as pool:
            counts = pool.map(dciodvfy_errors, [inputs / n for n in names])
            before = dict(zip(names, counts, strict=True))
        planted_pairs = sum(len(v) for v in present.values())
        uid_pairs = sum(len(v) for v in uids.values())
        print(
            f"{len(names)} inputs: {planted_pairs} planted (file, identifier) pairs, "
            f"{uid_pairs} (file, original UID) pairs, {sum(before.values())} dciodvfy errors"
        )
        rows = []
        for name, argv_, folder in contenders(work, inputs, args.peers_python):
            start = time.perf_counter()
            proc = subprocess.run(argv_, capture_output=True, text=True)
            wall_s = time.perf_counter() - start
            outputs = {n: output_of(folder, n) for n in names}
            done = [n for n in names if outputs[n] is not None]
            ids_left = sum(v.encode() in outputs[n].read_bytes() for n in done for v in present[n])
            uids_left = sum(u.encode() in outputs[n].read_bytes() for n in done for u in uids[n])
            with ThreadPoolExecutor(2) as pool:
                counts = pool.map(dciodvfy_errors, [outputs[n] for n in done])
                after = dict(zip(done, counts, strict=True))
            worse = sorted(n for n in done if after[n] > before[n])
            rows.append({
                "contender": name, "exit": proc.returncode, "outputs": len(done),
                "missing": len(names) - len(done), "identifiers_left": ids_left,
                "uids_left": uids_left, "errors_before": sum(before[n] for n in done),
                "errors_after": sum(after.values()), "files_worse": len(worse),
                "worse": worse, "wall_s": round(wall_s, 2),
            })  # fmt: skip
        print_table(rows, len(names), planted_pairs, uid_pairs)
        if not args.no_json:
            save(rows, names, planted_pairs, uid_pairs)
    finally:
        mb.remove_work(work, args.keep)
    return 0


def print_table(rows: list[dict[str, object]], files: int, planted_: int, uids: int) -> None:
    """Print the results as a Markdown table."""
    print(
        f"\n| contender | outputs (of {files}) | identifiers left (of {planted_}) | "
        f"original UIDs left (of {uids}) | dciodvfy errors before -> after | files with "
        "more errors | time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['contender']} | {r['outputs']} | {r['identifiers_left']} | {r['uids_left']} "
            f"| {r['errors_before']} -> {r['errors_after']} | {r['files_worse']} | "
            f"{r['wall_s']} |"
        )
    for r in rows:
        if r["worse"]:
            shown = ", ".join(str(w) for w in r["worse"][:6])
            print(f"{r['contender']}: more dciodvfy errors in {shown}")


def save(rows: list[dict[str, object]], names: list[str], planted_: int, uids: int) -> None:
    """Write the results to bench/results/deid-<timestamp>.json."""
    results = BENCH_DIR / "results"
    results.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = results / f"deid-{stamp}.json"
    payload = {"inputs": names, "planted_pairs": planted_, "uid_pairs": uids, "rows": rows}
    target.write_text(json.dumps(payload, indent=2))
    print(f"\nsaved {target.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
