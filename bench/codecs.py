#!/usr/bin/env python3
"""Benchmark DicomPressor's codecs (``-x``, ``-z``, ``-u``) against GDCM and dcmtk.

Usage::

    python3 bench/codecs.py                   # 400 slices, 3 rounds
    python3 bench/codecs.py --slices 200      # a smaller series
    python3 bench/codecs.py --repeat 3 --keep # more rounds; keep the work folder
    python3 bench/codecs.py --cases single --only 'dicompressor -z' 'gdcmconv -r 10'
    python3 bench/codecs.py --script /tmp/old.py --script dicompressor.py   # two versions

A synthetic CT series (512x512 int16, BitsStored 12; a body disc with lungs and spine,
a smooth texture and gaussian noise of sigma 10, so compression ratios are realistic) is
generated with ``bench/merge.py``'s header code, then merged into one multi-frame file
with ``dicompressor.py -j``. Neither step is timed. Each contender then runs on both
inputs, the folder of single-frame files and the multi-frame file:

* dicompressor ``-x`` (JPEG 2000 lossless), also with ``--jobs 1``; ``-z`` (JPEG 2000
  lossy, ratio 10); ``-x --codec jpegls`` and ``--codec htj2k``; ``-u`` on the ``-x``
  output and on the HTJ2K output;
* GDCM ``gdcmconv --j2k``, ``--jpegls``, ``--j2k --lossy -r 10`` (``gdcmconv -r 10``)
  and ``--raw`` (on dicompressor's ``-x`` output);
* dcmtk ``dcmcjpeg +e1`` (lossless JPEG, SV1) and ``dcmcjpls +el`` (JPEG-LS lossless).

gdcmconv and the dcmtk tools take one file at a time, so on the single-frame folder they
run in a ``sh`` loop, measured as one child. Children are measured by ``merge.py``'s
fork/exec launcher (wall time, CPU time and peak RSS from ``os.wait4``), in rounds: one
run of every contender per round, so that their runs alternate on a shared machine. The
table shows the median wall and CPU times, the largest peak RSS, the ratio sum(input
bytes) / sum(output bytes), and a pixel check of one sampled frame against the original;
then the targets (``WALL_TARGETS``, issue 21), PASS/FAIL. The results are also written
to ``bench/results/codecs-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge as mb  # noqa: E402  (bench/merge.py: series, launcher, helpers)

REPO = mb.REPO
MB = mb.MB

NOISE_SIGMA = 10.0
TEXTURE_SIGMA = 12.0  # standard deviation of the smooth texture, in stored values
RATIO_TOLERANCE = 0.02  # lossless ratio of -x within 2 % of gdcmconv --j2k's
LOSSY_RATIO = 10.0  # -z's default ratio, and gdcmconv's -r
LOSSY_TOLERANCE = 0.10  # the achieved lossy ratio within 10 % of the asked one
#: issue 21 asks -x --codec jpegls to keep its ratio (3.99 on its series, 3.9 at least)
#: against dcmcjpeg +e1's 3.21 there: on this bench's noisier series the ratios are
#: lower, so the check is the lead over dcmcjpeg's (1.24x there, 1.17x here), which a
#: faster but weaker encoding would lose. The lossless bytes are the same as before
#: anyway (bench/identical.py).
JPEGLS_RATIO_LEAD = 1.1

#: (case, ours, theirs, limit): ours wall <= limit x theirs (issue 21, and the jobs it
#: asks to keep ahead: -x on the multi-frame file and over the files, -u on the file).
WALL_TARGETS = (
    ("multi", "dicompressor -x", "gdcmconv --j2k", 0.58),
    ("single", "dicompressor -x", "gdcmconv --j2k", 0.34),
    ("single", "dicompressor -z", "gdcmconv -r 10", 0.35),
    ("multi", "dicompressor -x jpegls", "dcmcjpeg +e1", 0.6),
    ("single", "dicompressor -u", "gdcmconv --raw", 0.35),
    ("multi", "dicompressor -u", "gdcmconv --raw", 0.65),
)

# ---- synthetic series: merge.py's headers, CT-like pixels with gaussian noise ----


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random field (gaussian low-pass of white noise), std TEXTURE_SIGMA."""
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    cutoff = 0.03  # cycles per pixel: blobs of roughly 10 pixels
    smooth = np.fft.ifft2(np.fft.fft2(white) * np.exp(-(fx**2 + fy**2) / (2 * cutoff**2))).real
    return (smooth * (TEXTURE_SIGMA / smooth.std())).astype(np.float32)


