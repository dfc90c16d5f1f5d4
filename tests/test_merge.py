"""Merge (-j): grouping, spatial order, the multi-frame IODs, compressed copies, names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import (
    LEGACY_CT,
    LEGACY_MR,
    LEGACY_PET,
    MF_GRAY_BYTE_SC,
    MF_GRAY_WORD_SC,
    MF_TRUE_COLOR_SC,
    bundled_files,
    dciodvfy_errors,
    encoded_frames,
    floats,
    frame_item,
    frames_of,
    hash_files,
    merge_folder,
    merge_one,
    normal_of,
    run_main,
    spatial_order,
    tool_exit_code,
)
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)


def warnings_of(stderr: str) -> list[str]:
    """Return the log lines of level WARNING."""
    return [line for line in stderr.splitlines() if line.startswith("[WARNING]")]


class TestMergeOutput:
    """The merged instance: SOP class, identity, pixels, name and place."""

    @pytest.mark.parametrize(
        ("kwargs", "sop_class"),
        [
            ({"modality": "CT"}, LEGACY_CT),
            ({"modality": "MR", "signed": False}, LEGACY_MR),
            ({"modality": "PT", "signed": False}, LEGACY_PET),
            ({"modality": "OT", "signed": False}, MF_GRAY_WORD_SC),
            ({"modality": "OT", "signed": False, "bits": 8}, MF_GRAY_BYTE_SC),
            ({"modality": "OT", "rgb": True}, MF_TRUE_COLOR_SC),
        ],
        ids=["CT", "MR", "PT", "OT-word", "OT-byte", "OT-rgb"],
    )
    def test_sop_class_identity_and_pixels(self, make_series, kwargs, sop_class):
        paths = make_series("s", n=7, **kwargs)
        out = merge_one(paths[0].parent)
        ds = pydicom.dcmread(out)
        originals = spatial_order(paths)
        assert ds.SOPClassUID == sop_class
        assert ds.file_meta.MediaStorageSOPClassUID == sop_class
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SeriesInstanceUID != originals[0].SeriesInstanceUID
        assert ds.SOPInstanceUID not in {o.SOPInstanceUID for o in originals}
        assert ds.StudyInstanceUID == originals[0].StudyInstanceUID
        assert str(ds.PatientName) == str(originals[0].PatientName)
        assert ds.PatientID == originals[0].PatientID
        assert ds.Modality == originals[0].Modality
        assert int(ds.NumberOfFrames) == len(paths)
        assert (ds.Rows, ds.Columns) == (originals[0].Rows, originals[0].Columns)
        assert ds.PixelRepresentation == originals[0].PixelRepresentation
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        arr = frames_of(ds)
        for index, original in enumerate(originals):
            np.testing.assert_array_equal(arr[index], original.pixel_array)

    @pytest.mark.parametrize("modality", ["OT", "CT"])
    def test_signed_bytes_widen_into_word_sc_as_offset_binary(self, make_series, modality):
        paths = make_series("s", n=5, modality=modality, bits=8, signed=True)
        ds = pydicom.dcmread(merge_one(paths[0].parent))
        assert ds.SOPClassUID == MF_GRAY_WORD_SC  # Byte SC takes unsigned pixels only
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 9, 8)
        assert ds.PixelRepresentation == 0
        arr = frames_of(ds)
        assert arr.dtype == np.uint16 and arr.min() >= 0 and arr.max() <= 255
        unassigned = ds.SharedFunctionalGroupsSequence[0]
        [source] = unassigned.UnassignedSharedConvertedAttributesSequence
        assert (source.BitsAllocated, source.BitsStored, source.HighBit) == (8, 8, 7)
        assert source.PixelRepresentation == 1
        for index, original in enumerate(spatial_order(paths)):  # the same modality values
            slope = float(original.get("RescaleSlope", 1))
            expected = original.pixel_array * slope + float(original.get("RescaleIntercept", 0))
            rescaled = arr[index] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            np.testing.assert_array_equal(rescaled, expected)

    def test_name_is_patient_series_multiframe_in_series_folder(self, make_series):
        paths = make_series("s", n=6, series_number=7)
        out = merge_one(paths[0].parent)
        assert out.parent == paths[0].parent
        assert out.name == "DOE_JANE_series7_multiframe.dcm"

    def test_name_has_safe_characters_only(self, make_series):
        paths = make_series("s", n=6, series_number=12, patient="O'Brien/Test^Ann Marie")
        out = merge_one(paths[0].parent)
        assert re.fullmatch(r"[A-Za-z0-9._-]+_series12_multiframe\.dcm", out.name), out.name
        assert out.name.startswith("O")

    def test_inputs_are_never_modified(self, make_series):
        paths = make_series("s", n=6)
        before = hash_files(paths)
        merge_one(paths[0].parent)
        assert hash_files(paths) == before

    def test_two_series_in_one_folder_give_two_outputs(self, make_series):
        ct = make_series("mix", n=6, series_number=3, prefix="A", seed=3)
        mr = make_series("mix", n=5, series_number=4, prefix="B", seed=4, modality="MR")
        outputs = merge_folder(ct[0].parent)
        assert [p.name for p in outputs] == [
            "DOE_JANE_series3_multiframe.dcm",
            "DOE_JANE_series4_multiframe.dcm",
        ]
        for out, paths in zip(outputs, (ct, mr), strict=True):
            ds = pydicom.dcmread(out)
            originals = spatial_order(paths)
            assert int(ds.NumberOfFrames) == len(paths)
            sources = {
                f.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID
                for f in ds.PerFrameFunctionalGroupsSequence
            }
            assert sources == {o.SOPInstanceUID for o in originals}

    def test_inconsistent_slices_of_one_series_become_separate_stacks(self, make_series):
        big = make_series("mix", n=6, prefix="A", seed=3)
        series_uid = pydicom.dcmread(big[0]).SeriesInstanceUID
        small = make_series("mix", n=4, prefix="B", seed=4, rows=16, series_uid=series_uid)
        outputs = merge_folder(big[0].parent)
        assert len(outputs) == 2
        shapes = sorted(
            (int(d.NumberOfFrames), d.Rows) for d in (pydicom.dcmread(p) for p in outputs)
        )
        assert shapes == [(len(small), 16), (len(big), 32)]
        assert all("_series3" in p.name and p.name.endswith(".dcm") for p in outputs)


class TestMergeFunctionalGroups:
    """Shared and per-frame functional groups, dimensions and references."""

    @pytest.fixture
    def merged(self, ct_series):
        out = merge_one(ct_series[0].parent)
        return pydicom.dcmread(out), spatial_order(ct_series)

    def test_frame_values_match_the_source_slices(self, merged):
        ds, originals = merged
        assert len(ds.PerFrameFunctionalGroupsSequence) == len(originals)
        for index, original in enumerate(originals):
            measures = frame_item(ds, index, "PixelMeasuresSequence")
            assert floats(measures.PixelSpacing) == floats(original.PixelSpacing)
            assert float(measures.SliceThickness) == float(original.SliceThickness)
            orientation = frame_item(ds, index, "PlaneOrientationSequence")
            np.testing.assert_allclose(
                floats(orientation.ImageOrientationPatient),
                floats(original.ImageOrientationPatient),
                atol=1e-6,
            )
            position = frame_item(ds, index, "PlanePositionSequence")
            np.testing.assert_allclose(
                floats(position.ImagePositionPatient),
                floats(original.ImagePositionPatient),
                atol=1e-4,
            )
            transform = frame_item(ds, index, "PixelValueTransformationSequence")
            assert float(transform.RescaleIntercept) == float(original.RescaleIntercept)
            assert float(transform.RescaleSlope) == float(original.RescaleSlope)
            voi = frame_item(ds, index, "FrameVOILUTSequence")
            assert float(voi.WindowCenter) == float(original.WindowCenter)
            assert float(voi.WindowWidth) == float(original.WindowWidth)

    def test_positions_are_per_frame(self, merged):
        ds, _ = merged
        assert "PlanePositionSequence" not in ds.SharedFunctionalGroupsSequence[0]
        assert all("PlanePositionSequence" in f for f in ds.PerFrameFunctionalGroupsSequence)

    def test_frame_content_stack_and_position(self, merged):
        ds, originals = merged
        stack_ids = set()
        for index in range(len(originals)):
            content = frame_item(ds, index, "FrameContentSequence")
            stack_ids.add(str(content.StackID))
            assert int(content.InStackPositionNumber) == index + 1
        assert len(stack_ids) == 1

    def test_dimension_index_points_into_the_frames(self, merged):
        ds, originals = merged
        dimensions = ds.DimensionIndexSequence
        assert len(dimensions) >= 1
        pointers = [Tag(d.DimensionIndexPointer) for d in dimensions]
        assert Tag("InStackPositionNumber") in pointers
        organizations = {o.DimensionOrganizationUID for o in ds.DimensionOrganizationSequence}
        for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            values = list(frame.FrameContentSequence[0].DimensionIndexValues)
            assert len(values) == len(dimensions)
            for dimension in dimensions:
                assert dimension.DimensionOrganizationUID in organizations
                group = Tag(dimension.FunctionalGroupPointer)
                item = frame_item(ds, index, pydicom.datadict.keyword_for_tag(group))
                assert Tag(dimension.DimensionIndexPointer) in item
        positions = [
            f.FrameContentSequence[0].DimensionIndexValues[
                pointers.index(Tag("InStackPositionNumber"))
            ]
            for f in ds.PerFrameFunctionalGroupsSequence
        ]
        assert positions == list(range(1, len(originals) + 1))

    def test_references_to_the_source_instances(self, merged):
        ds, originals = merged
        (series,) = ds.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == originals[0].SeriesInstanceUID
        referenced = {
            (r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
            for r in series.ReferencedInstanceSequence
        }
        assert referenced == {(o.SOPClassUID, o.SOPInstanceUID) for o in originals}
        for frame, original in zip(ds.PerFrameFunctionalGroupsSequence, originals, strict=True):
            (source,) = frame.ConversionSourceAttributesSequence
            assert source.ReferencedSOPInstanceUID == original.SOPInstanceUID
            assert source.ReferencedSOPClassUID == original.SOPClassUID

    def test_per_slice_rescale_goes_per_frame(self, make_series):
        paths = make_series("pt", n=6, modality="PT", signed=False)
        ds = pydicom.dcmread(merge_one(paths[0].parent))
        originals = spatial_order(paths)
        assert "PixelValueTransformationSequence" not in ds.SharedFunctionalGroupsSequence[0]
        slopes = [
            float(f.PixelValueTransformationSequence[0].RescaleSlope)
            for f in ds.PerFrameFunctionalGroupsSequence
        ]
        assert slopes == [float(o.RescaleSlope) for o in originals]


class TestMergeOrder:
    """Frames come out in spatial order whatever the file names and instance numbers."""

    @pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal", "oblique"])
    @pytest.mark.parametrize("instance_order", ["position", "reversed", "shuffled"])
    def test_sorted_along_the_slice_normal(self, make_series, orientation, instance_order):
        paths = make_series(
            "s", n=8, orientation=orientation, instance_order=instance_order, seed=5
        )
        ds = pydicom.dcmread(merge_one(paths[0].parent))
        originals = spatial_order(paths)
        iop = floats(originals[0].ImageOrientationPatient)
        normal = np.cross(iop[:3], iop[3:])
        distances = []
        arr = frames_of(ds)
        for index, original in enumerate(originals):
            position = floats(frame_item(ds, index, "PlanePositionSequence").ImagePositionPatient)
            np.testing.assert_allclose(position, floats(original.ImagePositionPatient), atol=1e-4)
            distances.append(float(np.dot(normal, position)))
            np.testing.assert_array_equal(arr[index], original.pixel_array)
        assert distances == sorted(distances)

    def test_non_uniform_offsets_still_sorted(self, make_series):
        offsets = [0.0, 2.0, 4.5, 6.0, 9.0, 10.0]
        paths = make_series("s", n=6, offsets=offsets, orientation="oblique", seed=9)
        ds = pydicom.dcmread(merge_one(paths[0].parent))
        originals = spatial_order(paths)
        sources = [
            f.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID
            for f in ds.PerFrameFunctionalGroupsSequence
        ]
        assert sources == [o.SOPInstanceUID for o in originals]

    @pytest.mark.parametrize("modality", ["CT", "OT"])
    def test_without_geometry_sorted_by_instance_number(self, make_series, modality):
        paths = make_series(
            "s", n=7, geometry=False, instance_order="shuffled", modality=modality, seed=11
        )
        originals = sorted((pydicom.dcmread(p) for p in paths), key=lambda d: d.InstanceNumber)
        assert [o.InstanceNumber for o in originals] == list(range(1, 8))
        ds = pydicom.dcmread(merge_one(paths[0].parent))
        # signed data is stored as offset binary in SC: compare the rescaled values
        arr = frames_of(ds) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        for index, original in enumerate(originals):
            slope = float(original.get("RescaleSlope", 1))
            expected = original.pixel_array * slope + float(original.get("RescaleIntercept", 0))
            np.testing.assert_array_equal(arr[index], expected)


class TestMergeWarnings:
    """Duplicates, gaps and non-uniform spacing are reported as [WARNING] lines."""

    def test_uniform_series_gives_no_warning(self, make_series):
        paths = make_series("s", n=8)
        code, _, err = run_main("-j", "-F", paths[0].parent)
        assert code == 0
        assert warnings_of(err) == []

    def test_missing_slice_is_a_gap(self, make_series):
        paths = make_series("s", n=8, skip=(4,))
        code, _, err = run_main("-j", "-F", paths[0].parent)
        assert code == 0
        assert any("gap" in w.lower() for w in warnings_of(err)), err
        ds = pydicom.dcmread(next(paths[0].parent.glob("*_multiframe.dcm")))
        assert int(ds.NumberOfFrames) == 7

    def test_duplicate_position(self, make_series):
        paths = make_series("s", n=6, offsets=[0, 2.5, 5, 5, 7.5, 10])
        code, _, err = run_main("-j", "-F", paths[0].parent)
        assert code == 0
        assert any("duplicate" in w.lower() for w in warnings_of(err)), err

    def test_non_uniform_spacing_is_reported(self, make_series):
        paths = make_series("s", n=7, offsets=[0, 2.5, 5, 7.5, 10.6, 13.1, 15.6])
        code, _, err = run_main("-j", "-F", paths[0].parent)
        assert code == 0
        found = warnings_of(err)
        assert any("non-uniform" in w.lower() or "spacing" in w.lower() for w in found), err
        assert not any("gap" in w.lower() for w in found), err


def merge_json(folder, *extra: str) -> dict:
    """Merge a folder with --json; return the one job's outcome."""
    code, out, err = run_main("-j", "-F", folder, "--json", *extra)
    assert code == 0, out + err
    [job] = json.loads(out)["jobs"]
    return job


