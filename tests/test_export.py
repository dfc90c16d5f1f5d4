"""Tests of the export actions (-I png|jpg, -E), against renderings computed here.

Every expected image is computed in this file from the DICOM formulas (PS3.3 C.11.1
Modality LUT, C.11.2.1.2 / C.11.2.1.3 VOI windows, C.7.6.3.1.2 YBR_FULL, C.7.6.3.1.5
palettes), never by calling the code under test.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pydicom
import pytest
import synth
from conftest import need_module, pydicom_file
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicompressor import Options, export_png, export_video, merge


class Opts:
    """Options with the fields the coordinator adds (window, png_bits, fps, annotate)."""

    def __init__(self, **values: object) -> None:
        base = Options(jobs=int(values.pop("jobs", 1)))  # type: ignore[call-overload]
        for name in ("output_dir", "keep_beside", "in_place"):
            setattr(self, name, getattr(base, name))
        self.jobs = base.jobs
        self.window = values.pop("window", None)
        self.png_bits = values.pop("png_bits", 8)
        self.fps = values.pop("fps", None)
        self.image_format = values.pop("image_format", "png")
        self.annotate = values.pop("annotate", False)
        assert not values, values


def png(path: Path) -> np.ndarray:
    """Read an image as an array."""
    with Image.open(path) as image:
        return np.asarray(image)


def digest(paths: list[Path]) -> list[str]:
    """SHA-256 of each file."""
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


# ---- the formulas, written out independently ----


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, output 0..255."""
    out = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    out[x <= c - 0.5 - (w - 1) / 2] = 0
    out[x > c - 0.5 + (w - 1) / 2] = 255
    return out


