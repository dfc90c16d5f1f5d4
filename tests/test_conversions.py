"""The conversions of the original DicomPressor's command line (issue 19): images and
videos to DICOM (-w, -W, -v), Part 10 and bare datasets (-p, -n), byte order (-l, -b)
and a DICOMDIR in the parent folder (-D). Every DICOM output is read back with pydicom
and checked with dciodvfy; the round trips are compared byte for byte."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pydicom
import pytest
import synth
from conftest import RELAXED, Running, dciodvfy_errors, run_main, tool_exit_code
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.fileset import FileSet
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

import dicompressor as dp

SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def ok(*args: str | Path) -> str:
    """Run the command line in this process; assert exit 0; return stderr (the log)."""
    code, out, err = run_main(*args, "--jobs", "1")
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return err


def valid(path: Path) -> Dataset:
    """Read a DICOM output back, check it with dciodvfy (no errors); return it."""
    ds = pydicom.dcmread(path)
    assert dciodvfy_errors(path) == [], path.name
    return ds


def valid_as(path: Path, source: Path) -> Dataset:
    """Read a converted file back; dciodvfy finds in it what it finds in its source, no more."""
    ds = pydicom.dcmread(path)
    assert dciodvfy_errors(path) == dciodvfy_errors(source), path.name
    return ds


def dataset_bytes(path: Path) -> bytes:
    """Return the dataset of a Part 10 file (what follows the File Meta), or a bare file."""
    data = path.read_bytes()
    return data[dp.meta_end(data) :] if data[128:132] == b"DICM" else data


def rgb(seed: int, rows: int = 24, cols: int = 32) -> np.ndarray:
    """Return random RGB pixels."""
    return np.random.default_rng(seed).integers(0, 256, (rows, cols, 3), dtype=np.uint8)


def make_video(
    path: Path, *, frames: int = 12, rate: int = 10, args: tuple[str, ...] = ()
) -> Path:
    """Make a small test video with the real ffmpeg (64 x 48, a moving test pattern)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=64x48:rate={rate}",
            *args, "-frames:v", str(frames), str(path)]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True)
    return path


def ffmpeg_frames(path: Path) -> np.ndarray:
    """Decode a video to RGB frames with ffmpeg itself (the reference)."""
    reader = imageio_ffmpeg.read_frames(str(path), output_params=["-fps_mode", "passthrough"])
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


H264 = ("-c:v", "libx264", "-pix_fmt", "yuv420p")


# ---- images to DICOM (-w, -W) ----