def frame_positions(ds: pydicom.Dataset) -> list[float]:
    """Return each frame's position along the normal, from its Plane Position macro."""
    normal = normal_of(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0])
    return [
        float(np.dot(normal, floats(f.PlanePositionSequence[0].ImagePositionPatient)))
        for f in ds.PerFrameFunctionalGroupsSequence
    ]


class TestWhatReadersGetWrong:
    """Warnings in the log and, per output, in --json's data["warnings"]; --split-at-gaps."""

    def test_gap(self, make_series):
        paths = make_series("s", n=8, skip=(4,), shuffle_names=False)
        job = merge_json(paths[0].parent)
        [output] = job["outputs"]
        [warning] = job["data"]["warnings"]
        uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
        assert warning == {
            "kind": "gap",
            "series": uid,
            "output": output,
            "slices": ["IMG0003.dcm", "IMG0004.dcm"],
            "message": f"series {uid}: {Path(output).name}: 1 gap(s) in slice positions (step "
            "up to 5 mm, typical 2.5 mm): slices may be missing; ITK, GDCM and itk-wasm "
            "(VolView) read frames that are not evenly spaced with a spacing of 1 x 1 x 1 "
            "mm, in-plane too; --split-at-gaps writes one evenly spaced file per run of "
            "slices",
        }
        Path(output).unlink()  # merged again: the same line in the log
        code, _, err = run_main("-j", "-F", paths[0].parent)
        assert code == 0
        assert warnings_of(err) == [f"[WARNING] {warning['message']}"]

    def test_uneven_spacing(self, make_series):
        offsets = [0, 2.5, 5, 7.5, 10.6, 13.1, 15.6]
        paths = make_series("s", n=7, offsets=offsets, shuffle_names=False)
        [warning] = merge_json(paths[0].parent)["data"]["warnings"]
        assert (warning["kind"], warning["slices"]) == (
            "uneven_spacing",
            ["IMG0003.dcm", "IMG0004.dcm"],
        )
        assert "1 x 1 x 1 mm" in warning["message"]

    def test_rescale_differs_per_frame(self, make_series):
        paths = make_series("pet", n=5, modality="PT", shuffle_names=False)
        job = merge_json(paths[0].parent)
        [warning] = job["data"]["warnings"]
        assert warning["kind"] == "rescale_differs"
        assert warning["slices"] == [f"IMG{i:04d}.dcm" for i in range(1, 5)]
        assert "apply the first frame's Rescale Slope and Intercept" in warning["message"]
        ds = pydicom.dcmread(job["outputs"][0])
        slopes = [
            float(f.PixelValueTransformationSequence[0].RescaleSlope)
            for f in ds.PerFrameFunctionalGroupsSequence
        ]
        assert len(set(slopes)) == 5  # the file itself is right: a slope per frame

    def test_uniform_series_has_none(self, make_series):
        paths = make_series("s", n=6)
        assert merge_json(paths[0].parent)["data"]["warnings"] == []

    @pytest.mark.parametrize(("skip", "runs"), [((3,), [3, 5]), ((2, 6), [2, 3, 2])])
    def test_split_at_gaps(self, make_series, skip, runs):
        paths = make_series("s", n=9, skip=skip)
        job = merge_json(paths[0].parent, "--split-at-gaps")
        assert job["data"]["warnings"] == []
        outputs = [Path(p) for p in job["outputs"]]
        assert [p.name for p in outputs] == [
            f"DOE_JANE_series3-{k}_multiframe.dcm" for k in range(1, len(runs) + 1)
        ]
        sources = set()
        for output, frames in zip(outputs, runs, strict=True):
            ds = pydicom.dcmread(output)
            assert int(ds.NumberOfFrames) == frames
            steps = np.diff(frame_positions(ds))
            np.testing.assert_allclose(steps, 2.5, atol=1e-4)  # evenly spaced
            assert dciodvfy_errors(output) == []
            sources |= {
                f.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID
                for f in ds.PerFrameFunctionalGroupsSequence
            }
        assert sources == {pydicom.dcmread(p).SOPInstanceUID for p in paths}

    def test_split_at_gaps_without_gaps_is_one_file(self, make_series):
        paths = make_series("s", n=5)
        job = merge_json(paths[0].parent, "--split-at-gaps")
        assert [Path(p).name for p in job["outputs"]] == ["DOE_JANE_series3_multiframe.dcm"]


