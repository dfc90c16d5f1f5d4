"""DICOMDIR (-d): in place for conformant names, else a conformant copy; validators."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import dciodvfy_errors, hash_files, light_run, tool_exit_code
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from dicompressor import (
    DICOMDIR_PLACEHOLDERS,
    DIRECTORY_IMAGE_SOP_CLASSES,
    Options,
    dicomdir,
)


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


# ---- the records, as pydicom's FileSet made them before -d built them itself ----


def pydicom_dicomdir(paths: list[Path], root: Path) -> Dataset:
    """Return the DICOMDIR pydicom's FileSet writes of paths, referencing them in place.

    This is how -d made it until issue 21: each file read whole and added to a FileSet
    (Type 1 keys it lacks given their placeholders), the records written with the File
    IDs of the files where they are.
    """
    fs = FileSet()
    ids: dict[str, list[str]] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in DICOMDIR_PLACEHOLDERS.items():
            if keyword not in ds or ds[keyword].VM == 0:
                setattr(ds, keyword, value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fs.add(ds)
        ids[ds.SOPInstanceUID] = list(path.relative_to(root).parts)
    for instance in fs:
        instance.node._record.ReferencedFileID = ids[instance.SOPInstanceUID]
    buffer = DicomBytesIO()
    fs._write_dicomdir(buffer, copy_safe=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def records_of(ds: Dataset) -> list[list[tuple[int, str, str]]]:
    """Return every record's elements as (tag, VR, value), offsets counted from the first
    record (the File-set UID, which is new each time, may differ in length)."""
    first = ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity
    out = [[(0, "UL", str(ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity - first))]]
    for record in ds.DirectoryRecordSequence:
        elements = []
        for elem in record:
            value = elem.value
            if elem.tag in (0x00041400, 0x00041420) and value:
                value -= first
            elements.append((int(elem.tag), elem.VR, str(value)))
        out.append(elements)
    return out


def odd_copy(source: Path, target: Path, **values: Any) -> Path:
    """Write a copy of source with other values (None: removed) and a new SOP Instance UID."""
    ds = pydicom.dcmread(source)
    for keyword, value in values.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    if "SOPInstanceUID" not in values:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd values on purpose
        ds.save_as(target, enforce_file_format=True)
    return target


class TestRecords:
    """-d builds the records from the header values: every key and value as before."""

    @pytest.mark.filterwarnings("ignore:.*1.5")  # an IS value that is no integer, on purpose
    def test_records_equal_pydicoms(self, make_series, testdata):
        paths = conformant_names(make_series("CD", n=3))
        folder, first = paths[0].parent, paths[0]
        paths += [
            odd_copy(first, folder / "PADDED", PatientID="  ID7 \0", PatientName="A^B^^^ ",
                     SeriesNumber=" +007 ", StudyDescription="HEAD  "),
            odd_copy(first, folder / "ANON", StudyID=None, StudyDate="", StudyTime=None,
                     Modality="", InstanceNumber="", PatientID=None, AccessionNumber=None),
            odd_copy(first, folder / "CHARSET", SpecificCharacterSet=["", "ISO 2022 IR 100"],
                     PatientName="Gr\u00fcn^Anna"),
            odd_copy(first, folder / "BACKSL", StudyDescription="A\\B", SeriesNumber="1.5"),
            odd_copy(first, folder / "DUP", PatientID="OTHER",
                     SOPInstanceUID=pydicom.dcmread(first).SOPInstanceUID),
        ]  # fmt: skip
        for name in ("JPEG2000.dcm", "rtdose.dcm", "MR_small.dcm"):  # the RT Dose: another leaf
            paths.append(odd_copy(testdata(name), folder / name.split(".")[0].upper()[:8]))
        before = hash_files(paths)
        result = dicomdir(paths, None, Options())
        assert not result.failures
        target = folder / "DICOMDIR"
        assert result.outputs == [target]
        assert any(
            "placeholder values for keys the files lack: InstanceNumber (2 files), Modality "
            "(1 files), PatientID (1 files), StudyDate (1 files), StudyID (1 files), StudyTime "
            "(1 files)" in line
            for line in result.log
        )
        assert records_of(pydicom.dcmread(target)) == records_of(pydicom_dicomdir(paths, folder))
        assert hash_files(paths) == before
        assert dciodvfy_errors(target) == []
        assert tool_exit_code("dcmftest", target) == 0
        assert tool_exit_code("dcmdump", target) == 0
        uids = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
        assert len(uids) == len(paths) - 1  # DUP repeats the first file's UID
        assert instances_found(target) == uids

    def test_plain_files_need_no_toolkit(self, make_series):
        paths = conformant_names(make_series("CD", n=3))
        folder = paths[0].parent
        code, with_pydicom, with_numpy = light_run("-d", "-F", folder, "--quiet")
        assert (code, with_pydicom, with_numpy) == (0, False, False)
        light = pydicom.dcmread(folder / "DICOMDIR")
        assert records_of(light) == records_of(pydicom_dicomdir(paths, folder))
        assert light.file_meta.ImplementationVersionName == f"PYDICOM {pydicom.__version__}"

    def test_other_files_load_it(self, make_series, testdata):
        paths = conformant_names(make_series("CD", n=2))
        folder = paths[0].parent
        paths.append(testdata("JPEG2000.dcm").rename(folder / "J2K"))
        code, with_pydicom, _ = light_run("-d", "-F", folder, "--quiet")
        assert (code, with_pydicom) == (0, True)
        assert records_of(pydicom.dcmread(folder / "DICOMDIR")) == records_of(
            pydicom_dicomdir(paths, folder)
        )

    def test_image_classes_are_pydicoms(self):
        from pydicom.fileset import _four_level_record_type, _single_level_record_type

        for uid in DIRECTORY_IMAGE_SOP_CLASSES:
            ds = Dataset()
            ds.SOPClassUID, ds.Modality = uid, "OT"
            assert (_single_level_record_type(ds), _four_level_record_type(ds)) == (
                "PATIENT",
                "IMAGE",
            ), uid