class TestImageToDicom:
    """-w: one single-frame Secondary Capture per image, pixels as the image holds them."""

    def test_kinds_of_images(self, tmp_path: Path) -> None:
        folder = tmp_path / "photos"
        folder.mkdir()
        colour, grey = rgb(1), rgb(2)[..., 0]
        deep = np.random.default_rng(3).integers(0, 65536, (24, 32)).astype(np.uint16)
        Image.fromarray(colour).save(folder / "colour.png")
        Image.fromarray(grey).save(folder / "grey.bmp")
        Image.fromarray(deep).save(folder / "deep.png")  # 16-bit grey (mode I;16)
        Image.fromarray(colour).save(folder / "colour.tif")
        Image.fromarray(colour).save(folder / "colour.jp2", irreversible=False)
        Image.fromarray(colour).save(folder / "photo.jpg", quality=90)
        (folder / "notes.txt").write_text("not an image")
        log = ok("-w", "-F", folder)
        assert "[ERROR]" not in log
        made = sorted(p.name for p in folder.glob("*.dcm"))
        # colour.png and colour.tif and colour.jp2 share a stem: never overwritten
        assert made == ["colour.dcm", "colour_1.dcm", "colour_2.dcm", "deep.dcm", "grey.dcm",
                        "photo.dcm"]  # fmt: skip
        datasets = {p.name: valid(p) for p in folder.glob("*.dcm")}
        for name in ("colour.dcm", "colour_1.dcm", "colour_2.dcm"):  # png, jp2 (lossless), tif
            ds = datasets[name]
            assert (ds.SOPClassUID, ds.PhotometricInterpretation) == (SC_IMAGE, "RGB")
            np.testing.assert_array_equal(ds.pixel_array, colour)
        g = datasets["grey.dcm"]
        assert (g.PhotometricInterpretation, g.BitsAllocated, g.BitsStored) == (
            "MONOCHROME2",
            8,
            8,
        )
        np.testing.assert_array_equal(g.pixel_array, grey)
        d = datasets["deep.dcm"]
        assert (d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation) == (16, 16, 15, 0)
        np.testing.assert_array_equal(d.pixel_array, deep)  # 16 bits kept, not clipped
        jpeg = np.asarray(Image.open(folder / "photo.jpg").convert("RGB"))
        np.testing.assert_array_equal(datasets["photo.dcm"].pixel_array, jpeg)
        # one study and one series for the folder, instances numbered in name order
        assert len({ds.StudyInstanceUID for ds in datasets.values()}) == 1
        assert len({ds.SeriesInstanceUID for ds in datasets.values()}) == 1
        assert sorted(int(ds.InstanceNumber) for ds in datasets.values()) == [1, 2, 3, 4, 5, 6]
        for ds in datasets.values():
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert (ds.ConversionType, ds.Modality, ds.BurnedInAnnotation) == ("WSD", "OT", "YES")

    def test_palette_alpha_and_orientation(self, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        folder.mkdir()
        colour = rgb(4)
        Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "p.png")
        opaque = np.dstack([colour, np.full(colour.shape[:2], 255, np.uint8)])
        Image.fromarray(opaque, "RGBA").save(folder / "opaque.png")
        half = np.dstack([colour, np.full(colour.shape[:2], 128, np.uint8)])
        Image.fromarray(half, "RGBA").save(folder / "half.png")
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 clockwise to show
        Image.fromarray(colour).save(folder / "phone.jpg", quality=95, exif=exif.tobytes())
        log = ok("-w", "-F", folder)
        palette = valid(folder / "p.dcm")
        expected = np.asarray(Image.open(folder / "p.png").convert("RGB"))
        assert palette.PhotometricInterpretation == "RGB"  # colour kept, not forced to grey
        np.testing.assert_array_equal(palette.pixel_array, expected)
        np.testing.assert_array_equal(valid(folder / "opaque.dcm").pixel_array, colour)
        composited = (colour.astype(np.uint32) * 128 + 127) // 255
        np.testing.assert_array_equal(valid(folder / "half.dcm").pixel_array, composited)
        assert "[WARNING] half.png: transparent pixels composited onto black" in log
        assert "opaque.png:" not in log
        phone = valid(folder / "phone.dcm")
        assert (phone.Rows, phone.Columns) == (32, 24)  # stands as it is shown

    def test_unreadable_images_fail_by_name(self, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        folder.mkdir()
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        Image.fromarray(rgb(5)).save(folder / "good.png")
        code, out, err = run_main("-w", "-F", folder)
        assert code == dp.EXIT_PARTIAL
        assert f"[ERROR] {folder / 'broken.png'}: " in err
        assert (folder / "good.dcm").is_file() and not (folder / "broken.dcm").exists()

    def test_other_modes(self, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        folder.mkdir()
        bits = rgb(6)[..., 0] > 127
        Image.fromarray(bits).save(folder / "bilevel.png")  # mode 1
        Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(folder / "float.tif")  # mode F
        code, _, err = run_main("-w", "-F", folder)
        assert code == dp.EXIT_PARTIAL
        assert (
            f"[ERROR] {folder / 'float.tif'}: floating-point pixels (mode F): no Secondary "
            "Capture IOD stores them"
        ) in err
        ds = valid(folder / "bilevel.dcm")
        np.testing.assert_array_equal(ds.pixel_array, bits.astype(np.uint8) * 255)

    def test_16_bit_colour_png_says_so(self, tmp_path: Path) -> None:
        deep = np.random.default_rng(1).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
        (tmp_path / "deep.png").write_bytes(dp.png16_rgb_bytes(deep))
        log = ok("-w", "-f", tmp_path / "deep.png")
        assert "[WARNING] deep.png: 16-bit colour reduced to 8 bits" in log
        ds = valid(tmp_path / "deep.dcm")
        np.testing.assert_array_equal(ds.pixel_array, (deep >> 8).astype(np.uint8))

    def test_jpeg2000_without_pillow_plugin(self, tmp_path: Path) -> None:
        """The pylibjpeg-openjpeg path reads what Pillow's plugin reads."""
        colour, deep = rgb(7), (rgb(8)[..., 0].astype(np.uint16) * 257)
        Image.fromarray(colour).save(tmp_path / "c.jp2", irreversible=False)
        Image.fromarray(deep).save(tmp_path / "d.jp2", irreversible=False)
        for name, pixels in (("c.jp2", colour), ("d.jp2", deep)):
            direct = dp._openjpeg_image(tmp_path / name)
            np.testing.assert_array_equal(direct.array, pixels)
            np.testing.assert_array_equal(dp.read_image(tmp_path / name).array, pixels)

    def test_export_keeps_the_source_image(self, tmp_path: Path) -> None:
        """-I png of photo.dcm (made from photo.png) writes photo_1.png, not over photo.png."""
        Image.fromarray(rgb(9)).save(tmp_path / "photo.png")
        before = (tmp_path / "photo.png").read_bytes()
        ok("-w", "-f", tmp_path / "photo.png")
        for _ in range(2):  # a rerun replaces its own export
            ok("-I", "png", "-f", tmp_path / "photo.dcm")
        assert (tmp_path / "photo.png").read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "photo.dcm", "photo.png", "photo_1.png"
        ]  # fmt: skip
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "photo_1.png")), rgb(9))

    def test_batch_marker(self, tmp_path: Path) -> None:
        folder = tmp_path / "root" / "photos"
        folder.mkdir(parents=True)
        Image.fromarray(rgb(1)).save(folder / "a.png")
        ok("-w", "-f", tmp_path / "root", "--skip-if-done")
        code, out, _ = run_main("-w", "-f", tmp_path / "root", "--skip-if-done")
        assert (code, out.strip()) == (0, f"SKIPPED (already processed) {folder}")
        marker = json.loads((folder / dp.DONE_MARKER).read_text())
        assert (marker["action"], marker["inputs"]) == ("image_to_dicom", 1)
        assert sorted(p.name for p in folder.iterdir()) == [dp.DONE_MARKER, "a.dcm", "a.png"]