def _ct_slice_pixels(
    k: int,
    n: int,
    grids: tuple[np.ndarray, np.ndarray, np.ndarray],
    noise: np.ndarray,
    cache: dict[int, np.ndarray],
) -> np.ndarray:
    """Stand-in for ``merge._slice_pixels``: anatomy + texture inside the body + noise.

    ``noise`` (merge.py's uniform field) is ignored: each slice draws its own gaussian
    noise, seeded by k, so the series is the same on every run.
    """
    del noise
    step = round(31 * k / max(n - 1, 1))
    if step not in cache:
        anatomy = mb._anatomy(step / 31, grids)
        texture = _texture(np.random.default_rng(1000 + step), anatomy.shape[0])
        texture[anatomy <= 200] = 0  # air and lung stay flat (but noisy)
        cache[step] = anatomy.astype(np.float32) + texture
    rng = np.random.default_rng(k)
    img = cache[step] + rng.normal(0.0, NOISE_SIGMA, cache[step].shape).astype(np.float32)
    out = np.clip(np.rint(img), 0, 2047).astype(np.int16)  # BitsStored 12, signed
    out[~grids[2]] = -2000  # outside the reconstruction circle (PixelPaddingValue)
    return out


@contextlib.contextmanager
def ct_pixels() -> Iterator[None]:
    """Make ``merge.generate_series`` write the CT-like pixels of this benchmark."""
    original = mb._slice_pixels
    mb._slice_pixels = _ct_slice_pixels
    try:
        yield
    finally:
        mb._slice_pixels = original


def make_multiframe(script: Path, series: Path, target_dir: Path, log: Path) -> Path:
    """Merge the series with ``dicompressor.py -j`` and move the result to target_dir."""
    before = {p.name for p in series.iterdir()}
    with log.open("ab") as sink:
        subprocess.run(
            [*mb.command(script), "-j", "-F", str(series), "--quiet"],
            stdout=sink,
            stderr=sink,
            check=True,
        )
    made = [p for p in series.iterdir() if p.name not in before]
    if len(made) != 1 or not made[0].name.endswith("_multiframe.dcm"):
        raise RuntimeError(f"dicompressor -j made {[p.name for p in made]}, not one multiframe")
    target_dir.mkdir(parents=True)
    return Path(shutil.move(str(made[0]), target_dir / made[0].name))


# ---- contenders ----


@dataclass
class Contender:
    """One way of transcoding an input; argv is built per run (fresh output folder)."""

    name: str
    source: str  # "original", "jll" (dicompressor's -x output) or "htj" (-x --codec htj2k)
    kind: str  # "dicompressor" or "tool" (a script's label until contenders() returns)
    args: list[str] = field(default_factory=list)  # dicompressor options, or the tool argv
    lossless: bool = True
    keep_as: str | None = None  # keep the first run's output as this input ("jll")


@dataclass
class CodecResult(mb.Result):
    """All runs of one contender on one input, plus sizes and the pixel check."""

    case: str = ""
    kind: str = ""  # "dicompressor" or "tool"
    command: str = ""
    in_bytes: int = 0
    out_bytes: int = 0
    out_files: int = 0
    transfer_syntax: str = ""
    max_error: float | None = None  # sampled frame, |output - original|
    rmse: float | None = None

    @property
    def ratio(self) -> float:
        """Sum of input bytes over sum of output bytes."""
        return self.in_bytes / self.out_bytes if self.out_bytes else 0.0


def tool_argv(tool: list[str], inputs: list[Path], out_dir: Path) -> list[str]:
    """argv running ``tool in out`` once, or once per file in a sh loop."""
    if len(inputs) == 1:
        return [*tool, str(inputs[0]), str(out_dir / inputs[0].name)]
    loop = f'for f in "$1"/*.dcm; do {" ".join(tool)} "$f" "$2/${{f##*/}}" || exit 1; done'
    return ["sh", "-c", loop, "sh", str(inputs[0].parent), str(out_dir)]