class TestMergeCompressed:
    """One shared compressed syntax: frames copied as they are; otherwise native output."""

    @pytest.mark.parametrize(
        ("syntax", "size"),
        [(RLELossless, (32, 24)), (JPEG2000Lossless, (32, 32)), (JPEGLSLossless, (32, 24))],
        ids=["RLE", "J2K", "JPEG-LS"],
    )
    def test_fragments_copied_unchanged(self, make_series, syntax, size):
        rows, cols = size
        paths = make_series("s", n=6, rows=rows, cols=cols, syntax=syntax, signed=False)
        ds = pydicom.dcmread(merge_one(paths[0].parent))
        originals = spatial_order(paths)
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert encoded_frames(ds) == [encoded_frames(o)[0] for o in originals]
        arr = frames_of(ds)
        for index, original in enumerate(originals):
            np.testing.assert_array_equal(arr[index], original.pixel_array)

    @pytest.mark.parametrize("other", [ExplicitVRLittleEndian, JPEGLSLossless])
    def test_mixed_syntaxes_give_explicit_little_endian(self, make_series, other):
        paths = make_series("s", n=6, syntax=RLELossless)
        for path in paths[::2]:
            ds = pydicom.dcmread(path)
            if other == ExplicitVRLittleEndian:
                ds.decompress(generate_instance_uid=False)
            else:
                ds.decompress(generate_instance_uid=False)
                ds.compress(other, generate_instance_uid=False)
            ds.save_as(path, enforce_file_format=True)
        ds = pydicom.dcmread(merge_one(paths[0].parent))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        arr = frames_of(ds)
        for index, original in enumerate(spatial_order(paths)):
            np.testing.assert_array_equal(arr[index], original.pixel_array)


