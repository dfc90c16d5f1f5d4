"""Tests of the compression actions: -x/-X, -z/-Z, -u/-U, --codec and --jobs.

Every test runs the CLI in a subprocess on files generated here (or pydicom's bundled
test files, ``download=False``), decodes every output with pydicom and compares it with
the input's ``pixel_array``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import bundled_files, pydicom_file, run_cli, run_without_imagecodecs, synth
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
EVRLE = "1.2.840.10008.1.2.1"
#: codec name -> (transfer syntax, output suffix)
CODEC_TARGETS = {
    "j2k": (J2K_LOSSLESS, "_jll"),
    "jpegls": (JLS_LOSSLESS, "_jls"),
    "rle": (RLE, "_rle"),
    "htj2k": (HTJ2K_LOSSLESS, "_htj2k"),
}


# ---- helpers ----


def run(*args: str | Path) -> tuple[int, str, str]:
    """Run the CLI; return (exit code, stdout, stderr). Never a traceback, in any case."""
    code, out, err = run_cli(*args)
    assert "Traceback" not in out + err, out + err
    return code, out, err


def sha(path: Path) -> str:
    """Return the SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Return {name: hash} of every file in a folder, hidden ones included."""
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if p.is_file()}


def part_files(folder: Path) -> list[str]:
    """Return the names of leftover temp files (``*.part``) anywhere under folder."""
    return [f for _, _, files in os.walk(folder) for f in files if f.endswith(".part")]


def read(path: Path) -> Dataset:
    """Read a file with pydicom."""
    return pydicom.dcmread(path)


def syntax_of(ds: Dataset) -> str | None:
    """Return the transfer syntax UID of a dataset read from a file (None if absent)."""
    value = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return str(value) if value else None


def assert_same_pixels(source: Path | np.ndarray, output: Path) -> None:
    """Assert output decodes to exactly the pixels of source (both with and without
    pydicom's colour conversion when source is a file)."""
    if isinstance(source, Path):
        expected = read(source).pixel_array
        expected_raw = pixel_array(str(source), raw=True)
        got_raw = pixel_array(str(output), raw=True)
        assert got_raw.dtype == expected_raw.dtype
        np.testing.assert_array_equal(got_raw, expected_raw)
    else:
        expected = source
    got = read(output).pixel_array
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def encoded_frames(ds: Dataset) -> list[bytes]:
    """Return the encoded frames of an encapsulated dataset."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=frames))


def file_line(text: str, path: Path, level: str) -> list[str]:
    """Return the ``[LEVEL] <name or path>: ...`` / ``-> ...`` lines of text about path."""
    heads = tuple(f"[{level}] {who}{sep}" for who in (path, path.name) for sep in (": ", " -> "))
    return [line for line in text.splitlines() if line.startswith(heads)]


def error_lines(text: str, path: Path) -> list[str]:
    """Return the ``[ERROR] <path>: message`` lines for path."""
    return [ln for ln in text.splitlines() if ln.startswith(f"[ERROR] {path}: ")]


def assert_log_format(out: str, err: str) -> None:
    """Every printed line is a ``[LEVEL] ...`` line (a message never spans lines)."""
    for line in (out + err).splitlines():
        if line.strip():
            assert re.match(r"^\[(INFO|WARNING|ERROR|OK|PARTIAL|FAILED)\] ", line), line


def write_image(
    path: Path,
    *,
    rows: int = 40,
    cols: int = 36,
    bits_stored: int = 12,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    planar: int = 0,
    syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
    data: np.ndarray | None = None,
) -> Path:
    """Write a Secondary Capture image (random pixels covering the whole value range)."""
    rng = np.random.default_rng(seed)
    colour = photometric in ("RGB", "YBR_FULL")
    if colour:
        bits_stored = 8
    alloc = 8 if bits_stored <= 8 else 16
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.PatientName = "TEST^COMPRESS"
    ds.PatientID = "C1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = planar
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = alloc, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    dtype = np.dtype(f"<{'i' if signed else 'u'}{alloc // 8}")
    if data is None:
        lo, hi = (
            (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1)) if signed else (0, 2**bits_stored)
        )
        shape = (frames, rows, cols, 3) if colour else (frames, rows, cols)
        data = rng.integers(lo, hi, size=shape).astype(dtype)
        flat = data.reshape(-1)
        flat[0], flat[1] = lo, hi - 1  # both extremes of BitsStored
    else:
        data = data.astype(dtype).reshape(
            (frames, rows, cols, 3) if colour else (frames, rows, cols)
        )
    if frames > 1:
        ds.NumberOfFrames = frames
    stored = data.transpose(0, 3, 1, 2) if colour and planar else data
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_like(size: int = 256, seed: int = 0, sigma: float = 15.0) -> np.ndarray:
    """A CT-like slice: body disc with texture, a dense insert and gaussian noise, 12 bit."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(float) - (size - 1) / 2
    body = np.hypot(x / 0.9, y) < 0.42 * size
    img = np.where(body, 1064.0, 24.0)
    img += body * 60 * np.sin(x / 9.0) * np.cos(y / 13.0)
    img += (np.hypot(x - 30, y + 20) < 18) * 600
    img += rng.normal(0, sigma, img.shape)
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def corrupt_frame(path: Path, index: int) -> None:
    """Overwrite the middle half of encoded frame index with 0xFF bytes."""
    frame = encoded_frames(read(path))[index]
    data = bytearray(path.read_bytes())
    start = data.find(frame)
    assert start > 0
    n = len(frame)
    data[start + n // 4 : start + n // 4 + n // 2] = b"\xff" * (n // 2)
    path.write_bytes(bytes(data))


# ---- lossless cases ----


@dataclass(frozen=True)
class Case:
    """One lossless input: how write_image makes it."""

    id: str
    rows: int = 40
    cols: int = 36
    bits_stored: int = 12
    signed: bool = False
    photometric: str = "MONOCHROME2"
    frames: int = 1
    planar: int = 0
    syntax: str = ExplicitVRLittleEndian

    def write(self, path: Path, seed: int) -> Path:
        """Write the case's input file."""
        return write_image(
            path,
            rows=self.rows,
            cols=self.cols,
            bits_stored=self.bits_stored,
            signed=self.signed,
            photometric=self.photometric,
            frames=self.frames,
            planar=self.planar,
            syntax=self.syntax,
            seed=seed,
        )


CASES = [
    Case("u8", bits_stored=8),
    Case("s8", bits_stored=8, signed=True),
    Case("u10_33x35", 33, 35, bits_stored=10),
    Case("s10_mono1", bits_stored=10, signed=True, photometric="MONOCHROME1"),
    Case("u12_65x47", 65, 47),
    Case("s12", signed=True),
    Case("u16", bits_stored=16),
    Case("s16_33x35", 33, 35, bits_stored=16, signed=True),
    Case("rgb_65x47", 65, 47, photometric="RGB"),
    Case("rgb_planar1", 33, 35, photometric="RGB", planar=1),
    Case("ybr_full", photometric="YBR_FULL"),
    Case("mf_u12", frames=3),
    Case("mf_s16_mono1", 33, 35, bits_stored=16, signed=True, photometric="MONOCHROME1", frames=2),
    Case("mf_rgb", photometric="RGB", frames=2),
    Case("min_32x32", 32, 32, bits_stored=16),
    Case("implicit_in", signed=True, syntax=ImplicitVRLittleEndian),
    Case("rle_in", 33, 35, bits_stored=16, signed=True, syntax=RLELossless),
    Case("rle_in_mf", photometric="RGB", frames=2, syntax=RLELossless),
    Case("jls_in", syntax=JPEGLSLossless),
    Case("j2k_in", 65, 47, bits_stored=16, signed=True, frames=2, syntax=JPEG2000Lossless),
]


def skip_without_encoder(codec: str) -> None:
    """Skip a test of ``--codec htj2k`` where no HTJ2K encoder is installed (imagecodecs
    before 2026.1, the last versions for Python 3.10)."""
    from dicompressor import htj2k_encoder

    if codec == "htj2k" and htj2k_encoder() is None:
        pytest.skip("HTJ2K encoding needs imagecodecs>=2026.1 (Python 3.11 or later)")


@pytest.fixture(scope="module")
def lossless_runs(tmp_path_factory: pytest.TempPathFactory):
    """Run ``-x --codec C`` once per codec over a folder holding every case."""
    runs: dict[str, tuple[Path, int, str, str, dict[str, str]]] = {}

    def get(codec: str):
        skip_without_encoder(codec)
        if codec not in runs:
            folder = tmp_path_factory.mktemp(f"lossless_{codec}")
            for seed, case in enumerate(CASES):
                if case.syntax != CODEC_TARGETS[codec][0]:
                    case.write(folder / f"{case.id}.dcm", seed)
            before = snapshot(folder)
            code, out, err = run("-x", "--codec", codec, "-F", folder, "--jobs", "1")
            runs[codec] = (folder, code, out, err, before)
        return runs[codec]

    return get


class TestLossless:
    """-x / -X / --codec: bit-exact lossless compression."""

    @pytest.mark.parametrize("codec", sorted(CODEC_TARGETS))
    def test_run_succeeds(self, lossless_runs, codec: str) -> None:
        folder, code, out, err, before = lossless_runs(codec)
        assert code == 0, out + err
        assert out.startswith(f"[OK] {folder} ")
        assert_log_format(out, err)
        assert not part_files(folder)
        for name, digest in before.items():  # inputs untouched
            assert sha(folder / name) == digest

    @pytest.mark.parametrize("codec", sorted(CODEC_TARGETS))
    @pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
    def test_bit_exact(self, lossless_runs, codec: str, case: Case) -> None:
        syntax, suffix = CODEC_TARGETS[codec]
        if case.syntax == syntax:
            pytest.skip("input already in the target syntax (see test_already_compressed)")
        folder, code, out, err, _ = lossless_runs(codec)
        source = folder / f"{case.id}.dcm"
        output = folder / f"{case.id}{suffix}.dcm"
        assert output.is_file(), out + err
        src, ds = read(source), read(output)
        assert syntax_of(ds) == syntax
        assert ds.SOPInstanceUID == src.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID
        assert ds.SOPClassUID == src.SOPClassUID
        assert int(ds.get("NumberOfFrames", 1)) == case.frames
        assert (ds.Rows, ds.Columns, ds.BitsStored) == (src.Rows, src.Columns, src.BitsStored)
        assert ds.PixelRepresentation == src.PixelRepresentation
        assert "LossyImageCompression" not in ds or ds.LossyImageCompression == "00"
        assert_same_pixels(source, output)
        if src.SamplesPerPixel == 1:
            assert ds.PhotometricInterpretation == src.PhotometricInterpretation
        lines = file_line(err, source, "INFO")
        assert len(lines) == 1 and output.name in lines[0], err

    def test_already_compressed_left_alone_second_run_adds_nothing(self, tmp_path: Path) -> None:
        write_image(tmp_path / "a.dcm", seed=1)
        write_image(tmp_path / "b.dcm", frames=3, syntax=RLELossless, seed=2)
        j2k = write_image(tmp_path / "c.dcm", signed=True, syntax=JPEG2000Lossless, seed=3)
        j2k_hash = sha(j2k)
        code, out, err = run("-x", "-f", tmp_path, "--jobs", "1")
        assert code == 0, out + err
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "a.dcm",
            "a_jll.dcm",
            "b.dcm",
            "b_jll.dcm",
            "c.dcm",
        ]
        assert sha(j2k) == j2k_hash
        line = file_line(err, j2k, "INFO")
        assert len(line) == 1 and "left alone" in line[0] and "already" in line[0], err
        assert not file_line(err, j2k, "ERROR")
        first = snapshot(tmp_path)
        code, out, err = run("-x", "-f", tmp_path, "--jobs", "2")
        assert code == 0, out + err
        assert "no new files" in out
        assert snapshot(tmp_path) == first
        for name in first:
            lines = file_line(err, tmp_path / name, "INFO")
            assert len(lines) == 1 and "left alone" in lines[0], (name, err)

    def test_output_dir(self, tmp_path: Path) -> None:
        source = write_image(tmp_path / "in" / "img.dcm", rows=33, cols=35, signed=True)
        code, out, err = run("-x", "-f", source, "--output-dir", tmp_path / "out")
        assert code == 0, out + err
        assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["img.dcm"]
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img_jll.dcm"]
        assert_same_pixels(source, tmp_path / "out" / "img_jll.dcm")

    def test_merged_multiframe(self, tmp_path: Path) -> None:
        series = tmp_path / "series"
        synth.make_series(series, n=6, rows=40, cols=36, signed=True)
        code, out, err = run("-j", "-F", series)
        assert code == 0, out + err
        merged = sorted(series.glob("*multiframe*.dcm"))
        assert len(merged) == 1, sorted(p.name for p in series.iterdir())
        code, out, err = run("-x", "-f", merged[0], "--output-dir", tmp_path / "out")
        assert code == 0, out + err
        output = tmp_path / "out" / f"{merged[0].stem}_jll.dcm"
        ds = read(output)
        assert syntax_of(ds) == J2K_LOSSLESS
        assert int(ds.NumberOfFrames) == 6
        assert len(encoded_frames(ds)) == 6
        assert ds.SOPInstanceUID == read(merged[0]).SOPInstanceUID
        assert_same_pixels(merged[0], output)

    def test_too_small_for_jpeg2000(self, tmp_path: Path) -> None:
        small = write_image(tmp_path / "small.dcm", rows=16, cols=40)
        narrow = write_image(tmp_path / "narrow.dcm", rows=64, cols=31, signed=True)
        good = write_image(tmp_path / "good.dcm", rows=32, cols=33)
        hashes = {p: sha(p) for p in (small, narrow)}
        code, out, err = run("-x", "-f", tmp_path, "--jobs", "1")
        assert code == 3, out + err
        assert out.startswith(f"[PARTIAL] {tmp_path} ")
        assert_log_format(out, err)
        for path in (small, narrow):
            lines = error_lines(err, path)
            assert len(lines) == 1, err
            assert "JPEG 2000" in lines[0] and "jpegls" in lines[0] and "rle" in lines[0]
            assert sha(path) == hashes[path]
            assert not path.with_name(f"{path.stem}_jll.dcm").exists()
        assert_same_pixels(good, tmp_path / "good_jll.dcm")
        code, out, err = run("-z", "-f", small)
        assert code == 1, out + err
        assert "jpegls" in out + err
        assert not (tmp_path / "small_jl.dcm").exists()
        for codec in ("jpegls", "rle"):
            code, out, err = run("-x", "--codec", codec, "-f", small)
            assert code == 0, out + err
            assert_same_pixels(small, tmp_path / f"small{CODEC_TARGETS[codec][1]}.dcm")

    @pytest.mark.parametrize("flag,suffix", [("-x", "_jll"), ("-z", "_jl"), ("-u", "_unc")])
    def test_output_dir_collisions_and_reruns(self, tmp_path: Path, flag: str, suffix: str):
        """Same file names in two folders: both outputs kept (_1); a rerun adds nothing."""
        root = tmp_path / "root"
        sources = []
        for index, name in enumerate(("a", "b")):
            syntax = JPEG2000Lossless if flag == "-u" else ExplicitVRLittleEndian
            sources.append(write_image(root / name / "img.dcm", seed=index, syntax=syntax))
        out = tmp_path / "out"
        code, _, err = run(flag, "-f", root, "--output-dir", out, "--jobs", "1")
        assert code == 0, err
        names = sorted(p.name for p in out.iterdir())
        assert names == [f"img{suffix}.dcm", f"img{suffix}_1.dcm"]
        outputs = [read(out / n) for n in names]
        if flag == "-z":  # each lossy output names its own uncompressed predecessor
            refs = {o.SourceImageSequence[-1].ReferencedSOPInstanceUID for o in outputs}
        else:
            refs = {o.SOPInstanceUID for o in outputs}
        assert refs == {read(p).SOPInstanceUID for p in sources}
        if flag != "-z":
            by_uid = {o.SOPInstanceUID: out / n for o, n in zip(outputs, names, strict=True)}
            for source in sources:
                assert_same_pixels(source, by_uid[read(source).SOPInstanceUID])
        before = snapshot(out)
        code, _, err = run(flag, "-f", root, "--output-dir", out, "--jobs", "1")
        assert code == 0, err
        assert snapshot(out) == before  # nothing new, nothing overwritten
        assert err.count("exists already") == 2, err

    @pytest.mark.parametrize(
        ("name", "flags", "message"),
        [
            ("liver_1frame.dcm", ["-x"], "cannot compress 1-bit (bit-packed) pixels"),
            ("liver_1frame.dcm", ["-x", "--codec", "rle"], "cannot compress 1-bit"),
            ("liver_1frame.dcm", ["-x", "--codec", "htj2k"], "cannot compress 1-bit"),
            (
                "SC_rgb_rle_32bit.dcm",
                ["-x", "--codec", "htj2k"],
                "cannot store these pixels as HTJ2K: Bits Stored 32 is more than 24 (RGB)",
            ),
            ("examples_palette.dcm", ["-z"], "PALETTE COLOR pixels index a palette"),
            (
                "SC_rgb_rle_32bit.dcm",
                ["-x"],
                "32-bit pixels are too deep for JPEG 2000 Image Compression (Lossless Only) "
                "(its encoder takes up to 24 bits stored); no other codec here takes them",
            ),
            (
                "SC_rgb_rle_32bit.dcm",
                ["-z"],
                "32-bit pixels are too deep for JPEG 2000 Image Compression (its encoder takes "
                "up to 24 bits stored); no other codec here takes them",
            ),
            (
                "SC_rgb_rle_32bit.dcm",
                ["-x", "--codec", "jpegls"],
                "32-bit pixels are too deep for JPEG-LS Lossless Image Compression (its "
                "encoder takes up to 16 bits stored); no other codec here takes them",
            ),
        ],
    )
    def test_pixels_a_codec_cannot_take_fail_in_words(
        self, tmp_path: Path, name: str, flags: list[str], message: str
    ) -> None:
        """Refused before encoding, in plain words (HTJ2K's encoder would take them and
        write what openjpeg cannot read back)."""
        source = pydicom_file(name)
        if "htj2k" in flags:
            skip_without_encoder("htj2k")
        path = tmp_path / name
        shutil.copy(source, path)
        code, out, err = run(*flags, "-F", tmp_path, "--output-dir", tmp_path / "out")
        assert code == 1, out + err
        [line] = [x for x in err.splitlines() if x.startswith("[ERROR]")]
        assert f"{name}: {message}" in line, line
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    @pytest.mark.parametrize(
        ("photometric", "rows", "cols", "bits_stored", "flags"),
        [
            ("RGB", 3, 3, 8, ["-x"]),
            ("RGB", 3, 3, 8, ["-x", "--codec", "jpegls"]),
            ("RGB", 3, 3, 8, ["-z"]),
            ("MONOCHROME2", 1, 2, 12, ["-x"]),
            ("MONOCHROME2", 2, 7, 16, ["-x", "--codec", "jpegls"]),
            ("MONOCHROME2", 8, 8, 8, ["-x", "--codec", "jpegls"]),
        ],
    )
    def test_small_images_refused_in_one_line_with_a_codec_that_takes_them(
        self, tmp_path: Path, photometric: str, rows: int, cols: int, bits_stored: int, flags
    ) -> None:
        """Each codec a refusal suggests is tried on the same image: it must take it."""
        source = write_image(
            tmp_path / "in" / "tiny.dcm",
            rows=rows,
            cols=cols,
            bits_stored=bits_stored,
            photometric=photometric,
        )
        code, out, err = run(*flags, "-f", source, "--output-dir", tmp_path / "out")
        assert code == 1, out + err
        [line] = [x for x in err.splitlines() if x.startswith("[ERROR]")]
        assert "destination buffer" not in line and "Error" not in line, line
        j2k = "JPEG 2000" if "--codec" not in flags else "JPEG-LS"
        assert f"tiny.dcm: {rows} x {cols} pixels is too small for {j2k}" in line, line
        suggested = re.search(r"; use (?:-x ?)?(?:--codec (\w+(?: or \w+)*))?", line)
        assert suggested is not None, line
        codecs = (suggested.group(1) or "j2k").split(" or ")
        assert "rle" in codecs and "j2k" not in codecs and "jpegls" not in codecs, line
        for codec in codecs:
            target = tmp_path / codec
            code, out, err = run("-x", "--codec", codec, "-f", source, "--output-dir", target)
            assert code == 0, f"{codec} was suggested but fails: {out + err}"
            [made] = target.iterdir()
            assert_same_pixels(source, made)

    def test_htj2k_without_imagecodecs(self, tmp_path: Path) -> None:
        """With imagecodecs hidden, --codec htj2k fails in one line naming the package."""
        source = write_image(tmp_path / "data" / "img.dcm")
        proc = run_without_imagecodecs(tmp_path / "shim", "-x", "--codec", "htj2k", "-f", source)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        text = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        assert len(text) == 1, text
        assert "High-Throughput JPEG 2000" in text[0] and "imagecodecs>=2026.1" in text[0]
        assert sorted(p.name for p in source.parent.iterdir()) == ["img.dcm"]

    def test_htj2k_is_lossless_reversible_without_colour_transform(self, lossless_runs) -> None:
        """The HTJ2K frames are reversible codestreams (COD: 5/3 wavelet, no MCT)."""
        folder, code, out, err, _ = lossless_runs("htj2k")
        ds = read(folder / "rgb_65x47_htj2k.dcm")
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        cod = frame.index(b"\xff\x52")
        assert frame[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: a bare codestream
        assert frame[cod + 8] == 0  # multiple component transform: none
        assert frame[cod + 13] == 1  # wavelet: 5/3 reversible
        assert ds.PhotometricInterpretation == "RGB"

    def test_invalid_element_value_fails_only_that_file(self, tmp_path: Path) -> None:
        """pydicom's badVR.dcm holds an IS value '1A': compress it as is, or fail it alone."""
        bad = Path(shutil.copy(get_testdata_file("badVR.dcm", download=False), tmp_path))
        good = write_image(tmp_path / "good.dcm")
        code, out, err = run("-x", "-f", tmp_path, "--jobs", "1")
        assert "internal error" not in out + err
        assert_same_pixels(good, tmp_path / "good_jll.dcm")
        if (tmp_path / "badVR_jll.dcm").exists():
            assert code == 0, out + err
        else:
            assert code == 3, out + err
            assert len(error_lines(err, bad)) == 1, err


class TestReplace:
    """-X replaces each input atomically, keeping its name and SOP Instance UID."""

    @pytest.mark.parametrize("jobs", ["1", "2"])
    def test_replace_in_place(self, tmp_path: Path, jobs: str) -> None:
        paths = [
            write_image(tmp_path / "native.dcm", rows=33, cols=35, signed=True, seed=1),
            write_image(tmp_path / "rle.dcm", bits_stored=16, syntax=RLELossless, seed=2),
            write_image(tmp_path / "multi.dcm", photometric="RGB", frames=3, seed=3),
        ]
        originals = {p: (read(p).SOPInstanceUID, read(p).pixel_array) for p in paths}
        code, out, err = run("-X", "-f", tmp_path, "--jobs", jobs)
        assert code == 0, out + err
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
        assert not part_files(tmp_path)
        for path, (uid, pixels) in originals.items():
            ds = read(path)
            assert syntax_of(ds) == J2K_LOSSLESS
            assert ds.SOPInstanceUID == uid
            assert_same_pixels(pixels, path)
        code, out, err = run("-X", "-f", tmp_path, "--jobs", jobs)
        assert code == 0, out + err
        assert "no new files" in out


# ---- lossy ----


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256x256 CT-like slice, uint16 with BitsStored 12."""
    folder = tmp_path_factory.mktemp("ct")
    return write_image(folder / "ct.dcm", rows=256, cols=256, data=ct_like())


def lossy_run(source: Path, folder: Path, *flags: str) -> tuple[Path, str]:
    """Copy source into folder, run -z with flags on it; return (output, stderr)."""
    folder.mkdir()
    source = Path(shutil.copy(source, folder))
    code, out, err = run("-z", *flags, "-f", source)
    assert code == 0, out + err
    assert_log_format(out, err)
    output = folder / f"{source.stem}_jl.dcm"
    assert sorted(p.name for p in folder.iterdir()) == sorted([source.name, output.name])
    return output, err


def measured_error(source: Path, output: Path) -> tuple[float, float]:
    """Return (RMSE, PSNR with peak 2**BitsStored - 1) of output against source."""
    ref = read(source).pixel_array.astype(np.float64)
    got = read(output).pixel_array.astype(np.float64)
    assert got.shape == ref.shape
    rmse = math.sqrt(float(np.mean((got - ref) ** 2)))
    peak = 2 ** int(read(source).BitsStored) - 1
    return rmse, (math.inf if rmse == 0 else 20 * math.log10(peak / rmse))


def logged_ratio_rmse(err: str, source: Path) -> tuple[float, float]:
    """Parse the achieved ratio and RMSE of the file's log line."""
    lines = file_line(err, source, "INFO")
    assert len(lines) == 1, err
    match = re.search(r"ratio ([\d.]+):1, RMSE ([\d.]+)", lines[0])
    assert match, lines[0]
    return float(match.group(1)), float(match.group(2))


def assert_lossy_attributes(source: Path, output: Path, achieved: float) -> None:
    """Check the Lossy Image Compression attributes, DERIVED and the new SOP UID."""
    src, ds = read(source), read(output)
    assert syntax_of(ds) == J2K_LOSSY
    assert ds.LossyImageCompression == "01"
    ratios = ds.LossyImageCompressionRatio
    ratios = [float(v) for v in (ratios if isinstance(ratios, MultiValue) else [ratios])]
    assert ratios[-1] == pytest.approx(achieved, rel=0.01)
    methods = ds.LossyImageCompressionMethod
    methods = list(methods) if isinstance(methods, MultiValue) else [methods]
    assert methods[-1] == "ISO_15444_1"
    assert ds.ImageType[0] == "DERIVED"
    assert list(ds.ImageType[1:]) == list(src.ImageType[1:])
    assert ds.SOPInstanceUID != src.SOPInstanceUID
    assert UID(ds.SOPInstanceUID).is_valid
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == src.SOPClassUID
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (src.Rows, src.Columns, src.BitsStored)


class TestLossy:
    """-z / -Z: JPEG 2000 lossy at --ratio or --psnr."""

    @pytest.mark.parametrize("ratio", [5, 10, 20, None])
    def test_ratio(self, ct_file: Path, tmp_path: Path, ratio: int | None) -> None:
        flags = () if ratio is None else ("--ratio", str(ratio))
        target = 10 if ratio is None else ratio
        output, err = lossy_run(ct_file, tmp_path / "run", *flags)
        ds = read(output)
        frames = encoded_frames(ds)
        assert len(frames) == 1
        achieved = ds.Rows * ds.Columns * 2 / len(frames[0])
        assert achieved == pytest.approx(target, rel=0.10)
        assert_lossy_attributes(ct_file, output, achieved)
        logged_ratio, logged_rmse = logged_ratio_rmse(err, tmp_path / "run" / ct_file.name)
        assert logged_ratio == pytest.approx(achieved, rel=0.01)
        rmse, _ = measured_error(ct_file, output)
        assert rmse > 0
        assert logged_rmse == pytest.approx(rmse, rel=0.01, abs=0.002)

    @pytest.mark.parametrize("psnr", [45.0, 55.0])
    def test_psnr(self, ct_file: Path, tmp_path: Path, psnr: float) -> None:
        output, err = lossy_run(ct_file, tmp_path / "run", "--psnr", str(psnr))
        rmse, measured = measured_error(ct_file, output)
        assert measured >= psnr - 1.0
        ds = read(output)
        achieved = ds.Rows * ds.Columns * 2 / len(encoded_frames(ds)[0])
        assert achieved > 1.5  # lossy, not a lossless stream in disguise
        assert_lossy_attributes(ct_file, output, achieved)
        logged_ratio, logged_rmse = logged_ratio_rmse(err, tmp_path / "run" / ct_file.name)
        assert logged_ratio == pytest.approx(achieved, rel=0.01)
        assert logged_rmse == pytest.approx(rmse, rel=0.01, abs=0.002)

    def test_higher_psnr_gives_smaller_error(self, ct_file: Path, tmp_path: Path) -> None:
        low, _ = lossy_run(ct_file, tmp_path / "low", "--psnr", "42")
        high, _ = lossy_run(ct_file, tmp_path / "high", "--psnr", "58")
        assert measured_error(ct_file, high)[0] < measured_error(ct_file, low)[0]
        assert len(encoded_frames(read(high))[0]) > len(encoded_frames(read(low))[0])

    def test_multiframe_and_signed(self, tmp_path: Path) -> None:
        source = write_image(tmp_path / "src" / "mf.dcm", rows=64, cols=48, frames=3, signed=True)
        output, err = lossy_run(source, tmp_path / "run", "--ratio", "4")
        ds = read(output)
        assert int(ds.NumberOfFrames) == 3
        frames = encoded_frames(ds)
        assert len(frames) == 3
        achieved = 3 * 64 * 48 * 2 / sum(len(f) for f in frames)
        assert_lossy_attributes(source, output, achieved)
        rmse, _ = measured_error(source, output)
        assert logged_ratio_rmse(err, tmp_path / "run" / "mf.dcm")[1] == pytest.approx(
            rmse, rel=0.01, abs=0.002
        )

    @pytest.mark.parametrize("verify", [False, True])
    def test_rmse_of_sampled_files(self, tmp_path: Path, verify: bool) -> None:
        """Without --verify, 8 files spread over the job are measured, and the log says
        which; with it, every file. The frames are encoded alike either way."""
        folder = tmp_path / "in"
        sources = [
            write_image(folder / f"im{i:02d}.dcm", rows=48, cols=40, seed=i) for i in range(12)
        ]
        flags = ["--verify"] if verify else []
        code, out, err = run("-z", "--ratio", "6", "-F", folder, "--output-dir", tmp_path / "o",
                             *flags)  # fmt: skip
        assert code == 0, out + err
        assert_log_format(out, err)
        sampled = [sources[i] for i in (0, 2, 3, 5, 6, 8, 9, 11)]  # spread(12, 8)
        measured = sources if verify else sampled
        squared = 0.0
        for source in sources:
            output = tmp_path / "o" / f"{source.stem}_jl.dcm"
            [line] = file_line(err, source, "INFO")
            rmse, _ = measured_error(source, output)
            if source in measured:
                assert logged_ratio_rmse(err, source)[1] == pytest.approx(rmse, abs=0.002)
                squared += rmse**2 * 48 * 40
            else:
                assert "RMSE" not in line
                assert line.endswith(":1"), line
        pooled = math.sqrt(squared / (len(measured) * 48 * 40))
        [summary] = [ln for ln in err.splitlines() if ln.startswith("[INFO] RMSE ")]
        where = ", ".join(p.name for p in sampled)
        tail = "" if verify else f", sampled: {where} (--verify measures every frame)"
        assert summary == f"[INFO] RMSE {pooled:.3f} over {len(measured)} of 12 frames{tail}"

    @pytest.mark.parametrize("verify", [False, True])
    def test_rmse_of_sampled_frames(self, tmp_path: Path, verify: bool) -> None:
        source = write_image(tmp_path / "src" / "mf.dcm", rows=40, cols=36, frames=10)
        flags = ("--ratio", "5", "--verify") if verify else ("--ratio", "5")
        output, err = lossy_run(source, tmp_path / "run", *flags)
        [line] = file_line(err, tmp_path / "run" / "mf.dcm", "INFO")
        ref = read(source).pixel_array.astype(np.float64)
        got = read(output).pixel_array.astype(np.float64)
        frames = range(10) if verify else [0, 1, 3, 4, 5, 6, 8, 9]  # spread(10, 8)
        rmse = math.sqrt(float(np.mean((got[frames] - ref[frames]) ** 2)))
        if verify:
            assert line.endswith(f", RMSE {rmse:.3f}"), line
        else:
            assert line.endswith(f", RMSE {rmse:.3f} over 8 of 10 frames (1, 2, 4, 5, 6, 7, 9, "
                                 "10)"), line  # fmt: skip
        assert "[INFO] RMSE " not in err  # one file: its own line says it
        other, _ = lossy_run(source, tmp_path / "other", *flags[:2])
        assert encoded_frames(read(other)) == encoded_frames(read(output))

    def test_replace_lossy(self, ct_file: Path, tmp_path: Path) -> None:
        source = Path(shutil.copy(ct_file, tmp_path))
        uid = read(source).SOPInstanceUID
        code, out, err = run("-Z", "--ratio", "8", "-f", source)
        assert code == 0, out + err
        assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]
        ds = read(source)
        assert syntax_of(ds) == J2K_LOSSY
        assert ds.SOPInstanceUID != uid
        assert ds.LossyImageCompression == "01"
        rmse, _ = measured_error(ct_file, source)
        assert 0 < rmse < 40


# ---- decompression ----


def _testdata_with_pixels() -> list[str]:
    names = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in bundled_files():
            try:
                ds = pydicom.dcmread(path, defer_size=1024)
            except Exception:
                continue
            if "PixelData" in ds:
                names.append(path.name)
    return names


TESTDATA = _testdata_with_pixels()
#: Files whose failure message loses its pip package to one_line()'s 400-character cut.


@pytest.fixture(scope="module")
def decompressed(tmp_path_factory: pytest.TempPathFactory):
    """Run -u once over copies of every pydicom test file with pixel data."""
    folder = tmp_path_factory.mktemp("testdata")
    for name in TESTDATA:
        shutil.copy(get_testdata_file(name, download=False), folder / name)
    before = snapshot(folder)
    code, out, err = run("-u", "-F", folder, "--jobs", "2")
    return folder, code, out, err, before


def _reference(path: Path) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path).pixel_array
        except Exception:
            return None