def contenders(scripts: dict[str, Path], tools: dict[str, str | None]) -> list[Contender]:
    """The contenders, in run order (-u and --raw need -x's output, so they run last).

    With several scripts, each gets its own dicompressor contenders (named
    ``dicompressor:<stem> ...``); the inputs of -u come from the first script's -x.
    """
    found = []
    for n, label in enumerate(scripts):
        keep = n == 0
        found += [
            Contender(f"{label} -x", "original", label, ["-x"], keep_as="jll" if keep else None),
            Contender(f"{label} -x --jobs 1", "original", label, ["-x", "--jobs", "1"]),
            Contender(f"{label} -z", "original", label, ["-z"], lossless=False),
            Contender(f"{label} -x jpegls", "original", label, ["-x", "--codec", "jpegls"]),
            Contender(
                f"{label} -x htj2k",
                "original",
                label,
                ["-x", "--codec", "htj2k"],
                keep_as="htj" if keep else None,
            ),
        ]
    gdcmconv = tools["gdcmconv"]
    if gdcmconv:
        found += [
            Contender("gdcmconv --j2k", "original", "tool", [gdcmconv, "--j2k"]),
            Contender("gdcmconv --jpegls", "original", "tool", [gdcmconv, "--jpegls"]),
            Contender(
                "gdcmconv -r 10",
                "original",
                "tool",
                [gdcmconv, "--j2k", "--lossy", "-r", f"{LOSSY_RATIO:g}"],
                lossless=False,
            ),
        ]
    if tools["dcmcjpeg"]:
        found.append(Contender("dcmcjpeg +e1", "original", "tool", [tools["dcmcjpeg"], "+e1"]))
    if tools["dcmcjpls"]:
        found.append(Contender("dcmcjpls +el", "original", "tool", [tools["dcmcjpls"], "+el"]))
    for label in scripts:
        found.append(Contender(f"{label} -u", "jll", label, ["-u"]))
        found.append(Contender(f"{label} -u (htj2k)", "htj", label, ["-u"]))
    if gdcmconv:
        found.append(Contender("gdcmconv --raw", "jll", "tool", [gdcmconv, "--raw"]))
    for c in found:
        if c.kind in scripts:
            c.args = [*mb.command(scripts[c.kind]), *c.args]
            c.kind = "dicompressor"
    return found


def select(found: list[Contender], only: list[str] | None) -> list[Contender]:
    """The contenders named in only (all without it), plus those making their inputs."""
    if not only:
        return found
    chosen = [c for c in found if c.name in only]
    needs = {c.source for c in chosen}
    return [c for c in found if c in chosen or (c.keep_as is not None and c.keep_as in needs)]


def build_argv(c: Contender, inputs: list[Path], out_dir: Path) -> list[str]:
    """The command for one run of c on inputs, writing into out_dir."""
    if c.kind == "dicompressor":
        target = inputs[0] if len(inputs) == 1 else inputs[0].parent
        return [*c.args, "-F", str(target), "--output-dir", str(out_dir), "--quiet"]
    return tool_argv(c.args, inputs, out_dir)


def shown(argv: list[str], inputs: list[Path], out_dir: Path) -> str:
    """A short form of the command, for the report and the JSON."""
    text = " ".join(Path(a).name if a == sys.executable or a.endswith(".py") else a for a in argv)
    return text.replace(str(out_dir), "<out>").replace(str(inputs[0].parent), "<in>")


# ---- pixel check ----


def decode_frame(path: Path, index: int, log: Path) -> np.ndarray:
    """One frame of path as an array; via gdcmconv --raw when pydicom has no decoder."""
    try:
        return pydicom.pixels.pixel_array(str(path), index=index)
    except Exception:
        gdcm = shutil.which("gdcmconv")
        if gdcm is None:
            raise
        raw = log.with_name("check_raw.dcm")
        with log.open("ab") as sink:
            subprocess.run([gdcm, "--raw", str(path), str(raw)], stdout=sink, stderr=sink)
        try:
            return pydicom.pixels.pixel_array(str(raw), index=index)
        finally:
            raw.unlink(missing_ok=True)