class TestMergeRerun:
    """Earlier outputs are never merged again and never overwritten."""

    def test_second_run_ignores_the_first_output(self, ct_series):
        folder = ct_series[0].parent
        first = merge_one(folder)
        first_hash = hash_files([first])
        first_uid = pydicom.dcmread(first).SOPInstanceUID
        second = merge_one(folder)
        assert second.name == "DOE_JANE_series3_multiframe_1.dcm"
        assert hash_files([first]) == first_hash
        ds = pydicom.dcmread(second)
        assert int(ds.NumberOfFrames) == len(ct_series)
        referenced = {
            r.ReferencedSOPInstanceUID
            for s in ds.ReferencedSeriesSequence
            for r in s.ReferencedInstanceSequence
        }
        assert first_uid not in referenced
        assert len(referenced) == len(ct_series)

    def test_output_dir_gets_a_copy_and_never_overwrites(self, ct_series, tmp_path):
        folder = ct_series[0].parent
        target = tmp_path / "out"
        first = merge_one(folder, "--output-dir", target)
        copy = target / first.name
        assert copy.read_bytes() == first.read_bytes()
        copy_hash = hash_files([copy])
        second = merge_one(folder, "--output-dir", target)
        assert sorted(p.name for p in target.iterdir()) == [
            "DOE_JANE_series3_multiframe.dcm",
            "DOE_JANE_series3_multiframe_1.dcm",
        ]
        assert hash_files([copy]) == copy_hash
        assert (target / "DOE_JANE_series3_multiframe_1.dcm").read_bytes() == second.read_bytes()


