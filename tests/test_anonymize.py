"""Anonymize (-a/-A): params parsing, the PS3.15 Basic Profile, UIDs, outputs, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import bundled_files, dciodvfy_errors, hash_files
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicompressor import (
    BLANK,
    SET,
    DicomPressorError,
    Options,
    ProfileChoice,
    Replacement,
    UidMap,
    anonymize,
    apply_replacements,
    basic_profile,
    deidentify_dataset,
    encode_file,
    fast_dataset_bytes,
    file_meta_for,
    mark_deidentified,
    parse_anonymize_params,
    profile_actions,
    read_header,
    transfer_syntax_of,
)


def parse_params(text: str) -> list[Replacement]:
    """Return the tag lines of anonymize params (parse_anonymize_params)."""
    return list(parse_anonymize_params(text).replacements)


# Identifying values put into the generated series: each must vanish from the outputs.
IDENTIFYING: dict[str, str] = {
    "PatientName": "SMITH^JOHNATHAN",
    "PatientID": "MRN7654321",
    "PatientBirthDate": "19561224",
    "OtherPatientIDs": "OTHERID99",
    "OtherPatientNames": "SMYTHE^JON",
    "PatientBirthName": "BIRTHNAMEX",
    "PatientMotherBirthName": "MOTHERMAIDEN",
    "PatientAddress": "12 ELM STREET SPRINGFIELD",
    "PatientTelephoneNumbers": "5551234567",
    "MilitaryRank": "COLONELX",
    "Occupation": "ASTRONAUTX",
    "AdditionalPatientHistory": "HISTORY OF SECRETS",
    "PatientComments": "PATIENTCOMMENTX",
    "MedicalRecordLocator": "LOCATORX",
    "IssuerOfPatientID": "ISSUERX",
    "AccessionNumber": "ACCX98765",
    "StudyID": "STUDYIDX",
    "StudyDate": "20210317",
    "StudyTime": "141516",
    "SeriesDate": "20210318",
    "SeriesTime": "151617",
    "AcquisitionDate": "20210319",
    "ContentDate": "20210320",
    "InstanceCreationDate": "20210321",
    "ReferringPhysicianName": "REFERRER^ALICE",
    "PerformingPhysicianName": "PERFORMER^BOB",
    "NameOfPhysiciansReadingStudy": "READER^CAROL",
    "OperatorsName": "OPERATOR^DAVE",
    "PhysiciansOfRecord": "RECORD^ERIN",
    "InstitutionName": "SAINT ELSEWHERE HOSPITAL",
    "InstitutionAddress": "1 HOSPITAL ROAD",
    "InstitutionalDepartmentName": "DEPTRADIOLOGYX",
    "StationName": "STATIONX01",
    "DeviceSerialNumber": "SERIAL424242",
    "StudyDescription": "STUDYDESCX",
    "SeriesDescription": "SERIESDESCX",
    "ProtocolName": "PROTOCOLX",
    "ImageComments": "IMAGECOMMENTX",
    "RequestingPhysician": "REQUESTER^FRANK",
    "PerformedProcedureStepID": "PPSIDX",
    "PerformedProcedureStepDescription": "PPSDESCX",
    "RequestedProcedureDescription": "REQPROCDESCX",
    "AdmissionID": "ADMITX77",
    "CountryOfResidence": "ATLANTISX",
}
PRIVATE_VALUE = "PRIVATESECRETX"
NESTED_NAME = "NESTED^PERSONX"
NESTED_ID = "NESTEDIDX"


def enrich_series(paths: list[Path]) -> tuple[list[Dataset], list[str]]:
    """Add identifying attributes, sequences, private tags and references; return the
    originals and every identifying value (for the byte search)."""
    originals = [pydicom.dcmread(p) for p in paths]
    for index, (path, ds) in enumerate(zip(paths, originals, strict=True)):
        for keyword, value in IDENTIFYING.items():
            setattr(ds, keyword, value)
        # Nested: a referenced patient, a request with a physician, an identifying code
        person = Dataset()
        person.PatientName = NESTED_NAME
        person.PatientID = NESTED_ID
        request = Dataset()
        request.RequestingPhysician = "NESTEDREQ^GINA"
        request.AccessionNumber = "NESTEDACCX"
        request.StudyInstanceUID = ds.StudyInstanceUID
        ds.RequestAttributesSequence = [request]
        ds.ReferencedPatientSequence = [person]
        op = Dataset()
        code = Dataset()
        code.CodeValue = "OPCODEX"
        code.CodingSchemeDesignator = "99LOCAL"
        code.CodeMeaning = "OPSEQ^HENRY"
        op.PersonIdentificationCodeSequence = [code]
        op.InstitutionName = "OPSEQ INSTITUTE"
        ds.OperatorIdentificationSequence = [op]
        # A reference to the next slice of the series, kept and followed
        other = originals[(index + 1) % len(originals)]
        ref = Dataset()
        ref.ReferencedSOPClassUID = other.SOPClassUID
        ref.ReferencedSOPInstanceUID = other.SOPInstanceUID
        ds.ReferencedImageSequence = [ref]
        # Private block with an identifying value, nested private too
        block = ds.private_block(0x0009, "ACME CORP", create=True)
        block.add_new(0x01, "LO", PRIVATE_VALUE)
        person.private_block(0x0011, "ACME CORP", create=True).add_new(0x02, "LO", PRIVATE_VALUE)
        ds.Laterality = "R"  # type 2C that the generated series leaves out
        ds.save_as(path, enforce_file_format=True)
    values = [*IDENTIFYING.values(), PRIVATE_VALUE, NESTED_NAME, NESTED_ID, "NESTEDREQ^GINA"]
    values += ["NESTEDACCX", "OPSEQ^HENRY", "OPCODEX", "OPSEQ INSTITUTE", "DOE^JANE", "PID001"]
    values += ["General Hospital", "REF^DOC", "ACC123", "SN-1", "SYNTH STUDY", "20240102"]
    for ds in originals:
        values += [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID]
        values.append(ds.FrameOfReferenceUID)
    return [pydicom.dcmread(p) for p in paths], values


class TestParseParams:
    """parse_anonymize_params: the line forms, comments, empty values and errors."""

    def test_forms_comments_and_blank_lines(self):
        text = (
            "# a comment\n\n(0010,0010)=ANONYMOUS^PATIENT\n0010 0020 LO ID42\n"
            "PatientSex=O\n  (0008,1030) = \n0009 1001 LO private value\n"
        )
        assert parse_params(text) == [
            Replacement(0x00100010, "PN", "ANONYMOUS^PATIENT", 3, SET, "ANONYMOUS^PATIENT", False),
            Replacement(0x00100020, "LO", "ID42", 4, SET, "ID42"),
            Replacement(0x00100040, "CS", "O", 5, SET, "O", False),
            Replacement(0x00081030, None, None, 6, BLANK, "", False),
            Replacement(0x00091001, "LO", "private value", 7, SET, "private value"),
        ]

    def test_original_forms_blank_and_insert(self):
        """The original's forms: GGGG EEEE and (GGGG,EEEE)= blank, GGGG EEEE VR VALUE sets."""
        edits = parse_params("0010 0020\n0008 0090 PN\n(0010,0030)=\n0010 1000 LO X  Y\n")
        assert [(e.tag, e.mode, e.value) for e in edits] == [
            (0x00100020, BLANK, None),
            (0x00080090, BLANK, None),
            (0x00100030, BLANK, None),
            (0x00101000, SET, "X  Y"),  # the value's own spacing kept
        ]

    def test_numbers_and_multiple_values(self):
        edits = parse_params("0018 1310 US 64\\0\\0\\64\nImageType=DERIVED\\SECONDARY")
        assert [(e.tag, e.vr, e.value) for e in edits] == [
            (0x00181310, "US", [64, 0, 0, 64]),
            (0x00080008, "CS", "DERIVED\\SECONDARY"),
        ]

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (
                "PatientName=A\nnonsense line",
                "invalid anonymize params: line 2: cannot read 'nonsense line': expected "
                "(GGGG,EEEE)=VALUE, GGGG EEEE [VR VALUE], Keyword=VALUE, or r|ri|rv LEFT TOP "
                "RIGHT BOTTOM",
            ),
            (
                "PatientNam=X",
                "invalid anonymize params: line 1: 'PatientNam' is not a DICOM keyword",
            ),
            (
                "\n(0009,1001)=X",
                "invalid anonymize params: line 2: (0009,1001) is not in the DICOM dictionary "
                "(a private tag?): give its VR as 'GGGG EEEE VR VALUE'",
            ),
            (
                "0010 0010 DA X",
                "invalid anonymize params: line 1: (0010,0010) PatientName has VR PN, not DA",
            ),
            (
                "0018 1310 US many",
                "invalid anonymize params: line 1: (0018,1310) US: 'many' is not a US integer",
            ),
            (
                "0020 0013 IS 1.5",
                "invalid anonymize params: line 1: (0020,0013) IS: Invalid value for VR IS: '1.5'",
            ),
            (
                "PatientName=A\nPatientName=B",
                "invalid anonymize params: line 2: (0010,0010) is already on line 1",
            ),
            (
                "0010 0010 ANON",
                "invalid anonymize params: line 1: 'ANON' is not a VR: write GGGG EEEE VR "
                "VALUE (or (GGGG,EEEE)=VALUE, whose VR is the dictionary's)",
            ),
            (
                "0008 1030 Study Desc No VR",
                "invalid anonymize params: line 1: 'Study' is not a VR: write GGGG EEEE VR "
                "VALUE (or (GGGG,EEEE)=VALUE, whose VR is the dictionary's)",
            ),
            (
                "(0002,0010)=1.2",
                "invalid anonymize params: line 1: (0002,0010) TransferSyntaxUID is File Meta "
                "Information (group 0002): it is made from the dataset when the file is "
                "written",
            ),
            (
                "(0028,0010)=64",
                "invalid anonymize params: line 1: (0028,0010) Rows describes the pixel data, "
                "which is kept as it is: not settable",
            ),
            (
                "0028 0004 CS RGB",
                "invalid anonymize params: line 1: (0028,0004) PhotometricInterpretation "
                "describes the pixel data, which is kept as it is: not settable",
            ),
            (
                "(7FE0,0010)=",
                "invalid anonymize params: line 1: (7FE0,0010) PixelData is pixel data: "
                "params never change it (anonymize blacks out boxes of it with r, ri and rv "
                "lines)",
            ),
            (
                "0009 0010",
                "invalid anonymize params: line 1: (0009,0010) (private creator) cannot be "
                "emptied: a block needs its creator's name",
            ),
            (
                "0009 1001 LO x\n0009 0010 LO ACME",
                "invalid anonymize params: line 1: (0009,1001) comes before line 2, which "
                "sets its private creator (0009,0010): set the creator first",
            ),
        ],
    )
    def test_errors_name_the_line(self, text, message):
        with pytest.raises(DicomPressorError) as info:
            parse_anonymize_params(text)
        assert info.value.message == message

    def test_every_bad_line_reported_at_once(self):
        with pytest.raises(DicomPressorError) as info:
            parse_params("bad one\nPatientName=OK\nbad two\nr 1 2 3")
        message = info.value.message
        assert [m.split(":")[0] for m in message.split("; ")] == [
            "invalid anonymize params",
            "line 3",
            "line 4",
        ]
        assert message.startswith("invalid anonymize params: line 1: cannot read 'bad one'")

    def test_bad_date_value(self):
        with pytest.raises(DicomPressorError, match=r"line 1: \(0008,0020\) DA"):
            parse_params("StudyDate=2021-13-45-bad")


