#!/usr/bin/env python3
"""Check that two versions of dicompressor.py give the same outputs for every action.

Usage::

    python3 bench/identical.py                     # HEAD's script against the working tree
    python3 bench/identical.py --base 9fd3ee8      # a given commit against the working tree
    python3 bench/identical.py --old /tmp/a.py --new dicompressor.py --keep

A refactoring must not change what the tool writes. This runs every action of the
command line (merge, split, the three lossless codecs, lossy, decompress, anonymize in its
profiles, PNG 8/16-bit and JPEG, MP4, DICOMDIR as a copy, in place and in the parent
folder, text and JSON headers, info, summary, and in-place replacement) with the old and
the new script on identical copies of a generated series, then compares what each run
wrote, file by file:

* DICOM files are compared element by element, File Meta included, with the UIDs that a
  run makes (under DicomPressor's root, or replaced by anonymize's keyed hash) mapped to
  their order of first appearance, and the instance creation and contribution date/time
  left out; Pixel Data is compared byte for byte.
* Every other file (PNG, JPEG, MP4, text and JSON dumps) is compared byte for byte.
* Standard output (``--info``, ``--summary``, ``--json``) is compared with the work
  folder's path replaced.

It prints one line per case (SAME, or DIFFERENT with the first differences) and exits 1
when any case differs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import merge as mb  # noqa: E402  (the bench series generator)

OUR_ROOT = "1.2.826.0.1.3680043.10.1443."
#: Elements that hold the moment of a run, not what it made of the inputs, and those
#: that count the bytes of the made UIDs (a made UID's length varies from run to run):
#: the File Meta group length and a DICOMDIR's record offsets. The records themselves
#: are compared in their order.
MOMENT_TAGS = frozenset(
    {0x00020000, 0x00080012, 0x00080013, 0x0018A002}
    | {0x00041200, 0x00041202, 0x00041400, 0x00041420}
)

PARAMS = "(0010,0010)=ANON^PATIENT\n(0010,0020)=ANON001\nPatientBirthDate=19000101\n"

#: name -> (input set, arguments after the script; {in} is the input path, {params} the
#: params file). Input sets: "series" (single-frame slices), "merged" (one multi-frame
#: file), "j2k" (the slices in JPEG 2000 lossless), "cd" (the slices under conformant
#: File IDs, IM000123: a DICOMDIR references them in place).
CASES: dict[str, tuple[str, list[str]]] = {
    "merge": ("series", ["-j", "-F", "{in}"]),
    "merge-output-dir": ("series", ["-j", "-F", "{in}", "--output-dir", "{out}"]),
    "split": ("merged", ["-s", "-f", "{in}"]),
    "lossless-j2k": ("series", ["-x", "-F", "{in}"]),
    "lossless-jpegls": ("merged", ["-x", "--codec", "jpegls", "-f", "{in}"]),
    "lossless-rle": ("series", ["-x", "--codec", "rle", "-F", "{in}", "--output-dir", "{out}"]),
    "lossy": ("series", ["-z", "--ratio", "10", "-F", "{in}"]),
    "lossy-psnr": ("merged", ["-z", "--psnr", "45", "-f", "{in}"]),
    "decompress": ("j2k", ["-u", "-F", "{in}"]),
    "replace-lossless": ("series", ["-X", "--codec", "rle", "-F", "{in}"]),
    "anonymize": ("series", ["-a", "{params}", "-F", "{in}"]),
    "anonymize-options": (
        "series",
        ["-a", "{params}", "--keep-dates", "--keep-descriptions", "-F", "{in}"],
    ),
    "anonymize-none": ("series", ["-a", "{params}", "--profile", "none", "-F", "{in}"]),
    "png": ("series", ["-I", "png", "-F", "{in}"]),
    "png16-window": ("merged", ["-I", "png", "--png-bits", "16", "-f", "{in}"]),
    "jpg-window": ("series", ["-I", "jpg", "--window", "40,400", "-F", "{in}"]),
    "video": ("merged", ["-E", "-f", "{in}"]),
    "video-series": ("series", ["-E", "--fps", "5", "-F", "{in}"]),
    "dicomdir": ("series", ["-d", "-F", "{in}"]),
    "dicomdir-in-place": ("cd", ["-d", "-F", "{in}"]),
    "dicomdir-parent": ("cd", ["-D", "-f", "{in}"]),
    "headers": ("series", ["-t", "-F", "{in}"]),
    "headers-json": ("merged", ["-t", "--format", "json", "-f", "{in}"]),
    "info": ("merged", ["--info", "{in}"]),
    "info-json": ("series", ["--info", "--json", "-F", "{in}"]),
    "summary": ("series", ["--summary", "{in}", "--json"]),
    "json-jobs": ("series", ["-x", "--codec", "rle", "-F", "{in}", "--json"]),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision of the old script")
    parser.add_argument("--old", type=Path, help="the old script (instead of --base)")
    parser.add_argument("--new", type=Path, default=REPO / "dicompressor.py")
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--only", nargs="*", help="case names to run")
    mb.add_work_options(parser)
    return parser.parse_args(argv)


def run(script: Path, args: list[str], cwd: Path) -> tuple[int, str]:
    """Run a script quietly; return (exit code, standard output)."""
    proc = subprocess.run(
        [sys.executable, str(script), *args, "--quiet", "--jobs", "2"],
        capture_output=True,
        cwd=cwd,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def tree(folder: Path) -> dict[str, str]:
    """Return relative path -> sha256 of every file under folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class UidCanon:
    """Map the UIDs a run made to ``UID#n`` in order of first appearance."""

    def __init__(self, originals: set[str]) -> None:
        self.originals = originals
        self.seen: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        value = str(value)
        if value in self.originals or value.startswith("1.2.840.10008."):
            return value
        return self.seen.setdefault(value, f"UID#{len(self.seen)}")