def _validated_series(make_series, kwargs):
    """Make and merge a series for the validators; return the merged file."""
    paths = make_series("v", n=6, **kwargs)
    return merge_one(paths[0].parent)


VALID_SERIES = [
    pytest.param({"modality": "CT", "vary_window": True}, id="CT-axial"),
    pytest.param({"modality": "MR", "orientation": "oblique", "signed": False}, id="MR-oblique"),
    pytest.param({"modality": "PT", "orientation": "sagittal", "signed": False}, id="PT-sagittal"),
    pytest.param({"modality": "CT", "orientation": "coronal", "skip": (2,)}, id="CT-gap"),
    pytest.param({"modality": "OT", "signed": False}, id="OT-word"),
    pytest.param({"modality": "OT", "signed": False, "bits": 8}, id="OT-byte"),
    pytest.param({"modality": "CT", "rgb": True}, id="CT-rgb"),
    pytest.param({"modality": "CT", "syntax": RLELossless}, id="CT-RLE"),
    pytest.param(
        {"modality": "MR", "syntax": JPEG2000Lossless, "rows": 32, "cols": 32}, id="MR-J2K"
    ),
]


class TestMergeValidators:
    """dciodvfy finds no error; dcmdump and gdcminfo read the file."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            *VALID_SERIES,
            pytest.param({"modality": "CT", "bits": 8, "signed": False}, id="CT-8bit"),
            pytest.param({"modality": "CT", "bits": 8}, id="CT-8bit-signed"),
            pytest.param({"modality": "PT", "bits": 8, "signed": False}, id="PT-8bit"),
            pytest.param({"modality": "OT", "signed": True}, id="OT-signed-word"),
            pytest.param({"modality": "OT", "bits": 8}, id="OT-signed-byte"),
            pytest.param(
                {"modality": "CT", "geometry": False, "signed": False}, id="CT-no-geometry"
            ),
            pytest.param({"modality": "CT", "geometry": False}, id="CT-no-geometry-signed"),
            pytest.param(
                {"modality": "OT", "signed": False, "geometry": False}, id="OT-no-geometry"
            ),
        ],
    )
    def test_dciodvfy_reports_no_error(self, make_series, kwargs):
        assert dciodvfy_errors(_validated_series(make_series, kwargs)) == []

    @pytest.mark.parametrize("body_part", ["HEAD", "ABDOMEN", "KNEE", "BREAST"])
    @pytest.mark.parametrize("modality", ["CT", "OT"])
    def test_laterality_follows_the_body_part(self, make_series, modality, body_part):
        """Laterality (type 2C) is absent for an unpaired body part, empty for a paired one."""
        paths = make_series("bp", n=3, modality=modality, signed=False)
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.BodyPartExamined = body_part
            ds.save_as(path)
        merged = merge_one(paths[0].parent)
        assert dciodvfy_errors(merged) == []
        paired = body_part in ("KNEE", "BREAST")
        assert pydicom.dcmread(merged).get("Laterality") == ("" if paired else None)

    @pytest.mark.parametrize("modality", ["CT", "OT"])
    def test_one_slice_gives_a_valid_one_frame_file(self, make_series, modality):
        """A one-slice series (merged as dcmulti does) is valid too: no Frame Increment
        Pointer in a one-frame Secondary Capture (C.8.6.3 makes it type 1C)."""
        [path] = make_series("one", n=1, modality=modality, signed=False)
        merged = merge_one(path.parent)
        assert dciodvfy_errors(merged) == []
        assert ("FrameIncrementPointer" in pydicom.dcmread(merged)) is False

    def test_palette_color_is_refused_in_words(self, testdata):
        """A PALETTE COLOR slice has no multi-frame SC to go to: it fails, named, unchanged."""
        from conftest import hash_files, run_main

        source = testdata("examples_palette.dcm")
        before = hash_files([source])
        code, _, err = run_main("-j", "-F", source.parent)
        assert code == 1, err
        assert (
            f"{source.name}: cannot merge series {pydicom.dcmread(source).SeriesInstanceUID}: "
            "PALETTE COLOR slices cannot be merged: no multi-frame Secondary Capture IOD takes "
            "a palette (PS3.3 A.8.2-A.8.5), so the colours would be lost; -I png exports "
            "them in colour"
        ) in err
        assert hash_files([source]) == before
        assert sorted(p.name for p in source.parent.iterdir()) == [source.name]

    def test_deflated_slice(self, testdata):
        """A Deflated Explicit VR slice is inflated and merged, pixels unchanged."""
        source = testdata("image_dfl.dcm")
        merged = merge_one(source.parent)
        assert dciodvfy_errors(merged) == []
        frames = pydicom.dcmread(merged).pixel_array
        assert np.array_equal(frames.reshape(-1), pydicom.dcmread(source).pixel_array.reshape(-1))

    @pytest.mark.parametrize("tool", ["dcmdump", "gdcminfo"])
    @pytest.mark.parametrize("kwargs", VALID_SERIES[:1] + VALID_SERIES[6:])
    def test_other_toolkits_read_it(self, make_series, kwargs, tool):
        assert tool_exit_code(tool, _validated_series(make_series, kwargs)) == 0


class TestValuesReadFromBytes:
    """Merge reads plain values from the bytes; they must equal pydicom's conversions."""

    @staticmethod
    def _bundled() -> list[pydicom.Dataset]:
        import warnings

        datasets = []
        for path in bundled_files():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    datasets.append(pydicom.dcmread(path, defer_size=4096))
                except Exception:  # files pydicom itself cannot read
                    continue
        return datasets

    def test_text_and_numbers_equal_pydicom_on_every_bundled_file(self):
        import copy
        import warnings

        from dicompressor import PLAIN_TEXT_VRS, _float_tuple, numbers_of, text_of

        texts = numbers = 0
        for ds in self._bundled():
            for tag in list(ds._dict):
                raw = ds._dict[tag]
                if raw.VR not in PLAIN_TEXT_VRS or tag >> 16 == 0x7FE0:
                    continue
                fresh = copy.copy(ds)  # text_of must see the element as read
                fresh._dict = dict(ds._dict)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        value = ds[tag].value
                    except Exception:
                        continue
                    expected = None if value is None else str(value)
                    assert text_of(fresh, tag) == expected, (ds.filename, hex(tag))
                    texts += 1
                    if raw.VR in ("DS", "IS") and value not in (None, ""):
                        count = len(value) if isinstance(value, list | tuple) else 1
                        fresh._dict = dict(ds._dict)
                        fresh._dict[tag] = raw
                        assert numbers_of(fresh, tag, count) == _float_tuple(
                            value if count > 1 else [value], count
                        ), (ds.filename, hex(tag))
                        numbers += 1
        assert texts > 500 and numbers > 100, (texts, numbers)

    @pytest.mark.parametrize(
        ("text", "count", "expected"),
        [
            (b" 1.5\\-2e3 ", 2, (1.5, -2000.0)),
            (b"1\\2\\3", 2, None),  # wrong count
            (b"nan\\1", 2, None),  # not finite
            (b"", 1, None),
        ],
    )
    def test_numbers_of_edge_cases(self, text, count, expected):
        from dicompressor import numbers_of

        ds = pydicom.Dataset()
        ds._dict[0x00280030] = pydicom.dataelem.RawDataElement(
            Tag(0x00280030), "DS", len(text), text, 0, False, True
        )
        assert numbers_of(ds, 0x00280030, count) == expected

    def test_surely_converts_is_sure(self):
        import warnings

        from dicompressor import _surely_converts

        checked = 0
        for ds in self._bundled():
            for tag in list(ds._dict):
                if _surely_converts(ds._dict[tag]):
                    with warnings.catch_warnings():
                        warnings.simplefilter("error")  # not even a warning
                        ds[tag].value  # noqa: B018
                    checked += 1
        assert checked > 500