class TestImagesToMultiframe:
    """-W: one multi-frame Secondary Capture per folder, its class from the pixels."""

    @pytest.mark.parametrize(
        ("mode", "sop_class"),
        [("RGB", dp.MF_TRUE_COLOR_SC), ("L", dp.MF_GRAY_BYTE_SC), ("I;16", dp.MF_GRAY_WORD_SC)],
    )
    def test_class_per_pixels(self, tmp_path: Path, mode: str, sop_class: str) -> None:
        folder = tmp_path / "in"
        folder.mkdir()
        frames = []
        for index in (10, 2, 1):  # name order compares the numbers
            pixels = rgb(index) if mode == "RGB" else rgb(index)[..., 0]
            if mode == "I;16":
                pixels = pixels.astype(np.uint16) * 257
            Image.fromarray(pixels).save(folder / f"img{index}.png")
            frames.append((index, pixels))
        ok("-W", "-F", folder)
        ds = valid(folder / "multiframe.dcm")
        assert ds.SOPClassUID == sop_class
        assert int(ds.NumberOfFrames) == 3
        assert ds.FrameIncrementPointer == pydicom.tag.Tag("PageNumberVector")
        expected = np.stack([p for _, p in sorted(frames)])  # img1, img2, img10
        np.testing.assert_array_equal(ds.pixel_array, expected)

    def test_other_size_or_kind_refused_by_name(self, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        folder.mkdir()
        Image.fromarray(rgb(1)).save(folder / "a.png")
        Image.fromarray(rgb(2, rows=30)).save(folder / "b.png")
        Image.fromarray(rgb(3)[..., 0]).save(folder / "c.png")
        Image.fromarray(rgb(4)).save(folder / "d.png")
        code, _, err = run_main("-W", "-F", folder)
        assert code == dp.EXIT_PARTIAL
        errors = sorted(line for line in err.splitlines() if line.startswith("[ERROR]"))
        assert errors == [
            f"[ERROR] {folder / 'b.png'}: 32 x 30 pixels, the first image (a.png) has 32 x 24: "
            "the frames of one file must have one size (images are not resized)",
            f"[ERROR] {folder / 'c.png'}: grey 8-bit pixels, the first image (a.png) is RGB "
            "8-bit: the frames of one file must be alike",
        ]
        ds = valid(folder / "multiframe.dcm")
        np.testing.assert_array_equal(ds.pixel_array, np.stack([rgb(1), rgb(4)]))

    def test_one_file_per_folder(self, tmp_path: Path) -> None:
        for name in ("x", "y"):
            (tmp_path / "root" / name).mkdir(parents=True)
            for index in range(2):
                Image.fromarray(rgb(index)).save(tmp_path / "root" / name / f"{index}.png")
        ok("-W", "-f", tmp_path / "root")
        first, second = (valid(tmp_path / "root" / n / "multiframe.dcm") for n in ("x", "y"))
        assert first.StudyInstanceUID != second.StudyInstanceUID  # a study per folder


class TestParams:
    """--params sets patient and study values on -w, -W and -v outputs."""

    def test_values_set(self, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        folder.mkdir()
        for index in range(2):
            Image.fromarray(rgb(index)).save(folder / f"{index}.png")
        params = tmp_path / "p.txt"
        study = generate_uid()
        params.write_text(
            "# patient\nPatientName=DOE^JANE\n(0010,0020)=PID7\n0008 1030 LO Wound photos\n"
            f"StudyInstanceUID={study}\nBurnedInAnnotation=NO\nPatientComments=Zoë\n",
            encoding="utf-8",
        )
        ok("-w", "-F", folder, "--params", params)
        for index in range(2):
            ds = valid(folder / f"{index}.dcm")
            assert (str(ds.PatientName), ds.PatientID, ds.StudyDescription) == (
                "DOE^JANE", "PID7", "Wound photos"
            )  # fmt: skip
            assert (ds.StudyInstanceUID, ds.BurnedInAnnotation) == (study, "NO")
            assert ds.PatientComments == "Zoë"

    def test_pixel_description_refused(self, tmp_path: Path) -> None:
        Image.fromarray(rgb(1)).save(tmp_path / "a.png")
        params = tmp_path / "p.txt"
        params.write_text("PatientID=X\n(0028,0010)=7\nSOPInstanceUID=1.2.3\n")
        code, out, err = run_main("-w", "-f", tmp_path / "a.png", "--params", params)
        assert code == dp.EXIT_USAGE
        assert err.splitlines()[-1] == (
            "dicompressor: error: invalid params: line 2: (0028,0010) Rows is made from the "
            "pixels, not from --params; line 3: (0008,0018) SOPInstanceUID is made from the "
            "pixels, not from --params"
        )
        assert not (tmp_path / "a.dcm").exists()

    def test_only_for_actions_that_take_them(self, tmp_path: Path) -> None:
        params = tmp_path / "p.txt"
        params.write_text("PatientID=X\n")
        code, _, err = run_main("-x", "-f", tmp_path, "--params", params)
        assert code == dp.EXIT_USAGE
        assert err.splitlines()[-1] == "dicompressor: error: --params is for -w, -W, -v, not -x"

    def test_api_takes_params_text(self, tmp_path: Path) -> None:
        spec, options = dp.process_request(
            {"action": "image_to_dicom", "params": "PatientID=API1\n"}, tmp_path
        )
        Image.fromarray(rgb(1)).save(tmp_path / "a.png")
        inputs = dp.list_inputs(tmp_path, spec.inputs)
        assert inputs == [tmp_path / "a.png"]
        result = spec.function(inputs, tmp_path / "out", options)
        assert pydicom.dcmread(result.outputs[0]).PatientID == "API1"


class TestInputKinds:
    """Batch discovery finds images for -w/-W, videos for -v, DICOM for the rest."""

    def test_folders_per_kind(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        images, videos, dicom = root / "i", root / "v", root / "d"
        for folder in (images, videos):
            folder.mkdir(parents=True)
        Image.fromarray(rgb(1)).save(images / "a.JPG")
        Image.fromarray(rgb(1)).save(images / "b.jp2")
        (videos / "c.MOV").write_bytes(b"")
        (videos / ".hidden.mp4").write_bytes(b"")
        synth.make_series(dicom, n=1)
        assert dp.job_folders(root, recursive=True, kind=dp.IMAGE_INPUTS) == [images]
        assert dp.job_folders(root, recursive=True, kind=dp.VIDEO_INPUTS) == [videos]
        assert dp.job_folders(root, recursive=True) == [dicom]
        assert dp.list_inputs(images, dp.IMAGE_INPUTS) == [images / "a.JPG", images / "b.jp2"]
        assert dp.list_inputs(videos, dp.VIDEO_INPUTS) == [videos / "c.MOV"]
        assert dp.ACTIONS["image_to_dicom"].inputs == dp.IMAGE_INPUTS
        assert dp.ACTIONS["video_to_dicom"].inputs == dp.VIDEO_INPUTS
        assert dp.ACTIONS["compress_lossless"].inputs == dp.DICOM_INPUTS

    def test_dicom_actions_pass_images_over(self, tmp_path: Path) -> None:
        """A .jp2 or .mkv beside DICOM files is no failed DICOM file."""
        folder = tmp_path / "mixed"
        synth.make_series(folder, n=1)
        Image.fromarray(rgb(1)).save(folder / "photo.jp2")
        (folder / "clip.mkv").write_bytes(b"\x1a\x45\xdf\xa3")
        ok("-x", "--codec", "rle", "-F", folder)

    def test_no_images_in_folder(self, tmp_path: Path) -> None:
        synth.make_series(tmp_path / "d", n=1)
        code, _, err = run_main("-w", "-f", tmp_path / "d")
        assert code == dp.EXIT_FAILED
        assert err.strip().endswith(f"error: {tmp_path / 'd'}: no image files found")


# ---- videos to DICOM (-v), and back (-u, -E, -I) ----


def stream_of(ds: Dataset) -> bytes:
    """Return the one fragment of a video instance's Pixel Data (after an empty offset table)."""
    table, *fragments = generate_fragments(ds.PixelData)
    assert table == b"" and len(fragments) == 1
    return fragments[0]


class TestVideoToDicom:
    """-v: H.264 copied into Video Photographic/Endoscopic, anything else decoded."""

    def test_h264_copied(self, tmp_path: Path) -> None:
        source = make_video(tmp_path / "clip.mp4", rate=25, args=H264)
        before = source.read_bytes()
        log = ok("-v", "-f", source)
        ds = valid(tmp_path / "clip.dcm")
        assert ds.SOPClassUID == VIDEO_PHOTOGRAPHIC and ds.Modality == "XC"
        assert ds.file_meta.TransferSyntaxUID == dp.MPEG4_HP41
        assert (ds.Rows, ds.Columns, int(ds.NumberOfFrames)) == (48, 64, 12)
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("YBR_PARTIAL_420", 3)
        assert (ds.BitsAllocated, ds.BitsStored, ds.PlanarConfiguration) == (8, 8, 0)
        assert (float(ds.FrameTime), int(ds.CineRate)) == (40.0, 25)
        assert ds.FrameIncrementPointer == pydicom.tag.Tag("FrameTime")
        assert (ds.LossyImageCompression, ds.LossyImageCompressionMethod) == (
            "01", "ISO_14496_10"
        )  # fmt: skip
        stream = stream_of(ds)
        assert stream[4:8] == b"ftyp"  # an MP4 container, as PS3.5 8.2.7 wants
        stored = tmp_path / "stored.mp4"
        stored.write_bytes(stream)
        # the stream is copied, not re-encoded: it decodes to the source's frames
        np.testing.assert_array_equal(ffmpeg_frames(stored), ffmpeg_frames(source))
        assert "copied as MPEG-4 AVC/H.264 High Profile / Level 4.1" in log
        assert source.read_bytes() == before

    def test_endoscopic_and_audio(self, tmp_path: Path) -> None:
        source = make_video(
            tmp_path / "scope.mov",
            args=("-f", "lavfi", "-i", "sine=duration=2", *H264, "-c:a", "aac", "-shortest"),
        )
        log = ok("-v", "-f", source, "--modality", "ES")
        ds = valid(tmp_path / "scope.dcm")
        assert (ds.SOPClassUID, ds.Modality) == (VIDEO_ENDOSCOPIC, "ES")
        assert "[WARNING] scope.mov: its audio is left out" in log

    @pytest.mark.parametrize(
        ("name", "args", "why"),
        [
            ("clip.avi", ("-c:v", "mpeg4"), None),
            ("clip.wmv", ("-c:v", "wmv2"), None),
            ("base.mkv", ("-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p"),
             "H.264 Baseline profile, level 1: the MPEG-4 syntaxes take the High profile "
             "up to level 4.2 (PS3.5 8.2.7)"),
            ("full.mp4", ("-c:v", "libx264", "-pix_fmt", "yuv444p"),
             "H.264 High 4:4:4 profile, level 1, 4:4:4 8-bit: the MPEG-4 syntaxes take "
             "4:2:0 8-bit (PS3.5 8.2.7)"),
        ],
    )  # fmt: skip
    def test_others_decoded(self, tmp_path: Path, name: str, args: tuple, why: str | None) -> None:
        source = make_video(tmp_path / name, args=args)
        log = ok("-v", "-f", source)
        ds = valid(tmp_path / f"{source.stem}.dcm")
        assert ds.SOPClassUID == dp.MF_TRUE_COLOR_SC
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (float(ds.FrameTime), int(ds.CineRate)) == (100.0, 10)
        assert ds.FrameIncrementPointer == pydicom.tag.Tag("FrameTime")
        np.testing.assert_array_equal(ds.pixel_array, ffmpeg_frames(source))
        warning = f"[WARNING] {name}: {why}: decoded into Multi-frame True Color" if why else ""
        assert (warning in log) if why else ("[WARNING]" not in log)

    def test_not_a_video(self, tmp_path: Path) -> None:
        (tmp_path / "fake.mp4").write_bytes(b"no video here")
        code, _, err = run_main("-v", "-F", tmp_path)
        assert code == dp.EXIT_FAILED
        assert f"[ERROR] {tmp_path / 'fake.mp4'}: ffmpeg cannot read the video" in err
        assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob(".*"))


class TestVideoBack:
    """A video instance decompresses (-u) and exports (-E, -I) through ffmpeg."""

    @pytest.fixture
    def video(self, tmp_path: Path) -> tuple[Path, Path]:
        source = make_video(tmp_path / "clip.mp4", args=H264)
        ok("-v", "-f", source)
        return source, tmp_path / "clip.dcm"

    def test_decompress(self, video: tuple[Path, Path]) -> None:
        source, dicom = video
        ok("-u", "-f", dicom)
        ds = valid(dicom.with_name("clip_unc.dcm"))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (ds.PhotometricInterpretation, int(ds.NumberOfFrames)) == ("RGB", 12)
        np.testing.assert_array_equal(ds.pixel_array, ffmpeg_frames(source))

    def test_export_copies_the_stream(self, video: tuple[Path, Path]) -> None:
        source, dicom = video
        before = source.read_bytes()
        for _ in range(2):  # a rerun replaces its own export
            ok("-E", "-f", dicom)
        exported = dicom.with_name("clip_1.mp4")  # clip.mp4 is the source: never replaced
        assert source.read_bytes() == before
        exported_bytes = exported.read_bytes()  # the stream as stored, less its padding
        assert stream_of(pydicom.dcmread(dicom)) in (exported_bytes, exported_bytes + b"\0")
        assert sorted(p.name for p in dicom.parent.glob("*.mp4")) == ["clip.mp4", "clip_1.mp4"]
        np.testing.assert_array_equal(ffmpeg_frames(exported), ffmpeg_frames(source))

    def test_png_per_frame(self, video: tuple[Path, Path], tmp_path: Path) -> None:
        source, dicom = video
        ok("-I", "png", "-f", dicom, "--output-dir", tmp_path / "png")
        images = sorted((tmp_path / "png").glob("*.png"))
        assert len(images) == 12
        np.testing.assert_array_equal(np.asarray(Image.open(images[3])), ffmpeg_frames(source)[3])

    def test_frame_count_checked(self, video: tuple[Path, Path], tmp_path: Path) -> None:
        _, dicom = video
        ds = pydicom.dcmread(dicom)
        ds.NumberOfFrames = 13
        ds.save_as(tmp_path / "more.dcm", enforce_file_format=True)
        code, _, err = run_main("-u", "-f", tmp_path / "more.dcm")
        assert code == dp.EXIT_FAILED
        assert (
            f"[ERROR] {tmp_path / 'more.dcm'}: the video stream decodes to 12 frames of 64 x 48, "
            "(0028,0008) Number of Frames says 13"
        ) in err
        assert not (tmp_path / "more_unc.dcm").exists()

    def test_mpeg_ts_stream(self, video: tuple[Path, Path], tmp_path: Path) -> None:
        """A stream in an MPEG-TS container (PS3.5 8.2.7 allows it) decodes and exports."""
        source, dicom = video
        ts = tmp_path / "clip.ts"
        subprocess.run([FFMPEG, "-v", "error", "-i", str(source), "-c", "copy", "-f", "mpegts",
                        str(ts)], check=True)  # fmt: skip
        ds = pydicom.dcmread(dicom)
        ds.PixelData = pydicom.encaps.encapsulate([ts.read_bytes()], has_bot=False)
        ds.save_as(tmp_path / "ts.dcm", enforce_file_format=True)
        ok("-E", "-f", tmp_path / "ts.dcm")
        exported = tmp_path / "ts.mp4"
        assert exported.read_bytes()[4:8] == b"ftyp"
        np.testing.assert_array_equal(ffmpeg_frames(exported), ffmpeg_frames(source))
        ok("-u", "-f", tmp_path / "ts.dcm")
        unc = pydicom.dcmread(tmp_path / "ts_unc.dcm")
        np.testing.assert_array_equal(unc.pixel_array, ffmpeg_frames(source))


class TestH264Parameters:
    """The choice of MPEG-4 syntax from profile, level, chroma and aspect (PS3.5 8.2.7-8.2.9)."""

    @staticmethod
    def sps(profile: int = 100, level: int = 41, **changes: object) -> dp.H264Parameters:
        values: dict[str, object] = {
            "chroma_format": 1,
            "bit_depth": 8,
            "width": 64,
            "height": 48,
            "sample_aspect": None,
            "aspect_idc": None,
        }
        values.update(changes)
        return dp.H264Parameters(profile, level, **values)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("profile", "level", "syntax"),
        [(100, 30, dp.MPEG4_HP41), (100, 41, dp.MPEG4_HP41), (100, 42, dp.MPEG4_HP42_2D),
         (128, 42, dp.MPEG4_HP42_STEREO), (100, 50, None), (77, 31, None), (66, 30, None),
         (110, 41, None)],
    )  # fmt: skip
    def test_profile_and_level(self, profile: int, level: int, syntax: str | None) -> None:
        assert dp.mpeg4_syntax(self.sps(profile, level))[0] == syntax

    def test_aspect_and_chroma(self) -> None:
        assert dp.mpeg4_syntax(self.sps(aspect_idc=1, sample_aspect=(1, 1)))[0] == dp.MPEG4_HP41
        syntax, why = dp.mpeg4_syntax(self.sps(aspect_idc=255, sample_aspect=(4, 3)))
        assert syntax is None and "pixels 4:3: the MPEG-4 syntaxes take square pixels" in why
        assert dp.mpeg4_syntax(self.sps(chroma_format=0))[0] is None
        assert dp.mpeg4_syntax(self.sps(bit_depth=10))[0] is None

    def test_sps_of_a_real_stream(self, tmp_path: Path) -> None:
        args = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-level", "4.2", "-vf", "crop=62:46")
        video = make_video(tmp_path / "v.mp4", args=args)
        track = dp.mp4_video_track(video)
        sps = dp.h264_parameters(track.config)
        assert (track.codec, track.frames, round(track.frame_time_ms, 3)) == ("avc1", 12, 100.0)
        assert (sps.profile, sps.level, sps.chroma_format, sps.bit_depth) == (100, 42, 1, 8)
        assert (sps.width, sps.height) == (62, 46)  # the frame cropping is applied


# ---- Part 10 and bare datasets (-p, -n) ----


def bare_dataset(path: Path, ds: Dataset, *, implicit: bool, little: bool) -> Path:
    """Write ds without preamble and File Meta in an encoding (ACR-NEMA style).

    pydicom writes OW values as they are: big endian 16-bit pixels are swapped here.
    """
    if not little and "PixelData" in ds:
        ds = copy.deepcopy(ds)
        ds.PixelData = dp.swapped(ds.PixelData, 2)
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    pydicom.filewriter.write_dataset(buffer, ds)
    path.write_bytes(buffer.getvalue())
    return path


def nometa_errors(path: Path, *, implicit: bool, little: bool) -> list[str]:
    """dciodvfy's errors on a bare dataset (told its encoding)."""
    argv = ["dciodvfy", "-input-nometa", "-input-vr", "implicit" if implicit else "explicit",
            "-input-endian", "little" if little else "big", str(path)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


class TestPart10:
    """-p: a bare dataset or ACR-NEMA 2.0 file gets a preamble and a correct File Meta."""

    @pytest.mark.parametrize(
        ("name", "implicit", "little", "syntax"),
        [("OT-PAL-8-face.dcm", True, True, ImplicitVRLittleEndian),
         ("ExplVR_BigEndNoMeta.dcm", False, False, ExplicitVRBigEndian),
         ("ExplVR_LitEndNoMeta.dcm", False, True, ExplicitVRLittleEndian)],
    )  # fmt: skip
    def test_dataset_kept_byte_for_byte(
        self, testdata, name: str, implicit: bool, little: bool, syntax: str
    ) -> None:
        source = testdata(name)
        before = source.read_bytes()
        ok("-p", "-f", source)
        output = source.with_name(f"{source.stem}_dcm3.dcm")
        assert output.read_bytes()[128:132] == b"DICM"
        assert dataset_bytes(output) == before  # not re-encoded
        ds = pydicom.dcmread(output)
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == syntax
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.ImplementationClassUID == dp.IMPLEMENTATION_UID
        assert tool_exit_code("dcmftest", output) == 0
        # nothing added to what dciodvfy finds in the dataset itself
        assert dciodvfy_errors(output) == nometa_errors(source, implicit=implicit, little=little)
        assert source.read_bytes() == before

    def test_acr_nema_without_uids(self, tmp_path: Path) -> None:
        part10 = synth.make_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
        ds = pydicom.dcmread(part10)
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            delattr(ds, keyword)
        source = bare_dataset(tmp_path / "IMG1", ds, implicit=True, little=True)
        log = ok("-p", "-f", source)
        out = valid_as(tmp_path / "IMG1_dcm3.dcm", part10)
        assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT, from Modality
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.StudyInstanceUID and out.SeriesInstanceUID
        assert (
            "[WARNING] IMG1: the dataset had no (0008,0016) SOP Class UID CT Image Storage" in log
        )
        np.testing.assert_array_equal(out.pixel_array, ds.pixel_array)

    def test_implicit_big_endian(self, tmp_path: Path) -> None:
        """Old ACR-NEMA machines wrote implicit VR big endian: no DICOM syntax, so LE."""
        part10 = synth.make_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
        ds = pydicom.dcmread(part10)
        source = bare_dataset(tmp_path / "big.dcm", ds, implicit=True, little=False)
        log = ok("-p", "-f", source)
        out = valid_as(tmp_path / "big_dcm3.dcm", part10)
        assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert "Implicit VR Big Endian is no DICOM transfer syntax" in log
        np.testing.assert_array_equal(out.pixel_array, ds.pixel_array)
        assert out.PixelData == ds.PixelData  # the 16-bit values swapped back

    def test_not_datasets(self, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        folder.mkdir()
        (folder / "notes").write_text("Patient notes, not DICOM\n")
        (folder / "empty").write_bytes(b"")
        (folder / "cut").write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR")
        synth.make_series(folder, n=1)  # a Part 10 file: passed over
        code, _, err = run_main("-p", "-F", folder)
        assert code == dp.EXIT_FAILED
        errors = sorted(line for line in err.splitlines() if line.startswith("[ERROR]"))
        assert errors == [
            f"[ERROR] {folder / 'cut'}: not a DICOM dataset: (0008,0005) declares 10 bytes "
            "at offset 8, 6 are left",
            f"[ERROR] {folder / 'empty'}: not a DICOM dataset: 0 bytes",
            f"[ERROR] {folder / 'notes'}: not a DICOM dataset: it does not start with a group "
            "0008 element",
        ]
        assert "Skipping IMG0000.dcm: already a Part 10 file" in err
        assert sorted(p.name for p in folder.iterdir()) == ["IMG0000.dcm", "cut", "empty", "notes"]

    def test_in_place(self, testdata) -> None:
        source = testdata("OT-PAL-8-face.dcm")
        before = source.read_bytes()
        ok("-P", "-f", source)
        assert dataset_bytes(source) == before and source.read_bytes()[128:132] == b"DICM"


class TestBareDataset:
    """-n: the dataset alone, Implicit VR Little Endian; -p gives it back."""

    def test_round_trip(self, testdata, tmp_path: Path) -> None:
        for name in ("MR_small_implicit.dcm", "CT_small.dcm", "MR_small_bigendian.dcm"):
            source = testdata(name)
            original = pydicom.dcmread(source)
            ok("-n", "-f", source)
            bare = source.with_name(f"{source.stem}_nema2.dcm")
            data = bare.read_bytes()
            assert data[:2] == b"\x08\x00" and b"DICM" not in data[:200]  # no preamble, no meta
            assert dp.bare_encoding(data) == (True, True)
            if name == "MR_small_implicit.dcm":
                assert data == dataset_bytes(source)  # copied byte for byte
            ok("-p", "-f", bare)
            back = source.with_name(f"{source.stem}_nema2_dcm3.dcm")
            assert dataset_bytes(back) == data  # the same dataset, bit for bit
            again = valid_as(back, source)
            assert again.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
            np.testing.assert_array_equal(again.pixel_array, original.pixel_array)
            for elem in original:
                if elem.tag.group not in (0x0002, 0x7FE0) and elem.tag.element:
                    assert again[elem.tag].value == elem.value, (name, elem.keyword)

    def test_explicit_round_trip_is_bit_exact(self, tmp_path: Path) -> None:
        """-n, -p, -l of a pydicom-written file give its dataset back byte for byte."""
        source = synth.make_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
        ok("-n", "-f", source)
        ok("-p", "-f", source.with_name(f"{source.stem}_nema2.dcm"))
        ok("-l", "-f", source.with_name(f"{source.stem}_nema2_dcm3.dcm"))
        final = source.with_name(f"{source.stem}_nema2_dcm3_le.dcm")
        assert dataset_bytes(final) == dataset_bytes(source)
        valid_as(final, source)

    def test_compressed_is_decompressed(self, tmp_path: Path) -> None:
        source = synth.make_series(tmp_path / "s", n=1, rows=32, cols=32, syntax=RLELossless)[0]
        log = ok("-n", "-f", source)
        assert "RLE Lossless decompressed: a bare dataset holds native pixels" in log
        ok("-p", "-f", source.with_name(f"{source.stem}_nema2.dcm"))
        back = valid_as(source.with_name(f"{source.stem}_nema2_dcm3.dcm"), source)
        np.testing.assert_array_equal(back.pixel_array, pydicom.dcmread(source).pixel_array)

    def test_in_place(self, tmp_path: Path) -> None:
        source = synth.make_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
        original = pydicom.dcmread(source)
        ok("-N", "-f", source)
        bare = source.read_bytes()
        assert bare[:2] == b"\x08\x00" and sorted(source.parent.iterdir()) == [source]
        ok("-P", "-f", source)  # and back, in place too
        assert dataset_bytes(source) == bare
        back = pydicom.dcmread(source)
        assert back.SOPInstanceUID == original.SOPInstanceUID
        np.testing.assert_array_equal(back.pixel_array, original.pixel_array)


# ---- byte order (-l, -b) ----


def with_binary_values(path: Path) -> Path:
    """Add numbers, AT, OW, FD and a sequence of them to a file (what a byte swap must touch)."""
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.ReferencedFrameNumber = [1, 2, 300]  # IS: text
    item.RecommendedDisplayCIELabValue = [1, 2, 65535]  # US, 3 values
    item.SelectorATValue = [0x00100010, 0x7FE00010]
    ds.ReferencedImageSequence = [item, Dataset()]
    ds.add_new(0x60000010, "US", 16)
    ds.add_new(0x60000011, "US", 16)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", bytes(range(32)))
    ds.add_new(0x00189087, "FD", 1.5e-3)  # Diffusion b-value
    ds.save_as(path, enforce_file_format=True)
    return path


class TestByteOrder:
    """-l and -b: values swapped where the byte order changes, OB and text left alone."""

    def test_big_and_back(self, tmp_path: Path) -> None:
        source = with_binary_values(synth.make_series(tmp_path / "s", n=1, rows=16, cols=16)[0])
        original = pydicom.dcmread(source)
        log = ok("-b", "-f", source)
        assert "[WARNING] Explicit VR Big Endian is retired (PS3.5 A.3, since 2004)" in log
        big_path = source.with_name(f"{source.stem}_be.dcm")
        big = valid_as(big_path, source)
        assert big.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
        np.testing.assert_array_equal(big.pixel_array, original.pixel_array)
        assert big.PixelData == dp.swapped(original.PixelData, 2)  # OW swapped word by word
        assert big[0x60003000].value == dp.swapped(original[0x60003000].value, 2)
        item = big.ReferencedImageSequence[0]
        assert list(item.RecommendedDisplayCIELabValue) == [1, 2, 65535]
        assert list(item.SelectorATValue) == [0x00100010, 0x7FE00010]
        assert big[0x00189087].value == 1.5e-3
        ok("-l", "-f", big_path)
        back = source.with_name(f"{source.stem}_be_le.dcm")
        assert dataset_bytes(back) == dataset_bytes(source)  # bit for bit
        valid_as(back, source)

    def test_8_bit_pixels_stay(self, tmp_path: Path) -> None:
        source = synth.make_series(tmp_path / "s", n=1, rows=16, cols=16, bits=8, signed=False)[0]
        ok("-b", "-f", source)
        big = valid_as(source.with_name(f"{source.stem}_be.dcm"), source)
        assert big["PixelData"].VR == "OB"
        assert big.PixelData == pydicom.dcmread(source).PixelData  # OB: no byte order

    def test_big_endian_file_to_little(self, testdata) -> None:
        """pydicom's MR_small_bigendian and MR_small hold the same pixels."""
        source = testdata("MR_small_bigendian.dcm")
        ok("-l", "-f", source)
        little = valid_as(source.with_name("MR_small_bigendian_le.dcm"), source)
        reference = pydicom.dcmread(testdata("MR_small.dcm"))
        assert little.PixelData == reference.PixelData

    def test_implicit_to_explicit(self, testdata) -> None:
        source = testdata("MR_small_implicit.dcm")
        ok("-l", "-f", source)
        little = valid_as(source.with_name("MR_small_implicit_le.dcm"), source)
        reference = pydicom.dcmread(source)
        assert little.PixelData == reference.PixelData
        assert little["PixelData"].VR == "OW"

    def test_compressed(self, tmp_path: Path) -> None:
        source = synth.make_series(tmp_path / "s", n=1, rows=32, cols=32, syntax=JPEG2000Lossless)[
            0
        ]
        ok("-l", "-f", source)
        little = valid_as(source.with_name(f"{source.stem}_le.dcm"), source)
        np.testing.assert_array_equal(little.pixel_array, pydicom.dcmread(source).pixel_array)
        code, _, err = run_main("-b", "-f", source)
        assert code == dp.EXIT_FAILED
        assert (
            f"[ERROR] {source}: JPEG 2000 Image Compression (Lossless Only) is compressed: "
            "Explicit VR Big Endian holds only native pixels; decompress first (-u, or -l for "
            "Little Endian)"
        ) in err

    def test_left_alone_and_in_place(self, tmp_path: Path) -> None:
        source = synth.make_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
        before = source.read_bytes()
        log = ok("-l", "-f", source)
        assert f"{source.name}: left alone, already Explicit VR Little Endian" in log
        ok("-B", "-f", source)
        assert pydicom.dcmread(source).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
        ok("-L", "-f", source)
        assert dataset_bytes(source) == before[dp.meta_end(before) :]
        assert sorted(p.name for p in source.parent.iterdir()) == [source.name]

    def test_rerun_adds_nothing(self, tmp_path: Path) -> None:
        source = synth.make_series(tmp_path / "s", n=1, rows=16, cols=16)[0]
        for _ in range(2):
            ok("-b", "-f", source)
        assert sorted(p.name for p in source.parent.iterdir()) == [
            source.name, f"{source.stem}_be.dcm"
        ]  # fmt: skip

    def test_swapped(self) -> None:
        assert dp.swapped(b"\x01\x02\x03\x04\x05", 2) == b"\x02\x01\x04\x03\x05"
        assert dp.swapped(b"\x01\x02\x03\x04", 4) == b"\x04\x03\x02\x01"
        assert dp.swapped(b"\x01\x02", 1) == b"\x01\x02"


# ---- DICOMDIR in the parent folder (-D) ----


def conformant_tree(root: Path) -> list[Path]:
    """Write two series under root with conformant File IDs (DICOM/S1/IM000001...)."""
    paths = []
    for series, modality in (("S1", "CT"), ("S2", "MR")):
        made = synth.make_series(root / series, n=2, modality=modality, shuffle_names=False)
        for index, path in enumerate(sorted(made), 1):
            paths.append(path.rename(path.with_name(f"IM{index:06d}")))
    return paths


class TestDicomdirParent:
    """-D: DICOMDIR beside the given folder, referencing its files where they are."""

    def test_in_place(self, tmp_path: Path) -> None:
        paths = conformant_tree(tmp_path / "CD" / "DICOM")
        before = {p: p.read_bytes() for p in paths}
        ok("-D", "-f", tmp_path / "CD" / "DICOM")
        dicomdir = tmp_path / "CD" / "DICOMDIR"
        assert dciodvfy_errors(dicomdir) == []
        assert tool_exit_code("dcmdump", dicomdir) == 0
        found = {Path(i.path) for i in FileSet(dicomdir)}
        assert found == set(paths)
        assert sorted(p.name for p in (tmp_path / "CD").iterdir()) == ["DICOM", "DICOMDIR"]
        assert all(p.read_bytes() == data for p, data in before.items())

    def test_files_deeper_than_the_given_folder(self, tmp_path: Path) -> None:
        conformant_tree(tmp_path / "CD" / "DICOM" / "ONLY")
        ok("-D", "-f", tmp_path / "CD" / "DICOM")
        ids = {
            Path(i.path).relative_to(tmp_path / "CD").parts
            for i in FileSet(tmp_path / "CD" / "DICOMDIR")
        }
        assert ids == {("DICOM", "ONLY", s, f"IM00000{n}") for s in ("S1", "S2") for n in (1, 2)}

    def test_copy_for_other_names(self, tmp_path: Path) -> None:
        paths = synth.make_series(tmp_path / "exam" / "series", n=2)  # lower case names
        ok("-D", "-f", tmp_path / "exam")
        copy = tmp_path / "exam_DICOMDIR"
        assert dciodvfy_errors(copy / "DICOMDIR") == []
        found = {pydicom.dcmread(i.path).SOPInstanceUID for i in FileSet(copy / "DICOMDIR")}
        assert found == {pydicom.dcmread(p).SOPInstanceUID for p in paths}
        assert not (tmp_path / "DICOMDIR").exists()

    def test_other_folders_dicomdir_not_replaced(self, tmp_path: Path) -> None:
        conformant_tree(tmp_path / "CD" / "A")
        conformant_tree(tmp_path / "CD" / "B")
        ok("-D", "-f", tmp_path / "CD" / "A")
        dicomdir = tmp_path / "CD" / "DICOMDIR"
        before = dicomdir.read_bytes()
        code, out, _ = run_main("-D", "-f", tmp_path / "CD" / "B")
        assert code == dp.EXIT_FAILED
        assert out.strip() == (
            f"[FAILED] {tmp_path / 'CD' / 'B'}: {dicomdir} lists files outside B/ "
            "(A/S1/IM000001 and 3 more): not replaced; remove it first, or use -d for a "
            "DICOMDIR in the folder"
        )
        assert dicomdir.read_bytes() == before
        ok("-D", "-f", tmp_path / "CD" / "A")  # its own: replaced
        assert {Path(i.path).parts[-3] for i in FileSet(dicomdir)} == {"A"}


def test_registry_has_the_original_flags() -> None:
    """Every flag of the original's conversions is one ACTIONS entry (its twin too)."""
    flags = {(s.flag, s.replace_flag) for s in dp.ACTIONS.values()}
    for pair in [("-w", None), ("-W", None), ("-v", None), ("-p", "-P"), ("-n", "-N"),
                 ("-l", "-L"), ("-b", "-B"), ("-D", None), ("-u", "-U")]:  # fmt: skip
        assert pair in flags, pair
    assert dp.DECOMPRESSED_SUFFIX == "_unc"
    listing = json.dumps(dp.action_listing())
    assert '"name": "video_to_dicom"' in listing and '"name": "modality"' in listing


def test_over_http(start_server, tmp_path: Path) -> None:
    """The API finds a session's images for -w (its inputs are images, not DICOM)."""
    api: Running = start_server(**RELAXED)
    Image.fromarray(rgb(1)).save(tmp_path / "a.png")
    sid = api.session()
    assert api.upload(sid, [tmp_path / "a.png"]).status_code == 200
    answer = api.process(sid, {"action": "image_to_dicom", "params": "PatientID=WEB1\n"})
    assert answer.status_code == 200, answer.text
    made = sorted((api.data_dir / sid / "output").glob("*.dcm"))
    assert [p.name for p in made] == ["a.dcm"]
    assert valid(made[0]).PatientID == "WEB1"
    refused = api.process(sid, {"action": "video_to_dicom"})
    assert refused.status_code == 400
    assert "upload videos first" in refused.json()["error"]