def canonical(ds: Dataset, uids: UidCanon) -> list[Any]:
    """Return a comparable form of a dataset: (tag, VR, value) with made UIDs mapped."""
    out: list[Any] = []
    for elem in ds:
        if int(elem.tag) in MOMENT_TAGS:
            continue
        if elem.VR == "SQ":
            out.append((int(elem.tag), "SQ", [canonical(item, uids) for item in elem.value]))
            continue
        value = elem.value
        if elem.VR == "UI" and value:
            values = value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
            value = [uids(v) for v in values]
        elif isinstance(value, bytes):
            value = hashlib.sha256(value).hexdigest()
        elif isinstance(value, (list, pydicom.multival.MultiValue)):
            value = [str(v) for v in value]
        else:
            value = str(value)
        out.append((int(elem.tag), elem.VR, value))
    return out


def first_difference(a: list[Any], b: list[Any], where: str = "") -> str:
    """Describe the first place two canonical datasets differ."""
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        if x[0] != y[0]:
            return f"{where}({x[0]:08X}) vs ({y[0]:08X})"
        if x[1] == "SQ" and y[1] == "SQ":
            for n, (i, j) in enumerate(zip(x[2], y[2], strict=False)):
                if i != j:
                    return first_difference(i, j, f"{where}({x[0]:08X})[{n}]")
        return f"{where}({x[0]:08X}) {str(x[2])[:80]} vs {str(y[2])[:80]}"
    return f"{where}{len(a)} vs {len(b)} elements"


def is_dicom(path: Path) -> bool:
    """Tell whether a file has the DICM prefix or is a DICOMDIR."""
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def compare_outputs(
    old_root: Path, new_root: Path, old_files: list[str], new_files: list[str], originals: set[str]
) -> list[str]:
    """Compare two runs' new files; return the differences."""
    problems = []
    if old_files != new_files:
        return [f"file lists differ: {sorted(set(old_files) ^ set(new_files))[:6]}"]
    canon_old, canon_new = UidCanon(originals), UidCanon(originals)
    for name in old_files:
        a, b = old_root / name, new_root / name
        if is_dicom(a) and is_dicom(b):
            da, db = pydicom.dcmread(a), pydicom.dcmread(b)
            ca = canonical(da.file_meta, canon_old) + canonical(da, canon_old)
            cb = canonical(db.file_meta, canon_new) + canonical(db, canon_new)
            if ca != cb:
                problems.append(f"{name}: {first_difference(ca, cb)}")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{name}: bytes differ")
    return problems


