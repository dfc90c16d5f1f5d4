"""Burned-in text blacked out by anonymize's rectangle lines (r, ri, rv): which images,
which fill, which transfer syntax, and that nothing outside the boxes changes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import synth
from conftest import (
    RELAXED,
    Running,
    dciodvfy_errors,
    merge_one,
    run_main,
    run_without_imagecodecs,
)
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

import dicompressor as dp

J2K_LOSSLESS, JPEG_LS, RLE = (
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.5",
)
JPEG_BASELINE, HTJ2K = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.201"


def anonymize(
    paths: list[Path], params: str, out: Path | None, **options: object
) -> dp.ActionResult:
    """Run anonymize with a params text; return the result."""
    options.setdefault("jobs", 1)
    return dp.anonymize(paths, out, dp.Options(params=params, **options))


def frames(path: Path) -> np.ndarray:
    """Return a file's decoded frames with a leading frame axis."""
    ds = pydicom.dcmread(path)
    array = ds.pixel_array
    return array if int(ds.get("NumberOfFrames", 1) or 1) > 1 else array[np.newaxis]


def box_mask(shape: tuple[int, ...], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    """Return True where a pixel of frames of this shape lies in one of the boxes."""
    inside = np.zeros(shape, dtype=bool)
    for left, top, right, bottom in boxes:
        inside[:, top:bottom, left:right] = True
    return inside


def assert_only_boxes_changed(
    source: Path, output: Path, fill: tuple[int, ...], *boxes: tuple[int, int, int, int]
) -> None:
    """Every decoded pixel outside the boxes is equal; inside them, the fill."""
    before, after = frames(source), frames(output)
    assert before.shape == after.shape
    inside = box_mask(before.shape, *boxes)
    assert inside.any()
    np.testing.assert_array_equal(after[~inside], before[~inside])
    expected = np.broadcast_to(np.asarray(fill, dtype=after.dtype), after.shape)
    np.testing.assert_array_equal(after[inside], expected[inside])


def not_more_errors(source: Path, output: Path) -> None:
    """dciodvfy reports no error for output that it did not report for source."""
    assert set(dciodvfy_errors(output)) <= set(dciodvfy_errors(source))


def native_file(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    syntax: str = ExplicitVRLittleEndian,
    burned_in: str | None = None,
) -> Path:
    """Write a single- or multi-frame Secondary Capture with the given stored words."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7" if pixels.ndim == 2 else dp.MF_GRAY_WORD_SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality, ds.ConversionType = "DOE^JANE", "P1", "OT", "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = 100
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.file_meta = dp.file_meta_for(ds, UID(syntax))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_baseline_file(path: Path, size: int) -> Path:
    """Write a grey JPEG Baseline Secondary Capture of size x size pixels (Pillow's JPEG)."""
    rng = np.random.default_rng(3)
    image = (np.add.outer(np.arange(size), np.arange(size)) * 4 % 256).astype(np.uint8)
    image = np.clip(image.astype(int) + rng.integers(0, 9, image.shape), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality, ds.ConversionType = "DOE^JANE", "P1", "OT", "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta = dp.file_meta_for(ds, UID(JPEG_BASELINE))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class TestRectangleLines:
    """The rectangle lines of anonymize's params."""

    def test_kinds_and_case(self) -> None:
        params = dp.parse_anonymize_params("r 1 2 3 4\nRI 0 0 10 10\n  rv 5 6 70 80\n")
        assert params.rectangles == (
            dp.Rectangle("r", 1, 2, 3, 4, 1),
            dp.Rectangle("ri", 0, 0, 10, 10, 2),
            dp.Rectangle("rv", 5, 6, 70, 80, 3),
        )
        assert [r.applies_to(1) for r in params.rectangles] == [True, True, False]
        assert [r.applies_to(12) for r in params.rectangles] == [True, False, True]

    def test_bad_numbers_reported_by_line(self) -> None:
        text = "r 10 10 20\nPatientID=X\nri -5 0 10 10\nrv 0 0 1.5 9\nr 30 0 20 10\nr 0 9 5 9\n"
        with pytest.raises(dp.DicomPressorError) as info:
            dp.parse_anonymize_params(text)
        assert info.value.message == (
            "invalid anonymize params: "
            "line 1: a rectangle is r LEFT TOP RIGHT BOTTOM (4 whole numbers of pixels), not "
            "'r 10 10 20'; "
            "line 3: rectangle 'ri -5 0 10 10': LEFT '-5' is not a whole number of pixels "
            "(0 or more); "
            "line 4: rectangle 'rv 0 0 1.5 9': RIGHT '1.5' is not a whole number of pixels "
            "(0 or more); "
            "line 5: rectangle 'r 30 0 20 10' is empty: RIGHT (20) must be more than LEFT "
            "(30), as right and bottom are exclusive; "
            "line 6: rectangle 'r 0 9 5 9' is empty: BOTTOM (9) must be more than TOP (9), "
            "as right and bottom are exclusive"
        )

    def test_not_for_new_instances(self) -> None:
        with pytest.raises(dp.DicomPressorError) as info:
            dp.parse_new_instance_params("PatientID=X\nr 0 0 10 10")
        assert info.value.message == (
            "invalid params: line 2: rectangles (r, ri, rv) black out pixels of -a; here only "
            "tag lines"
        )


class TestBlackFill:
    """The fill is what a viewer shows as black."""

    @staticmethod
    def grey(photometric: str, bits: int, signed: bool, **extra: object) -> Dataset:
        ds = Dataset()
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, bits, int(signed)
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        return ds

    @pytest.mark.parametrize(
        ("photometric", "bits", "signed", "extra", "fill"),
        [
            ("MONOCHROME2", 12, False, {}, 0),
            ("MONOCHROME2", 12, True, {"RescaleSlope": 1, "RescaleIntercept": -1024}, -2048),
            ("MONOCHROME1", 12, False, {}, 4095),
            ("MONOCHROME1", 16, True, {}, 32767),
            ("MONOCHROME2", 10, False, {"RescaleSlope": -1, "RescaleIntercept": 0}, 1023),
            ("MONOCHROME1", 10, False, {"RescaleSlope": "-2", "RescaleIntercept": 0}, 0),
        ],
    )
    def test_grey(self, photometric, bits, signed, extra, fill) -> None:
        assert dp.black_fill(self.grey(photometric, bits, signed, **extra)) == (fill,)

    def test_modality_lut_falling(self) -> None:
        ds = self.grey("MONOCHROME2", 8, False)
        item = Dataset()
        item.LUTDescriptor, item.LUTData = [3, 0, 16], [900, 500, 100]
        ds.ModalityLUTSequence = [item]
        assert dp.black_fill(ds) == (255,)

    def test_colour(self) -> None:
        ds = Dataset()
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 3, 8, 8, 0
        ds.PhotometricInterpretation = "RGB"
        assert dp.black_fill(ds) == (0, 0, 0)
        ds.PhotometricInterpretation = "YBR_FULL"
        assert dp.black_fill(ds) == (0, 128, 128)

    def test_palette_darkest_entry(self) -> None:
        ds = self.grey("PALETTE COLOR", 8, False)
        ds.BitsAllocated = 8
        red, green, blue = [65535, 40000, 9000, 200], [65535, 42000, 8000, 100], [65535, 0, 0, 50]
        for colour, values in (("Red", red), ("Green", green), ("Blue", blue)):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(values, "<u2").tobytes())
        assert dp.black_fill(ds) == (3,)


class TestNative:
    """Uncompressed files: masked word by word, every other bit kept, syntax kept."""

    def test_high_bits_outside_the_box_kept(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        words = rng.integers(0, 4096, (40, 48)) | (rng.integers(0, 2, (40, 48)) << 15)
        source = native_file(tmp_path / "in" / "a.dcm", words, bits_stored=12, burned_in="YES")
        result = anonymize([source], "r 5 3 20 10\n", tmp_path / "out")
        assert not result.failures, result.log
        out = pydicom.dcmread(result.outputs[0])
        stored = np.frombuffer(out.PixelData, "<u2").reshape(40, 48)
        expected = words.astype("<u2").copy()
        expected[3:10, 5:20] = 0  # black: the lowest value, MONOCHROME2
        np.testing.assert_array_equal(stored, expected)  # bit 15 (an overlay) kept elsewhere
        assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert out.BurnedInAnnotation == "NO"
        codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
        assert codes == ["113100", "113101", "113104"]
        assert "Clean Pixel Data Option" in out.DeidentificationMethod
        assert not [line for line in result.log if "Burned In Annotation is YES" in line]
        assert result.log[1] == (
            "[INFO] Anonymized a.dcm -> a_anon.dcm (blacked out 1 rectangle(s) in 1 frame(s))"
        )
        not_more_errors(source, result.outputs[0])

    def test_implicit_vr_signed_and_clipped(self, tmp_path: Path) -> None:
        words = np.arange(32 * 32).reshape(32, 32) % 2000 - 1000
        source = native_file(
            tmp_path / "a.dcm", words, bits_stored=16, signed=True, syntax=ImplicitVRLittleEndian
        )
        result = anonymize([source], "r 20 24 500 500\n", tmp_path / "out")
        out = pydicom.dcmread(result.outputs[0])
        assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert_only_boxes_changed(source, result.outputs[0], (-32768,), (20, 24, 32, 32))
        not_more_errors(source, result.outputs[0])

    def test_monochrome1_gets_its_maximum(self, tmp_path: Path) -> None:
        source = native_file(
            tmp_path / "a.dcm", np.full((32, 32), 7), bits_stored=10, photometric="MONOCHROME1"
        )
        result = anonymize([source], "r 0 0 4 4\n", tmp_path / "out")
        assert_only_boxes_changed(source, result.outputs[0], (1023,), (0, 0, 4, 4))

    def test_which_images_each_kind_masks(self, tmp_path: Path) -> None:
        """r: every image; ri: single-frame only; rv: multi-frame only. Burned In
        Annotation becomes NO only where masking ran; elsewhere YES still warns."""
        single = native_file(
            tmp_path / "in" / "single.dcm", np.full((32, 32), 50), bits_stored=8,
            burned_in="YES",
        )  # fmt: skip
        multi = native_file(
            tmp_path / "in" / "multi.dcm", np.full((3, 32, 32), 50), bits_stored=8,
            burned_in="YES",
        )  # fmt: skip
        cases = {
            "r 0 0 8 8": ({(0, 0, 8, 8)}, {(0, 0, 8, 8)}),
            "ri 0 0 8 8": ({(0, 0, 8, 8)}, set()),
            "rv 0 0 8 8\nrv 10 10 12 20": (set(), {(0, 0, 8, 8), (10, 10, 12, 20)}),
        }
        for number, (params, (single_boxes, multi_boxes)) in enumerate(cases.items()):
            result = anonymize([single, multi], params, tmp_path / f"out{number}", jobs=2)
            assert not result.failures, result.log
            for source, output, boxes in zip(
                (single, multi), result.outputs, (single_boxes, multi_boxes), strict=True
            ):
                out = pydicom.dcmread(output)
                codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
                warning = (
                    f"[WARNING] {source.name}: (0028,0301) Burned In Annotation is YES: text "
                    "burned into the pixels is not removed"
                )
                if boxes:
                    assert_only_boxes_changed(source, output, (0,), *boxes)
                    assert (out.BurnedInAnnotation, "113101" in codes) == ("NO", True)
                    assert warning not in result.log
                else:
                    assert out.PixelData == pydicom.dcmread(source).PixelData
                    assert (out.BurnedInAnnotation, "113101" in codes) == ("YES", False)
                    assert warning in result.log

    def test_rectangle_outside_the_image(self, tmp_path: Path) -> None:
        source = native_file(tmp_path / "a.dcm", np.full((32, 32), 9), bits_stored=8)
        result = anonymize([source], "r 40 0 50 10\n", tmp_path / "out")
        assert (
            "[WARNING] a.dcm: the rectangle of line 1 lies outside its 32 x 32 pixels: "
            "nothing blacked out there" in result.log
        )
        out = pydicom.dcmread(result.outputs[0])
        assert "BurnedInAnnotation" not in out
        assert "113101" not in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]

    def test_profile_none_masks_and_records_nothing_else(self, tmp_path: Path) -> None:
        source = native_file(tmp_path / "a.dcm", np.full((32, 32), 9), bits_stored=8)
        result = anonymize([source], "r 0 0 5 5\n", tmp_path / "out", profile="none")
        out, src = pydicom.dcmread(result.outputs[0]), pydicom.dcmread(source)
        assert out.BurnedInAnnotation == "NO"
        assert "DeidentificationMethodCodeSequence" not in out
        assert (out.SOPInstanceUID, out.PatientName) == (src.SOPInstanceUID, src.PatientName)
        assert_only_boxes_changed(source, result.outputs[0], (0,), (0, 0, 5, 5))

    def test_merged_multiframe_frames_in_workers(self, tmp_path: Path) -> None:
        paths = synth.make_series(tmp_path / "s", n=6, rows=32, cols=32)
        merged = merge_one(paths[0].parent)
        result = anonymize([merged, *paths], "rv 2 3 30 12\n", tmp_path / "out", jobs=2)
        assert not result.failures, result.log
        assert_only_boxes_changed(merged, result.outputs[0], (-2048,), (2, 3, 30, 12))
        for source, output in zip(paths, result.outputs[1:], strict=True):
            assert pydicom.dcmread(output).PixelData == pydicom.dcmread(source).PixelData
        not_more_errors(merged, result.outputs[0])


class TestCompressed:
    """Compressed input: decoded, masked, written back lossless, frames bit-exact."""

    @pytest.mark.parametrize(
        ("name", "syntax", "fill"),
        [
            ("MR_small_jp2klossless.dcm", J2K_LOSSLESS, (-32768,)),
            ("MR_small_jpeg_ls_lossless.dcm", JPEG_LS, (-32768,)),
            ("MR_small_RLE.dcm", RLE, (-32768,)),
            ("SC_rgb_rle_2frame.dcm", RLE, (0, 0, 0)),
            ("JPEG2000.dcm", J2K_LOSSLESS, (-32768,)),  # lossy allowed: its lossless syntax
            ("SC_rgb_jpeg_dcmtk.dcm", J2K_LOSSLESS, (0, 0, 0)),  # JPEG Baseline, YBR_FULL
        ],
    )
    def test_pydicom_files(self, testdata, tmp_path: Path, name: str, syntax: str, fill) -> None:
        source = testdata(name)
        result = anonymize([source], "r 10 5 30 20\n", tmp_path / "out")
        assert not result.failures, result.log
        output = result.outputs[0]
        out = pydicom.dcmread(output)
        assert out.file_meta.TransferSyntaxUID == syntax
        assert out.BurnedInAnnotation == "NO"
        assert_only_boxes_changed(source, output, fill, (10, 5, 30, 20))
        src = pydicom.dcmread(source)
        if src.file_meta.TransferSyntaxUID == JPEG_BASELINE:
            assert out.PhotometricInterpretation == "RGB"  # decoded from YBR_FULL
            assert out.LossyImageCompression == "01"  # its history stays
            assert result.log[1].endswith(
                "(blacked out 1 rectangle(s) in 1 frame(s); JPEG Baseline (Process 1) is "
                "written as JPEG 2000 Image Compression (Lossless Only): JPEG again would "
                "lose more)"
            )
        not_more_errors(source, output)

    @pytest.mark.parametrize(
        ("name", "said"),
        [
            ("MR_small_bigendian.dcm", "Explicit VR Big Endian is written as Explicit VR LE"),
            ("image_dfl.dcm", "Deflated Explicit VR Little Endian is written as Explicit VR LE"),
        ],
    )
    def test_other_native_syntaxes(self, testdata, tmp_path: Path, name: str, said: str) -> None:
        source = testdata(name)
        result = anonymize([source], "r 10 5 30 20\n", tmp_path / "out")
        assert not result.failures, result.log
        assert result.log[1].endswith(f"(blacked out 1 rectangle(s) in 1 frame(s); {said})")
        out = pydicom.dcmread(result.outputs[0])
        assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        fill = (-32768,) if out.PixelRepresentation else (0,)
        assert_only_boxes_changed(source, result.outputs[0], fill, (10, 5, 30, 20))
        reference = source
        if pydicom.dcmread(source).file_meta.TransferSyntaxUID.is_deflated:
            reference = tmp_path / "reference.dcm"  # dciodvfy reads no deflated file
            ds = pydicom.dcmread(source)
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(reference, enforce_file_format=True)
        not_more_errors(reference, result.outputs[0])

    def test_jpeg_ls_near_lossless(self, testdata, tmp_path: Path) -> None:
        """Near-lossless JPEG-LS: masked into JPEG-LS Lossless, its loss kept on record."""
        source = tmp_path / "near.dcm"
        ds = pydicom.dcmread(testdata("MR_small.dcm"))
        ds.compress(pydicom.uid.JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
        ds.save_as(source, enforce_file_format=True)
        result = anonymize([source], "r 0 0 64 10\n", tmp_path / "out")
        assert result.log[1].endswith(
            "JPEG-LS Lossy (Near-Lossless) Image Compression is written as JPEG-LS Lossless "
            "Image Compression: the lossless syntax of its family)"
        )
        out = pydicom.dcmread(result.outputs[0])
        assert out.file_meta.TransferSyntaxUID == JPEG_LS
        assert (out.LossyImageCompression, out.LossyImageCompressionMethod) == (
            "01",
            "ISO_14495_1",
        )
        assert_only_boxes_changed(source, result.outputs[0], (-32768,), (0, 0, 64, 10))

    @pytest.mark.parametrize(("codec", "syntax"), [("j2k", J2K_LOSSLESS), ("jpegls", JPEG_LS),
                                                   ("rle", RLE)])  # fmt: skip
    def test_multiframe(self, tmp_path: Path, codec: str, syntax: str) -> None:
        paths = synth.make_series(tmp_path / "s", n=5, rows=32, cols=40)
        merged = merge_one(paths[0].parent)
        compressed = dp.compress_lossless(
            [merged], tmp_path / "c", dp.Options(codec=codec, jobs=1)
        ).outputs[0]
        result = anonymize([compressed], "rv 0 0 40 6\nr 30 20 33 25\n", tmp_path / "o", jobs=2)
        assert not result.failures, result.log
        out = pydicom.dcmread(result.outputs[0])
        assert out.file_meta.TransferSyntaxUID == syntax and int(out.NumberOfFrames) == 5
        assert len(list(pydicom.encaps.generate_frames(out.PixelData, number_of_frames=5))) == 5
        assert_only_boxes_changed(compressed, result.outputs[0], (-2048,), (0, 0, 40, 6),
                                  (30, 20, 33, 25))  # fmt: skip
        not_more_errors(compressed, result.outputs[0])

    def test_too_small_for_jpeg2000(self, tmp_path: Path) -> None:
        """JPEG Baseline of 16 x 16 pixels: JPEG 2000 cannot take it, so Explicit VR LE."""
        source = jpeg_baseline_file(tmp_path / "small.dcm", 16)
        result = anonymize([source], "r 0 0 4 4\n", tmp_path / "out")
        assert not result.failures, result.log
        out = pydicom.dcmread(result.outputs[0])
        assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (
            "[WARNING] small.dcm: 16 x 16 pixels is too small for JPEG 2000 (openjpeg): its "
            "masked pixels are written as Explicit VR Little Endian, not JPEG 2000 Image "
            "Compression (Lossless Only)" in result.log
        )
        assert "LossyImageCompression" not in pydicom.dcmread(source)
        assert (out.LossyImageCompression, out.LossyImageCompressionMethod) == (
            "01",
            "ISO_10918_1",
        )  # the loss stays on record (PS3.3 C.7.6.1.1.5)
        assert_only_boxes_changed(source, result.outputs[0], (0,), (0, 0, 4, 4))
        not_more_errors(source, result.outputs[0])

    def test_htj2k_without_its_encoder(self, tmp_path: Path) -> None:
        """HTJ2K input with imagecodecs missing: Explicit VR Little Endian, said in the log."""
        if dp.htj2k_encoder() is None:
            pytest.skip("making the HTJ2K input needs imagecodecs>=2026.1")
        source = native_file(
            tmp_path / "in" / "a.dcm", np.arange(48 * 40).reshape(40, 48) % 4096, bits_stored=12
        )
        made = dp.compress_lossless([source], tmp_path / "h", dp.Options(codec="htj2k"))
        htj2k = made.outputs[0]
        assert pydicom.dcmread(htj2k).file_meta.TransferSyntaxUID == HTJ2K
        params = tmp_path / "params.txt"
        params.write_text("r 0 0 10 10\n")
        same = anonymize([htj2k], "r 0 0 10 10\n", tmp_path / "o1")
        assert pydicom.dcmread(same.outputs[0]).file_meta.TransferSyntaxUID == HTJ2K
        proc = run_without_imagecodecs(
            tmp_path / "shim", "-a", params, "-f", htj2k, "--output-dir", tmp_path / "o2"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (
            f"[WARNING] {htj2k.name}: no encoder for High-Throughput JPEG 2000 Image "
            "Compression (Lossless Only) (pip install 'imagecodecs>=2026.1'): its masked "
            "pixels are written as Explicit VR Little Endian" in proc.stderr
        )
        output = tmp_path / "o2" / f"{htj2k.stem}_anon.dcm"
        assert pydicom.dcmread(output).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert_only_boxes_changed(htj2k, output, (0,), (0, 0, 10, 10))

    def test_video_refused_in_words(self) -> None:
        with pytest.raises(dp.DicomPressorError) as info:
            dp._masked_syntax(UID(dp.MPEG4_HP41), {}, "v.dcm")
        assert info.value.message == (
            "MPEG-4 AVC/H.264 High Profile / Level 4.1 is a video stream: rectangles black "
            "out frames, and writing every decoded frame uncompressed is not done here"
        )


class TestFrontEnds:
    """-a/-A with rectangles on the command line, and the API's anonymize params."""

    def test_cli_in_place(self, tmp_path: Path, testdata) -> None:
        source = testdata("MR_small_RLE.dcm")
        reference = tmp_path / "reference.dcm"
        reference.write_bytes(source.read_bytes())
        params = tmp_path / "params.txt"
        params.write_text("# burned-in name\nr 0 0 64 8\n")
        code, _, err = run_main("-A", params, "-f", source)
        assert code == dp.EXIT_OK, err
        assert sorted(p.name for p in source.parent.iterdir()) == [source.name]
        assert pydicom.dcmread(source).file_meta.TransferSyntaxUID == RLE
        assert_only_boxes_changed(reference, source, (-32768,), (0, 0, 64, 8))

    def test_cli_bad_rectangle(self, tmp_path: Path) -> None:
        source = native_file(tmp_path / "in" / "a.dcm", np.zeros((32, 32)), bits_stored=8)
        params = tmp_path / "params.txt"
        params.write_text("PatientID=X\nrv 10 10 x 20\n")
        code, _, err = run_main("-a", params, "-f", source)
        assert code == dp.EXIT_FAILED
        assert err.splitlines()[-1] == (
            f"error: {params}: invalid anonymize params: line 2: rectangle 'rv 10 10 x 20': "
            "RIGHT 'x' is not a whole number of pixels (0 or more)"
        )
        assert [p.name for p in source.parent.iterdir()] == ["a.dcm"]

    def test_over_http(self, start_server, tmp_path: Path) -> None:
        api: Running = start_server(**RELAXED)
        source = native_file(tmp_path / "a.dcm", np.full((32, 32), 200), bits_stored=8)
        sid = api.session()
        assert api.upload(sid, [source]).status_code == 200
        answer = api.process(sid, {"action": "anonymize", "params": "r 0 0 16 4\n"})
        assert answer.status_code == 200, answer.text
        assert any(
            "blacked out 1 rectangle(s)" in line for line in answer.json()["log"].split("\n")
        )
        (entry,) = answer.json()["output_files"]
        url = f"{api.url}/api/download/{sid}/{entry['name']}"
        r = requests.get(url, headers=api.headers, timeout=30)
        output = tmp_path / "out.dcm"
        output.write_bytes(r.content)
        assert pydicom.dcmread(output).BurnedInAnnotation == "NO"
        assert_only_boxes_changed(source, output, (0,), (0, 0, 16, 4))
        bad = api.process(sid, {"action": "anonymize", "params": "r 0 0 16\n"})
        assert bad.status_code == 400
        assert bad.json()["error"] == (
            "bad params: invalid anonymize params: line 1: a rectangle is r LEFT TOP RIGHT "
            "BOTTOM (4 whole numbers of pixels), not 'r 0 0 16'"
        )
