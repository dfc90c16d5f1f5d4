"""Split (-s): merge's inverse, compressed frames kept, other multi-frame files."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from conftest import (
    encoded_frames,
    floats,
    frames_of,
    hash_files,
    merge_one,
    sha256_tree,
    spatial_order,
    split_file,
)
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"


def assert_same_slice(restored: Dataset, original: Dataset) -> None:
    """Assert a split frame gives back a source slice: class, geometry, values, pixels."""
    assert restored.SOPClassUID == original.SOPClassUID
    assert "NumberOfFrames" not in restored or int(restored.NumberOfFrames) == 1
    np.testing.assert_allclose(
        floats(restored.ImagePositionPatient), floats(original.ImagePositionPatient), atol=1e-4
    )
    np.testing.assert_allclose(
        floats(restored.ImageOrientationPatient),
        floats(original.ImageOrientationPatient),
        atol=1e-6,
    )
    assert float(restored.SliceLocation) == pytest.approx(float(original.SliceLocation), abs=1e-4)
    assert int(restored.InstanceNumber) == int(original.InstanceNumber)
    assert floats(restored.PixelSpacing) == floats(original.PixelSpacing)
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in original:
            assert float(restored[keyword].value) == float(original[keyword].value), keyword
    for keyword, identity in (("RescaleIntercept", 0.0), ("RescaleSlope", 1.0)):
        expected = float(original[keyword].value) if keyword in original else identity
        actual = float(restored[keyword].value) if keyword in restored else identity
        assert actual == expected, keyword
    for keyword in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "StudyInstanceUID",
        "PatientID",
        "Modality",
    ):
        assert restored.get(keyword) == original.get(keyword), keyword
    np.testing.assert_array_equal(restored.pixel_array, original.pixel_array)


def merge_then_split(make_series, **kwargs) -> tuple[list[Dataset], list[Dataset]]:
    """Merge a generated series, split the result; return (restored, originals) in order."""
    paths = make_series("s", n=6, vary_window=True, **kwargs)
    merged = merge_one(paths[0].parent)
    frames = split_file(merged)
    assert len(frames) == len(paths)
    return [pydicom.dcmread(p) for p in frames], spatial_order(paths)


class TestSplitRoundTrip:
    """merge -> split gives back the slices: pixels bit-exact, positions to 1e-4 mm."""

    @pytest.mark.parametrize("orientation", ["axial", "oblique"])
    @pytest.mark.parametrize(
        "pixels",
        [
            {"signed": True, "bits": 16},
            {"signed": False, "bits": 16},
            {"signed": True, "bits": 8},
            {"signed": False, "bits": 8},
            {"rgb": True},
        ],
        ids=["s16", "u16", "s8", "u8", "rgb"],
    )
    def test_ct_pixels_and_geometry(self, make_series, orientation, pixels):
        restored, originals = merge_then_split(make_series, orientation=orientation, **pixels)
        for frame, original in zip(restored, originals, strict=True):
            assert frame.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
            assert_same_slice(frame, original)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"modality": "MR", "orientation": "sagittal", "signed": False},
            {"modality": "PT", "orientation": "coronal", "signed": False},
            {"modality": "OT", "orientation": "oblique", "signed": False},
            {"modality": "OT", "orientation": "axial", "signed": True},
            {"modality": "OT", "orientation": "axial", "signed": True, "bits": 8},
            {"modality": "OT", "orientation": "axial", "rgb": True},
        ],
        ids=["MR", "PT", "OT", "OT-signed-offset-binary", "OT-signed-byte-widened", "OT-rgb"],
    )
    def test_other_modalities(self, make_series, kwargs):
        restored, originals = merge_then_split(make_series, **kwargs)
        for frame, original in zip(restored, originals, strict=True):
            assert_same_slice(frame, original)

    def test_frames_go_into_stem_frames_folder_beside_the_input(self, make_series):
        paths = make_series("s", n=6)
        merged = merge_one(paths[0].parent)
        frames = split_file(merged)
        assert {p.parent for p in frames} == {merged.parent / f"{merged.stem}_frames"}
        assert len({p.name for p in frames}) == len(paths)

    def test_input_untouched_and_second_split_never_overwrites(self, make_series):
        paths = make_series("s", n=6)
        merged = merge_one(paths[0].parent)
        before = hash_files([merged, *paths])
        split_file(merged)
        folder = merged.parent / f"{merged.stem}_frames"
        first_split = sha256_tree(folder)
        split_file(merged)
        assert hash_files([merged, *paths]) == before
        assert sha256_tree(folder) == first_split
        folders = sorted(p for p in merged.parent.iterdir() if p.is_dir())
        assert len(folders) == 2
        assert sha256_tree(folders[1]) != {}


class TestSplitCompressed:
    """Compressed frames stay compressed, byte for byte."""

    @pytest.mark.parametrize(
        ("syntax", "size"),
        [(RLELossless, (32, 24)), (JPEG2000Lossless, (32, 32))],
        ids=["RLE", "J2K"],
    )
    def test_merge_split_keeps_the_encoded_frames(self, make_series, syntax, size):
        rows, cols = size
        restored, originals = merge_then_split(
            make_series, rows=rows, cols=cols, syntax=syntax, orientation="oblique"
        )
        for frame, original in zip(restored, originals, strict=True):
            assert frame.file_meta.TransferSyntaxUID == syntax
            assert encoded_frames(frame) == encoded_frames(original)
            assert_same_slice(frame, original)


class TestSplitOtherMultiframe:
    """Multi-frame files that merge did not make split too (pydicom's bundled files)."""

    def test_rgb_rle_secondary_capture(self, testdata):
        path = testdata("SC_rgb_rle_2frame.dcm")
        source = pydicom.dcmread(path)
        frames = [pydicom.dcmread(p) for p in split_file(path)]
        assert len(frames) == 2
        expected = frames_of(source)
        for index, frame in enumerate(frames):
            assert frame.SOPClassUID == source.SOPClassUID
            assert frame.file_meta.TransferSyntaxUID == RLELossless
            assert encoded_frames(frame) == [encoded_frames(source)[index]]
            assert frame.SOPInstanceUID != source.SOPInstanceUID
            np.testing.assert_array_equal(frame.pixel_array, expected[index])

    def test_rt_dose_frames_get_their_own_plane(self, testdata):
        path = testdata("rtdose.dcm")
        source = pydicom.dcmread(path)
        n_frames = int(source.NumberOfFrames)
        assert n_frames == 15
        frames = [pydicom.dcmread(p) for p in split_file(path)]
        assert len(frames) == n_frames
        expected = frames_of(source)
        iop = floats(source.ImageOrientationPatient)
        normal = np.cross(iop[:3], iop[3:])
        origin = np.array(floats(source.ImagePositionPatient))
        offsets = floats(source.GridFrameOffsetVector)
        uids = set()
        for index, frame in enumerate(frames):
            assert frame.SOPClassUID == RT_DOSE
            np.testing.assert_array_equal(frame.pixel_array, expected[index])
            np.testing.assert_allclose(
                floats(frame.ImagePositionPatient), origin + normal * offsets[index], atol=1e-3
            )
            uids.add(frame.SOPInstanceUID)
            # type 1C (C.8.8.3.2): only in a multi-frame dose whose pointer names it
            assert "GridFrameOffsetVector" not in frame
            assert "FrameIncrementPointer" not in frame
        assert len(uids) == n_frames

    def test_rt_dose_frames_pass_dciodvfy_where_the_source_does(self, testdata):
        """dciodvfy finds in a frame only what it finds in the source (its odd UIDs)."""
        from conftest import dciodvfy_errors

        path = testdata("rtdose_rle.dcm")  # dciodvfy cannot read the native 32-bit copy
        frame = split_file(path)[1]
        inherited = ("Illegal root for UID", "Value invalid for this VR", "invalid data values")
        errors = [e for e in dciodvfy_errors(frame) if not any(k in e for k in inherited)]
        assert errors == ["Error - Missing attribute Type 2 Required Element=<OperatorsName> "
                          "Module=<RTSeries>"]  # fmt: skip
        assert errors[0] in dciodvfy_errors(path)

    def test_ultrasound_jpeg_baseline_stays_compressed(self, testdata):
        path = testdata("examples_ybr_color.dcm")
        source = pydicom.dcmread(path)
        n_frames = int(source.NumberOfFrames)
        frames = [pydicom.dcmread(p) for p in split_file(path)]
        assert len(frames) == n_frames == 30
        source_frames = encoded_frames(source)
        for index, frame in enumerate(frames):
            assert frame.SOPClassUID == US_IMAGE
            assert frame.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
            assert frame.PhotometricInterpretation == source.PhotometricInterpretation
            assert encoded_frames(frame) == [source_frames[index]]