def check_pixels(
    result: CodecResult, outputs: list[Path], reference: tuple[Path, int], log: Path
) -> None:
    """Compare one sampled frame of the outputs with the original; fill max_error, rmse."""
    ref_path, index = reference
    matches = [p for p in outputs if p.stem.startswith(ref_path.stem)]
    if len(outputs) == 1:
        matches = outputs
    if len(matches) != 1:
        result.note = f"pixel check: no single output for {ref_path.name}"
        return
    try:
        want = pydicom.pixels.pixel_array(str(ref_path), index=index).astype(np.float64)
        got = decode_frame(matches[0], index, log).astype(np.float64)
        diff = got - want
        result.max_error = float(np.abs(diff).max())
        result.rmse = round(float(np.sqrt(np.mean(diff * diff))), 3)
    except Exception as exc:  # an undecodable output is a finding, not a crash
        result.note = f"pixel check failed: {type(exc).__name__}: {exc}"[:200]


# ---- running ----


def dicom_files(folder: Path) -> list[Path]:
    """The .dcm files of a folder, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


def run_once(
    c: Contender,
    result: CodecResult,
    inputs: list[Path],
    reference: tuple[Path, int],
    work: Path,
    log: Path,
) -> Path | None:
    """Run c once on inputs into a fresh folder, add the run to result; return the kept
    first output (the input of -u), if c keeps one."""
    case, i = result.case, len(result.samples)
    result.in_bytes = sum(p.stat().st_size for p in inputs)
    kept = None
    out_dir = work / "out" / f"{case}-{c.name.replace(' ', '_').replace(':', '_')}-{i}"
    out_dir.mkdir(parents=True)
    argv = build_argv(c, inputs, out_dir)
    result.command = shown(argv, inputs, out_dir)
    with log.open("a") as sink:
        sink.write(f"\n==== {case} {c.name} run {i + 1}: {result.command}\n")
    mb.flush_disk()  # so no run pays for writing back the previous run's output
    sample = mb.measure(argv, log)
    result.samples.append(sample)
    outputs = dicom_files(out_dir)
    out_bytes = sum(p.stat().st_size for p in outputs)
    good = sample.returncode == 0 and len(outputs) == len(inputs)
    if not good and not result.note:
        result.note = f"run {i + 1}: exit {sample.returncode}, {len(outputs)} outputs"
    if i == 0:
        result.out_bytes, result.out_files = out_bytes, len(outputs)
        if outputs:
            header = pydicom.dcmread(outputs[0], stop_before_pixels=True)
            result.transfer_syntax = str(header.file_meta.TransferSyntaxUID.name)
            check_pixels(result, outputs, reference, log)
    elif out_bytes != result.out_bytes:
        result.note = result.note or f"run {i + 1}: output size differs from run 1"
    result.verified = good if result.verified in (None, True) else False
    if i == 0 and c.keep_as and good:
        kept = work / f"{case}-{c.keep_as}"
        out_dir.rename(kept)
    else:
        shutil.rmtree(out_dir)
    if c.lossless and result.max_error not in (None, 0.0):
        result.note = result.note or "NOT lossless on the sampled frame"
        result.verified = False
    return kept


def decode_floor(files: list[Path], sample: int = 24) -> tuple[float, int, float]:
    """Time openjpeg decoding sampled JPEG 2000 frames on one core, in this process.

    Return (ms per frame, frames in all, seconds for all of them spread evenly over
    every core): no -u can beat that floor with this decoder, whatever it does around it.
    """
    import os

    import openjpeg
    from pydicom.encaps import generate_frames

    frames: list[bytes] = []
    total = 0
    for path in files:
        ds = pydicom.dcmread(path)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        total += count
        if len(frames) < sample:
            frames.extend(generate_frames(ds.PixelData, number_of_frames=count))
    frames = frames[:sample]
    start = time.perf_counter()
    for frame in frames:
        openjpeg.decode(frame)
    per_frame = (time.perf_counter() - start) / max(1, len(frames))
    return per_frame * 1000, total, per_frame * total / (os.cpu_count() or 1)


# ---- report ----


def pixel_text(r: CodecResult) -> str:
    """The pixel check column."""
    if r.max_error is None:
        return "?"
    if r.max_error == 0:
        return "exact"
    return f"max {r.max_error:g} rmse {r.rmse:g}"


def report(results: list[CodecResult]) -> tuple[list[str], list[dict[str, object]]]:
    """Format the table and the targets; return the lines and the targets as dicts."""
    width = max(len(r.contender) for r in results)
    head = (
        f"{'input':<7} {'contender':<{width}} {'wall s':>8} {'CPU s':>7} {'peak RSS MB':>11} "
        f"{'ratio':>6} {'out MB':>8}  {'runs':>4} {'check':<5} {'pixels':<22} transfer syntax"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.case:<7} {r.contender:<{width}} {r.wall_s:>8.3f} {r.cpu_s:>7.2f} "
            f"{r.peak_rss_mb:>11.1f} "
            f"{r.ratio:>6.3f} {r.out_bytes / MB:>8.1f}  {len(r.samples):>4} "
            f"{'ok' if r.ok else 'BAD':<5} {pixel_text(r):<22} {r.transfer_syntax}"
        )
        if r.note:
            lines.append(f"        note: {r.note}")
    by = {(r.case, r.contender): r for r in results}
    checks: list[dict[str, object]] = []
    lines += ["", "targets:"]

    def add(name: str, ok: bool | None, value: float | None, text: str) -> None:
        label = "SKIP" if ok is None else mb.verdict(ok)
        lines.append(f"  {label}  {text}")
        checks.append({"target": name, "value": value, "pass": ok})

    labels = sorted(
        {r.contender.split(" ")[0] for r in results if r.contender.startswith("dicom")}
    )
    for case, mine, theirs, limit in WALL_TARGETS:
        for label in labels:
            ours = mine.replace("dicompressor", label, 1)
            name = f"{case}: {ours} wall <= {limit:g}x {theirs}"
            a, b = by.get((case, ours)), by.get((case, theirs))
            if a is None or b is None:
                add(name, None, None, f"{name} (not run)")
                continue
            rel = a.wall_s / b.wall_s if b.wall_s > 0 else float("inf")
            bad = "" if a.ok and b.ok else "  (a run FAILED: not a valid measure)"
            add(
                name,
                a.ok and b.ok and rel <= limit,
                round(rel, 3),
                f"{name}: {a.wall_s:.3f} s / {b.wall_s:.3f} s = {rel:.2f}x "
                f"(CPU {a.cpu_s:.2f} s / {b.cpu_s:.2f} s){bad}",
            )
    for case in ("single", "multi"):
        for label in labels:
            a = by.get((case, f"{label} -z"))
            name = f"{case}: {label} -z ratio within {LOSSY_TOLERANCE:.0%} of {LOSSY_RATIO:g}"
            if a is not None:
                ok = a.ok and abs(a.ratio / LOSSY_RATIO - 1) <= LOSSY_TOLERANCE
                add(name, ok, round(a.ratio, 3), f"{name}: {a.ratio:.3f}")
            a = by.get((case, f"{label} -x jpegls"))
            b = by.get((case, "dcmcjpeg +e1"))
            name = f"{case}: {label} -x jpegls ratio >= dcmcjpeg +e1's x {JPEGLS_RATIO_LEAD:g}"
            if a is not None and b is not None and b.ratio:
                ok = a.ok and a.ratio >= b.ratio * JPEGLS_RATIO_LEAD
                add(name, ok, round(a.ratio, 3), f"{name}: {a.ratio:.3f} vs {b.ratio:.3f}")
    for case in ("single", "multi"):
        name = f"{case}: dicompressor -x ratio within {RATIO_TOLERANCE:.0%} of gdcmconv --j2k"
        a, b = by.get((case, "dicompressor -x")), by.get((case, "gdcmconv --j2k"))
        if a is None or b is None:
            continue
        rel = a.ratio / b.ratio - 1 if b.ratio else float("inf")
        add(
            name,
            a.ok and b.ok and abs(rel) <= RATIO_TOLERANCE,
            round(rel, 4),
            f"{name}: {a.ratio:.3f} vs {b.ratio:.3f} ({rel:+.1%})",
        )
    return lines, checks


# ---- main ----


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=400, help="slices in the series")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=["single", "multi"],
        default=["single", "multi"],
        help="inputs: the single-frame folder, the multi-frame file (default both)",
    )
    mb.add_script_option(parser)
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run only these contenders (by name, e.g. 'dicompressor -z' 'gdcmconv -r 10'), "
        "with the ones making their inputs",
    )
    mb.add_work_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate, measure, print, save."""
    args = parse_args(argv)
    repo_state = mb.git_state()
    sources = mb.script_labels([p.resolve() for p in (args.script or [mb.DEFAULT_SCRIPT])])
    tools = {name: shutil.which(name) for name in ("gdcmconv", "dcmcjpeg", "dcmcjpls")}
    for name, path in tools.items():
        if path is None:
            print(f"{name} not found: running without it")
    work = mb.make_work("dicompressor-codecs-", args.tmpdir)
    log = work / "children.log"
    print(f"work folder: {work}  (child output in {log.name}); {mb.load_average()}")
    scripts = mb.snapshot_scripts(sources, work)
    if args.installed:
        scripts |= mb.install_commands(scripts, work)
    for label, source in sources.items():
        print(f"{label}: {source} (sha256 {mb.sha256_of(source)[:12]}, copied before the runs)")
    floor = mb.measure(["true"], log)
    print(
        f"measurement floor: `true` shows peak RSS {floor.peak_rss_mb:.1f} MB, "
        f"wall {floor.wall_s * 1000:.1f} ms"
    )
    results: list[CodecResult] = []
    try:
        start = time.perf_counter()
        with ct_pixels():
            paths = mb.generate_series(work / "single", args.slices, args.size)
        multi = make_multiframe(next(iter(scripts.values())), work / "single", work / "multi", log)
        print(
            f"generated {args.slices} slices of {args.size}x{args.size} "
            f"({sum(p.stat().st_size for p in paths) / MB:.0f} MB) and merged them "
            f"({multi.stat().st_size / MB:.0f} MB) in {time.perf_counter() - start:.1f} s "
            "(not measured)"
        )
        middle = args.slices // 2
        inputs = {
            "single": ({"original": paths}, (paths[middle], 0)),
            "multi": ({"original": [multi]}, (multi, middle)),
        }
        for case in args.cases:
            data, reference = inputs[case]
            chosen = select(contenders(scripts, tools), args.only)
            case_results = [
                CodecResult(c.name, args.slices, case=case, kind=c.kind) for c in chosen
            ]
            for _ in range(args.repeat):  # rounds: every contender's runs alternate
                for c, result in zip(chosen, case_results, strict=True):
                    if c.source not in data:
                        result.note = f"skipped: no {c.source} input"
                        continue
                    kept = run_once(c, result, data[c.source], reference, work, log)
                    if kept is not None and c.keep_as:
                        data[c.keep_as] = dicom_files(kept)
            for result in case_results:
                if not result.samples:
                    print(f"  {case:<6} {result.contender:<26} {result.note}")
                    continue
                results.append(result)
                walls = ", ".join(f"{s.wall_s:.2f}" for s in result.samples)
                print(
                    f"  {case:<6} {result.contender:<26} wall [{walls}] s, CPU "
                    f"{result.cpu_s:.2f} s, peak RSS {result.peak_rss_mb:.1f} MB, ratio "
                    f"{result.ratio:.3f}{'' if result.ok else '  (FAILED: ' + result.note + ')'}",
                    flush=True,
                )
        lines, checks = report(results)
        print(f"\n{mb.load_average()} (after the runs)")
        print("\n".join(lines))
        for case in args.cases:
            jll = inputs[case][0].get("jll")
            if jll:
                ms, frames, floor_s = decode_floor(jll)
                print(
                    f"decode floor ({case}): openjpeg takes {ms:.1f} ms per frame on one core; "
                    f"{frames} frames over every core take at least {floor_s:.2f} s"
                )
        print("\ncommands (<in>: the input folder; <out>: a fresh folder per run):")
        for r in results:
            print(f"  {r.case:<6} {r.contender:<26} {r.command}")
        if not args.no_json:
            params = {
                "slices": args.slices,
                "size": args.size,
                "repeat": args.repeat,
                "noise_sigma": NOISE_SIGMA,
                "scripts": {
                    label: {"path": str(path), "sha256": mb.sha256_of(scripts[label])}
                    for label, path in sources.items()
                },
            }
            environment = {"tools": tools, **repo_state}
            target = mb.save_results(
                "codecs",
                params,
                floor,
                environment,
                results,
                checks,
                ratio=lambda r: round(r.ratio, 4),
                cpu_s=lambda r: r.cpu_s,
            )
            print(f"\nresults: {target.relative_to(REPO)}")
    finally:
        mb.remove_work(work, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