class TestPlainHeaderReader:
    """read_plain_header gives what dcmread(defer_size=4096) gives, or leaves the file."""

    @staticmethod
    def _same(fast: pydicom.FileDataset, slow: pydicom.FileDataset) -> None:
        def raw(ds: pydicom.Dataset) -> dict[int, tuple]:
            return {
                int(t): (e.VR, e.length, e.value, e.value_tell)
                for t, e in ds._dict.items()
                if isinstance(e, pydicom.dataelem.RawDataElement)
            }

        assert raw(fast) == raw(slow) and list(fast._dict) == list(slow._dict)
        meta = [(int(e.tag), e.VR, e.value) for e in fast.file_meta]
        assert meta == [(int(e.tag), e.VR, e.value) for e in slow.file_meta]
        assert fast.preamble == slow.preamble and fast.filename == slow.filename
        assert fast.original_encoding == slow.original_encoding
        assert fast.original_character_set == slow.original_character_set
        assert fast._character_set == slow._character_set
        assert fast.timestamp == slow.timestamp

    def test_equal_to_pydicom_on_bundled_and_generated_files(self, make_series):
        import warnings

        from dicompressor import read_plain_header

        paths = bundled_files()
        paths += make_series("a", n=2) + make_series("b", n=2, rgb=True, modality="OT")
        taken = 0
        for path in paths:
            fast = read_plain_header(path)
            if fast is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                slow = pydicom.dcmread(path, defer_size=4096)
            self._same(fast, slow)
            if "PixelData" in slow:  # the deferred value reads back the same
                assert fast.PixelData == slow.PixelData, path.name
            taken += 1
        assert taken >= 10, taken  # the fast reader is really used

    def test_slices_share_their_equal_elements(self, make_series):
        """The same element of two slices is one object (a merge holds every header)."""
        from dicompressor import read_plain_header

        paths = make_series("s", n=2)
        for index, path in enumerate(paths):  # UIDs of one length: the same offsets after
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{index}"
            ds.save_as(path, enforce_file_format=True)
        a, b = (read_plain_header(p) for p in paths)
        assert a is not None and b is not None
        assert a._dict[0x00080060] is b._dict[0x00080060]  # Modality
        assert a._dict[0x00080018] is not b._dict[0x00080018]  # SOP Instance UID
        assert a._dict[0x00080018].value != b._dict[0x00080018].value
        assert a.preamble == b.preamble == bytes(128)

    @pytest.mark.parametrize(
        "damage",
        ["truncated", "trailing", "disorder", "implicit", "bad_vr", "big_header"],
    )
    def test_anything_unusual_goes_to_pydicom(self, make_series, damage):
        import struct

        from dicompressor import read_plain_header

        [path] = make_series("s", n=1)
        assert read_plain_header(path) is not None
        data = bytearray(path.read_bytes())
        ds = pydicom.dcmread(path)
        if damage == "truncated":
            data = data[:-10]
        elif damage == "trailing":
            data += struct.pack("<HH2s2xL", 0xFFFC, 0xFFFC, b"OB", 2) + b"\0\0"
        elif damage == "disorder":
            ds.Modality = "CT"
            ds.save_as(path)
            data = bytearray(path.read_bytes())
            at = data.index(b"\x08\x00\x60\x00CS")  # (0008,0060) Modality
            data[at : at + 4] = struct.pack("<HH", 0x0008, 0x0001)
        elif damage == "implicit":
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            ds.save_as(path, implicit_vr=True, little_endian=True)
            data = bytearray(path.read_bytes())
        elif damage == "bad_vr":
            at = data.index(b"\x08\x00\x60\x00CS")
            data[at + 4 : at + 6] = b"ZZ"
        elif damage == "big_header":
            ds.TextValue = "x" * 70000  # UT: longer than the head read
            ds.save_as(path)
            data = bytearray(path.read_bytes())
        path.write_bytes(bytes(data))
        assert read_plain_header(path) is None
