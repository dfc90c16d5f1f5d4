"""DICOMDIR (-d): in place for conformant names, else a conformant copy; validators."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from conftest import dciodvfy_errors, hash_files, tool_exit_code
from pydicom.fileset import FileSet

from dicompressor import Options, dicomdir


def conformant_names(paths: list[Path]) -> list[Path]:
    """Rename files to IM000001... (conformant File IDs); return the new paths."""
    renamed = []
    for index, path in enumerate(sorted(paths), 1):
        target = path.with_name(f"IM{index:06d}")
        path.rename(target)
        renamed.append(target)
    return renamed


def instances_found(dicomdir_path: Path) -> set[str]:
    """Return the SOP Instance UIDs that pydicom's FileSet finds, checking each file."""
    fs = FileSet(dicomdir_path)
    found = set()
    for instance in fs:
        assert Path(instance.path).is_file()
        found.add(instance.load().SOPInstanceUID)
    return found


class TestInPlace:
    """Conformant file names: the DICOMDIR is written in the folder and points at them."""

    def test_in_place(self, make_series):
        paths = conformant_names(make_series("S1", n=4))
        before = hash_files(paths)
        result = dicomdir(paths, None, Options())
        folder = paths[0].parent
        assert result.outputs == [folder / "DICOMDIR"]
        assert any("in place" in line for line in result.log)
        assert hash_files(paths) == before
        uids = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
        assert instances_found(folder / "DICOMDIR") == uids
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [*(p.name for p in paths), "DICOMDIR"]
        )
        assert dciodvfy_errors(folder / "DICOMDIR") == []
        assert tool_exit_code("dcmdump", folder / "DICOMDIR") == 0
        records = pydicom.dcmread(folder / "DICOMDIR").DirectoryRecordSequence
        file_ids = {
            tuple(r["ReferencedFileID"].value)
            if r["ReferencedFileID"].VM > 1
            else (r.ReferencedFileID,)
            for r in records
            if "ReferencedFileID" in r
        }
        assert file_ids == {(p.name,) for p in paths}


class TestCopy:
    """Non-conformant names: a PT/ST/SE/IM copy beside the folder, inputs untouched."""

    def test_copy_beside(self, make_series):
        paths = make_series("series", n=3)  # IMG0001.dcm: not a File ID
        folder = paths[0].parent
        before = hash_files(paths)
        result = dicomdir(paths, None, Options())
        copy_root = folder.parent / "series_DICOMDIR"
        assert result.outputs[0] == copy_root / "DICOMDIR"
        assert any("conformant copy" in line for line in result.log)
        assert not (folder / "DICOMDIR").exists()
        assert hash_files(paths) == before
        uids = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
        assert instances_found(copy_root / "DICOMDIR") == uids
        copies = [p for p in copy_root.rglob("*") if p.is_file() and p.name != "DICOMDIR"]
        assert len(copies) == 3
        assert all(p.relative_to(copy_root).parts[0].startswith("PT") for p in copies)
        assert dciodvfy_errors(copy_root / "DICOMDIR") == []
        assert tool_exit_code("dcmdump", copy_root / "DICOMDIR") == 0
        second = dicomdir(paths, None, Options())
        assert second.outputs[0] == folder.parent / "series_DICOMDIR_1" / "DICOMDIR"

    def test_output_dir(self, make_series, tmp_path):
        paths = conformant_names(make_series("S2", n=2))
        result = dicomdir(paths, tmp_path / "out", Options())
        assert result.outputs[0] == tmp_path / "out" / "S2_DICOMDIR" / "DICOMDIR"
        assert not (paths[0].parent / "DICOMDIR").exists()

    def test_bad_file_fails_alone(self, make_series):
        paths = conformant_names(make_series("S3", n=2))
        bad = paths[0].parent / "BROKEN"
        bad.write_bytes(b"junk")
        result = dicomdir([*paths, bad], None, Options())
        assert result.failures == [(bad, "not a DICOM file (no DICM prefix or File Meta)")]
        assert len(instances_found(paths[0].parent / "DICOMDIR")) == 2


class TestAnonymized:
    """Anonymized files (empty Study Date, Time and ID) still go into a DICOMDIR."""

    def test_anonymized_series(self, make_series, tmp_path):
        from dicompressor import anonymize

        anonymized = anonymize(make_series("A", n=3), tmp_path / "anon", Options()).outputs
        assert all(pydicom.dcmread(p).StudyDate == "" for p in anonymized)
        paths = conformant_names(anonymized)
        before = hash_files(paths)
        result = dicomdir(paths, None, Options())
        assert not result.failures
        target = paths[0].parent / "DICOMDIR"
        assert result.outputs == [target]
        assert any("placeholder" in line and "StudyDate" in line for line in result.log)
        assert hash_files(paths) == before  # the files keep their empty values
        assert dciodvfy_errors(target) == []
        assert tool_exit_code("dcmdump", target) == 0
        assert instances_found(target) == {pydicom.dcmread(p).SOPInstanceUID for p in paths}
        study = next(r for r in FileSet(target)._tree if r.record_type == "STUDY")
        assert study._record.StudyDate == "19000101"

    def test_anonymized_copy_keeps_files(self, make_series, tmp_path):
        from dicompressor import anonymize

        anonymized = anonymize(make_series("B", n=2), tmp_path / "anon", Options()).outputs
        result = dicomdir(anonymized, tmp_path / "out", Options())
        assert not result.failures
        copies = [p for p in result.outputs if p.name != "DICOMDIR"]
        assert len(copies) == 2
        for copy in copies:
            assert pydicom.dcmread(copy).StudyDate == ""  # unchanged: only records invent
        assert dciodvfy_errors(result.outputs[0]) == []


class TestOddFiles:
    """Files of other sources: bundled pydicom files with missing keys or odd encodings."""

    @pytest.mark.filterwarnings("ignore:Expected explicit VR")  # this test's own reads
    def test_missing_modality_and_implicit_dataset_under_explicit_syntax(self, testdata, tmp_path):
        # SC_jpeg_no_color_transform.dcm has no Modality (Type 1 in a SERIES record);
        # SC_rgb_jpeg.dcm holds an implicit VR dataset under an explicit VR syntax
        paths = [testdata("SC_jpeg_no_color_transform.dcm"), testdata("SC_rgb_jpeg.dcm")]
        before = hash_files(paths)
        result = dicomdir(paths, tmp_path / "out", Options())
        assert not result.failures, result.failures
        assert any("placeholder" in line and "Modality" in line for line in result.log)
        target = result.outputs[0]
        assert dciodvfy_errors(target) == []
        assert instances_found(target) == {pydicom.dcmread(p).SOPInstanceUID for p in paths}
        assert hash_files(paths) == before

    def test_instance_without_its_uids_fails_alone(self, make_series, testdata, tmp_path):
        paths = make_series("S", n=1)
        nameless = testdata("nested_priv_SQ.dcm")  # no SOP Class UID, no SOP Instance UID
        result = dicomdir([*paths, nameless], tmp_path / "out", Options())
        assert result.failures == [
            (
                nameless,
                "cannot be put in a DICOMDIR: no (0008,0016) SOPClassUID (its records need "
                "it, PS3.3 F.5)",
            )
        ]
        assert len(instances_found(result.outputs[0])) == 1
