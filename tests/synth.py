"""Generate realistic synthetic DICOM series for the tests (no network, no fixtures on disk)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
}

ORIENTATIONS = {
    "axial": (1, 0, 0, 0, 1, 0),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "coronal": (1, 0, 0, 0, 0, -1),
    "oblique": (0.8660254, 0.5, 0.0, -0.1767767, 0.3061862, -0.9354143),
}


def make_series(
    folder: Path,
    *,
    n: int = 8,
    modality: str = "CT",
    rows: int = 32,
    cols: int = 24,
    orientation: str = "axial",
    signed: bool = True,
    bits: int = 16,
    rgb: bool = False,
    spacing: float = 2.5,
    skip: tuple[int, ...] = (),
    series_number: int = 3,
    patient: str = "DOE^JANE",
    seed: int = 1,
    shuffle_names: bool = True,
    study_uid: str | None = None,
    syntax: str = ExplicitVRLittleEndian,
    offsets: Sequence[float] | None = None,
    instance_order: str = "position",
    geometry: bool = True,
    vary_window: bool = False,
    series_uid: str | None = None,
    prefix: str = "IMG",
) -> list[Path]:
    """Write n single-frame slices of one series into folder; return their paths.

    offsets: distance of each slice along the normal (default: spacing * index).
    instance_order: "position" (InstanceNumber follows the position), "reversed" or
    "shuffled". geometry=False leaves out ImagePositionPatient, ImageOrientationPatient,
    SliceLocation and the Frame of Reference. vary_window gives each slice its own
    WindowCenter/WindowWidth. series_uid joins an existing series; prefix names the files.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    iop = ORIENTATIONS[orientation]
    row = np.array(iop[:3])
    col = np.array(iop[3:])
    normal = np.cross(row, col)
    origin = np.array([-120.5, -80.25, 40.0])
    indices = [i for i in range(n) if i not in skip]
    names = [f"{prefix}{i:04d}.dcm" for i in range(len(indices))]
    if shuffle_names:
        random.Random(seed).shuffle(names)
    numbers = list(range(1, n + 1))
    if instance_order == "reversed":
        numbers.reverse()
    elif instance_order == "shuffled":
        random.Random(seed + 1).shuffle(numbers)
    elif instance_order != "position":
        raise ValueError(f"unknown instance_order {instance_order!r}")
    distances = [spacing * i for i in range(n)] if offsets is None else list(offsets)
    paths = []
    for k, i in enumerate(indices):
        ds = Dataset()
        ds.SOPClassUID = SOP_CLASSES[modality]
        ds.SOPInstanceUID = generate_uid()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = "20240102"
        ds.SeriesDate = "20240102"
        ds.ContentDate = "20240102"
        ds.AcquisitionDate = "20240102"
        ds.StudyTime = "101010"
        ds.ContentTime = f"1010{10 + i % 50:02d}"
        ds.AcquisitionTime = f"1010{10 + i % 50:02d}"
        ds.AccessionNumber = "ACC123"
        ds.Modality = modality
        ds.Manufacturer = "SynthCo"
        ds.ManufacturerModelName = "Model S"
        ds.DeviceSerialNumber = "SN-1"
        ds.SoftwareVersions = "1.0"
        ds.InstitutionName = "General Hospital"
        ds.ReferringPhysicianName = "REF^DOC"
        ds.StudyDescription = "SYNTH STUDY"
        ds.SeriesDescription = f"{orientation} series"
        ds.PatientName = patient
        ds.PatientID = "PID001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = numbers[i]
        ds.AcquisitionNumber = 1
        position = origin + normal * distances[i] + row * 0.125
        if geometry:
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
            ds.ImageOrientationPatient = [f"{v:.7f}" for v in iop]
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        if geometry:
            ds.SliceLocation = f"{float(np.dot(position, normal)):.6f}"
        ds.SliceThickness = f"{spacing}"
        ds.PixelSpacing = ["0.703125", "0.703125"]
        ds.Rows = rows
        ds.Columns = cols
        if rgb:
            ds.SamplesPerPixel = 3
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit = 7
            ds.PixelRepresentation = 0
            arr = rng.integers(0, 256, size=(rows, cols, 3), dtype=np.uint8)
        else:
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = bits
            ds.BitsStored = (16 if modality == "PT" else 12) if bits == 16 else 8
            ds.HighBit = ds.BitsStored - 1
            ds.PixelRepresentation = 1 if signed else 0
            lo, hi = (
                (-(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1))
                if signed
                else (0, 2**ds.BitsStored)
            )
            dtype = {
                (16, True): np.int16,
                (16, False): np.uint16,
                (8, True): np.int8,
                (8, False): np.uint8,
            }[(bits, signed)]
            arr = rng.integers(lo, hi, size=(rows, cols)).astype(dtype)
            if modality in ("CT", "PT", "MR"):
                ds.RescaleIntercept = "-1024" if modality == "CT" else "0"
                ds.RescaleSlope = "1" if modality != "PT" else f"{0.5 + i / 100:.4f}"
                if modality == "CT":
                    ds.RescaleType = "HU"
                ds.WindowCenter = f"{40 + 5 * i}" if vary_window else "40"
                ds.WindowWidth = f"{400 + 10 * i}" if vary_window else "400"
        if modality == "CT":
            ds.KVP = "120"
        if modality == "MR":
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.EchoTime = "10"
            ds.RepetitionTime = "500"
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = "1.5"
            ds.ImagedNucleus = "1H"
        if modality == "PT":
            ds.Units = "BQML"
            ds.DecayCorrection = "START"
            ds.CorrectedImage = ["ATTN", "DECY"]
            ds.SeriesType = ["STATIC", "IMAGE"]
            ds.CountsSource = "EMISSION"
            ds.FrameReferenceTime = "0"
            ds.ImageIndex = i + 1
            ds.DecayFactor = "1"
            ds.NumberOfSlices = n
            ds.PatientOrientationCodeSequence = []
            ds.PatientGantryRelationshipCodeSequence = []
            ds.RadiopharmaceuticalInformationSequence = []
            ds.AcquisitionDateTime = "20240102101010"
        if modality == "OT":
            ds.ConversionType = "WSV"
        ds.PixelData = arr.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.preamble = b"\0" * 128
        path = folder / names[k]
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
