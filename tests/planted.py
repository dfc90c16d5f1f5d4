"""Files with planted identifiers, for the de-identification tests and bench/deid.py.

Every planted value is a unique word ending in "X" or a unique date, so that a byte search
of an output finds exactly what was left. ``write_planted_set`` writes CT slices (with
identifiers at the top level, in nested sequences, in private blocks, in an overlay and a
graphic annotation), an enhanced multi-frame file (identifiers in per-frame functional
groups) and a Comprehensive SR (identifiers in its content, its request and its
observers); it returns the paths, the planted values and the original UIDs.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synth  # noqa: E402

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"

#: Identifying values of the top level of the images (keyword -> value).
TOP_LEVEL = {
    "PatientName": "PLANTEDNAMEX^JOHN",
    "PatientID": "PLANTEDIDX",
    "PatientBirthDate": "19470312",
    "OtherPatientIDs": "OTHERPIDX",
    "PatientAddress": "PLANTEDSTREETX",
    "PatientTelephoneNumbers": "555PHONEX",
    "AccessionNumber": "ACCNUMX",
    "StudyID": "STUDYIDX",
    "ReferringPhysicianName": "REFERRERX^ANN",
    "PerformingPhysicianName": "PERFORMERX^BEN",
    "OperatorsName": "OPERATORX^CAL",
    "InstitutionName": "PLANTED HOSPITALX",
    "InstitutionAddress": "HOSPITAL ROADX",
    "InstitutionalDepartmentName": "DEPARTMENTX",
    "StationName": "STATIONX",
    "DeviceSerialNumber": "SERIALNOX",
    "StudyDescription": "STUDYDESCX",
    "SeriesDescription": "SERIESDESCX",
    "ImageComments": "IMAGECOMMENTX",
    "PatientBirthDateInAlternativeCalendar": "ALTBIRTHX",
    "StudyDate": "20190304",
    "SeriesDate": "20190305",
    "AcquisitionDate": "20190306",
    "ContentDate": "20190307",
}

#: Identifying values nested in sequences, per-frame groups, private blocks and graphics.
NESTED = [
    "NESTEDNAMEX^DAN",
    "NESTEDPIDX",
    "QUALIFIERX",
    "ACCISSUERX",
    "REQISSUERX",
    "REQPROCIDX",
    "SPSIDX",
    "OPCODEMEANINGX",
    "OPINSTITUTEX",
    "PRIVATEVALUEX",
    "NESTEDPRIVATEX",
    "OVERLAYDESCX",
    "OVERLAYCOMMENTX",
    "ANNOTATIONTEXTX",
    "FRAMECOMMENTX",
    "FRAMEPRIVATEX",
    "20180809",
]

#: Identifying values of the SR.
SR_VALUES = [
    "SROBSERVERX^EVE",
    "SRSUBJECTX^FAY",
    "SRSUBJECTIDX",
    "19560708",
    "SRFINDINGX",
    "SRVERIFIERX^GUS",
    "SRVERIFYORGX",
    "SRACCESSIONX",
    "SRORDERX",
    "SRORDERISSUERX",
    "SRREQPROCIDX",
    "20170102",
]


def code(value: str, scheme: str, meaning: str) -> Dataset:
    """Return a code item (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def issuer(local_id: str) -> Dataset:
    """Return an HL7v2 Hierarchic Designator item (PS3.3 Table 10-17)."""
    item = Dataset()
    item.LocalNamespaceEntityID = local_id
    return item


def plant_image(ds: Dataset, *, private: bool = True) -> None:
    """Add the identifying values (TOP_LEVEL and the image part of NESTED) to an image."""
    for keyword, value in TOP_LEVEL.items():
        setattr(ds, keyword, value)
    ds.PatientAlternativeCalendar = "JAPANESE"
    ds.IssuerOfAccessionNumberSequence = [issuer("ACCISSUERX")]
    other = Dataset()
    other.PatientID, other.TypeOfPatientID = "NESTEDPIDX", "TEXT"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType = "QUALIFIERX", "DNS"
    other.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.OtherPatientIDsSequence = [other]
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "REQPROCIDX", "SPSIDX"
    request.AccessionNumber = "ACCNUMX"
    request.IssuerOfAccessionNumberSequence = [issuer("REQISSUERX")]
    ds.RequestAttributesSequence = [request]
    person = Dataset()
    person.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.1"  # Detached Patient (retired)
    person.ReferencedSOPInstanceUID = generate_uid()
    person.PatientName = "NESTEDNAMEX^DAN"
    ds.ReferencedPatientSequence = [person]
    operator = Dataset()
    operator.PersonIdentificationCodeSequence = [code("OP1", "99LOCAL", "OPCODEMEANINGX")]
    operator.InstitutionName = "OPINSTITUTEX"
    ds.OperatorIdentificationSequence = [operator]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = generate_uid()
    ds.ReferencedStudySequence = [study]
    ds.PatientAge, ds.PatientSex, ds.PatientWeight, ds.PatientSize = "071Y", "F", 61.5, 1.62
    ds.DeviceUID = generate_uid()
    ds.Laterality = "R"
    if private:
        block = ds.private_block(0x0009, "ACME CORP", create=True)
        block.add_new(0x01, "LO", "PRIVATEVALUEX")
        person.private_block(0x0011, "ACME CORP", create=True).add_new(
            0x02, "LO", "NESTEDPRIVATEX"
        )
        safe = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        safe.add_new(0x23, "DS", "37.5")  # Table E.3.10-1: Table Speed (safe)
        safe.add_new(0x99, "LO", "PRIVATEVALUEX")  # same creator, not in the table
    # an overlay (C.9.2) with text, and a graphic annotation with a text object
    rows, cols = int(ds.Rows), int(ds.Columns)
    ds.add_new(0x60000010, "US", rows)
    ds.add_new(0x60000011, "US", cols)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60000022, "LO", "OVERLAYDESCX")
    ds.add_new(0x60004000, "LT", "OVERLAYCOMMENTX")
    bits = np.zeros(rows * cols, dtype=np.uint8)
    bits[: cols * 2] = 1
    ds.add_new(0x60003000, "OW", np.packbits(bits, bitorder="little").tobytes())
    text = Dataset()
    text.UnformattedTextValue = "ANNOTATIONTEXTX"
    text.AnchorPointAnnotationUnits, text.AnchorPoint = "PIXEL", [2.0, 3.0]
    text.AnchorPointVisibility = "N"
    graphic = Dataset()
    graphic.GraphicAnnotationUnits, graphic.GraphicDimensions = "PIXEL", 2
    graphic.NumberOfGraphicPoints, graphic.GraphicType, graphic.GraphicFilled = 2, "POLYLINE", "N"
    graphic.GraphicData = [1.0, 1.0, 10.0, 12.0]
    annotation = Dataset()
    annotation.GraphicLayer = "LAYER1"
    annotation.TextObjectSequence = [text]
    annotation.GraphicObjectSequence = [graphic]
    ds.GraphicAnnotationSequence = [annotation]