class TestDecompress:
    """-u / -U: Explicit VR Little Endian with pydicom's pixels, or a codec message."""

    def test_testdata_found(self) -> None:
        assert len(TESTDATA) > 30
        assert "JPEG2000.dcm" in TESTDATA and "CT_small.dcm" in TESTDATA

    def test_run_exit_code(self, decompressed) -> None:
        folder, code, out, err, before = decompressed
        assert code == 3, out + err
        assert out.startswith(f"[PARTIAL] {folder} ")
        assert not part_files(folder)
        for name, digest in before.items():
            assert sha(folder / name) == digest, name

    @pytest.mark.parametrize("name", TESTDATA)
    def test_file(self, decompressed, name: str) -> None:
        folder, _, _, err, _ = decompressed
        source = folder / name
        output = folder / f"{source.stem}_unc.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src = pydicom.dcmread(source)
        syntax = syntax_of(src)
        reference = _reference(source)
        errors = error_lines(err, source)
        if syntax in (None, EVRLE):
            assert not output.exists()
            if errors:  # a damaged file (MR_truncated.dcm) is named, not passed silently
                assert len(errors) == 1 and "truncated" in errors[0], err
                return
            lines = file_line(err, source, "INFO")
            assert len(lines) == 1 and "left alone" in lines[0], err
            return
        if output.exists():
            assert not errors
            ds = read(output)
            assert syntax_of(ds) == EVRLE
            assert ds.SOPInstanceUID == src.SOPInstanceUID
            assert ds.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID
            assert reference is not None
            got = ds.pixel_array
            assert got.shape == reference.shape
            assert got.dtype.newbyteorder("=") == reference.dtype.newbyteorder("=")
            np.testing.assert_array_equal(got, reference)
            if int(ds.get("SamplesPerPixel", 1)) == 3:
                assert ds.PlanarConfiguration == 0
                assert ds.PhotometricInterpretation in ("RGB", "YBR_FULL")
            else:
                assert ds.PhotometricInterpretation == src.PhotometricInterpretation
            return
        # no output: pydicom cannot decode it either, and the tool says why in one line
        assert reference is None, "pydicom decodes it, the tool did not"
        assert len(errors) == 1, err
        if UID(syntax).is_compressed:
            assert UID(syntax).name in errors[0]
            assert re.search(r"pip install [A-Za-z][\w.-]+", errors[0]), errors[0]

    def test_replace(self, tmp_path: Path) -> None:
        names = ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-LL.dcm"]
        names = [n for n in names if n in TESTDATA]
        failing = "JPEG-lossy.dcm"  # 12-bit JPEG Extended: no decoder in the test set-up
        references = {}
        for name in names:
            path = Path(shutil.copy(get_testdata_file(name, download=False), tmp_path))
            references[path] = (_reference(path), read(path).SOPInstanceUID)
        bad = Path(shutil.copy(get_testdata_file(failing, download=False), tmp_path))
        bad_hash = sha(bad)
        decodable = {p: r for p, r in references.items() if r[0] is not None}
        code, out, err = run("-U", "-f", tmp_path, "--jobs", "1")
        expected_code = 3 if _reference(bad) is None else 0
        assert code == expected_code, out + err
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, failing])
        if expected_code == 3:
            assert sha(bad) == bad_hash
            assert len(error_lines(err, bad)) == 1
        for path, (pixels, uid) in decodable.items():
            ds = read(path)
            assert syntax_of(ds) == EVRLE
            assert ds.SOPInstanceUID == uid
            np.testing.assert_array_equal(ds.pixel_array, pixels)

    def test_roundtrip_through_every_codec(self, tmp_path: Path) -> None:
        source = write_image(tmp_path / "src.dcm", rows=33, cols=35, bits_stored=16, signed=True)
        for codec, (_, suffix) in CODEC_TARGETS.items():
            if codec == "htj2k":
                skip_without_encoder(codec)  # the others have run by now
            code, out, err = run("-x", "--codec", codec, "-f", source)
            assert code == 0, (codec, out + err)
            compressed = tmp_path / f"src{suffix}.dcm"
            code, out, err = run("-u", "-f", compressed)
            assert code == 0, (codec, out + err)
            raw = tmp_path / f"src{suffix}_unc.dcm"
            assert syntax_of(read(raw)) == EVRLE
            assert read(raw).PixelData == read(source).PixelData
            assert_same_pixels(source, raw)