def make_inputs(work: Path, old: Path, slices: int, size: int) -> dict[str, Path]:
    """Write the input sets once (with the old script, where a set needs the tool)."""
    series = work / "inputs" / "series"
    mb.generate_series(series, slices, size)
    merged_dir = work / "inputs" / "merged"
    merged_dir.mkdir()
    code, _ = run(old, ["-j", "-F", str(series), "--output-dir", str(merged_dir)], work)
    assert code == 0, f"cannot make the merged input: the merge exited {code}"
    for leftover in series.glob("*_multiframe*.dcm"):
        leftover.unlink()
    (merged,) = merged_dir.glob("*.dcm")
    j2k = work / "inputs" / "j2k"
    j2k.mkdir()
    code, _ = run(old, ["-x", "-F", str(series), "--output-dir", str(j2k)], work)
    assert code == 0, "cannot make the JPEG 2000 inputs"
    cd = work / "inputs" / "CD"
    cd.mkdir()
    for path in series.glob("*.dcm"):
        shutil.copy2(path, cd / path.stem.upper())
    return {"series": series, "merged": merged, "j2k": j2k, "cd": cd}


def run_case(
    name: str, scripts: dict[str, Path], inputs: dict[str, Path], work: Path, originals: set[str]
) -> list[str]:
    """Run one case with both scripts on fresh copies; return the differences."""
    kind, template = CASES[name]
    runs: dict[str, tuple[Path, list[str], int, str]] = {}
    for label, script in scripts.items():
        root = work / name / label
        source = inputs[kind]
        copy = root / "in" / source.name
        if source.is_dir():
            shutil.copytree(source, copy)
        else:
            copy.parent.mkdir(parents=True)
            shutil.copy2(source, copy)
        (root / "params.txt").write_text(PARAMS)
        before = tree(root)
        args = [
            a.format(in_=copy, out=root / "out", params=root / "params.txt")
            for a in (t.replace("{in}", "{in_}") for t in template)
        ]
        code, stdout = run(script, args, root)
        after = tree(root)
        new = sorted(n for n, digest in after.items() if before.get(n) != digest)
        runs[label] = (root, new, code, stdout.replace(str(root), "<work>"))
    (old_root, old_new, old_code, old_out), (new_root, new_new, new_code, new_out) = runs.values()
    problems = []
    if old_code != new_code:
        problems.append(f"exit code {old_code} vs {new_code}")
    if old_out != new_out:
        problems.append("standard output differs")
    return problems + compare_outputs(old_root, new_root, old_new, new_new, originals)


def main(argv: list[str] | None = None) -> int:
    """Run every case; return 1 when any differs."""
    args = parse_args(argv)
    work = mb.make_work("identical-", args.tmpdir)
    try:
        old = args.old
        if old is None:
            old = work / "old_dicompressor.py"
            source = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{args.base}:dicompressor.py"],
                capture_output=True,
                check=True,
            ).stdout
            old.write_bytes(source)
        new = work / "new_dicompressor.py"
        shutil.copy2(args.new, new)
        inputs = make_inputs(work, old, args.slices, args.size)
        originals = set()
        for path in [*inputs["series"].iterdir(), inputs["merged"]]:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            originals.update(str(e.value) for e in ds if e.VR == "UI")
        scripts = {"old": old, "new": new}
        differing = 0
        for name in args.only or list(CASES):
            problems = run_case(name, scripts, inputs, work, originals)
            if problems:
                differing += 1
                print(f"DIFFERENT {name}: " + "; ".join(problems[:4]), flush=True)
            else:
                print(f"SAME      {name}", flush=True)
        print(f"{len(args.only or CASES) - differing} same, {differing} different")
        return 1 if differing else 0
    finally:
        mb.remove_work(work, args.keep)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