class TestApplyParams:
    """apply_replacements on a dataset: blanking, inserting, private creators, text."""

    @staticmethod
    def _dataset() -> Dataset:
        ds = Dataset()
        ds.PatientName = "DOE^JANE"
        ds.PatientID = "PID1"
        ds.SmallestImagePixelValue = 5  # US or SS: read as US here
        return ds

    def test_blank_keeps_the_vr_and_ignores_absent_tags(self):
        ds = self._dataset()
        changed = apply_replacements(ds, parse_params("0010 0020\n(0010,0030)=\n0028 0106"))
        assert changed == 2
        assert ds["PatientID"].VR == "LO" and ds["PatientID"].is_empty
        assert ds["SmallestImagePixelValue"].VR == "US"
        assert ds["SmallestImagePixelValue"].is_empty
        assert "PatientBirthDate" not in ds  # blanking an absent tag does nothing

    def test_set_inserts_and_replaces(self):
        ds = self._dataset()
        apply_replacements(ds, parse_params("0010 0010 PN A^B\n0010 1010 AS 045Y\nPatientSex=O"))
        assert (str(ds.PatientName), ds.PatientAge, ds.PatientSex) == ("A^B", "045Y", "O")

    def test_private_element_needs_its_creator(self):
        ds = self._dataset()
        with pytest.raises(DicomPressorError) as info:
            apply_replacements(ds, parse_params("0009 1001 LO secret"))
        assert info.value.message == (
            "line 1: (0009,1001) is an element of the private block of (0009,0010), which "
            "has no private creator in this file: set (0009,0010) (VR LO) on an earlier line"
        )
        apply_replacements(ds, parse_params("0009 0010 LO ACME\n0009 1001 LO kept"))
        assert ds[0x00091001].value == "kept"
        assert ds.private_block(0x0009, "ACME")[0x01].value == "kept"

    def test_text_the_character_set_cannot_hold(self):
        ds = self._dataset()
        with pytest.raises(DicomPressorError) as info:
            apply_replacements(ds, parse_params("PatientName=Müller^Zoë"))
        assert info.value.message == (
            "line 1: (0010,0010) 'Müller^Zoë' is not ASCII and the file declares no "
            "(0008,0005) Specific Character Set: add the line (0008,0005)=ISO_IR 192 (UTF-8)"
        )
        ds = self._dataset()
        apply_replacements(ds, parse_params("PatientName=Müller^Zoë\n(0008,0005)=ISO_IR 192"))
        assert str(ds.PatientName) == "Müller^Zoë"