# ---- --jobs ----


@pytest.fixture(scope="module")
def jobs_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A merged multi-frame CT file, a generated multi-frame file and single-frame files."""
    root = tmp_path_factory.mktemp("jobs")
    series = root / "series"
    synth.make_series(series, n=6, rows=40, cols=36, signed=False)
    code, out, err = run("-j", "-F", series)
    assert code == 0, out + err
    folder = root / "inputs"
    folder.mkdir()
    merged = sorted(series.glob("*multiframe*.dcm"))
    assert len(merged) == 1
    shutil.copy(merged[0], folder / "merged.dcm")
    write_image(folder / "multi.dcm", rows=64, cols=48, frames=6, seed=9)
    for i in range(4):
        write_image(folder / f"single{i}.dcm", rows=40, cols=36, signed=bool(i % 2), seed=i)
    return folder


def _run_with_jobs(source: Path, dest: Path, jobs: str, *flags: str) -> dict[str, Path]:
    shutil.copytree(source, dest)
    before = set(os.listdir(dest))
    code, out, err = run(*flags, "-F", dest, "--jobs", jobs)
    assert code == 0, out + err
    return {n: dest / n for n in sorted(set(os.listdir(dest)) - before)}


class TestJobs:
    """--jobs 2 gives the same bytes as --jobs 1."""

    @pytest.mark.parametrize("codec", sorted(CODEC_TARGETS))
    def test_lossless_identical(self, jobs_folder: Path, tmp_path: Path, codec: str) -> None:
        skip_without_encoder(codec)
        one = _run_with_jobs(jobs_folder, tmp_path / "one", "1", "-x", "--codec", codec)
        two = _run_with_jobs(jobs_folder, tmp_path / "two", "2", "-x", "--codec", codec)
        assert sorted(one) == sorted(two)
        assert len(one) == 6
        for name in one:
            assert one[name].read_bytes() == two[name].read_bytes(), name
            source = jobs_folder / name.replace(CODEC_TARGETS[codec][1], "")
            assert_same_pixels(source, two[name])

    def test_lossy_identical(self, jobs_folder: Path, tmp_path: Path) -> None:
        one = _run_with_jobs(jobs_folder, tmp_path / "one", "1", "-z", "--ratio", "6")
        two = _run_with_jobs(jobs_folder, tmp_path / "two", "2", "-z", "--ratio", "6")
        assert sorted(one) == sorted(two)
        assert len(one) == 6
        for name in one:
            a, b = read(one[name]), read(two[name])
            assert a.PixelData == b.PixelData, name
            assert a.LossyImageCompressionRatio == b.LossyImageCompressionRatio

    def test_decompress_identical(self, jobs_folder: Path, tmp_path: Path) -> None:
        compressed = _run_with_jobs(jobs_folder, tmp_path / "src", "2", "-x", "--codec", "j2k")
        folder = tmp_path / "jll"
        folder.mkdir()
        for path in compressed.values():
            shutil.move(path, folder / path.name)
        one = _run_with_jobs(folder, tmp_path / "one", "1", "-u")
        two = _run_with_jobs(folder, tmp_path / "two", "2", "-u")
        assert sorted(one) == sorted(two) and len(one) == 6
        for name in one:
            assert one[name].read_bytes() == two[name].read_bytes(), name
            assert_same_pixels(jobs_folder / name.replace("_jll_unc", ""), two[name])


# ---- errors ----


@pytest.fixture
def corrupt_folder(tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """Two good files and three with a corrupt frame (J2K single/multi-frame, JPEG-LS)."""
    folder = tmp_path / "in"
    good = [
        write_image(folder / "good_native.dcm", seed=1),
        write_image(folder / "good_rle.dcm", bits_stored=16, signed=True, syntax=RLELossless),
    ]
    bad = [
        write_image(folder / "bad_single.dcm", seed=3, syntax=JPEG2000Lossless),
        write_image(folder / "bad_multi.dcm", frames=3, seed=4, syntax=JPEG2000Lossless),
        write_image(folder / "bad_jls.dcm", frames=2, seed=5, syntax=JPEGLSLossless),
    ]
    corrupt_frame(bad[0], 0)
    corrupt_frame(bad[1], 1)
    corrupt_frame(bad[2], 1)
    return folder, good, bad


ERROR_RUNS = {
    "x": (("-x",), "_jll", False),
    "X": (("-X",), "", False),
    "x_jpegls_jobs2": (("-x", "--codec", "jpegls", "--jobs", "2"), "_jls", False),
    "X_rle": (("-X", "--codec", "rle"), "", False),
    "z": (("-z",), "_jl", True),
    "Z_jobs2": (("-Z", "--jobs", "2"), "", True),
    "u": (("-u",), "_unc", False),
    "U": (("-U",), "", False),
    "U_jobs2": (("-U", "--jobs", "2"), "", False),
}


class TestErrors:
    """A corrupt frame fails its file only; inputs stay byte-identical."""

    @pytest.mark.parametrize("flags", list(ERROR_RUNS), ids=list(ERROR_RUNS))
    def test_corrupt_frame(self, corrupt_folder, flags: str) -> None:
        folder, good, bad = corrupt_folder
        args, suffix, lossy = ERROR_RUNS[flags]
        if "--jobs" not in args:
            args = (*args, "--jobs", "1")
        targets = {"-x": J2K_LOSSLESS, "-X": J2K_LOSSLESS, "-z": J2K_LOSSY, "-Z": J2K_LOSSY}
        target = targets.get(args[0], EVRLE)
        if "--codec" in args:
            target = CODEC_TARGETS[args[args.index("--codec") + 1]][0]
        # files already in the target syntax are left alone: they cannot fail
        failing = [p for p in bad if syntax_of(read(p)) != target]
        assert failing
        hashes = {p: sha(p) for p in bad}
        originals = {p: read(p).pixel_array for p in good}
        already = {p: syntax_of(read(p)) == target for p in good}
        code, out, err = run(*args, "-f", folder)
        assert code == 3, out + err
        assert out.startswith(f"[PARTIAL] {folder} ")
        assert f"({len(failing)} file(s) failed)" in out
        assert_log_format(out, err)
        assert not part_files(folder)
        for path in bad:
            assert sha(path) == hashes[path], path.name
            lines = error_lines(err, path)
            if path in failing:
                assert len(lines) == 1, err
                assert "cannot" in lines[0]
                if "cannot decode" in lines[0]:  # the codec is there: the data is at fault
                    assert "it is installed here, so the data may be damaged" in lines[0]
            else:
                assert not lines
            assert not path.with_name(f"{path.stem}{suffix}.dcm").exists() or not suffix
        for path, pixels in originals.items():
            output = path.with_name(f"{path.stem}{suffix}.dcm")
            if already[path]:
                assert not output.exists() or not suffix  # native already: left alone
                assert "left alone" in file_line(err, path, "INFO")[0]
                continue
            ds = read(output)
            assert syntax_of(ds) == target
            if lossy:
                got = ds.pixel_array
                assert got.shape == pixels.shape
                assert measured_error_arrays(pixels, got) < float(np.std(pixels))
            else:
                assert_same_pixels(pixels, output)
        if suffix:
            expected = {p.name for p in [*good, *bad]}
            expected |= {f"{p.stem}{suffix}.dcm" for p in good if not already[p]}
            assert set(os.listdir(folder)) == expected
        else:
            assert set(os.listdir(folder)) == {p.name for p in [*good, *bad]}

    @pytest.mark.parametrize("jobs", ["1", "2"])
    def test_corrupt_rle_frame(self, tmp_path: Path, jobs: str) -> None:
        good = write_image(tmp_path / "good.dcm")
        bad = write_image(tmp_path / "bad.dcm", frames=2, syntax=RLELossless, seed=2)
        corrupt_frame(bad, 1)
        bad_hash = sha(bad)
        code, out, err = run("-x", "-f", tmp_path, "--jobs", jobs)
        assert code == 3, out + err
        assert len(error_lines(err, bad)) == 1, err
        assert sha(bad) == bad_hash
        assert_same_pixels(good, tmp_path / "good_jll.dcm")
        assert not (tmp_path / "bad_jll.dcm").exists()
        assert not part_files(tmp_path)

    def test_not_dicom_and_truncated(self, tmp_path: Path) -> None:
        good = write_image(tmp_path / "good.dcm")
        (tmp_path / "notes.dcm").write_bytes(b"not a DICOM file at all" * 10)
        cut = write_image(tmp_path / "cut.dcm", rows=64, cols=64, seed=3)
        cut.write_bytes(cut.read_bytes()[:-3000])
        hashes = {p.name: sha(p) for p in tmp_path.iterdir()}
        for flag, suffix in (("-x", "_jll"), ("-u", None), ("-z", "_jl")):
            code, out, err = run(flag, "-f", tmp_path, "--jobs", "1")
            assert code == 3, out + err
            if suffix is not None:  # -u leaves good.dcm alone: it is uncompressed
                assert (tmp_path / f"good{suffix}.dcm").exists()
            assert len(error_lines(err, tmp_path / "notes.dcm")) == 1, err
            if suffix is None:  # already uncompressed: may be left alone
                assert error_lines(err, cut) or file_line(err, cut, "INFO"), err
            else:
                assert len(error_lines(err, cut)) == 1, err
            assert_log_format(out, err)
        for name, digest in hashes.items():
            assert sha(tmp_path / name) == digest
        assert_same_pixels(good, tmp_path / "good_jll.dcm")


def measured_error_arrays(a: np.ndarray, b: np.ndarray) -> float:
    """Return the RMSE between two arrays."""
    return math.sqrt(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


# ---- the header writer ----


class TestHeaderWriter:
    """write_header() writes the bytes pydicom writes, faster for elements it re-encodes."""

    def test_same_bytes_as_pydicom_on_every_bundled_file(self) -> None:
        import io

        import dicompressor as dp

        compared = 0
        for _ in range(2):  # the second pass takes the re-encoded elements from the cache
            for path in bundled_files():
                for syntax in (UID(EVRLE), UID(J2K_LOSSY)):
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            header, _ = dp.read_header(path, check_values=False, image=False)
                            ds = dp._transcoded_dataset(header, raw=True)
                            fresh = Dataset()  # what write_header wrote before: a copy
                            tags = ds.keys()  # tags, not elements: raw values stay unread
                            for tag in tags:
                                fresh[tag] = ds.get_item(tag)
                            fresh.file_meta = dp.file_meta_for(ds, syntax)
                            fresh.preamble = b"\0" * 128
                            reference = io.BytesIO()
                            pydicom.dcmwrite(reference, fresh, enforce_file_format=True)
                    except Exception:  # files pydicom itself cannot read or write back
                        continue
                    written = io.BytesIO()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        # read again: pydicom's writer changed elements the copy shares
                        header, _ = dp.read_header(path, check_values=False, image=False)
                        dp.write_header(written, dp._transcoded_dataset(header, raw=True), syntax)
                    assert written.getvalue() == reference.getvalue(), (path.name, syntax)
                    compared += 1
        assert compared > 100
        assert dp._reencoded.cache_info().hits > 1000


class TestFrameJobs:
    """Frames a worker can read itself are sent as where they are, not as their bytes."""

    @pytest.mark.parametrize("syntax", [EVRLE, J2K_LOSSLESS])
    def test_frames_read_by_the_worker(self, tmp_path: Path, syntax: str) -> None:
        import pickle

        import dicompressor as dp

        source = write_image(tmp_path / "mf.dcm", rows=40, cols=36, frames=5)
        if syntax != EVRLE:
            code, out, err = run("-x", "-f", source, "--output-dir", tmp_path / "j2k")
            assert code == 0, out + err
            source = tmp_path / "j2k" / "mf_jll.dcm"
        header, location = dp.read_header(source)
        out = dp._transcoded_dataset(header, raw=True)
        jobs = list(dp._frame_jobs(source, header, location, True, out))
        expected = encoded_frames(read(source)) if syntax != EVRLE else None
        for index, job in enumerate(jobs):
            assert job.data == b"" and job.stored_in == str(source) and job.spans
            assert len(pickle.dumps(job)) < 1000  # the frame is not in the job
            if expected is not None:
                assert job.stored == expected[index]
            else:
                frame = read(source).pixel_array[index]
                assert job.stored == frame.astype("<u2").tobytes()
        assert len(jobs) == 5


class TestJobOrder:
    """Each file's header is read once, by the worker that transcodes it; the log is as
    it was: files that cannot be read first, then the single-frame files, then the
    multi-frame ones (whose frames get every worker)."""

    @pytest.mark.parametrize("jobs", ["1", "2"])
    def test_unreadable_single_and_multi_frame_files(self, tmp_path: Path, jobs: str) -> None:
        folder = tmp_path / "in"
        multi = write_image(folder / "a_multi.dcm", rows=40, cols=36, frames=3)
        single = [write_image(folder / f"b{i}.dcm", seed=i) for i in range(3)]
        (folder / "c_junk.dcm").write_bytes(b"not a DICOM file at all" * 10)
        code, out, err = run("-x", "-F", folder, "--output-dir", tmp_path / "o", "--jobs", jobs)
        assert code == 3, out + err
        lines = [ln for ln in err.splitlines() if ln.startswith(("[INFO]", "[ERROR]"))]
        assert lines[0] == (
            f"[ERROR] {folder / 'c_junk.dcm'}: not a DICOM file (no DICM prefix or File Meta)"
        )
        names = [ln.split(" ")[1] for ln in lines[1:5]]
        assert names == ["b0.dcm", "b1.dcm", "b2.dcm", "a_multi.dcm"], lines
        for source in [multi, *single]:
            assert_same_pixels(source, tmp_path / "o" / f"{source.stem}_jll.dcm")