def write_planted_set(
    folder: Path, *, merge_with: object = None
) -> tuple[list[Path], list[str], list[str]]:
    """Write the planted files into folder; return (paths, planted values, original UIDs).

    merge_with: a callable (folder) -> Path that merges the CT slices into an enhanced
    multi-frame file (the tests pass DicomPressor's merge); without it no multi-frame
    file is written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    slices = synth.make_series(folder / "ct", n=3, rows=32, cols=32, patient="DOE^JANE")
    uids: list[str] = []
    planted = [*TOP_LEVEL.values(), *NESTED[:-3]]
    planted.remove("19470312")  # a birth date: also the sample of every SR date test
    planted.append("19470312")
    paths = []
    multi: Path | None = None
    if merge_with is not None:
        multi = merge_with(folder / "ct")  # type: ignore[operator]
        multi_target = folder / "multiframe.dcm"
        multi.rename(multi_target)
        multi = multi_target
    for path in slices:
        ds = pydicom.dcmread(path)
        plant_image(ds)
        uids += [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID]
        uids.append(ds.FrameOfReferenceUID)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    if multi is not None:
        ds = pydicom.dcmread(multi)
        plant_image(ds, private=False)
        for item in ds.PerFrameFunctionalGroupsSequence:
            content = item.FrameContentSequence[0]
            content.FrameAcquisitionDateTime = "20180809101112"
            content.FrameComments = "FRAMECOMMENTX"
            item.private_block(0x0013, "ACME CORP", create=True).add_new(
                0x05, "LO", "FRAMEPRIVATEX"
            )
        uids += [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID]
        ds.save_as(multi, enforce_file_format=True)
        paths.append(multi)
        planted += NESTED[-3:]
    image = pydicom.dcmread(slices[0])
    sr = make_sr(image)
    sr_path = folder / "report.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    uids += [sr.SOPInstanceUID, sr.SeriesInstanceUID]
    paths.append(sr_path)
    planted += SR_VALUES
    return paths, planted, sorted(set(uids))


def content(relationship: str, value_type: str, name: Dataset, **values: object) -> Dataset:
    """Return an SR content item (PS3.3 C.17.3, the Document Content Macro)."""
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, value_type
    item.ConceptNameCodeSequence = [name]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def make_sr(image: Dataset) -> Dataset:
    """Return a Comprehensive SR about image: observation context with the subject's
    identity (Table E.3.4-1 rows), a finding, a measurement inferred from a polyline (a
    by-reference relationship), a date, and a request and verifier with identifiers."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_SR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = image.StudyInstanceUID, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, image.get(keyword, ""))
    ds.StudyDate, ds.StudyTime, ds.StudyID = image.StudyDate, image.StudyTime, image.StudyID
    ds.ReferringPhysicianName, ds.AccessionNumber = image.ReferringPhysicianName, "SRACCESSIONX"
    ds.Manufacturer = "DicomPressor tests"
    ds.ContentDate, ds.ContentTime = "20170102", "101500"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    verifier = Dataset()
    verifier.VerifyingObserverName, verifier.VerifyingOrganization = (
        "SRVERIFIERX^GUS",
        "SRVERIFYORGX",
    )
    verifier.VerificationDateTime = "20170102103000"
    verifier.VerifyingObserverIdentificationCodeSequence = []
    ds.VerifyingObserverSequence = [verifier]
    request = Dataset()
    request.StudyInstanceUID = image.StudyInstanceUID
    request.ReferencedStudySequence = []
    request.AccessionNumber = "SRACCESSIONX"
    request.IssuerOfAccessionNumberSequence = [issuer("SRORDERISSUERX")]
    request.PlacerOrderNumberImagingServiceRequest = "SRORDERX"
    request.OrderPlacerIdentifierSequence = [issuer("SRORDERISSUERX")]
    request.FillerOrderNumberImagingServiceRequest = ""
    request.RequestedProcedureID = "SRREQPROCIDX"
    request.RequestedProcedureDescription = ""
    request.RequestedProcedureCodeSequence = []
    ds.ReferencedRequestSequence = [request]
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedSOPSequence = [reference]
    evidence = Dataset()
    evidence.StudyInstanceUID = image.StudyInstanceUID
    evidence.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    # the tree (root = 1; items numbered from 1 in each Content Sequence)
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [code("126000", "DCM", "Imaging Measurement Report")]
    years = Dataset()
    years.MeasurementUnitsCodeSequence = [code("a", "UCUM", "year")]
    years.NumericValue = "71"
    length = Dataset()
    length.MeasurementUnitsCodeSequence = [code("mm", "UCUM", "millimeter")]
    length.NumericValue = "12.5"
    image_ref = Dataset()
    image_ref.ReferencedSOPClassUID = image.SOPClassUID
    image_ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    polyline = content(
        "CONTAINS",
        "SCOORD",
        code("111030", "DCM", "Image Region"),
        GraphicType="POLYLINE",
        GraphicData=[1.5, 2.5, 10.0, 2.5, 10.0, 8.25, 1.5, 8.25],
    )
    polyline.ContentSequence = [
        content("SELECTED FROM", "IMAGE", code("260753009", "SCT", "Source"),
                ReferencedSOPSequence=[image_ref])
    ]  # fmt: skip
    measurement = content(
        "CONTAINS", "NUM", code("410668003", "SCT", "Length"), MeasuredValueSequence=[length]
    )
    inferred = Dataset()
    inferred.RelationshipType = "INFERRED FROM"
    inferred.ReferencedContentItemIdentifier = [1, 11]  # the polyline
    measurement.ContentSequence = [inferred]
    ds.ContentSequence = DicomSequence(
        [
            content("HAS OBS CONTEXT", "CODE", code("121005", "DCM", "Observer Type"),
                    ConceptCodeSequence=[code("121006", "DCM", "Person")]),
            content("HAS OBS CONTEXT", "PNAME", code("121008", "DCM", "Person Observer Name"),
                    PersonName="SROBSERVERX^EVE"),
            content("HAS OBS CONTEXT", "CODE", code("121024", "DCM", "Subject Class"),
                    ConceptCodeSequence=[code("121025", "DCM", "Patient")]),
            content("HAS OBS CONTEXT", "PNAME", code("121029", "DCM", "Subject Name"),
                    PersonName="SRSUBJECTX^FAY"),
            content("HAS OBS CONTEXT", "TEXT", code("121030", "DCM", "Subject ID"),
                    TextValue="SRSUBJECTIDX"),
            content("HAS OBS CONTEXT", "DATE", code("121031", "DCM", "Subject Birth Date"),
                    Date="19560708"),
            content("HAS OBS CONTEXT", "NUM", code("121033", "DCM", "Subject Age"),
                    MeasuredValueSequence=[years]),
            content("HAS OBS CONTEXT", "CODE", code("121032", "DCM", "Subject Sex"),
                    ConceptCodeSequence=[code("F", "DCM", "Female")]),
            content("HAS OBS CONTEXT", "UIDREF", code("121028", "DCM", "Subject UID"),
                    UID=generate_uid()),
            content("CONTAINS", "TEXT", code("121071", "DCM", "Finding"),
                    TextValue="SRFINDINGX near the hilum"),
            polyline,
            measurement,
            content("CONTAINS", "DATE", code("111060", "DCM", "Study Date"), Date="20170102"),
        ]
    )  # fmt: skip
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\0" * 128
    return ds