class TestBasicProfile:
    """The default profile on a series with identifying values in 40+ attributes."""

    def test_table_covers_hundreds_of_attributes(self):
        profile = basic_profile()
        assert len(profile) > 400
        assert profile[0x00100010] == "Z"  # Patient's Name
        assert profile[0x0020000D] == "U"  # Study Instance UID
        assert profile[0x00081030] == "X"  # Study Description

    def test_no_identifying_value_left(self, make_series, tmp_path):
        paths = make_series("s", n=4, modality="MR", signed=False)
        originals, values = enrich_series(paths)
        assert len(IDENTIFYING) >= 40
        before = hash_files(paths)
        out_dir = tmp_path / "out"
        result = anonymize(paths, out_dir, Options())
        assert not result.failures, result.log
        assert hash_files(paths) == before  # inputs untouched
        assert sorted(p.name for p in result.outputs) == sorted(
            p.stem + "_anon.dcm" for p in paths
        )
        for output in result.outputs:
            data = output.read_bytes()
            left = [v for v in values if v.encode() in data]
            assert left == [], f"{output.name} still holds {left}"

    def test_values_stored_as_un_are_found(self, make_series, tmp_path):
        """Public elements an explicit VR file stores as UN (as some converters write
        them) get their table action: a UID stored so is replaced as the others are."""
        from pydicom.dataelem import RawDataElement

        paths = make_series("s", n=4, modality="MR", signed=False)
        _, values = enrich_series(paths)
        keywords = "StudyInstanceUID FrameOfReferenceUID PatientName PatientID StudyDate"
        keywords += " AccessionNumber InstitutionName OperatorsName ReferencedSOPInstanceUID"
        for path in paths[:2]:  # half the series: the UIDs must still agree
            ds = pydicom.dcmread(path)
            for target in [ds, ds.ReferencedImageSequence[0]]:
                for elem in list(target):
                    if elem.keyword in keywords.split():
                        raw = str(elem.value).encode()
                        raw += b"\0" if elem.VR == "UI" and len(raw) % 2 else b" " * (len(raw) % 2)
                        target._dict[elem.tag] = RawDataElement(
                            elem.tag, "UN", len(raw), raw, 0, False, True
                        )  # raw: written as read, where a DataElement would take its VR
            ds.save_as(path, enforce_file_format=True)
            assert pydicom.dcmread(path)._dict[0x0020000D].VR == "UN"
        result = anonymize(paths, tmp_path / "out", Options())
        assert not result.failures, result.log
        for output in result.outputs:
            data = output.read_bytes()
            left = [v for v in values if v.encode() in data]
            assert left == [], f"{output.name} still holds {left}"
        outs = [pydicom.dcmread(p) for p in result.outputs]
        assert len({str(o.StudyInstanceUID) for o in outs}) == 1
        assert len({str(o.FrameOfReferenceUID) for o in outs}) == 1

    def test_uids_consistent_and_references_followed(self, make_series, tmp_path):
        paths = make_series("s", n=5)
        originals, _ = enrich_series(paths)
        result = anonymize(paths, tmp_path / "out", Options())
        outs = [pydicom.dcmread(p) for p in result.outputs]
        by_source = dict(zip([o.SOPInstanceUID for o in originals], outs, strict=True))
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            new = {str(getattr(o, keyword)) for o in outs}
            assert len(new) == 1, keyword
            assert new.isdisjoint({str(getattr(o, keyword)) for o in originals})
        new_instances = {o.SOPInstanceUID for o in outs}
        assert len(new_instances) == 5
        assert new_instances.isdisjoint(by_source)
        for source, out in zip(originals, outs, strict=True):
            assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
            assert out.SOPClassUID == source.SOPClassUID  # well-known UIDs kept
            assert out.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
            ref = out.ReferencedImageSequence[0]
            target = source.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            assert ref.ReferencedSOPInstanceUID == by_source[target].SOPInstanceUID
            assert ref.ReferencedSOPClassUID == source.SOPClassUID
            assert "RequestAttributesSequence" not in out  # X in Table E.1-1

    def test_pixels_unchanged_and_marked(self, make_series, tmp_path):
        paths = make_series("s", n=3)
        enrich_series(paths)
        result = anonymize(paths, None, Options())
        for source, output in zip(paths, result.outputs, strict=True):
            assert output.parent == source.parent
            src, out = pydicom.dcmread(source), pydicom.dcmread(output)
            assert out.PixelData == src.PixelData
            np.testing.assert_array_equal(out.pixel_array, src.pixel_array)
            assert out.PatientIdentityRemoved == "YES"
            assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
            assert out.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
            assert out.PatientName == ""
            assert out.StudyDate == ""
            assert out.ContentDate == "19000101"
            assert "StudyDescription" not in out
            assert "InstitutionAddress" not in out
            assert not [e for e in out.iterall() if e.tag.is_private]
            assert out.LongitudinalTemporalInformationModified == "REMOVED"

    def test_dciodvfy_no_errors(self, make_series, tmp_path):
        paths = make_series("s", n=2)
        enrich_series(paths)
        result = anonymize(paths, tmp_path / "out", Options())
        for output in result.outputs:
            assert dciodvfy_errors(output) == []

    def test_pydicom_sample_file(self, testdata, tmp_path):
        path = testdata("CT_small.dcm")
        source = pydicom.dcmread(path)
        result = anonymize([path], tmp_path / "out", Options())
        out = pydicom.dcmread(result.outputs[0])
        assert out.PixelData == source.PixelData
        assert str(source.PatientName).encode() not in result.outputs[0].read_bytes()
        assert dciodvfy_errors(result.outputs[0]) == []