def linear_exact(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2, output 0..255."""
    out = ((x - c) / w + 0.5) * 255
    out[x <= c - w / 2] = 0
    out[x > c + w / 2] = 255
    return out


def sigmoid(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1, output 0..255."""
    return 255 / (1 + np.exp(-4 * (x - c) / w))


def stored_values(path: Path, index: int = 0) -> np.ndarray:
    """Stored pixel values of one frame, read from the raw bytes of a native file."""
    ds = pydicom.dcmread(path)
    dtype = {(16, 0): "<u2", (16, 1): "<i2", (8, 0): "u1", (8, 1): "i1"}[
        (ds.BitsAllocated, ds.PixelRepresentation)
    ]
    frame = ds.Rows * ds.Columns
    flat = np.frombuffer(ds.PixelData, dtype=dtype)[index * frame : (index + 1) * frame]
    values = flat.astype(np.int64).reshape(ds.Rows, ds.Columns)
    bits = ds.BitsStored
    if bits < ds.BitsAllocated:
        values &= (1 << bits) - 1
        if ds.PixelRepresentation:
            values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Every pixel within 1."""
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.max() <= 1.0, (
        f"max difference {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"
    )


def rewrite(path: Path, **changes: object) -> Path:
    """Change attributes of a file in place (test data only); None deletes one."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    """A signed 12-bit CT series (rescale -1024, window 40/400)."""
    return synth.make_series(tmp_path / "ct", n=4, rows=20, cols=14)


# ---- PNG ----


class TestExportPng:
    def test_output_dir_keeps_images_of_same_named_files(self, tmp_path: Path) -> None:
        """Two folders' img.dcm into one --output-dir: both images kept; beside, replaced."""
        from conftest import run_cli

        root = tmp_path / "root"
        pixels = {}
        for seed, name in enumerate(("a", "b"), 1):
            path = synth.make_series(root / name, n=1, rows=20, cols=14, seed=seed)[0]
            path.rename(path.with_name("img.dcm"))
            pixels[name] = pydicom.dcmread(path.with_name("img.dcm")).pixel_array
        assert not np.array_equal(pixels["a"], pixels["b"])
        out = tmp_path / "out"
        code, _, err = run_cli("-I", "png", "-f", root, "--output-dir", out, "--jobs", "1")
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["img.png", "img_1.png"]
        images = {n: np.asarray(Image.open(out / n)) for n in ("img.png", "img_1.png")}
        assert not np.array_equal(images["img.png"], images["img_1.png"])
        for _ in range(2):  # beside the input a rerun replaces its own image
            code, _, err = run_cli("-I", "png", "-F", root / "a", "--jobs", "1")
            assert code == 0, err
        assert sorted(p.name for p in (root / "a").iterdir()) == ["img.dcm", "img.png"]

    def test_deflated_file(self, tmp_path: Path) -> None:
        """A Deflated Explicit VR file exports as its inflated copy does."""
        deflated = tmp_path / "dfl.dcm"
        deflated.write_bytes(pydicom_file("image_dfl.dcm").read_bytes())
        ds = pydicom.dcmread(deflated)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
        result = export_png([deflated, tmp_path / "plain.dcm"], tmp_path / "out", Opts())
        assert not result.failures, result.failures
        assert np.array_equal(png(tmp_path / "out/dfl.png"), png(tmp_path / "out/plain.png"))

    def test_monochrome2_window_and_rescale(self, ct: list[Path], tmp_path: Path) -> None:
        out = tmp_path / "out"
        result = export_png(ct, out, Opts())
        assert not result.failures
        for path in ct:
            want = linear(stored_values(path) * 1.0 - 1024, 40, 400)
            assert_close(png(out / f"{path.stem}.png"), want)

    def test_mr_sample_signed_window(self, tmp_path: Path) -> None:
        path = pydicom_file("MR_small.dcm")
        export_png([path], tmp_path, Opts())
        want = linear(stored_values(path).astype(float), 600, 1600)
        got = png(tmp_path / "MR_small.png")
        assert got.dtype == np.uint8
        assert_close(got, want)

    def test_ct_sample_range_without_window_ignores_padding(self, tmp_path: Path) -> None:
        source = pydicom_file("CT_small.dcm")
        path = tmp_path / "ct.dcm"
        ds = pydicom.dcmread(source)
        arr = ds.pixel_array.copy()
        arr[:5, :] = -2000  # PixelPaddingValue
        ds.PixelData = arr.astype("<i2").tobytes()
        ds.save_as(path, enforce_file_format=True)
        export_png([path], tmp_path / "out", Opts())
        stored = stored_values(path)
        hu = stored * 1.0 - 1024
        real = hu[stored != -2000]
        want = np.clip((hu - real.min()) / (real.max() - real.min()) * 255, 0, 255)
        got = png(tmp_path / "out" / "ct.png")
        assert_close(got, want)
        assert got[:5].max() == 0 and got.max() == 255

    def test_monochrome1_inverted(self, ct: list[Path], tmp_path: Path) -> None:
        path = rewrite(ct[0], PhotometricInterpretation="MONOCHROME1")
        export_png([path], tmp_path, Opts())
        want = 255 - linear(stored_values(path) - 1024.0, 40, 400)
        assert_close(png(tmp_path / f"{path.stem}.png"), want)

    @pytest.mark.parametrize(
        ("function", "formula"), [("LINEAR_EXACT", linear_exact), ("SIGMOID", sigmoid)]
    )
    def test_voi_lut_function(self, ct: list[Path], tmp_path: Path, function, formula) -> None:
        path = rewrite(ct[1], VOILUTFunction=function, WindowCenter="-100", WindowWidth="700")
        export_png([path], tmp_path, Opts())
        want = formula(stored_values(path) - 1024.0, -100, 700)
        assert_close(png(tmp_path / f"{path.stem}.png"), want)

    def test_window_width_one_is_a_threshold(self, ct: list[Path], tmp_path: Path) -> None:
        path = rewrite(ct[0], WindowCenter="0", WindowWidth="1")
        export_png([path], tmp_path, Opts())
        hu = stored_values(path) - 1024.0
        assert_close(png(tmp_path / f"{path.stem}.png"), np.where(hu <= -0.5, 0, 255))

    def test_window_option_overrides(self, ct: list[Path], tmp_path: Path) -> None:
        export_png(ct[:1], tmp_path, Opts(window=(-600.0, 1500.0)))
        want = linear(stored_values(ct[0]) - 1024.0, -600, 1500)
        assert_close(png(tmp_path / f"{ct[0].stem}.png"), want)

    def test_modality_lut_and_voi_lut_sequences(self, ct: list[Path], tmp_path: Path) -> None:
        path = ct[0]
        ds = pydicom.dcmread(path)
        arr = np.clip(ds.pixel_array, 0, 4095).astype("<i2")  # stored values 0..4095
        ds.PixelRepresentation = 0
        ds.PixelData = arr.astype("<u2").tobytes()
        for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType"):
            delattr(ds, keyword)
        for keyword in ("WindowCenter", "WindowWidth"):
            delattr(ds, keyword)
        modality = Dataset()
        modality.LUTDescriptor = [4096, 0, 16]
        modality_table = (np.arange(4096) * 3 // 2).astype("<u2")  # 0..6142
        modality.LUTData = modality_table.tobytes()
        modality.ModalityLUTType = "US"
        ds.ModalityLUTSequence = DicomSequence([modality])
        voi = Dataset()
        voi.LUTDescriptor = [2048, 1000, 12]
        voi_table = (np.linspace(0, 4095, 2048) ** 1.0).astype("<u2")
        voi.LUTData = voi_table.tobytes()
        ds.VOILUTSequence = DicomSequence([voi])
        ds.save_as(path, enforce_file_format=True)
        export_png([path], tmp_path, Opts())
        stored = stored_values(path)
        m = modality_table[np.clip(stored, 0, 4095)].astype(np.int64)
        want = voi_table[np.clip(m - 1000, 0, 2047)] / 4095 * 255
        assert_close(png(tmp_path / f"{path.stem}.png"), want)

    def test_rgb_sample_exact(self, tmp_path: Path) -> None:
        path = pydicom_file("examples_rgb_color.dcm")
        export_png([path], tmp_path, Opts())
        ds = pydicom.dcmread(path)
        want = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns, 3)
        if ds.get("PlanarConfiguration", 0) == 1:
            want = np.frombuffer(ds.PixelData, np.uint8).reshape(3, ds.Rows, ds.Columns)
            want = want.transpose(1, 2, 0)
        assert_close(png(tmp_path / "examples_rgb_color.png"), want.astype(float))

    def test_ybr_full_422_jpeg_to_rgb(self, tmp_path: Path) -> None:
        path = pydicom_file("examples_ybr_color.dcm")
        result = export_png([path], tmp_path, Opts(jobs=2))
        assert len(result.outputs) == 30
        for index in (0, 17, 29):
            ybr = pydicom.pixels.pixel_array(str(path), index=index, raw=True).astype(float)
            y, cb, cr = ybr[..., 0], ybr[..., 1] - 128, ybr[..., 2] - 128
            rgb = np.stack(
                [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1
            )
            got = png(tmp_path / f"examples_ybr_color_frame{index + 1:04d}.png")
            assert_close(got, np.clip(rgb, 0, 255))

    def test_palette_colour(self, tmp_path: Path) -> None:
        path = pydicom_file("examples_palette.dcm")
        export_png([path], tmp_path, Opts())
        ds = pydicom.dcmread(path)
        stored = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns)
        channels = []
        for colour in ("Red", "Green", "Blue"):
            count, first, bits = getattr(ds, f"{colour}PaletteColorLookupTableDescriptor")
            data = getattr(ds, f"{colour}PaletteColorLookupTableData")
            table = np.frombuffer(data, "<u2")[: count or 65536].astype(float)
            channels.append(table[np.clip(stored.astype(int) - first, 0, len(table) - 1)])
        want = np.stack(channels, axis=-1) / ((1 << bits) - 1) * 255
        assert_close(png(tmp_path / "examples_palette.png"), want)

    @pytest.mark.parametrize("name", ["gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"])
    def test_segmented_palette(self, tmp_path: Path, name: str) -> None:
        """Segmented tables (0028,1221-1223), little and big endian (pydicom-data's files),
        against pydicom's rendering of the original dataset."""
        path = pydicom_file(name)
        result = export_png([path], tmp_path, Opts())
        assert not result.failures, result.failures
        ds = pydicom.dcmread(path)
        want = pydicom.pixels.apply_color_lut(ds.pixel_array, ds).astype(np.float64)
        assert want.max() > 255  # 16-bit entries
        assert_close(png(result.outputs[0]), want * 255 / 65535)
        video = export_video([path], tmp_path / "video", Opts())
        assert not video.failures, video.failures
        _, frames = read_video(video.outputs[0])
        assert len(frames) == 1 and abs(frames[0].mean() - (want * 255 / 65535).mean()) < 3

    def test_palette_colour_without_its_palette_fails_in_words(self, tmp_path: Path) -> None:
        ds = pydicom.dcmread(pydicom_file("examples_palette.dcm"))
        for keyword in [k for k in ds.dir() if "PaletteColorLookupTable" in k]:
            delattr(ds, keyword)
        path = tmp_path / "in" / "no_palette.dcm"
        path.parent.mkdir()
        ds.save_as(path)
        result = export_png([path], tmp_path / "out", Opts())
        [(failed, message)] = result.failures
        assert failed == path and message.startswith("PALETTE COLOR without a Palette Color")
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []

    def test_enhanced_multiframe_per_frame_groups(self, tmp_path: Path) -> None:
        slices = synth.make_series(
            tmp_path / "pt", n=5, modality="PT", rows=18, cols=12, vary_window=True
        )
        merged = merge(slices, tmp_path / "merged", Options()).outputs[0]
        ds = pydicom.dcmread(merged, stop_before_pixels=True)
        assert "PerFrameFunctionalGroupsSequence" in ds
        out = tmp_path / "out"
        result = export_png([merged], out, Opts(jobs=2))
        assert [p.name for p in result.outputs] == [
            f"{merged.stem}_frame{i:04d}.png" for i in range(1, 6)
        ]
        for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            uid = frame.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID
            source = next(p for p in slices if pydicom.dcmread(p).SOPInstanceUID == uid)
            src = pydicom.dcmread(source)
            values = stored_values(source) * float(src.RescaleSlope) + float(src.RescaleIntercept)
            want = linear(values, float(src.WindowCenter), float(src.WindowWidth))
            assert_close(png(out / f"{merged.stem}_frame{index + 1:04d}.png"), want)

    def test_png_16_bits_modality_values(self, ct: list[Path], tmp_path: Path) -> None:
        export_png(ct[:1], tmp_path, Opts(png_bits=16))
        image = Image.open(tmp_path / f"{ct[0].stem}.png")
        got = np.asarray(image).astype(np.int64)
        # signed 12-bit stored, intercept -1024: least value -2048 - 1024 = -3072
        assert image.text["ModalityValueOffset"] == "3072"
        assert np.array_equal(got - 3072, stored_values(ct[0]) - 1024)

    def test_png_16_bits_unsigned_no_offset(self, tmp_path: Path) -> None:
        paths = synth.make_series(tmp_path / "u", n=1, signed=False, modality="MR")
        export_png(paths, tmp_path, Opts(png_bits=16))
        got = np.asarray(Image.open(tmp_path / f"{paths[0].stem}.png")).astype(np.int64)
        assert np.array_equal(got, stored_values(paths[0]))

    def test_jpg(self, ct: list[Path], tmp_path: Path) -> None:
        result = export_png(ct[:2], tmp_path, Opts(image_format="jpg"))
        assert sorted(p.name for p in result.outputs) == sorted(f"{p.stem}.jpg" for p in ct[:2])
        want = linear(stored_values(ct[0]) - 1024.0, 40, 400)
        got = png(tmp_path / f"{ct[0].stem}.jpg").astype(float)
        assert abs(got.mean() - want.mean()) < 4

    def test_beside_input_and_inputs_untouched(self, ct: list[Path]) -> None:
        before = digest(ct)
        result = export_png(ct, None, Opts(jobs=2))
        assert sorted(result.outputs) == sorted(p.with_suffix(".png") for p in ct)
        assert digest(ct) == before

    def test_jobs_give_the_same_images(self, ct: list[Path], tmp_path: Path) -> None:
        one = export_png(ct, tmp_path / "one", Opts(jobs=1)).outputs
        two = export_png(ct, tmp_path / "two", Opts(jobs=2)).outputs
        assert [png(p).tobytes() for p in one] == [png(p).tobytes() for p in two]

    def test_undecodable_file_fails_alone(self, ct: list[Path], tmp_path: Path) -> None:
        bad = tmp_path / "ct" / "bad.dcm"
        ds = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm"))
        ds.PixelData = ds.PixelData[:2000] + b"\x00" * 64 + ds.PixelData[-2000:]
        ds.save_as(bad, enforce_file_format=True)
        garbage = tmp_path / "ct" / "garbage.dcm"
        garbage.write_bytes(b"not dicom at all")
        out = tmp_path / "out"
        result = export_png([*ct, bad, garbage], out, Opts(jobs=2))
        failed = {p.name: m for p, m in result.failures}
        assert set(failed) == {"bad.dcm", "garbage.dcm"}
        assert all("\n" not in m for m in failed.values())
        assert failed["garbage.dcm"] == "not a DICOM file (no DICM prefix or File Meta)"
        names = sorted(p.name for p in out.iterdir())
        assert names == sorted(f"{p.stem}.png" for p in ct)  # no partial, no temp files

    def test_bad_options(self, ct: list[Path], tmp_path: Path) -> None:
        from dicompressor import DicomPressorError

        with pytest.raises(DicomPressorError, match="--png-bits 16 needs png, tiff or jp2"):
            export_png(ct, tmp_path, Opts(png_bits=16, image_format="jpg"))
        with pytest.raises(DicomPressorError, match="--window width must be positive"):
            export_png(ct, tmp_path, Opts(window=(40.0, 0.0)))


# ---- MP4 ----


def read_video(path: Path) -> tuple[dict, list[np.ndarray]]:
    """Read a video back: its metadata and its RGB frames."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    return meta, frames


class TestExportVideo:
    def test_multiframe_ybr_frame_rate_from_frame_time(self, tmp_path: Path) -> None:
        path = pydicom_file("examples_ybr_color.dcm")
        result = export_video([path], tmp_path, Opts(jobs=2))
        assert result.outputs == [tmp_path / "examples_ybr_color.mp4"]
        meta, frames = read_video(result.outputs[0])
        assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
        assert math.isclose(meta["fps"], 1000 / 33.333, rel_tol=1e-3)
        assert len(frames) == 30 and frames[0].shape == (240, 320, 3)
        for index in (0, 15, 29):
            source = pydicom.pixels.pixel_array(str(path), index=index)
            assert abs(frames[index].mean() - source.mean()) < 3

    def test_series_in_spatial_order_odd_size_fps_option(self, tmp_path: Path) -> None:
        folder = tmp_path / "series"
        paths = synth.make_series(folder, n=7, rows=25, cols=33, instance_order="shuffled")
        for path in paths:
            ds = pydicom.dcmread(path)
            # brightness rises along the slice normal: frame k must be the k-th slice
            z = float(ds.SliceLocation)
            stored = int(1024 + 40 - 180 + z * 10)  # HU from -180 up in 25 HU steps
            ds.PixelData = np.full((25, 33), stored, "<i2").tobytes()
            ds.save_as(path, enforce_file_format=True)
        out = tmp_path / "out"
        result = export_video(paths, out, Opts(fps=5.0))
        assert not result.failures
        assert result.outputs == [out / "DOE_JANE_series3.mp4"]
        meta, frames = read_video(result.outputs[0])
        assert meta["size"] == (34, 26) and math.isclose(meta["fps"], 5.0)
        assert len(frames) == 7
        hu = sorted(-180 + float(pydicom.dcmread(p).SliceLocation) * 10 for p in paths)
        want = linear(np.array(hu) + 40, 40, 400)
        means = [f[:25, :33].mean() for f in frames]
        assert np.all(np.abs(np.array(means) - want) < 3), (means, want)

    def test_cine_rate_and_default(self, ct: list[Path], tmp_path: Path) -> None:
        result = export_video(ct, tmp_path / "a", Opts())
        assert math.isclose(read_video(result.outputs[0])[0]["fps"], 10.0)
        for path in ct:
            rewrite(path, CineRate=25)
        result = export_video(ct, tmp_path / "b", Opts(fps=7.0))
        assert math.isclose(read_video(result.outputs[0])[0]["fps"], 25.0)

    def test_bad_slice_fails_alone(self, ct: list[Path], tmp_path: Path) -> None:
        bad = ct[2]
        ds = pydicom.dcmread(bad)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f garbage" * 8])
        ds.save_as(bad, enforce_file_format=True)
        out = tmp_path / "out"
        result = export_video(ct, out, Opts(jobs=2))
        assert [p for p, _ in result.failures] == [bad]
        _, frames = read_video(result.outputs[0])
        assert len(frames) == 3
        assert sorted(p.name for p in out.iterdir()) == ["DOE_JANE_series3.mp4"]


# ---- permissions ----


class TestOutputModes:
    """Every output follows the umask, images and videos as DICOM and text outputs do."""

    @pytest.mark.parametrize(
        "args",
        [["-I", "png"], ["-I", "jpg"], ["-I", "png", "--png-bits", "16"], ["-E"], ["-t"]],
        ids=["png", "jpg", "png16", "mp4", "text"],
    )
    def test_outputs_follow_the_umask(self, ct: list[Path], tmp_path: Path, args) -> None:
        from conftest import run_cli

        old = os.umask(0o027)
        try:
            for where in ("beside", "output-dir"):
                extra = ["--output-dir", tmp_path / "out"] if where == "output-dir" else []
                code, out, err = run_cli(*args, "-F", ct[0].parent, "--jobs", "2", *extra)
                assert code == 0, out + err
        finally:
            os.umask(old)
        made = [
            p
            for p in [*ct[0].parent.iterdir(), *(tmp_path / "out").iterdir()]
            if p not in ct and p.is_file()
        ]
        assert len(made) >= 2, made
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in made}
        assert set(modes.values()) == {"0o640"}, modes


# ---- one VOI per video, one range per file ----


def ramp_file(folder: Path, frames: int = 12, *, vector_ms: float | None = 50.0) -> Path:
    """A multi-frame MONOCHROME2 file without a window: frame k holds 100 k + column."""
    [path] = synth.make_series(folder, n=1, rows=16, cols=16, modality="OT", signed=False)
    ds = pydicom.dcmread(path)
    columns = np.arange(16, dtype=np.uint16)
    stack = np.stack([np.tile(columns + 100 * k, (16, 1)) for k in range(frames)])
    ds.NumberOfFrames = frames
    ds.PixelData = stack.astype("<u2").tobytes()
    if vector_ms is not None:
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTimeVector")
        ds.FrameTimeVector = [0.0] + [vector_ms] * (frames - 1)
    ds.save_as(path, enforce_file_format=True)
    return path


class TestSharedVoi:
    """A video has one VOI; the frames of one file exported as images share one range."""

    def test_video_keeps_brightness_and_frame_time_vector(self, tmp_path: Path) -> None:
        path = ramp_file(tmp_path / "ramp")
        result = export_video([path], tmp_path / "out", Opts())
        assert not result.failures, result.failures
        meta, frames = read_video(result.outputs[0])
        assert math.isclose(meta["fps"], 20.0)  # 50 ms per frame
        assert len(frames) == 12
        high = 100 * 11 + 15
        want = [(100 * k + 7.5) * 255 / high for k in range(12)]
        means = [float(f.mean()) for f in frames]
        assert np.all(np.abs(np.array(means) - want) < 3), (means, want)

    def test_images_of_one_file_share_its_range(self, tmp_path: Path) -> None:
        path = ramp_file(tmp_path / "ramp", frames=4, vector_ms=None)
        result = export_png([path], tmp_path / "out", Opts(jobs=2))
        assert not result.failures, result.failures
        assert len(result.outputs) == 4
        high = 100 * 3 + 15
        for k, image in enumerate(result.outputs):
            values = np.tile(np.arange(16) + 100 * k, (16, 1)).astype(np.float64)
            assert_close(png(image), values * 255 / high)

    def test_series_video_has_its_first_slice_window(self, tmp_path: Path) -> None:
        paths = synth.make_series(tmp_path / "s", n=5, rows=16, cols=16, vary_window=True)
        for path in paths:  # every slice 0 HU (stored 1024): windows 40/400 .. 60/440
            rewrite(path, PixelData=np.full((16, 16), 1024, "<i2").tobytes())
        result = export_video(paths, tmp_path / "out", Opts())
        _, frames = read_video(result.outputs[0])
        first = linear(np.array([0.0]), 40, 400)[0]  # the first slice's window, every frame
        means = [float(f.mean()) for f in frames]
        assert np.all(np.abs(np.array(means) - first) < 2), (means, first)

    def test_window_option_still_wins(self, tmp_path: Path) -> None:
        path = ramp_file(tmp_path / "ramp", frames=3)
        result = export_png([path], tmp_path / "out", Opts(window=(100, 200)))
        for k, image in enumerate(result.outputs):
            values = np.tile(np.arange(16) + 100 * k, (16, 1)).astype(np.float64)
            assert_close(png(image), linear(values, 100, 200))


# ---- image formats (-I TYPE) ----


#: Every spelling -I takes, and the suffix of what it writes.
SPELLINGS = {
    "png": ".png", "PNG": ".png", "jpg": ".jpg", "JPG": ".jpg", "jpeg": ".jpg", "Jpeg": ".jpg",
    "bmp": ".bmp", "BMP": ".bmp", "tiff": ".tiff", "TIFF": ".tiff", "tif": ".tiff",
    "TIF": ".tiff", "jp2": ".jp2", "JP2": ".jp2", "jpeg2000": ".jp2", "JPEG2000": ".jp2",
}  # fmt: skip

LOSSLESS = ("png", "bmp", "tiff", "jp2")

FORMATS_MESSAGE = (
    "takes one of png, jpg, bmp, tiff, jp2 (also jpeg, tif, jpeg2000; upper or lower case)"
)


def openjpeg_pixels(path: Path) -> np.ndarray:
    """Decode a JP2 file with openjpeg (pylibjpeg-openjpeg), the second reader."""
    import openjpeg

    return np.asarray(openjpeg.decode(path.read_bytes()))


def deep_colour(path: Path) -> np.ndarray:
    """Read a 16-bit colour PNG or TIFF whole (Pillow reads them as 8 bits): libpng or
    libtiff through imagecodecs."""
    imagecodecs = need_module("imagecodecs", "imagecodecs")
    decode = imagecodecs.png_decode if path.suffix == ".png" else imagecodecs.tiff_decode
    return np.asarray(decode(path.read_bytes()))


def cli(*args: str | Path) -> tuple[int, str]:
    """Run main() in this process; return (exit code, stderr's last line)."""
    from conftest import run_main

    code, _, err = run_main(*args)
    lines = err.strip().splitlines()
    return code, lines[-1] if lines else ""


class TestImageFormats:
    """-I png, jpg, bmp, tiff, jp2 (and jpeg, tif, jpeg2000) in any case."""

    @pytest.mark.parametrize("spelling", list(SPELLINGS))
    def test_every_spelling(self, spelling: str, ct: list[Path], tmp_path: Path) -> None:
        reference = export_png(ct[:2], tmp_path / "ref", Opts()).outputs
        out = tmp_path / "out"
        code, line = cli("-I", spelling, "-F", ct[0].parent, "--output-dir", out, "--jobs", "1")
        assert code == 0, line
        suffix = SPELLINGS[spelling]
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}{suffix}" for p in ct)
        for ref in reference:
            path = out / f"{ref.stem}{suffix}"
            with Image.open(path) as image:
                assert image.size == (14, 20)
                assert image.format == {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP"}.get(
                    suffix, {".tiff": "TIFF", ".jp2": "JPEG2000"}.get(suffix)
                )
            got = png(path)
            if suffix == ".jpg":
                assert abs(got.astype(float).mean() - png(ref).mean()) < 4
                continue
            assert np.array_equal(got, png(ref)), spelling  # lossless: the PNG's values
            if suffix == ".jp2":
                assert path.read_bytes()[4:12] == b"jP  \r\n\x87\n"  # a JP2 file (signature)
                assert np.array_equal(openjpeg_pixels(path), png(ref))

    @pytest.mark.parametrize("image_format", LOSSLESS)
    def test_colour_and_frames_as_the_png(self, image_format: str, tmp_path: Path) -> None:
        colour, frames = pydicom_file("SC_rgb.dcm"), pydicom_file("emri_small.dcm")
        reference = export_png([colour, frames], tmp_path / "ref", Opts(jobs=2)).outputs
        result = export_png(
            [colour, frames], tmp_path / "out", Opts(jobs=2, image_format=image_format)
        )
        suffix = SPELLINGS[image_format]
        assert [p.name for p in result.outputs] == [p.stem + suffix for p in reference]
        assert result.outputs[1].name == f"emri_small_frame0001{suffix}"
        for ref, path in zip(reference, result.outputs, strict=True):
            assert np.array_equal(png(path), png(ref)), path.name
            if image_format == "jp2":
                assert np.array_equal(openjpeg_pixels(path), png(ref)), path.name
        with Image.open(result.outputs[0]) as image:
            assert image.mode == "RGB"

    def test_16_bits_grey_same_values(self, ct: list[Path], tmp_path: Path) -> None:
        outputs = {
            f: export_png(ct[:1], tmp_path / f, Opts(png_bits=16, image_format=f)).outputs[0]
            for f in ("png", "tiff", "jp2")
        }
        want = stored_values(ct[0]) - 1024 + 3072  # modality values plus the offset
        for image_format, path in outputs.items():
            with Image.open(path) as image:
                assert image.mode == "I;16", image_format
                got = np.asarray(image).astype(np.int64)
            assert np.array_equal(got, want), image_format
        assert np.array_equal(openjpeg_pixels(outputs["jp2"]), want)
        with Image.open(outputs["tiff"]) as image:
            assert image.tag_v2[270] == "modality value = TIFF value - 3072"
        assert b"modality value = JPEG 2000 value - 3072" in outputs["jp2"].read_bytes()

    def test_16_bits_colour_same_values(self, tmp_path: Path) -> None:
        path = pydicom_file("SC_rgb_16bit.dcm")
        want = pydicom.dcmread(path).pixel_array  # 16 bits stored: the values themselves
        assert want.dtype == np.uint16 and int(want.max()) > 255
        got = {}
        for image_format in ("png", "tiff", "jp2"):
            options = Opts(png_bits=16, image_format=image_format)
            [output] = export_png([path], tmp_path / image_format, options).outputs
            with Image.open(output) as image:  # Pillow opens each
                assert image.size == (100, 100)
            got[image_format] = (
                openjpeg_pixels(output) if image_format == "jp2" else deep_colour(output)
            )
        for image_format, values in got.items():
            assert values.dtype == np.uint16, image_format
            assert np.array_equal(values, want), image_format

    def test_16_bits_colour_jp2_needs_32_pixels(self, tmp_path: Path) -> None:
        path = pydicom_file("SC_rgb_small_odd.dcm")  # 3 x 3 RGB
        result = export_png([path], tmp_path, Opts(png_bits=16, image_format="jp2"))
        assert result.failures == [
            (
                path,
                "JPEG 2000 of 16-bit colour goes through openjpeg, which needs at least 32 "
                "pixels on each side, not 3 x 3: export it as png or tiff",
            )
        ]
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize(("spelling", "name"), [("jpg", "JPEG"), ("BMP", "BMP")])
    def test_16_bits_needs_a_wide_format(
        self, spelling: str, name: str, ct: list[Path], tmp_path: Path
    ) -> None:
        code, line = cli("-I", spelling, "--png-bits", "16", "-f", ct[0])
        assert (code, line) == (
            2,
            f"dicompressor: error: --png-bits 16 needs png, tiff or jp2 output: {name} holds "
            "8 bits",
        )
        from dicompressor import HTTPError, process_request

        with pytest.raises(HTTPError) as caught:
            process_request(
                {"action": "export_png", "options": {"image_format": spelling, "png_bits": 16}},
                tmp_path,
            )
        assert caught.value.message == line.removeprefix("dicompressor: error: ").replace(
            "--png-bits", "options.png_bits"
        )

    @pytest.mark.parametrize("flag", ["-I", "-i"])
    @pytest.mark.parametrize("spelling", ["gif", "XYZ", "webp", "j2k"])
    def test_unknown_type_is_refused(
        self, flag: str, spelling: str, ct: list[Path], tmp_path: Path
    ) -> None:
        """The original wrote a JPEG for any other TYPE; here it is a usage error."""
        code, line = cli(flag, spelling, "-F", ct[0].parent)
        assert code == 2
        assert line == f"dicompressor: error: unknown image format '{spelling}': {flag} " + (
            FORMATS_MESSAGE
        )
        assert sorted(p.name for p in ct[0].parent.iterdir()) == sorted(p.name for p in ct)
        from dicompressor import HTTPError, process_request

        with pytest.raises(HTTPError) as caught:
            process_request(
                {"action": "export_png", "options": {"image_format": spelling}}, tmp_path
            )
        assert caught.value.status == 400
        assert caught.value.message == (
            f"unknown image format '{spelling}': options.image_format " + FORMATS_MESSAGE
        )


# ---- annotated exports (-i TYPE, -e) ----


def changed_box(plain: np.ndarray, annotated: np.ndarray) -> tuple[int, int, int, int]:
    """Return (top, left, bottom, right) of the pixels that differ, inclusive."""
    assert plain.shape == annotated.shape
    differs = plain != annotated
    if differs.ndim == 3:
        differs = differs.any(axis=2)
    rows, columns = np.nonzero(differs)
    assert rows.size, "the annotated image is the plain one"
    return int(rows.min()), int(columns.min()), int(rows.max()), int(columns.max())


def flat_slice(folder: Path, rows: int, cols: int, **kwargs: object) -> Path:
    """One CT slice of 40 HU everywhere (window 40/400: grey 128)."""
    [path] = synth.make_series(folder, n=1, rows=rows, cols=cols, **kwargs)
    return rewrite(path, PixelData=np.full((rows, cols), 1024 + 40, "<i2").tobytes())


class TestAnnotatedImages:
    """-i: -I with PatientName | PatientID | StudyDate on a black box at the top left."""

    def test_only_the_box_differs(self, tmp_path: Path) -> None:
        paths = synth.make_series(tmp_path / "s", n=2, rows=96, cols=128)
        plain = export_png(paths, tmp_path / "plain", Opts()).outputs
        annotated = export_png(paths, tmp_path / "ann", Opts(annotate=True, jobs=2)).outputs
        assert [p.name for p in annotated] == [p.name for p in plain]
        for before, after in zip(plain, annotated, strict=True):
            a, b = png(before), png(after)
            top, left, bottom, right = changed_box(a, b)
            size = 10  # the least font size: 96 / 32 is smaller
            assert 1 <= top <= size // 2 and 1 <= left <= size // 2  # a margin, inside
            assert bottom < 2 * size + 2 and right < 128 - 1  # one line, inside the width
            outside = np.ones(a.shape, bool)
            outside[top : bottom + 1, left : right + 1] = False
            assert np.array_equal(a[outside], b[outside])  # -I's pixels everywhere else
            box = b[top : bottom + 1, left : right + 1]
            edges = [box[0], box[-1], box[:, 0], box[:, -1]]
            assert all(np.all(edge == 0) for edge in edges)  # a black backing box
            assert box.max() >= 240 and (box == 0).mean() > 0.5  # white text on it

    def test_box_height_scales_with_the_image(self, tmp_path: Path) -> None:
        heights = {}
        for side in (320, 640):
            path = flat_slice(tmp_path / str(side), side, side)
            plain = export_png([path], tmp_path / f"p{side}", Opts()).outputs[0]
            annotated = export_png([path], tmp_path / f"a{side}", Opts(annotate=True)).outputs[0]
            top, left, bottom, right = changed_box(png(plain), png(annotated))
            heights[side] = bottom - top + 1
            assert top >= 1 and left >= 1 and bottom < side - 1 and right < side - 1
        assert heights[320] >= 12  # legible: a 10-pixel font and its padding
        assert 1.8 <= heights[640] / heights[320] <= 2.2, heights

    def test_long_name_is_shortened_inside_the_image(self, tmp_path: Path) -> None:
        name = "VERYLONGFAMILYNAME^JOHANNES^MARIA^DR^JR"
        path = flat_slice(tmp_path / "s", 128, 160, patient=name)
        plain = export_png([path], tmp_path / "p", Opts()).outputs[0]
        annotated = export_png([path], tmp_path / "a", Opts(annotate=True)).outputs[0]
        _, _, _, right = changed_box(png(plain), png(annotated))
        assert 150 <= right < 160 - 1  # filled to the width, and no further

    def test_colour_jpeg_and_every_frame(self, tmp_path: Path) -> None:
        colour, frames = pydicom_file("SC_rgb.dcm"), pydicom_file("emri_small.dcm")
        plain = export_png([colour, frames], tmp_path / "p", Opts(jobs=2)).outputs
        annotated = export_png(
            [colour, frames], tmp_path / "a", Opts(jobs=2, annotate=True)
        ).outputs
        assert len(annotated) == 11
        for before, after in zip(plain, annotated, strict=True):  # every frame has it
            a, b = png(before), png(after)
            top, left, bottom, right = changed_box(a, b)
            assert bottom < 24 and (top, left) <= (3, 3)
            assert np.all(b[top, left : right + 1] == 0)
        options = Options(image_format="JPEG", annotate=True, jobs=1)  # library callers too
        jpegs = export_png([colour], tmp_path / "j", options)
        plain_jpeg = export_png([colour], tmp_path / "pj", Opts(image_format="jpg"))
        a, b = png(plain_jpeg.outputs[0]).astype(float), png(jpegs.outputs[0]).astype(float)
        assert np.abs(a[:16, :60] - b[:16, :60]).mean() > 30  # the box is there
        assert np.abs(a[32:] - b[32:]).mean() < 0.5  # JPEG blocks further down are not

    def test_fields_shown_readably(self) -> None:
        from dicompressor import annotation_fields

        ds = Dataset()
        ds.PatientName = "Doe^John^A^Dr^Jr"
        ds.PatientID = "12\n34\x1b"
        ds.StudyDate = "20240131"
        assert annotation_fields(ds, ("PatientName", "PatientID", "StudyDate")) == (
            "Doe, Dr John A Jr",
            "12 34",
            "2024-01-31",
        )
        ds.PatientName = "=山田^太郎"  # only the ideographic group
        ds.StudyDate = ""
        assert annotation_fields(ds, ("PatientName", "StudyDate", "AccessionNumber")) == (
            "山田, 太郎",
            "-",
            "-",
        )
        ds.PatientName = "Doe"
        assert annotation_fields(ds, ("PatientName",)) == ("Doe",)

    def test_fit_keeps_id_and_date(self) -> None:
        from dicompressor import annotation_font, fit_fields

        font = annotation_font(12)
        fields = ("Verylongfamilyname, Johannes Maria", "PID001", "2024-01-31")
        whole = font.getlength(" | ".join(fields))
        fitted = fit_fields(fields, font, whole - 40)
        assert fitted.endswith("… | PID001 | 2024-01-31")
        assert font.getlength(fitted) <= whole - 40
        narrow = fit_fields(fields, font, font.getlength("PID001 | 20"))
        assert narrow.endswith("…") and font.getlength(narrow) <= font.getlength("PID001 | 20")
        assert fit_fields(fields, font, 2) == ""
        assert fit_fields(fields, font, whole) == " | ".join(fields)

    def test_no_font_file_is_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Pillow's bundled font, from memory: no font file is asked for by path."""
        import inspect

        from PIL import ImageFont

        import dicompressor

        asked: list[object] = []
        real = ImageFont.truetype

        def truetype(font: object = None, *args: object, **kwargs: object) -> object:
            asked.append(font)
            return real(font, *args, **kwargs)

        monkeypatch.setattr(ImageFont, "truetype", truetype)
        dicompressor.annotation_font.cache_clear()
        try:
            image = dicompressor.annotate_frame(np.full((64, 64), 128, np.uint8), ("DOE", "1"))
        finally:
            dicompressor.annotation_font.cache_clear()
        assert (image == 0).any() and image.max() >= 240
        assert asked and not any(isinstance(f, (str, os.PathLike)) for f in asked), asked
        source = inspect.getsource(dicompressor)
        assert ".ttf" not in source and "truetype(" not in source

    def test_16_bits_are_refused(self, ct: list[Path], tmp_path: Path) -> None:
        """16-bit output holds modality values: no text is drawn into them."""
        code, line = cli("-i", "png", "--png-bits", "16", "-f", ct[0])
        assert (code, line) == (
            2,
            "dicompressor: error: --png-bits 16 gives modality values, not a display image: "
            "annotations are drawn on 8-bit images only",
        )
        from dicompressor import HTTPError, process_request

        with pytest.raises(HTTPError) as caught:
            process_request(
                {"action": "export_png", "options": {"annotate": True, "png_bits": 16}},
                tmp_path,
            )
        assert caught.value.message == (
            "options.png_bits 16 gives modality values, not a display image: annotations are "
            "drawn on 8-bit images only"
        )

    def test_cli_flag(self, tmp_path: Path) -> None:
        path = flat_slice(tmp_path / "s", 64, 64)
        code, line = cli("-i", "TIF", "-f", path, "--output-dir", tmp_path / "i", "--jobs", "1")
        assert code == 0, line
        code, line = cli("-I", "tif", "-f", path, "--output-dir", tmp_path / "I", "--jobs", "1")
        assert code == 0, line
        name = f"{path.stem}.tiff"
        changed_box(png(tmp_path / "I" / name), png(tmp_path / "i" / name))


class TestAnnotatedVideo:
    """-e: -E with PatientName | PatientID on every frame."""

    def test_top_left_differs_rest_close(self, tmp_path: Path) -> None:
        paths = synth.make_series(tmp_path / "s", n=4, rows=96, cols=128)
        ramp = np.tile(np.linspace(1024 - 160, 1024 + 240, 128).astype("<i2"), (96, 1))
        for path in paths:  # a smooth picture, so H.264 keeps it close
            rewrite(path, PixelData=ramp.tobytes())
        plain = export_video(paths, tmp_path / "p", Opts()).outputs
        annotated = export_video(paths, tmp_path / "a", Opts(annotate=True, jobs=2)).outputs
        assert [p.name for p in annotated] == [p.name for p in plain] == ["DOE_JANE_series3.mp4"]
        _, before = read_video(plain[0])
        _, after = read_video(annotated[0])
        assert len(after) == len(before) == 4
        for a, b in zip(before, after, strict=True):
            a, b = a.astype(float), b.astype(float)
            assert np.abs(a[2:14, 2:60] - b[2:14, 2:60]).mean() > 40  # the box and its text
            assert np.abs(a[32:] - b[32:]).mean() < 1.5  # the rest as -E has it

    def test_stored_h264_is_decoded_and_drawn_on(self, tmp_path: Path) -> None:
        """-E copies a stored H.264 stream; -e must decode it to draw, and encode again."""
        from conftest import run_main

        clip = tmp_path / "in" / "clip.mp4"
        clip.parent.mkdir()
        argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                "color=c=0x808080:size=128x96:rate=10", "-frames:v", "6", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", str(clip)]  # fmt: skip
        import subprocess

        subprocess.run(argv, check=True, capture_output=True)
        params = tmp_path / "params.txt"
        params.write_text("PatientName=DOE^JOHN\nPatientID=ID42\n")
        assert run_main("-v", "-f", clip, "--params", params, "--quiet")[0] == 0
        dicom = clip.with_suffix(".dcm")
        for flag in ("-E", "-e"):
            code, out, err = run_main(flag, "-f", dicom, "--output-dir", tmp_path / flag)
            assert code == 0, out + err
        copied, drawn = tmp_path / "-E" / "clip.mp4", tmp_path / "-e" / "clip.mp4"
        _, source = read_video(clip)
        _, before = read_video(copied)
        _, after = read_video(drawn)
        assert len(after) == len(before) == 6
        assert all(np.array_equal(a, s) for a, s in zip(before, source, strict=True))  # copied
        for a, b in zip(before, after, strict=True):
            a, b = a.astype(float), b.astype(float)
            assert np.abs(a[2:14, 2:60] - b[2:14, 2:60]).mean() > 40
            assert np.abs(a[32:] - b[32:]).mean() < 1.5