#: What plant_copy puts into a copy of someone else's file.
COPY_VALUES = ["COPYNAMEX", "COPYIDX", "COPYISSUERX", "COPYOTHERIDX", "COPYPRIVATEX"]


def plant_copy(ds: Dataset) -> list[str]:
    """Plant identifiers into a copy of a file nobody here wrote; return them.

    At the top level (Patient's Name and ID), in nested sequences (Issuer of Accession
    Number Sequence, Other Patient IDs Sequence) and in a private block.
    """
    ds.PatientName, ds.PatientID = COPY_VALUES[0], COPY_VALUES[1]
    ds.IssuerOfAccessionNumberSequence = [issuer(COPY_VALUES[2])]
    other = Dataset()
    other.PatientID, other.TypeOfPatientID = COPY_VALUES[3], "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.private_block(0x0029, "PLANTED", create=True).add_new(0x01, "LO", COPY_VALUES[4])
    return list(COPY_VALUES)


def plant_file(source: Path, target: Path, required: tuple[str, ...]) -> list[str] | None:
    """Write source to target with identifiers planted (plant_copy); return them, or None
    when it lacks one of the required keywords or pydicom cannot read or write it back."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(source)
            if any(keyword not in ds for keyword in required):
                return None
            values = plant_copy(ds)
            ds.save_as(target)
    except Exception:  # files pydicom cannot read or write back as they are
        target.unlink(missing_ok=True)
        return None
    return values