class TestOptions:
    """--keep-uids, --keep-dates, --keep-descriptions, --profile none, the params."""

    def test_keep_options(self, make_series, tmp_path):
        paths = make_series("s", n=2)
        originals, _ = enrich_series(paths)
        options = Options(keep_uids=True, keep_dates=True, keep_descriptions=True)
        result = anonymize(paths, tmp_path / "out", options)
        codes = []
        for source, output in zip(originals, result.outputs, strict=True):
            out = pydicom.dcmread(output)
            assert out.SOPInstanceUID == source.SOPInstanceUID
            assert out.StudyInstanceUID == source.StudyInstanceUID
            assert out.StudyDate == source.StudyDate
            assert out.SeriesDate == source.SeriesDate
            assert out.StudyDescription == source.StudyDescription
            assert out.PatientName == ""
            assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
            codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
        assert codes == ["113100", "113104", "113105", "113106", "113110"]
        assert any("descriptions are kept" in line for line in result.log)

    def test_params_on_top_of_profile(self, make_series, tmp_path):
        paths = make_series("s", n=2)
        text = (
            "(0010,0010)=ANONYMOUS^PATIENT\n0010 0020 LO SUBJ01\nStudyDescription=TRIAL\n"
            "0009 0010 LO TRIAL SITE\n0009 1001 LO kept private\nAccessionNumber=\n"
        )
        result = anonymize(paths, tmp_path / "out", Options(params=text))
        out = pydicom.dcmread(result.outputs[0])
        assert out.PatientName == "ANONYMOUS^PATIENT"
        assert out.PatientID == "SUBJ01"
        assert out.StudyDescription == "TRIAL"
        assert out[0x00091001].value == "kept private"
        assert out.AccessionNumber == ""

    def test_profile_none_changes_only_the_params(self, make_series, tmp_path):
        paths = make_series("s", n=1)
        result = anonymize(paths, tmp_path / "o", Options(profile="none", params="PatientID=X"))
        src, out = pydicom.dcmread(paths[0]), pydicom.dcmread(result.outputs[0])
        assert out.PatientID == "X"
        del src.PatientID, out.PatientID
        assert out == src
        assert out.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID

    def test_bad_params_fail_before_any_write(self, make_series, tmp_path):
        paths = make_series("s", n=2)
        with pytest.raises(DicomPressorError, match="line 2"):
            anonymize(paths, tmp_path / "out", Options(params="PatientName=A\nbroken"))
        assert not (tmp_path / "out").exists()
        assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(p.name for p in paths)

    def test_unknown_profile(self, make_series):
        with pytest.raises(DicomPressorError, match="unknown profile 'strict'"):
            anonymize(make_series("s", n=1), None, Options(profile="strict"))

    def test_burned_in_annotation_warns(self, make_series, tmp_path):
        paths = make_series("s", n=1)
        ds = pydicom.dcmread(paths[0])
        ds.BurnedInAnnotation = "YES"
        ds.save_as(paths[0], enforce_file_format=True)
        result = anonymize(paths, tmp_path / "out", Options())
        assert (
            f"[WARNING] {paths[0].name}: (0028,0301) Burned In Annotation is YES: text "
            "burned into the pixels is not removed" in result.log
        )
        assert pydicom.dcmread(result.outputs[0]).PixelData == ds.PixelData


class TestInPlaceAndFailures:
    """-A replaces atomically; a bad file fails alone; names never overwritten."""

    def test_in_place_replaces_inputs(self, make_series):
        paths = make_series("s", n=3)
        study = pydicom.dcmread(paths[0]).StudyInstanceUID
        result = anonymize(paths, None, Options(in_place=True))
        assert result.outputs == paths
        assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(p.name for p in paths)
        outs = [pydicom.dcmread(p) for p in paths]
        assert {o.StudyInstanceUID for o in outs} != {study}
        assert len({o.StudyInstanceUID for o in outs}) == 1

    def test_bad_file_fails_alone(self, make_series, tmp_path):
        paths = make_series("s", n=2)
        bad = paths[0].parent / "broken.dcm"
        bad.write_bytes(b"not dicom at all")
        result = anonymize([bad, *paths], tmp_path / "out", Options())
        assert result.failures == [(bad, "not a DICOM file (no DICM prefix or File Meta)")]
        assert len(result.outputs) == 2
        assert bad.read_bytes() == b"not dicom at all"

    def test_never_overwrites(self, make_series):
        paths = make_series("s", n=1)
        first = anonymize(paths, None, Options()).outputs[0]
        second = anonymize(paths, None, Options()).outputs[0]
        assert first.name == paths[0].stem + "_anon.dcm"
        assert second.name == paths[0].stem + "_anon_1.dcm"

    def test_merged_file_keeps_pointing_at_sources(self, make_series, tmp_path):
        from conftest import merge_one

        paths = make_series("m", n=4)
        merged = merge_one(paths[0].parent)
        result = anonymize([*paths, merged], tmp_path / "out", Options())
        assert not result.failures
        outs = {p.name: pydicom.dcmread(p) for p in result.outputs}
        multi = outs[merged.stem + "_anon.dcm"]
        singles = {o.SOPInstanceUID for n, o in outs.items() if n != merged.stem + "_anon.dcm"}
        refs = {str(e.value) for e in multi.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
        assert refs and refs <= singles
        assert len({o.StudyInstanceUID for o in outs.values()}) == 1


class TestFastWriter:
    """The anonymized file is encoded from the bytes read where it can: same bytes as pydicom."""

    @staticmethod
    def _anonymized(path: Path) -> Dataset:
        ds, _ = read_header(path)
        choice = ProfileChoice()
        deidentify_dataset(ds, profile_actions(choice), UidMap("k"), replace_uids=True)
        mark_deidentified(ds, choice)
        ds.file_meta = file_meta_for(ds, transfer_syntax_of(ds))
        ds.preamble = b"\0" * 128
        return ds

    def test_same_bytes_as_pydicom_on_every_bundled_file(self):
        import io
        import warnings

        compared = fast = 0
        for path in bundled_files():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = self._anonymized(path)
                    ds._dict.pop(0x7FE00010, None)  # as written: pixel data is copied apart
                    reference = io.BytesIO()
                    pydicom.dcmwrite(reference, ds, enforce_file_format=True)
            except Exception:  # files pydicom itself cannot read or write back
                continue
            compared += 1
            fast += fast_dataset_bytes(ds) is not None
            assert encode_file(ds) == reference.getvalue(), path.name
        assert compared > 40
        assert fast > compared // 2  # the fast path is really taken

    @pytest.mark.filterwarnings("ignore:Expected explicit VR")
    def test_dataset_in_another_vr_encoding_than_its_syntax(self, testdata, tmp_path):
        # SC_rgb_jpeg.dcm says JPEG Baseline (explicit VR) but its dataset is implicit VR
        path = testdata("SC_rgb_jpeg.dcm")
        result = anonymize([path], tmp_path / "out", Options())
        assert not result.failures, result.failures
        written = pydicom.dcmread(result.outputs[0])  # no warning: written as declared
        assert written.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        assert written.get_item(0x00080008).VR == "CS"  # explicit VR as read back
        assert written.PatientIdentityRemoved == "YES"
        source = pydicom.dcmread(path)
        assert np.array_equal(written.pixel_array, source.pixel_array)

    def test_output_file_equals_pydicom_write(self, make_series, tmp_path):
        import io

        path = make_series("s", n=1)[0]
        enrich_series([path])
        result = anonymize([path], tmp_path / "out", Options())
        # header bytes and the copied pixel element read back and written again unchanged
        written = pydicom.dcmread(result.outputs[0])
        reference = io.BytesIO()
        pydicom.dcmwrite(reference, written, enforce_file_format=True)
        assert result.outputs[0].read_bytes() == reference.getvalue()
        assert written.PixelData == pydicom.dcmread(path).PixelData


def test_generate_uid_not_reused():
    assert generate_uid() != generate_uid()
