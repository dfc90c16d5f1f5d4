#!/usr/bin/env python3
"""DicomPressor: merge, split, compress, anonymize and export DICOM files, one script.

Usage (see ``python3 dicompressor.py -h``)::

    python3 dicompressor.py -j -f /data/patient_folder      # merge slices per series
    python3 dicompressor.py -s -f merged.dcm                # split a multi-frame file
    python3 dicompressor.py -x -f /data [--codec jpegls]     # lossless, <stem>_jll.dcm
    python3 dicompressor.py -z --ratio 10 -f /data           # JPEG 2000 lossy
    python3 dicompressor.py -u -f /data                      # decompress
    python3 dicompressor.py -a params.txt -f /data           # anonymize, <stem>_anon.dcm
    python3 dicompressor.py -m changes.txt -f /data          # modify tags, <stem>_mod.dcm
    python3 dicompressor.py -I png -f /data                  # one PNG per frame
    python3 dicompressor.py -i jpg -f /data                  # JPEG, patient and date drawn
    python3 dicompressor.py -E -f /data/series               # MP4 video
    python3 dicompressor.py -t -f /data [--format json]      # headers as text or JSON
    python3 dicompressor.py -d -F /data/cd                   # DICOMDIR
    python3 dicompressor.py --info file.dcm [--json]
    python3 dicompressor.py --summary /data [--json]
    python3 dicompressor.py -j --watch 300 -f /data/patients  # unattended

Sections (each opened by a ``# ==== N. name ====`` banner, its parts by
``# ---- name ----``; code calls earlier sections, never later ones):

1. Header: this docstring, imports (numpy and pydicom through ``load_toolkit()``, which a
   text header dump or a DICOMDIR run from the command line defers), ``__version__``.

2. Constants and configuration: limits, DICOM tables with their PS3 citation, and
   ``OPTIONS``, the registry of every option (``Options`` is made from it).
   - de-identification, header dump and DICOMDIR tables
   - de-identification: the options, and what Table E.1-1 leaves out
   - de-identification: safe private attributes and structured content
   - export tables
   - conversion tables
   - the REST API's limits (--serve)
   - options: each declared once

3. Errors and logging: ``DicomPressorError``, the logger, ``FileOutcome`` and
   ``guarded()`` (one guard per input), ``ActionResult``.

4. Generic helpers: names and output paths, atomic writes, progress, the worker pool and
   ``share_workers()``, option values (``parse_option()``, ``check_value()``).
   - names and where outputs go
   - atomic writes
   - stopping and progress
   - the worker pool
   - option values: one check for the CLI, the API and library callers

5. DICOM helpers: reading, geometry, writing, multi-frame datasets, frames and codecs,
   params files, de-identification, header dumps, DICOMDIR records.
   - reading: dictionaries, files, headers
   - reading: walking a file's element headers to its end
   - reading: headers, pixel data whole
   - reading: values
   - geometry and slice sorting
   - writing: elements, headers, pixel data
   - building multi-frame datasets
   - frame access and codecs
   - params files: tag lines and rectangles
   - de-identification
   - de-identification: elements, sequences, overlays, private attributes
   - de-identification: structured content and dates
   - de-identification: keys and UID maps
   - header dumps
   - DICOMDIR
   - byte order: bare datasets and re-encoding
   - new instances from images and videos
   - video streams: MP4, H.264 and ffmpeg

6. Actions: each action with its building blocks right above it, then ``ACTIONS``,
   the registry the CLI, batch, the API, OpenAPI and the web page are made from.
   - merge
   - split
   - compression and decompression
   - anonymize
   - modify
   - headers
   - DICOMDIR
   - export: the pixel pipeline (pure functions)
   - export: reading what a frame needs from the header
   - export: encoding and the worker
   - export: planning files and frames, the action
   - export: video
   - info and summary
   - conversions: Part 10, bare datasets, byte order
   - DICOMDIR in the parent folder
   - conversions: images and videos to DICOM
   - the registry

7. Batch: job folders, markers, locks, recovery, parallel jobs, shards, Dask, watch.
   - markers, locks and the journal
   - running jobs
   - beyond one machine: shards and Dask
   - watch

8. HTTP API: keys, view tokens, sessions, process requests in a child process, uploads
   (zip archives too), OpenAPI, the web page, byte ranges, routing and the handler, the
   server.
   - keys
   - view tokens
   - names
   - sessions and rate limits
   - process requests
   - request bodies
   - zip archives
   - the OpenAPI description and the action list
   - the web page
   - byte ranges and validators
   - routing and the handler
   - uploads, downloads, answers
   - the server

9. CLI: the parser made from the registries, ``main()``.
   - the parser, from the registries
   - running the command line
"""


# ==== 1. Header ====

from __future__ import annotations

import argparse
import bisect
import contextlib
import copy
import dataclasses
import datetime
import email.utils
import functools
import hashlib
import hmac
import html
import importlib.util
import io
import ipaddress
import itertools
import json
import logging
import math
import mimetypes
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
import warnings
import zipfile
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, TypedDict
from urllib.parse import parse_qs, quote, unquote, urlsplit

import multipart


def _run_by_launcher() -> bool:
    """Tell whether the ``dicompressor`` command is importing this module to run it.

    The launcher pip writes for the console script (a file on POSIX, an .exe's
    ``__main__.py`` on Windows) runs ``from dicompressor import main_entry`` at the top
    level of ``__main__``. That importer is the first frame outside the import machinery
    above this module's code. Worker processes run the launcher as ``__mp_main__``, and
    library callers import it from modules of their own: neither is the command line.
    """
    try:
        frame: types.FrameType | None = sys._getframe(2)  # 0: here, 1: the module's code
    except ValueError:  # imported from C, with no Python frame above
        return False
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    return (
        frame is not None
        and frame.f_globals.get("__name__") == "__main__"
        and frame.f_code.co_name == "<module>"
        and "main_entry" in frame.f_code.co_names
    )


#: This process runs the command line: ``python3 dicompressor.py`` or the installed
#: ``dicompressor`` command (not a library caller, not a worker process).
COMMAND_LINE = __name__ == "__main__" or _run_by_launcher()


def load_toolkit() -> None:
    """Import numpy and pydicom into this module's namespace; later calls return at once.

    Imported as a library (tests, worker processes), the module loads them at once,
    below. Run as the command line (COMMAND_LINE), it leaves them to main(): a text
    header dump (``-t``) of plain files and a DICOMDIR need neither, and start about
    0.15 s sooner without them (a third of a dump of 400 files); they load them for the
    first file they must hand to pydicom. Every other request loads them before it
    starts.
    """
    global np, pydicom, pydicom_config, dictionary_has_tag, dictionary_VR, tag_for_keyword
    global DataElement, RawDataElement
    global Dataset, FileDataset, FileMetaDataset, InvalidDicomError, DicomBytesIO
    global DicomFileLike, FileSet, DicomSequence, BaseTag, Tag, UID, ExplicitVRBigEndian
    global ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid, validate_value
    if "validate_value" in globals():
        return
    if COMMAND_LINE:  # our workers are processes, not threads
        # OpenBLAS starts a thread per core when numpy loads, spinning for 50-100 ms on
        # 2 cores; this tool does no linear algebra worth them (a library caller's own
        # numpy is left as it is).
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy as np

    # pydicom's test-data module imports `requests` (about 70 ms, a third of pydicom's
    # import) only to download files, which this tool never does. Hide it while pydicom
    # loads; later imports of `requests` (by the user's own code) work as usual.
    requests_hidden = "requests" not in sys.modules
    if requests_hidden:
        sys.modules["requests"] = None  # type: ignore[assignment]
    try:
        import pydicom
        from pydicom import config as pydicom_config
        from pydicom.datadict import (
            dictionary_has_tag,
            dictionary_VR,
            tag_for_keyword,
        )
        from pydicom.dataelem import DataElement, RawDataElement
        from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
        from pydicom.errors import InvalidDicomError
        from pydicom.filebase import DicomBytesIO, DicomFileLike
        from pydicom.fileset import FileSet
        from pydicom.sequence import Sequence as DicomSequence
        from pydicom.tag import BaseTag, Tag
        from pydicom.uid import (
            UID,
            ExplicitVRBigEndian,
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
            generate_uid,
        )
        from pydicom.valuerep import validate_value
    finally:
        if requests_hidden:
            del sys.modules["requests"]


def tune_malloc() -> None:
    """Keep frame-sized buffers on the heap, where freed memory is used again (glibc).

    glibc maps each allocation over its threshold (128 KB at first, raised as such blocks
    are freed) and unmaps it when freed, so a frame's buffers (decoded, converted,
    encoded: several of 512 KB for a 512 x 512 CT slice) came as new pages every frame:
    -x --codec jpegls of 400 frames took 309,000 page faults and 0.77 s of system time,
    with this 51,000 and 0.22 s (bench/README.md). Blocks over 32 MB are still mapped,
    and up to 64 MB freed at the heap's top is kept for the next frames. Called by
    main() for an action run from the command line, by worker processes and by the
    API's job processes; never in a library caller's process (the setting is
    process-wide) nor in the --serve process, which runs for days and transcodes
    nothing itself. Elsewhere (musl, macOS, Windows) it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (fixed: no more dynamic raising)
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD


if not COMMAND_LINE:
    load_toolkit()


__version__ = "0.1.0"


# ==== 2. Constants and configuration ====

#: Batch files in a job folder (DESIGN.md §4): the done marker, the lock of the runner
#: working on it, and the journal of a job under way (for recovery after a crash).
DONE_MARKER = ".dicompressor_done"


LOCK_FILE = ".dicompressor_lock"


JOURNAL_FILE = ".dicompressor_journal"


DEFAULT_LOCK_TIMEOUT_S = 3600.0


#: How long --dask waits for its scheduler to answer.
DASK_CONNECT_TIMEOUT_S = 15


DEFAULT_SETTLE_S = 30.0


#: A lock file still empty after this long belongs to a runner that died creating it.
LOCK_WRITE_GRACE_S = 10.0


#: The log file rotates at this size, keeping this many old files.
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024


LOG_FILE_BACKUPS = 5


#: Marks the replace-in-place variant of an action on the command line (-X, -Z, -U).
REPLACE_SUFFIX = ":replace"


PROG = "dicompressor"


UID_PREFIX = "1.2.826.0.1.3680043.10.1443."  # pydicom's org root is not ours; see README


#: (0002,0012) Implementation Class UID of every file DicomPressor writes.
IMPLEMENTATION_UID = UID_PREFIX + "1"


#: Exit codes of the CLI (STYLE.md "Errors").
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


#: What an action reads from a folder (ActionSpec.inputs): DICOM files (any name but the
#: endings of NON_DICOM_SUFFIXES), or images or videos, told by their endings.
DICOM_INPUTS, IMAGE_INPUTS, VIDEO_INPUTS = "dicom", "images", "videos"


#: Endings of the images -w and -W read (Pillow; JPEG 2000 also through openjpeg) and of
#: the videos -v reads (ffmpeg), as the original DicomPressor finds them (any case).
IMAGE_ENDINGS = frozenset(".png .jpg .jpeg .bmp .tif .tiff .jp2 .j2k .jpx".split())  # noqa: SIM905


VIDEO_ENDINGS = frozenset(".mp4 .m4v .mov .avi .mkv .wmv".split())  # noqa: SIM905


INPUT_ENDINGS = {IMAGE_INPUTS: IMAGE_ENDINGS, VIDEO_INPUTS: VIDEO_ENDINGS}


#: How messages name the inputs of each kind ("no image files in folder").
INPUT_NOUNS = {DICOM_INPUTS: "DICOM files", IMAGE_INPUTS: "image files", VIDEO_INPUTS: "videos"}


#: File name endings that are never DICOM; such files in a job folder are passed over
#: silently (our own exports and notes among them, and the images and videos).
NON_DICOM_SUFFIXES = (
    frozenset(
        """
        .txt .json .xml .csv .tsv .md .log .gif .pdf .zip .gz .tgz .bz2 .xz .7z .html .htm
        .py .sh .ps1 .exe .bat .ini .cfg .yaml .yml .lock .tmp .part
        """.split()  # noqa: SIM905
    )
    | IMAGE_ENDINGS
    | VIDEO_ENDINGS
)


#: PS3.4 B.5 storage SOP classes used by merge and split.
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"


LEGACY_CT = "1.2.840.10008.5.1.4.1.1.2.2"


LEGACY_MR = "1.2.840.10008.5.1.4.1.1.4.4"


LEGACY_PET = "1.2.840.10008.5.1.4.1.1.128.1"


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


MF_SINGLE_BIT_SC = "1.2.840.10008.5.1.4.1.1.7.1"


MF_GRAY_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"


MF_GRAY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


MF_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"


US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


ENHANCED_PET = "1.2.840.10008.5.1.4.1.1.130"


#: Modality -> (classic single-frame SOP class, Legacy Converted Enhanced SOP class),
#: PS3.3 A.70-A.72.
LEGACY_BY_MODALITY: dict[str, tuple[str, str]] = {
    "CT": (CT_IMAGE, LEGACY_CT),
    "MR": (MR_IMAGE, LEGACY_MR),
    "PT": (PET_IMAGE, LEGACY_PET),
}


#: Legacy Converted Enhanced SOP class -> its Frame Type functional group (PS3.3 C.8.15.3.1,
#: C.8.13.5.1, C.8.22.5.1).
FRAME_TYPE_SEQUENCE: dict[str, str] = {
    LEGACY_CT: "CTImageFrameTypeSequence",
    LEGACY_MR: "MRImageFrameTypeSequence",
    LEGACY_PET: "PETFrameTypeSequence",
}


#: Multi-frame SOP class -> the single-frame class its frames become on split.
SINGLE_FRAME_CLASS: dict[str, str] = {
    LEGACY_CT: CT_IMAGE,
    LEGACY_MR: MR_IMAGE,
    LEGACY_PET: PET_IMAGE,
    ENHANCED_CT: CT_IMAGE,
    ENHANCED_MR: MR_IMAGE,
    ENHANCED_PET: PET_IMAGE,
    US_MULTIFRAME: US_IMAGE,
    MF_GRAY_BYTE_SC: SECONDARY_CAPTURE,
    MF_GRAY_WORD_SC: SECONDARY_CAPTURE,
    MF_TRUE_COLOR_SC: SECONDARY_CAPTURE,
    MF_SINGLE_BIT_SC: SECONDARY_CAPTURE,
}


#: Attributes that must agree for slices to share one multi-frame stack (DESIGN.md §3).
STACK_KEYWORDS = (
    "SOPClassUID",
    "Modality",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PlanarConfiguration",
)


#: Per-slice attributes that merge moves into functional groups (PS3.3 C.7.6.16.2).
#: keyword -> functional group sequence keyword.
FUNCTIONAL_GROUP_OF: dict[str, str] = {
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "SpacingBetweenSlices": "PixelMeasuresSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "ImagePositionPatient": "PlanePositionSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleType": "PixelValueTransformationSequence",
    "WindowCenter": "FrameVOILUTSequence",
    "WindowWidth": "FrameVOILUTSequence",
    "WindowCenterWidthExplanation": "FrameVOILUTSequence",
    "VOILUTFunction": "FrameVOILUTSequence",
}


#: Body Part Examined defined terms (PS3.16 Annex L) of structures that are not paired: a
#: series of one has no Laterality (C.7.3.1, type 2C), as dciodvfy checks.
UNPAIRED_BODY_PARTS = frozenset(
    """
    ABDOMEN ABDOMENPELVIS AORTA BLADDER BRAIN CERVIX CHEST CHESTABDOMEN CHESTABDPELVIS
    CIRCLEOFWILLIS COCCYX COLON CORONARYARTERY CSPINE CTSPINE DUODENUM ESOPHAGUS FACE
    GALLBLADDER HEAD HEADNECK HEART ILEUM ILIUM JAW JEJUNUM LARYNX LIVER LSPINE MAXILLA
    MEDIASTINUM MOUTH NECK NECKCHEST NECKCHESTABDOMEN NOSE PANCREAS PELVIS PENIS PHARYNX
    PROSTATE RECTUM SCALP SKULL SPINE SPLEEN SSPINE STERNUM STOMACH THYMUS THYROID TONGUE
    TRACHEA TSPINE URETER URETHRA UTERUS VAGINA VULVA WHOLEBODY
    """.split()  # noqa: SIM905
)


#: Per-slice attributes merge keeps in each frame's Unassigned Per-Frame Converted
#: Attributes even when they are the same everywhere, so split gives them back.
PER_FRAME_KEPT = (
    "ImageType",
    "AcquisitionDate",
    "AcquisitionTime",
    "ContentDate",
    "ContentTime",
    "AcquisitionNumber",
    "InstanceNumber",
    "SliceLocation",
)


#: Attributes of a single-frame instance that the multi-frame header replaces or drops
#: (identity, pixel description and multi-frame bookkeeping).
NOT_COPIED_TO_MULTIFRAME = frozenset(
    {
        "SOPClassUID",
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "InstanceNumber",
        "ImageType",
        "NumberOfFrames",
        "FrameIncrementPointer",
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "DataSetTrailingPadding",
        "SliceLocation",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "ReferencedImageSequence",
        "SourceImageSequence",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "PixelPaddingRangeLimit",
        "ContentDate",
        "ContentTime",
        "AcquisitionDate",
        "AcquisitionTime",
        "AcquisitionDateTime",
        "AcquisitionNumber",
        "IconImageSequence",
        "ImagesInAcquisition",
        "ReferencedPerformedProcedureStepSequence",
        "ConversionType",
    }
    | set(FUNCTIONAL_GROUP_OF)
)


#: Top-level attributes that the Legacy Converted Enhanced IODs hold in their own modules
#: (PS3.3 A.70-A.72: Patient, Clinical Trial Subject, General/Patient/Clinical Trial Study,
#: General/Clinical Trial Series, Frame of Reference, Synchronization, General and
#: Enhanced General Equipment, Image Pixel, Contrast/Bolus, Enhanced CT/MR/PET Image,
#: Acquisition Context, Device, Specimen, SOP Common, Common Instance Reference). A
#: shared source attribute outside this set goes into the Unassigned Shared Converted
#: Attributes Sequence (C.7.6.16.2.25), where split finds it again.
LEGACY_TOP_LEVEL = frozenset(
    """
    PatientName PatientID IssuerOfPatientID IssuerOfPatientIDQualifiersSequence
    TypeOfPatientID PatientBirthDate PatientBirthTime PatientSex QualityControlSubject
    OtherPatientIDsSequence OtherPatientNames EthnicGroup PatientComments
    PatientSpeciesDescription PatientSpeciesCodeSequence PatientBreedDescription
    PatientBreedCodeSequence BreedRegistrationSequence ResponsiblePerson
    ResponsiblePersonRole ResponsibleOrganization PatientIdentityRemoved
    DeidentificationMethod DeidentificationMethodCodeSequence StrainDescription
    StrainNomenclature StrainCodeSequence GeneticModificationsSequence
    ClinicalTrialSponsorName ClinicalTrialProtocolID ClinicalTrialProtocolName
    ClinicalTrialSiteID ClinicalTrialSiteName ClinicalTrialSubjectID
    ClinicalTrialSubjectReadingID StudyInstanceUID StudyDate StudyTime
    ReferringPhysicianName ReferringPhysicianIdentificationSequence
    ConsultingPhysicianName StudyID AccessionNumber IssuerOfAccessionNumberSequence
    StudyDescription PhysiciansOfRecord NameOfPhysiciansReadingStudy
    ReferencedStudySequence ProcedureCodeSequence ReasonForPerformedProcedureCodeSequence
    AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence PatientAge PatientSize
    PatientWeight PatientBodyMassIndex Occupation AdditionalPatientHistory AdmissionID
    IssuerOfAdmissionIDSequence ServiceEpisodeID ServiceEpisodeDescription MedicalAlerts
    Allergies SmokingStatus PregnancyStatus LastMenstrualDate PatientState
    ClinicalTrialTimePointID ClinicalTrialTimePointDescription
    ClinicalTrialCoordinatingCenterName ClinicalTrialSeriesID
    ClinicalTrialSeriesDescription Modality SeriesInstanceUID SeriesNumber Laterality
    SeriesDate SeriesTime PerformingPhysicianName
    PerformingPhysicianIdentificationSequence ProtocolName SeriesDescription
    SeriesDescriptionCodeSequence OperatorsName OperatorIdentificationSequence
    ReferencedPerformedProcedureStepSequence RelatedSeriesSequence BodyPartExamined
    PatientPosition RequestAttributesSequence PerformedProcedureStepID
    PerformedProcedureStepStartDate PerformedProcedureStepStartTime
    PerformedProcedureStepDescription PerformedProtocolCodeSequence
    CommentsOnThePerformedProcedureStep AnatomicalOrientationType FrameOfReferenceUID
    PositionReferenceIndicator SynchronizationFrameOfReferenceUID SynchronizationTrigger
    AcquisitionTimeSynchronized TimeSource TimeDistributionProtocol NTPSourceAddress
    Manufacturer InstitutionName InstitutionAddress StationName
    InstitutionalDepartmentName ManufacturerModelName DeviceSerialNumber SoftwareVersions
    GantryID SpatialResolution DateOfLastCalibration TimeOfLastCalibration
    PixelPaddingValue DeviceUID UDISequence ManufacturerDeviceClassUID SamplesPerPixel
    PhotometricInterpretation Rows Columns BitsAllocated BitsStored HighBit
    PixelRepresentation PlanarConfiguration PixelAspectRatio ICCProfile ColorSpace
    ContrastBolusAgent ContrastBolusAgentSequence ContrastBolusRoute ContrastBolusVolume
    ContrastBolusStartTime ContrastBolusStopTime ContrastBolusTotalDose ContrastFlowRate
    ContrastFlowDuration ContrastBolusIngredient ContrastBolusIngredientConcentration
    ImageComments QualityControlImage BurnedInAnnotation RecognizableVisualFeatures
    ReferencedRawDataSequence ReferencedWaveformSequence ReferencedImageEvidenceSequence
    SourceImageEvidenceSequence ReferencedPresentationStateSequence
    AcquisitionContextSequence AcquisitionContextDescription DeviceSequence
    SpecimenIdentificationSequence SpecificCharacterSet InstanceCreatorUID
    TimezoneOffsetFromUTC CodingSchemeIdentificationSequence
    ContextGroupIdentificationSequence MappingResourceIdentificationSequence
    LongitudinalTemporalInformationModified OriginalAttributesSequence
    StudiesContainingOtherReferencedInstancesSequence
    """.split()  # noqa: SIM905
)


DEFLATED = "1.2.840.10008.1.2.1.99"


#: The same for the multi-frame Secondary Capture IODs (PS3.3 A.8.2-A.8.5): their SC
#: Equipment, General Image, Cine, SC Image and Frame of Reference attributes too.
SC_TOP_LEVEL = LEGACY_TOP_LEVEL | frozenset(
    """
    ConversionType SecondaryCaptureDeviceID SecondaryCaptureDeviceManufacturer
    SecondaryCaptureDeviceManufacturerModelName SecondaryCaptureDeviceSoftwareVersions
    VideoImageFormatAcquired DigitalImageFormatAcquired DateOfSecondaryCapture
    TimeOfSecondaryCapture NominalScannedPixelSpacing PixelSpacing PixelSpacingCalibrationType
    PixelSpacingCalibrationDescription PatientOrientation ImageLaterality
    AnatomicRegionSequence PrimaryAnatomicStructureSequence FrameTime CineRate
    RecommendedDisplayFrameRate StartTrim StopTrim ActualFrameDuration FrameDelay
    ImageTriggerDelay EffectiveDuration
    """.split()  # noqa: SIM905
)


#: Transfer syntaxes whose pixel data is native little endian and can be copied as bytes.
NATIVE_LE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


#: Explicit VR Little Endian, for code that runs before pydicom is loaded (load_toolkit).
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


#: (0028,2114) Lossy Image Compression Method of the always-lossy syntaxes (PS3.3
#: C.7.6.1.1.5.1).
LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
}


#: Transfer syntaxes that are always lossy (PS3.5 Table A-1; JPEG 2000 may be either).
LOSSY_SYNTAXES = frozenset(LOSSY_METHODS)


#: pip package per compressed transfer syntax, for "missing codec" errors.
CODEC_PACKAGE: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}


#: The module each of those packages installs.
CODEC_MODULE = {
    "pylibjpeg-libjpeg": "libjpeg",
    "pyjpegls": "jpeg_ls",
    "pylibjpeg-openjpeg": "openjpeg",
    "pylibjpeg-rle": "rle",
}


@dataclasses.dataclass(frozen=True)
class Codec:
    """A lossless codec offered by ``--codec`` (DESIGN.md §3 "Compression")."""

    name: str
    syntax: str
    suffix: str
    package: str


#: ``--codec`` choices for lossless compression; j2k is the spec's default.
CODECS: dict[str, Codec] = {
    "j2k": Codec("j2k", "1.2.840.10008.1.2.4.90", "_jll", "pylibjpeg-openjpeg"),
    "jpegls": Codec("jpegls", "1.2.840.10008.1.2.4.80", "_jls", "pyjpegls"),
    "rle": Codec("rle", "1.2.840.10008.1.2.5", "_rle", "pylibjpeg-rle"),
    "htj2k": Codec("htj2k", "1.2.840.10008.1.2.4.201", "_htj2k", "imagecodecs"),
}


#: JPEG 2000 (lossy allowed), the syntax of ``-z`` (PS3.5 A.4.4).
J2K_LOSSY = "1.2.840.10008.1.2.4.91"


LOSSY_SUFFIX = "_jl"  # the original DicomPressor's name for -z outputs


DECOMPRESSED_SUFFIX = "_unc"  # the original DicomPressor's name


DEFAULT_RATIO = 10.0


#: Frames whose error -z measures (decoding them again) without --verify: this many of a
#: multi-frame file, or single-frame files of a job, spread evenly, the first and the last
#: among them. Each decode costs about a third of its encode.
RMSE_SAMPLE_FRAMES = 8


#: Value 1 of (0028,2114) Lossy Image Compression Method for JPEG 2000 (PS3.3 C.7.6.1.1.5).
J2K_METHOD = "ISO_15444_1"


#: openjpeg always uses 6 resolution levels, so each side needs at least 2**5 pixels.
J2K_MIN_SIDE = 32


#: Most bits stored per sample the encoders here take: pydicom's openjpeg plugin 24, JPEG-LS
#: 16 (PS3.5 A.4.3); RLE takes any, HTJ2K is checked by check_htj2k_pixels.
MAX_BITS_STORED = {CODECS["j2k"].syntax: 24, J2K_LOSSY: 24, CODECS["jpegls"].syntax: 16}


#: Fewest bytes a frame needs for pyjpegls's JPEG-LS encoder: it writes the codestream
#: into twice the frame's bytes, and a tiny frame's codestream (about 40 bytes of
#: markers, noise hardly compressed) needs more; the largest that failed here had 162.
JPEGLS_MIN_FRAME_BYTES = 256


#: The transfer syntax -a writes pixels in after blacking out rectangles, by the source's
#: compressed syntax (PS3.5 Table A-1): the lossless member of the same family; JPEG
#: (lossy, where JPEG again would lose more; lossless, for which no encoder is here)
#: becomes JPEG 2000 Lossless. Native Little Endian stays; any other syntax, and a target
#: whose encoder is missing or does not take the pixels, becomes Explicit VR Little Endian.
MASKED_SYNTAX: dict[str, str] = {
    **dict.fromkeys(
        ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57"),
        CODECS["j2k"].syntax,
    ),
    "1.2.840.10008.1.2.4.70": CODECS["j2k"].syntax,
    "1.2.840.10008.1.2.4.80": CODECS["jpegls"].syntax,
    "1.2.840.10008.1.2.4.81": CODECS["jpegls"].syntax,
    "1.2.840.10008.1.2.4.90": CODECS["j2k"].syntax,
    J2K_LOSSY: CODECS["j2k"].syntax,
    **dict.fromkeys(
        ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
        CODECS["htj2k"].syntax,
    ),
    CODECS["rle"].syntax: CODECS["rle"].syntax,
}


#: Relative tolerance when deciding that slice spacing is uniform, and the factor of
#: the typical spacing above which a step is reported as a gap.
SPACING_TOLERANCE = 0.01


GAP_FACTOR = 1.5


#: Geometry values are compared after rounding to this many decimals (mm, cosines).
GEOMETRY_DECIMALS = 4


# ---- de-identification, header dump and DICOMDIR tables ----

#: PS3.15 Annex E Table E.1-1 (2026d), Basic Application Level Confidentiality Profile
#: column: action code -> the attributes it applies to, by keyword, or as 8 hex digits
#: where pydicom's dictionary has no keyword yet (the rows new in 2024-2026: Person Names
#: to Use, Pronouns, Gender Identity, Sex Parameters for Clinical Use, Ethnic Groups, the
#: diagnosis code sequences, Annotation/Segment Definition DateTime...). Codes: D dummy
#: value, Z empty, X remove, K keep, U new UID (kept consistent), and the table's
#: combinations. Private attributes (X), curves (50xx,xxxx, X) and overlay data and
#: comments (60xx,3000 / 60xx,4000, X) are rules in ``_removed_by_rule``. All 657 rows of
#: the 2026d table are here or in those rules.
BASIC_PROFILE_TABLE: dict[str, str] = {
    "D": """
        AcquisitionFieldOfViewLabel AnnotationGroupLabel AnnotationGroupUID AssertionDateTime
        AttributeModificationDateTime BeamHoldTransitionDateTime CertificateOfSigner
        ClinicalTrialProtocolEthicsCommitteeName ClinicalTrialProtocolID ClinicalTrialSponsorName
        ClinicalTrialSubjectID ClinicalTrialSubjectReadingID ContainerIdentifier ContentSequence
        ContextGroupLocalVersion ContextGroupVersion Date DateTime DecayCorrectionDateTime
        DestinationAE DeviceLabel DigitalSignatureDateTime EffectiveDateTime EncapsulatedDocument
        EntityLabel EntityLongLabel ExclusionStartDateTime FlowIdentifier FlowIdentifierSequence
        FrameAcquisitionDateTime FrameOriginTimestamp FrameReferenceDateTime FunctionalSyncPulse
        GraphicAnnotationSequence HangingProtocolCreationDateTime ImpedanceMeasurementDateTime
        InformationIssueDateTime InterlockDateTime InterlockDescription InterlockOriginDescription
        ModifyingSystem OverrideDateTime PersonIdentificationCodeSequence PersonName RTPlanLabel
        RTPrescriptionLabel RTToleranceSetLabel RadiationDoseIdentificationLabel
        RadiationDoseInVivoMeasurementLabel RadiationGenerationModeLabel
        ReasonForTheAttributeModification RecordedRTControlPointDateTime ReferencedDateTime
        SafePositionExitDate SafePositionExitTime SafePositionReturnDate SafePositionReturnTime
        SelectorAEValue SelectorASValue SelectorDAValue SelectorDTValue SelectorLOValue
        SelectorLTValue SelectorOBValue SelectorPNValue SelectorSHValue SelectorSTValue
        SelectorTMValue SelectorUNValue SelectorURValue SelectorUTValue SourceEndDateTime
        SourceIdentifier SourceStartDateTime SourceStrengthReferenceDate
        SourceStrengthReferenceTime SpecimenIdentifier StructureSetLabel Time
        TreatmentControlPointDate TreatmentControlPointTime TreatmentPositionGroupLabel
        TreatmentToleranceViolationDateTime TreatmentToleranceViolationDescription
        UnformattedTextValue UserContentLabel UserContentLongLabel VerificationDateTime
        VerifyingObserverName VerifyingObserverSequence VerifyingOrganization XRayDetectorID
        XRaySourceID
    """,
    "Z": """
        AccessionNumber CalibrationDateTime ClinicalTrialCoordinatingCenterName
        ClinicalTrialProtocolName ClinicalTrialSiteID ClinicalTrialSiteName
        ClinicalTrialTimePointID ConceptualVolumeCombinationDescription ConceptualVolumeDescription
        ConsultingPhysicianName DeviceAlternateIdentifier FillerOrderNumberImagingServiceRequest
        FractionationNotes IssuerOfTheContainerIdentifierSequence
        IssuerOfTheSpecimenIdentifierSequence ManufacturerDeviceIdentifier ParticipationDateTime
        PatientBirthDate PatientName PatientSex PlacerOrderNumberImagingServiceRequest
        PrescriptionNotes PrescriptionNotesSequence ROIInterpreter ROIName RTAccessoryDeviceSlotID
        RTAccessoryHolderSlotID RTPhysicianIntentNarrative RadiationGenerationModeDescription
        ReasonForSuperseding ReferringPhysicianName ReviewDate ReviewTime SourceOfPreviousValues
        SpecimenPreparationSequence StructureSetDate StructureSetTime StudyDate StudyID StudyTime
        TreatmentTechniqueNotes VerifyingObserverIdentificationCodeSequence
    """,
    "U": """
        AcquisitionUID ConcatenationUID ConceptualVolumeUID ConstituentConceptualVolumeUID
        DeviceUID DigitalSignatureUID DimensionOrganizationUID DoseReferenceUID
        DosimetricObjectiveUID FailedSOPInstanceUIDList FiducialUID FrameOfReferenceUID
        InstanceCreatorUID IrradiationEventUID LargePaletteColorLookupTableUID
        ManufacturerDeviceClassUID MediaStorageSOPInstanceUID MultiplexGroupUID
        ObservationSubjectUIDTrial ObservationUID PaletteColorLookupTableUID PatientSetupUID
        PresentationDisplayCollectionUID PresentationSequenceCollectionUID PyramidUID
        RTTreatmentPhaseUID ReferencedConceptualVolumeUID ReferencedDoseReferenceUID
        ReferencedDosimetricObjectiveUID ReferencedFiducialsUID ReferencedFrameOfReferenceUID
        ReferencedGeneralPurposeScheduledProcedureStepTransactionUID ReferencedObservationUIDTrial
        ReferencedSOPInstanceUID ReferencedSOPInstanceUIDInFile ReferencedTreatmentPositionGroupUID
        RelatedFrameOfReferenceUID RequestedSOPInstanceUID SOPInstanceUID SeriesInstanceUID
        SourceConceptualVolumeUID SourceFrameOfReferenceUID SpecimenUID StorageMediaFileSetUID
        StudyInstanceUID SynchronizationFrameOfReferenceUID TableTopPositionAlignmentUID TargetUID
        TemplateExtensionCreatorUID TemplateExtensionOrganizationUID TrackingUID TransactionUID
        TreatmentPositionGroupUID TreatmentSessionUID UID
    """,
    "X/Z": """
        AcquisitionContextSequence AcquisitionDate AcquisitionTime BarcodeValue LabelText
        PatientSexNeutered ReferencedStudySequence RequestedProcedureDescription ReviewerName
        SourceSerialNumber TreatmentMachineName
    """,
    "X/D": """
        AcquisitionDeviceProcessingDescription DateOfLastDetectorCalibration DetectorID
        EndAcquisitionDateTime FirstTreatmentDate InstanceCreationDate IntendedPhaseEndDate
        IntendedPhaseStartDate MostRecentTreatmentDate ObservationDateTime
        OperatorIdentificationSequence ProtocolName RTPlanDate RTPlanTime RTTreatmentApproachLabel
        SeriesDate SeriesTime StartAcquisitionDateTime TimeOfLastDetectorCalibration TreatmentDate
        TreatmentSite TreatmentTime WaveformAnnotationSequence
    """,
    "X/Z/D": """
        AcquisitionDateTime DeviceSerialNumber InstanceCreationTime InstitutionCodeSequence
        InstitutionName OperatorsName ReferencedPerformedProcedureStepSequence StationName
    """,
    "Z/D": """
        ContentCreatorName ContentDate ContentTime ContrastBolusAgent InstructionPerformedDateTime
        PatientID
    """,
    "X/Z/U*": """
        ReferencedImageSequence SourceImageSequence
    """,
    "X": """
        AcquisitionComments AcquisitionContextDescription AcquisitionProtocolDescription
        ActualHumanPerformersSequence AdditionalPatientHistory AddressTrial AdmissionID
        AdmittingDate AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription AdmittingTime
        AffectedSOPInstanceUID Allergies AnnotationGroupDescription ApprovalStatusDateTime
        Arbitrary AssertionExpirationDateTime AuthorObserverSequence BeamDescription
        BolusDescription BranchOfService CalibrationDate CalibrationTime CameraOwnerName CassetteID
        CertifiedTimestamp ChannelDerivationDescription ChannelLabel
        ClinicalTrialProtocolEthicsCommitteeApprovalNumber ClinicalTrialSeriesDescription
        ClinicalTrialSeriesID ClinicalTrialTimePointDescription CommentsOnRadiationDose
        CommentsOnThePerformedProcedureStep CompensatorDescription
        ConfidentialityConstraintOnPatientDataDescription ConsultingPhysicianIdentificationSequence
        ContainerComponentID ContainerDescription ContentCreatorIdentificationCodeSequence
        ContrastBolusStartTime ContrastBolusStopTime ContributionDateTime ContributionDescription
        CountryOfResidence CreationDate CreationTime CurrentObserverTrial CurrentPatientLocation
        CurveDate CurveTime CustodialOrganizationSequence DataSetTrailingPadding
        DateOfDocumentOrVerbalTransactionTrial DateOfInstallation DateOfLastCalibration
        DateOfManufacture DateOfSecondaryCapture DateTimeOfLastCalibration DecompositionDescription
        DerivationDescription DeviceDescription DeviceSettingDescription DigitalSignaturesSequence
        DischargeDate DischargeDiagnosisDescription DischargeTime DisplacementReferenceLabel
        DistributionAddress DistributionName DoseReferenceDescription EntityDescription EntityName
        EquipmentFrameOfReferenceDescription EthicsCommitteeApprovalEffectivenessEndDate
        EthicsCommitteeApprovalEffectivenessStartDate EthnicGroup EthnicGroupCodeSequence
        ExpectedCompletionDateTime FilterLookupTableDescription FindingsGroupRecordingDateTrial
        FindingsGroupRecordingTimeTrial FixationDeviceDescription FractionGroupDescription
        FrameComments GPSAltitude GPSAltitudeRef GPSAreaInformation GPSDOP GPSDateStamp
        GPSDestBearing GPSDestBearingRef GPSDestDistance GPSDestDistanceRef GPSDestLatitude
        GPSDestLatitudeRef GPSDestLongitude GPSDestLongitudeRef GPSDifferential GPSImgDirection
        GPSImgDirectionRef GPSLatitude GPSLatitudeRef GPSLongitude GPSLongitudeRef GPSMapDatum
        GPSMeasureMode GPSProcessingMethod GPSSatellites GPSSpeed GPSSpeedRef GPSStatus
        GPSTimeStamp GPSTrack GPSTrackRef GPSVersionID GantryID GeneratorID
        HL7DocumentEffectiveTime HardcopyCreationDeviceID HumanPerformerName
        HumanPerformerOrganization IconImageSequence IdentifyingComments ImageComments
        ImagePresentationComments ImagingServiceRequestComments Impressions
        InstanceCoercionDateTime InstanceOriginStatus InstitutionAddress
        InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence
        InsurancePlanIdentification IntendedFractionStartTime
        IntendedRecipientsOfResultsIdentificationSequence InterpretationApprovalDate
        InterpretationApprovalTime InterpretationApproverSequence InterpretationAuthor
        InterpretationDiagnosisDescription InterpretationID InterpretationIDIssuer
        InterpretationRecordedDate InterpretationRecordedTime InterpretationRecorder
        InterpretationText InterpretationTranscriber InterpretationTranscriptionDate
        InterpretationTranscriptionTime InterventionDrugStartTime InterventionDrugStopTime
        IssueDateOfImagingServiceRequest IssueTimeOfImagingServiceRequest IssuerOfAdmissionID
        IssuerOfAdmissionIDSequence IssuerOfClinicalTrialProtocolID IssuerOfClinicalTrialSeriesID
        IssuerOfClinicalTrialSiteID IssuerOfClinicalTrialSubjectID
        IssuerOfClinicalTrialSubjectReadingID IssuerOfClinicalTrialTimePointID IssuerOfPatientID
        IssuerOfServiceEpisodeID IssuerOfServiceEpisodeIDSequence LastMenstrualDate LensMake
        LensModel LensSerialNumber LensSpecification LongDeviceDescription MAC MakerNote
        MedicalAlerts MedicalRecordLocator MilitaryRank ModifiedAttributesSequence
        ModifiedImageDate ModifiedImageDescription ModifiedImageTime ModifyingDeviceID
        MultienergyAcquisitionDescription MultiplexGroupLabel NameOfPhysiciansReadingStudy
        NamesOfIntendedRecipientsOfResults NetworkID NonconformingDataElementValue
        NonconformingModifiedAttributesSequence ObservationDateTrial ObservationStartDateTime
        ObservationTimeTrial Occupation OrderCallbackPhoneNumber OrderCallbackTelecomInformation
        OrderEnteredBy OrderEntererLocation OriginalAttributesSequence Originator
        OtherClinicalTrialProtocolIDsSequence OtherPatientIDs OtherPatientIDsSequence
        OtherPatientNames OverlayDate OverlayTime ParticipantSequence PatientAddress PatientAge
        PatientBirthName PatientBirthTime PatientComments PatientInstitutionResidence
        PatientInsurancePlanCodeSequence PatientMotherBirthName PatientPrimaryLanguageCodeSequence
        PatientPrimaryLanguageModifierCodeSequence PatientReligiousPreference
        PatientSetupPhotoDescription PatientSize PatientState PatientTelecomInformation
        PatientTelephoneNumbers PatientTransportArrangements
        PatientTreatmentPreparationMethodDescription
        PatientTreatmentPreparationProcedureParameterDescription PatientWeight PerformedLocation
        PerformedProcedureStepDescription PerformedProcedureStepEndDate
        PerformedProcedureStepEndDateTime PerformedProcedureStepEndTime PerformedProcedureStepID
        PerformedProcedureStepStartDate PerformedProcedureStepStartDateTime
        PerformedProcedureStepStartTime PerformedStationAETitle
        PerformedStationGeographicLocationCodeSequence PerformedStationName
        PerformedStationNameCodeSequence PerformingPhysicianIdentificationSequence
        PerformingPhysicianName PersonAddress PersonTelecomInformation PersonTelephoneNumbers
        PhysicianApprovingInterpretation PhysiciansOfRecord
        PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence
        PlateID PositionAcquisitionTemplateDescription PositionAcquisitionTemplateName
        PreMedication PregnancyStatus PrescriptionDescription PresentationCreationDate
        PresentationCreationTime PriorTreatmentDoseDescription ProcedureStepCancellationDateTime
        ProductExpirationDateTime PyramidDescription PyramidLabel ROICreatorSequence ROIDateTime
        ROIDescription ROIGenerationDescription ROIInterpreterSequence ROIObservationDateTime
        ROIObservationDescription ROIObservationLabel RTPlanDescription RTPlanName
        RadiopharmaceuticalStartDateTime RadiopharmaceuticalStartTime
        RadiopharmaceuticalStopDateTime RadiopharmaceuticalStopTime ReasonForOmissionDescription
        ReasonForRequestedProcedureCodeSequence ReasonForStudy ReasonForTheImagingServiceRequest
        ReasonForTheRequestedProcedure ReasonForVisit ReasonForVisitCodeSequence ReceivingAE
        ReferencedDigitalSignatureSequence ReferencedPatientAliasSequence
        ReferencedPatientPhotoSequence ReferencedPatientSequence ReferencedSOPInstanceMACSequence
        ReferringPhysicianAddress ReferringPhysicianIdentificationSequence
        ReferringPhysicianTelephoneNumbers RegionOfResidence RequestAttributesSequence
        RequestedContrastAgent RequestedProcedureComments RequestedProcedureID
        RequestedProcedureLocation RequestedSeriesDescription RequestingAE RequestingPhysician
        RequestingService RespiratoryMotionCompensationTechniqueDescription ResponsibleOrganization
        ResponsiblePerson ResultsComments ResultsDistributionListSequence ResultsID ResultsIDIssuer
        RetrieveAETitle SOPAuthorizationDateTime ScheduledAdmissionDate ScheduledAdmissionTime
        ScheduledDischargeDate ScheduledDischargeTime ScheduledHumanPerformersSequence
        ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
        ScheduledPerformingPhysicianName ScheduledProcedureStepDescription
        ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime
        ScheduledProcedureStepExpirationDateTime ScheduledProcedureStepID
        ScheduledProcedureStepLocation ScheduledProcedureStepModificationDateTime
        ScheduledProcedureStepStartDate ScheduledProcedureStepStartDateTime
        ScheduledProcedureStepStartTime ScheduledStationAETitle
        ScheduledStationGeographicLocationCodeSequence ScheduledStationName
        ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle
        ScheduledStudyStartDate ScheduledStudyStartTime ScheduledStudyStopDate
        ScheduledStudyStopTime SecondaryCaptureDeviceID SeriesDescription ServiceEpisodeDescription
        ServiceEpisodeID SetupTechniqueDescription ShieldingDeviceDescription SlideIdentifier
        SmokingStatus SourceManufacturer SpecialNeeds SpecimenAccessionNumber
        SpecimenDetailedDescription SpecimenShortDescription StationAETitle StructureSetDescription
        StructureSetName StudyArrivalDate StudyArrivalTime StudyComments StudyCompletionDate
        StudyCompletionTime StudyDescription StudyIDIssuer StudyReadDate StudyReadTime
        StudyVerifiedDate StudyVerifiedTime SubstanceAdministrationDateTime TelephoneNumberTrial
        TemplateLocalVersion TemplateVersion TextComments TextString
        TimeOfDocumentCreationOrVerbalTransactionTrial TimeOfLastCalibration TimeOfSecondaryCapture
        TimezoneOffsetFromUTC TopicAuthor TopicKeywords TopicSubject TopicTitle
        TransducerIdentificationSequence TreatmentSites UDISequence UniqueDeviceIdentifier
        VerbalSourceIdentifierCodeSequenceTrial VerbalSourceTrial VisitComments
        WaveformFilterDescription XRayDetectorLabel 00081301 00081302 00081303 00081304 00100011
        00100012 00100013 00100014 00100015 00100016 00100041 00100042 00100043 00100044 00100045
        00100046 00100047 00102162 0040A034 0040A035 0040B034 0040B036 0040B03B 0040B03F 0040E012
        3004007F
    """,
}


#: How a combined code of Table E.1-1 is resolved: always the least destructive action
#: that stays conformant, so type 1 and type 2 attributes stay present. "Z/D", "X/D" and
#: "X/Z/D" keep a dummy value (D), "X/Z" keeps the attribute empty (Z), and "X/Z/U*"
#: keeps a reference sequence with its instance UIDs replaced (U).
COMBINED_CODE: dict[str, str] = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U"}


@functools.cache
def basic_profile() -> Mapping[int, str]:
    """Return Table E.1-1 as tag -> one of D, Z, X, U (PS3.15 E.1-1, combinations resolved).

    Built from BASIC_PROFILE_TABLE's keywords on first use (they need pydicom's
    dictionary); read-only.
    """
    actions: dict[int, str] = {}
    for code, names in BASIC_PROFILE_TABLE.items():
        for tag in table_tags(names):
            actions[tag] = COMBINED_CODE.get(code, code)
    return types.MappingProxyType(actions)


@functools.cache
def tags_of(keywords: tuple[str, ...] | frozenset[str]) -> frozenset[int] | tuple[int, ...]:
    """Return the tags of dictionary keywords: a tuple in their order, or a frozenset."""
    tags = (int(Tag(keyword)) for keyword in keywords)
    return frozenset(tags) if isinstance(keywords, frozenset) else tuple(tags)


def table_tags(names: str) -> list[int]:
    """Return the tags of a table's attributes: keywords, or tags as 8 hex digits."""
    return list(tags_of(tuple(names.split())))


#: Descriptors that the Clean Descriptors Option (PS3.15 Table E.1-1, column "Clean Desc.
#: Opt.") cleans instead of removing; ``--keep-descriptions`` keeps them as they are.
CLEAN_DESCRIPTORS = frozenset(
    """
    AcquisitionComments AcquisitionDeviceProcessingDescription AcquisitionFieldOfViewLabel
    AcquisitionProtocolDescription AdditionalPatientHistory AdmittingDiagnosesDescription
    Allergies BeamDescription BolusDescription ClinicalTrialSeriesDescription
    ClinicalTrialTimePointDescription CommentsOnRadiationDose
    CommentsOnThePerformedProcedureStep CompensatorDescription ContainerDescription
    ContrastBolusAgent ContributionDescription DerivationDescription DeviceSettingDescription
    DischargeDiagnosisDescription DoseReferenceDescription FrameComments IdentifyingComments
    ImageComments ImagePresentationComments ImagingServiceRequestComments Impressions
    InterpretationDiagnosisDescription InterpretationText MedicalAlerts
    ModifiedImageDescription PatientComments PerformedProcedureStepDescription ProtocolName
    ReasonForStudy ReasonForTheRequestedProcedure ReasonForVisit RequestedContrastAgent
    RequestedProcedureComments RequestedProcedureDescription ResultsComments
    ScheduledProcedureStepDescription SeriesDescription StudyComments StudyDescription
    VisitComments
    """.split()  # noqa: SIM905
)


#: PS3.16 CID 7050 De-identification Method (scheme DCM): the profile and its options, in
#: code order, each with the ProfileChoice field that applies it (None: always applied).
#: Clean Pixel Data is recorded where -a's rectangles (r, ri, rv) blacked out burned-in
#: text (PS3.15 E.3.1); Clean Structured Content (E.3.4): SR content keeps its tree.
DEID_METHODS: tuple[tuple[str | None, tuple[str, str]], ...] = (
    (None, ("113100", "Basic Application Confidentiality Profile")),
    ("clean_pixels", ("113101", "Clean Pixel Data Option")),
    ("clean_graphics", ("113103", "Clean Graphics Option")),
    (None, ("113104", "Clean Structured Content Option")),
    ("keep_descriptions", ("113105", "Clean Descriptors Option")),
    ("keep_dates", ("113106", "Retain Longitudinal Temporal Information Full Dates Option")),
    ("shift_dates", ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")),
    ("keep_patient_characteristics", ("113108", "Retain Patient Characteristics Option")),
    ("keep_device_identity", ("113109", "Retain Device Identity Option")),
    ("keep_uids", ("113110", "Retain UIDs Option")),
    ("keep_safe_private", ("113111", "Retain Safe Private Option")),
    ("keep_institution_identity", ("113112", "Retain Institution Identity Option")),
)


#: Dummy values for the D action, by VR; they are valid values that identify nobody.
DUMMY_VALUES: dict[str, Any] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED^ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UR": "",
    "UT": "ANONYMIZED",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
}


BINARY_VRS = frozenset("OB OD OF OL OV OW UN".split())  # noqa: SIM905


#: Every Value Representation (PS3.5 Table 6.2-1), as params lines may name them.
DICOM_VRS = frozenset(
    """
    AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN
    UR US UT UV
    """.split()  # noqa: SIM905
)


INTEGER_VRS = frozenset("SL SS SV UL US UV".split())  # noqa: SIM905


FLOAT_VRS = frozenset({"FL", "FD"})


DATE_TIME_VRS = frozenset({"DA", "DT", "TM"})


ANON_SUFFIX = "_anon"


MODIFY_SUFFIX = "_mod"  # the original DicomPressor's name


#: What params may not change (-a, -m): the Image Pixel description (PS3.3 C.7.6.3) and
#: the frame count describe Pixel Data, which those actions keep (or only mask).
PIXEL_DESCRIPTION = frozenset(
    """
    SamplesPerPixel PhotometricInterpretation Rows Columns BitsAllocated BitsStored HighBit
    PixelRepresentation PlanarConfiguration NumberOfFrames RedPaletteColorLookupTableDescriptor
    GreenPaletteColorLookupTableDescriptor BluePaletteColorLookupTableDescriptor
    RedPaletteColorLookupTableData GreenPaletteColorLookupTableData
    BluePaletteColorLookupTableData SegmentedRedPaletteColorLookupTableData
    SegmentedGreenPaletteColorLookupTableData SegmentedBluePaletteColorLookupTableData
    """.split()  # noqa: SIM905
)


PROFILES = ("basic", "none")


HEADER_FORMATS = ("text", "json")


#: Bulk data left out of the JSON headers (PS3.18 F.2.7 BulkDataURI targets): pixel,
#: waveform, overlay and document values, and any other binary value above the threshold.
BULK_DATA_KEYWORDS = frozenset(
    [
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "WaveformData",
        "EncapsulatedDocument",
        "SpectroscopyData",
        "LargePaletteColorLookupTableData",
    ]  # noqa: SIM905
)


BULK_DATA_THRESHOLD = 64 * 1024


#: Longest value shown in a text dump before it is cut.
DUMP_VALUE_CHARS = 160


#: PS3.10 8.2 / PS3.12: a File ID has at most 8 components of 1-8 characters A-Z 0-9 _.
FILE_ID_COMPONENT = re.compile(r"[A-Z0-9_]{1,8}")


MAX_FILE_ID_COMPONENTS = 8


DICOMDIR_COPY_SUFFIX = "_DICOMDIR"


#: UIDs an instance must have to be listed: the records reference it by them (PS3.3 F.5).
DICOMDIR_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


#: Values put in a directory record (never in the file) when an instance lacks a key
#: PS3.3 F.5 makes Type 1 there: anonymized files have empty Study Date, Time and ID.
DICOMDIR_PLACEHOLDERS = {
    "PatientID": "UNKNOWN",
    "Modality": "OT",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "UNKNOWN",
    "SeriesNumber": "0",
    "InstanceNumber": "0",
    "ContentDate": "19000101",
    "ContentTime": "000000",
    "InstanceCreationDate": "19000101",
}


#: The keys of the PATIENT, STUDY, SERIES and IMAGE records (PS3.3 F.5.1-F.5.4) that -d
#: takes from a plain file's bytes, as pydicom's record creators take them from a
#: dataset: record type -> (tag, VR, keyword, Type 1: a key the record cannot lack).
#: A Type 1 key that is missing or empty gets its DICOMDIR_PLACEHOLDERS value; the others
#: are written empty when the file lacks them.
DIRECTORY_RECORD_KEYS: dict[str, tuple[tuple[int, str, str, bool], ...]] = {
    "PATIENT": (
        (0x00100010, "PN", "PatientName", False),
        (0x00100020, "LO", "PatientID", True),
    ),
    "STUDY": (
        (0x00080020, "DA", "StudyDate", True),
        (0x00080030, "TM", "StudyTime", True),
        (0x00200010, "SH", "StudyID", True),
        (0x00081030, "LO", "StudyDescription", False),
        (0x0020000D, "UI", "StudyInstanceUID", False),
        (0x00080050, "SH", "AccessionNumber", False),
    ),
    "SERIES": (
        (0x00080060, "CS", "Modality", True),
        (0x0020000E, "UI", "SeriesInstanceUID", True),
        (0x00200011, "IS", "SeriesNumber", True),
    ),
    "IMAGE": ((0x00200013, "IS", "InstanceNumber", True),),
}


#: SOP classes whose leaf record is IMAGE (PS3.3 F.5.24, pydicom's record type for
#: them): -d builds their records from the file's bytes; any other class goes through
#: pydicom's record creators (a test checks this table against pydicom's).
DIRECTORY_IMAGE_SOP_CLASSES = frozenset(
    """
    1.2.840.10008.5.1.4.1.1.1 1.2.840.10008.5.1.4.1.1.1.1 1.2.840.10008.5.1.4.1.1.1.1.1
    1.2.840.10008.5.1.4.1.1.1.2 1.2.840.10008.5.1.4.1.1.1.2.1 1.2.840.10008.5.1.4.1.1.1.3
    1.2.840.10008.5.1.4.1.1.1.3.1 1.2.840.10008.5.1.4.1.1.2 1.2.840.10008.5.1.4.1.1.2.1
    1.2.840.10008.5.1.4.1.1.2.2 1.2.840.10008.5.1.4.1.1.3.1 1.2.840.10008.5.1.4.1.1.4
    1.2.840.10008.5.1.4.1.1.4.1 1.2.840.10008.5.1.4.1.1.4.3 1.2.840.10008.5.1.4.1.1.4.4
    1.2.840.10008.5.1.4.1.1.6.1 1.2.840.10008.5.1.4.1.1.6.2 1.2.840.10008.5.1.4.1.1.7
    1.2.840.10008.5.1.4.1.1.7.1 1.2.840.10008.5.1.4.1.1.7.2 1.2.840.10008.5.1.4.1.1.7.3
    1.2.840.10008.5.1.4.1.1.7.4 1.2.840.10008.5.1.4.1.1.12.1 1.2.840.10008.5.1.4.1.1.12.1.1
    1.2.840.10008.5.1.4.1.1.12.2 1.2.840.10008.5.1.4.1.1.12.2.1 1.2.840.10008.5.1.4.1.1.13.1.1
    1.2.840.10008.5.1.4.1.1.13.1.3 1.2.840.10008.5.1.4.1.1.20 1.2.840.10008.5.1.4.1.1.77.1.1
    1.2.840.10008.5.1.4.1.1.77.1.2 1.2.840.10008.5.1.4.1.1.77.1.4 1.2.840.10008.5.1.4.1.1.128
    1.2.840.10008.5.1.4.1.1.128.1 1.2.840.10008.5.1.4.1.1.130 1.2.840.10008.5.1.4.1.1.481.1
    """.split()  # noqa: SIM905
)


#: Modalities whose instances get another leaf record than IMAGE whatever their class.
DIRECTORY_OTHER_LEAF_MODALITIES = frozenset({"RTINTENT", "RTSEGANN", "RTRAD", "PLAN"})


#: pydicom's root: DICOMDIRs name pydicom as their implementation in the File Meta and
#: take their File-set UID under its root, as they did when pydicom wrote them whole.
PYDICOM_ROOT_UID = "1.2.826.0.1.3680043.8.498."


MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage


# ---- de-identification: the options, and what Table E.1-1 leaves out ----

#: PS3.15 Table E.1-1 (2026d), the option columns: column -> action -> attributes (as in
#: BASIC_PROFILE_TABLE). An attribute an option does not list keeps its Basic Profile
#: action (E.1.1). K: keep (a sequence is kept and its items cleaned); C: clean. The
#: Full Dates (E.3.6, K) and Modified Dates (E.3.6, C) columns mark the same 169 rows:
#: one list, "longitudinal". The Clean Descriptors column is CLEAN_DESCRIPTORS; the
#: private-attribute row of Retain Safe Private is SAFE_PRIVATE_TABLE; the curve and
#: overlay rows of Clean Graphics are rules in ``_removed_by_rule``.
OPTION_TABLES: dict[str, dict[str, str]] = {
    "retain_uids": {
        "K": """
            AcquisitionUID AffectedSOPInstanceUID AnnotationGroupUID ConcatenationUID
            ConceptualVolumeUID ConstituentConceptualVolumeUID DeviceUID DimensionOrganizationUID
            DoseReferenceUID DosimetricObjectiveUID FailedSOPInstanceUIDList FiducialUID
            FrameOfReferenceUID InstanceCreatorUID IrradiationEventUID
            LargePaletteColorLookupTableUID ManufacturerDeviceClassUID MediaStorageSOPInstanceUID
            MultiplexGroupUID ObservationSubjectUIDTrial ObservationUID PaletteColorLookupTableUID
            PatientSetupUID PresentationDisplayCollectionUID PresentationSequenceCollectionUID
            PyramidUID RTTreatmentPhaseUID ReferencedConceptualVolumeUID ReferencedDoseReferenceUID
            ReferencedDosimetricObjectiveUID ReferencedFiducialsUID ReferencedFrameOfReferenceUID
            ReferencedGeneralPurposeScheduledProcedureStepTransactionUID ReferencedImageSequence
            ReferencedObservationUIDTrial ReferencedPatientSequence
            ReferencedPerformedProcedureStepSequence ReferencedSOPInstanceUID
            ReferencedSOPInstanceUIDInFile ReferencedStudySequence
            ReferencedTreatmentPositionGroupUID RelatedFrameOfReferenceUID RequestedSOPInstanceUID
            SOPInstanceUID SeriesInstanceUID SourceConceptualVolumeUID SourceFrameOfReferenceUID
            SourceImageSequence SpecimenUID StorageMediaFileSetUID StudyInstanceUID
            SynchronizationFrameOfReferenceUID TableTopPositionAlignmentUID TargetUID
            TemplateExtensionCreatorUID TemplateExtensionOrganizationUID TrackingUID TransactionUID
            TreatmentPositionGroupUID TreatmentSessionUID
        """,
    },
    "retain_device_identity": {
        "C": """
            DestinationAE NetworkID Originator PerformedStationAETitle ReceivingAE RequestingAE
            RetrieveAETitle ScheduledStationAETitle ScheduledStudyLocationAETitle SelectorAEValue
            StationAETitle
        """,
        "K": """
            BeamHoldTransitionDateTime CalibrationDate CalibrationDateTime CalibrationTime
            CassetteID DateOfInstallation DateOfLastCalibration DateOfLastDetectorCalibration
            DateOfManufacture DateTimeOfLastCalibration DetectorID DeviceDescription DeviceLabel
            DeviceSerialNumber DeviceUID GantryID GeneratorID HardcopyCreationDeviceID LensMake
            LensModel LensSerialNumber LensSpecification ManufacturerDeviceClassUID
            ManufacturerDeviceIdentifier ModifyingDeviceID ModifyingSystem
            PerformedStationGeographicLocationCodeSequence PerformedStationName
            PerformedStationNameCodeSequence PlateID ScheduledProcedureStepLocation
            ScheduledStationGeographicLocationCodeSequence ScheduledStationName
            ScheduledStationNameCodeSequence ScheduledStudyLocation SecondaryCaptureDeviceID
            SourceManufacturer SourceSerialNumber StationName TimeOfLastCalibration
            TimeOfLastDetectorCalibration TransducerIdentificationSequence TreatmentMachineName
            UDISequence UniqueDeviceIdentifier XRayDetectorID XRayDetectorLabel XRaySourceID
        """,
    },
    "retain_institution_identity": {
        "K": """
            ClinicalTrialCoordinatingCenterName ClinicalTrialProtocolEthicsCommitteeName
            ClinicalTrialSiteID ClinicalTrialSiteName InstitutionAddress InstitutionCodeSequence
            InstitutionName InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence
            SourceOfPreviousValues
        """,
    },
    "retain_patient_characteristics": {
        "C": """
            Allergies PatientState PreMedication SpecialNeeds 00100042
        """,
        "K": """
            EthnicGroup EthnicGroupCodeSequence PatientAge PatientSex PatientSexNeutered
            PatientSize PatientWeight PregnancyStatus SelectorASValue SmokingStatus 00100043
            00100046 00100047 00102162
        """,
    },
    "longitudinal": {
        "C": """
            AcquisitionDate AcquisitionDateTime AcquisitionTime AdmittingDate AdmittingTime
            ApprovalStatusDateTime AssertionDateTime AssertionExpirationDateTime
            AttributeModificationDateTime BeamHoldTransitionDateTime CalibrationDate
            CalibrationDateTime CalibrationTime CertifiedTimestamp ContentDate ContentTime
            ContextGroupLocalVersion ContextGroupVersion ContrastBolusStartTime
            ContrastBolusStopTime ContributionDateTime CreationDate CreationTime CurveDate
            CurveTime Date DateOfDocumentOrVerbalTransactionTrial DateOfInstallation
            DateOfLastCalibration DateOfLastDetectorCalibration DateOfManufacture
            DateOfSecondaryCapture DateTime DateTimeOfLastCalibration DecayCorrectionDateTime
            DigitalSignatureDateTime DischargeDate DischargeTime EffectiveDateTime
            EndAcquisitionDateTime EthicsCommitteeApprovalEffectivenessEndDate
            EthicsCommitteeApprovalEffectivenessStartDate ExclusionStartDateTime
            ExpectedCompletionDateTime FindingsGroupRecordingDateTrial
            FindingsGroupRecordingTimeTrial FirstTreatmentDate FrameAcquisitionDateTime
            FrameOriginTimestamp FrameReferenceDateTime FunctionalSyncPulse GPSDateStamp
            HL7DocumentEffectiveTime HangingProtocolCreationDateTime ImpedanceMeasurementDateTime
            InformationIssueDateTime InstanceCoercionDateTime InstanceCreationDate
            InstanceCreationTime InstructionPerformedDateTime IntendedFractionStartTime
            IntendedPhaseEndDate IntendedPhaseStartDate InterlockDateTime
            InterpretationApprovalDate InterpretationApprovalTime InterpretationRecordedDate
            InterpretationRecordedTime InterpretationTranscriptionDate
            InterpretationTranscriptionTime InterventionDrugStartTime InterventionDrugStopTime
            IssueDateOfImagingServiceRequest IssueTimeOfImagingServiceRequest LastMenstrualDate
            ModifiedImageDate ModifiedImageTime MostRecentTreatmentDate ObservationDateTime
            ObservationDateTrial ObservationStartDateTime ObservationTimeTrial OverlayDate
            OverlayTime OverrideDateTime ParticipationDateTime PerformedProcedureStepEndDate
            PerformedProcedureStepEndDateTime PerformedProcedureStepEndTime
            PerformedProcedureStepStartDate PerformedProcedureStepStartDateTime
            PerformedProcedureStepStartTime PresentationCreationDate PresentationCreationTime
            ProcedureStepCancellationDateTime ProductExpirationDateTime ROIDateTime
            ROIObservationDateTime RTPlanDate RTPlanTime RadiopharmaceuticalStartDateTime
            RadiopharmaceuticalStartTime RadiopharmaceuticalStopDateTime
            RadiopharmaceuticalStopTime RecordedRTControlPointDateTime ReferencedDateTime
            ReviewDate ReviewTime SOPAuthorizationDateTime SafePositionExitDate
            SafePositionExitTime SafePositionReturnDate SafePositionReturnTime
            ScheduledAdmissionDate ScheduledAdmissionTime ScheduledDischargeDate
            ScheduledDischargeTime ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime
            ScheduledProcedureStepExpirationDateTime ScheduledProcedureStepModificationDateTime
            ScheduledProcedureStepStartDate ScheduledProcedureStepStartDateTime
            ScheduledProcedureStepStartTime ScheduledStudyStartDate ScheduledStudyStartTime
            ScheduledStudyStopDate ScheduledStudyStopTime SelectorDAValue SelectorDTValue
            SelectorTMValue SeriesDate SeriesTime SourceEndDateTime SourceStartDateTime
            SourceStrengthReferenceDate SourceStrengthReferenceTime StartAcquisitionDateTime
            StructureSetDate StructureSetTime StudyArrivalDate StudyArrivalTime StudyCompletionDate
            StudyCompletionTime StudyDate StudyReadDate StudyReadTime StudyTime StudyVerifiedDate
            StudyVerifiedTime SubstanceAdministrationDateTime TemplateLocalVersion TemplateVersion
            Time TimeOfDocumentCreationOrVerbalTransactionTrial TimeOfLastCalibration
            TimeOfLastDetectorCalibration TimeOfSecondaryCapture TimezoneOffsetFromUTC
            TreatmentControlPointDate TreatmentControlPointTime TreatmentDate TreatmentTime
            TreatmentToleranceViolationDateTime VerificationDateTime 0040A034 0040A035 0040B034
            0040B036
        """,
    },
    "clean_graphics": {
        "C": """
            GraphicAnnotationSequence
        """,
    },
    "clean_structured_content": {
        "C": """
            AcquisitionContextSequence ContentSequence SpecimenPreparationSequence
            WaveformAnnotationSequence
        """,
    },
}


#: Attributes that carry identity but are not rows of Table E.1-1 (2026d, 2024b, 2020b
#: checked), with the action given here: the table is not exhaustive and the
#: de-identifier stays responsible (PS3.15 E.1.1). Types are PS3.3's.
BEYOND_TABLE_E11: dict[str, str] = {
    # (0008,0051) names the accession system of the institution: Type 3 in General Study
    # (C.7.2.1), in the Request Attributes Macro (Table 10-9) and in SR's Referenced
    # Request Sequence (C.17.2); Accession Number itself is Z.
    "IssuerOfAccessionNumberSequence": "X",
    # (0010,0024) Type 3 in the Issuer of Patient ID Macro (Table 10-18), which also sits
    # in Other Patient IDs Sequence items; Issuer of Patient ID (0010,0021) is X.
    "IssuerOfPatientIDQualifiersSequence": "X",
    # (0040,0026) and (0040,0027): the order numbers' issuers, Type 3 in the Referenced
    # Request Sequence (C.17.2); the order numbers (0040,2016/2017) are Z.
    "OrderPlacerIdentifierSequence": "X",
    "OrderFillerIdentifierSequence": "X",
    # (0032,1031) Person Identification Macro of the requester (Imaging Service Request,
    # C.4.11); Requesting Physician (0032,1032) is X.
    "RequestingPhysicianIdentificationSequence": "X",
    # (0010,0033), (0010,0034): birth and death dates in another calendar, Type 3 in the
    # Patient Module (C.7.1.1), and (0010,0035) the calendar, Type 1C only with them;
    # Patient's Birth Date is Z.
    "PatientBirthDateInAlternativeCalendar": "X",
    "PatientDeathDateInAlternativeCalendar": "X",
    "PatientAlternativeCalendar": "X",
    # (0010,2294) Type 2C in the Patient Module (non-human patients): its Breed
    # Registration Number (0010,2295) identifies the animal.
    "BreedRegistrationSequence": "Z",
    # (0040,E001) a CDA document's instance identifier, Type 1 in HL7 Structured Document
    # Reference Sequence items (SOP Common, C.12.1); (0040,E010) and (0008,1190) are
    # Type 3 addresses of documents and series at the site, with their original UIDs.
    "HL7InstanceIdentifier": "D",
    "RetrieveURI": "X",
    "RetrieveURL": "X",
    # (0040,A160) the free text of a TEXT content item, Type 1 (C.17.3): Clean Structured
    # Content (E.3.4) keeps the content tree and replaces its text.
    "TextValue": "D",
}


#: Where PS3.3 makes an attribute that the profile removes or empties Type 2 (may be
#: empty) or Type 1 (must have a value): attribute -> parent sequence:Type ("*": in any
#: sequence or at the top level). There a Z or X becomes Z (Type 2), an emptied reference
#: sequence is kept with its UIDs replaced (Type 1); anywhere else a sequence that would
#: be emptied is removed, as an empty Type 1 or 3 sequence is an error ("one or more
#: Items shall be included"). Types: PS3.3 C.17.2 (Referenced Request Sequence,
#: Verifying Observer Sequence), C.7.6.22/C.7.6.23 (Specimen), C.7.6.14 (Acquisition
#: Context), C.7.1.1 (Patient), RT Physician Intent and RT Prescription (C.36.2, C.36.3).
CONTEXT_TYPES: dict[str, str] = {
    "ReferencedStudySequence": (
        "ReferencedRequestSequence:2 RTPhysicianIntentInputInstanceSequence:1 "
        "PlanningInputInformationSequence:1"
    ),
    "RequestedProcedureID": "ReferencedRequestSequence:2",
    "IssuerOfTheContainerIdentifierSequence": "*:2",
    "IssuerOfTheSpecimenIdentifierSequence": "*:2",
    "VerifyingObserverIdentificationCodeSequence": "*:2",
    "SpecimenPreparationSequence": "*:2",
    "AcquisitionContextSequence": "*:2",
    "BreedRegistrationSequence": "*:2",
}


#: --shift-dates moves every date of one patient back by 1 to this many days (10 years).
DATE_SHIFT_MAX_DAYS = 3652


#: A de-identification key file (--deid-key): this many random bytes, as hex.
DEID_KEY_BYTES = 32


#: Columns of the --uid-map CSV.
UID_MAP_COLUMNS = ("original_uid", "new_uid", "key_id")


# ---- de-identification: safe private attributes and structured content ----

#: PS3.15 Table E.3.10-1 Safe Private Attributes (2026d, 479 rows): one line per Private
#: Creator and group, "creator|group|offsets": offset ee is the element (gggg,bbee), bb
#: being the block that the creator reserved with (gggg,00bb). --keep-safe-private keeps
#: these (and their creators) and removes every other private attribute (E.3.10); a safe
#: sequence is kept and its items cleaned.
SAFE_PRIVATE_TABLE = (
    "Philips PET Private Group|7053|00 09\n"
    "ELSCINT1|00E1|21 50\n"
    "ELSCINT1|01E1|26\n"
    "ELSCINT1|01F1|01 07 26 27\n"
    "GEMS_ACQU_01|0019|23 24 27 9E\n"
    "GEMS_PARM_01|0043|27 39 6F\n"
    "GEMS_HELIOS_01|0045|01 02\n"
    "GEIIS PACS|0903|10 11 12\n"
    "Philips Imaging DD 001|2001|01 02 03 04 05 06 07 08 09 0A 0B 0C 0E 0F 10 11 12 13 14 15 "
    "16 17 18 19 1A 1B 1C 1D 1E 1F 21 22 23 24 25 26 27 28 29 2A 2B 2C 2D 2E 2F 30 31 32 33 34 "
    "35 36 37 38 39 3A 3B 3C 3D 3E 3F 40 41 42 43 44 45 46 47 48 49 4A 4B 4C 4D 4E 4F 50 51 53 "
    "54 55 56 57 58 59 5A 5D 5E 5F 60 61 62 63 64 65 66 67 68 69 6A 6B 6D 6E 6F 71 72 73 74 75 "
    "76 77 79 7A 7B 7C 7D 7E 7F 80 81 82 83 84 85 86 87 88 89 8A 8B 8C 90 91 92 93 94 9A 9B 9D "
    "9F A1 A2 A3 A4 A5 C0 C1 C2 C3 C5 C6 C7 CA CB D0 D1 D2 D3 D4 D5 D6 D7 D8 D9 DA DB DC DD DE "
    "DF E9 F1 F2 F3 F4 F5 F6 F7 F9 FB FC FD FF\n"
    "Philips Imaging DD 002|2001|01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F 10 11 12 13 14 "
    "15 16 17 18 19 1A 1B 1C 1D 1E 1F 20 21 22 23 24 25 26 27 28 29 2A 2B 2C 2D 2E 2F 30 31 32 "
    "33 34 35 36 37 38 39 3A 3B 3C 3D 3E 3F 40 50 52 53 57 58 5A 5C 5D 5E 5F 63 64 65 66 67 68 "
    "6B 71 72 73 74 75\n"
    "Philips Imaging DD 097|2001|01 02 03 04 05 06 07 08 0A 0B 0D 0E 0F 12 17 18 19 1A 1B 1C "
    "1D 1E 1F 21 22 23 24 25 26 27 28 2A 2B 2C 2D 2E 2F 30 31 32 36 37 38 39 3A 3B 3C 3D 3E 40 "
    "41 42 44 45 46 47 49 4A 4B 4C A1 A2 A3 A4 A5 A6 A8 A9 AA AB\n"
    "Philips Imaging DD 129|2001|00 01 02 03 04 05 06 07 08 09\n"
    "Philips ST80i|0025|01\n"
    "SIEMENS MR HEADER|0019|0C 0D 0E 27\n"
    "GEMS_SERS_01|0025|07\n"
    "HOLOGIC, Inc.|7E01|01 02 10 11 12\n"
    "NQHeader|0099|01 02 04 05 10 20 21\n"
    "NQLeft|0199|01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F 10 11 12 13 14 15 16\n"
    "NQRight|0299|01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F 10 11 12 13 14 15 16\n"
    "Philips MR Imaging DD 001|2005|0D 0E\n"
    "SIEMENS Ultrasound SC2000|0119|00 01 02 03 04 05 06 07 08 09 10 11 12 13 21\n"
    "SIEMENS Ultrasound SC2000|0129|00 02 03 04 05 06 07 08 09 10 11 12 20 21 22 29 30\n"
    "SIEMENS Ultrasound SC2000|0139|01\n"
    "SIEMENS Ultrasound SC2000|0149|01 02 03\n"
    "SIEMENS Ultrasound SC2000|7FD1|01 09 10 11\n"
    "SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING|7FD1|01 09 10 11\n"
)


#: PS3.15 Table E.3.4-1 Clean Structured Content (2026d): content items, by their concept
#: name "scheme:code:value type", that the profile removes (X) or whose value it replaces
#: (D, X/D: a dummy text, person name or date, a new UID); the other content items keep
#: their codes, numbers, units, coordinates and references, and the element rules apply
#: to their values (TextValue D, PersonName D, dates, UIDs U). Transcribed from an
#: independent extraction of the 2026d table; 198 of its 213 codes are in pydicom's
#: PS3.16 concept dictionary with the meaning the table names (the rest are NCDR, LOINC
#: and NCI codes or newer).
STRUCTURED_CONTENT_TABLE: dict[str, str] = {
    "D": """
        DCM:113795:IMAGE SCT:440252007:TEXT DCM:113723:DATETIME DCM:113724:TEXT NCDR:76:PNAME
        DCM:112347:TEXT DCM:112363:TEXT DCM:112357:UIDREF DCM:121193:TEXT DCM:113810:DATETIME
        DCM:128429:UIDREF LN:11951-1:TEXT SCT:363698007:TEXT DCM:127857:DATE DCM:127858:TIME
        DCM:130527:TEXT DCM:113832:TEXT DCM:112229:IMAGE DCM:121138:IMAGE DCM:122712:DATETIME
        DCM:111033:TEXT LN:18785-6:TEXT DCM:121154:TEXT DCM:113850:PNAME DCM:113769:UIDREF
        DCM:112371:COMPOSITE DCM:112352:TEXT DCM:112351:TEXT DCM:111040:COMPOSITE DCM:111705:TEXT
        DCM:113815:TEXT DCM:121126:UIDREF DCM:121114:PNAME DCM:113870:PNAME DCM:121008:PNAME
        NCDR:52:DATETIME DCM:121002:COMPOSITE DCM:128436:COMPOSITE DCM:128403:TEXT
        DCM:128414:COMPOSITE DCM:128414:IMAGE DCM:113503:UIDREF DCM:121214:IMAGE
        DCM:111469:DATETIME DCM:111058:TEXT DCM:112002:UIDREF DCM:113985:UIDREF DCM:121233:IMAGE
        DCM:121112:IMAGE DCM:121232:UIDREF DCM:128444:COMPOSITE DCM:128416:COMPOSITE
        SCT:398201009:DATETIME DCM:113809:DATETIME SCT:397898000:DATETIME DCM:110180:UIDREF
        DCM:121029:PNAME DCM:112040:UIDREF DCM:112356:UIDREF DCM:121143:WAVEFORM
    """,
    "X/D": """
        DCM:111018:DATE DCM:111019:TIME DCM:111526:DATETIME DCM:121012:UIDREF DCM:113880:TEXT
        DCM:122083:TEXT SCT:271921002:TEXT DCM:121071:TEXT DCM:112227:UIDREF DCM:121124:TEXT
        DCM:122146:DATETIME DCM:121065:TEXT DCM:123003:DATETIME DCM:111054:DATE DCM:121191:IMAGE
        DCM:111060:DATE DCM:111061:TIME DCM:121030:TEXT
    """,
    "X": """
        DCM:121022:TEXT DCM:126201:DATE DCM:130884:DATETIME DCM:125203:TEXT DCM:126202:TIME
        NCIt:C67447:TEXT NCDR:15:DATETIME DCM:112050:TEXT SCT:398164008:DATETIME
        SCT:398325003:DATETIME DCM:121080:IMAGE DCM:121080:WAVEFORM DCM:113720:TEXT
        DCM:121120:COMPOSITE SCT:371524004:COMPOSITE SCT:371524004:TEXT DCM:121106:TEXT
        SCT:116224001:TEXT DCM:121077:TEXT DCM:122073:COMPOSITE LN:11955-2:DATE DCM:121431:DATETIME
        DCM:121432:DATETIME DCM:111527:DATETIME DCM:122165:DATETIME DCM:122105:DATETIME
        DCM:111536:DATETIME DCM:111702:DATETIME DCM:121125:DATETIME DCM:111535:DATETIME
        DCM:121433:DATETIME DCM:112373:COMPOSITE DCM:112372:COMPOSITE DCM:111021:TEXT
        DCM:121145:TEXT DCM:120999:TEXT DCM:113877:TEXT DCM:121013:TEXT DCM:121017:TEXT
        DCM:121016:TEXT DCM:121197:TEXT DCM:121196:TEXT DCM:121198:UIDREF DCM:122163:DATETIME
        DCM:121342:IMAGE DCM:122082:DATETIME DCM:122081:DATETIME LN:11778-8:DATE DCM:121122:TEXT
        NCIt:C54627:NUM DCM:121088:PNAME DCM:121021:TEXT LN:11329-0:TEXT DCM:125010:TEXT
        DCM:128775:TEXT DCM:125201:IMAGE DCM:121200:IMAGE DCM:112366:COMPOSITE DCM:113605:TEXT
        DCM:110190:TEXT DCM:111706:TEXT DCM:111724:TEXT DCM:113012:TEXT LN:18118-0:TEXT
        DCM:111516:TEXT DCM:121036:PNAME DCM:113873:TEXT DCM:112361:COMPOSITE DCM:112354:IMAGE
        DCM:121110:TEXT DCM:128425:COMPOSITE DCM:128425:IMAGE DCM:128425:UIDREF DCM:128426:TEXT
        DCM:109054:TEXT DCM:122128:TEXT DCM:121152:PNAME DCM:113871:TEXT DCM:113872:TEXT
        DCM:128774:TEXT DCM:121009:TEXT DCM:121173:TEXT DCM:121020:TEXT DCM:113516:TEXT
        DCM:122075:COMPOSITE NCDR:53:TEXT DCM:122177:TEXT DCM:121019:UIDREF DCM:121018:UIDREF
        DCM:122701:DATETIME DCM:111703:TEXT DCM:126071:TEXT DCM:128230:TEXT DCM:113514:TEXT
        DCM:113511:TEXT DCM:113512:TEXT DCM:123004:DATETIME DCM:130507:TEXT DCM:113513:TEXT
        DCM:126100:COMPOSITE DCM:113907:TEXT DCM:113552:TEXT DCM:121075:TEXT DCM:112364:COMPOSITE
        DCM:121121:TEXT DCM:131561:DATE DCM:131563:TEXT DCM:131562:TIME DCM:121434:TEXT
        DCM:121435:PNAME DCM:121435:TEXT SCT:160476009:TEXT DCM:121112:WAVEFORM
        DCM:128447:COMPOSITE DCM:112353:COMPOSITE DCM:111700:TEXT DCM:121041:TEXT DCM:121039:UIDREF
        DCM:110119:TEXT DCM:122173:DATETIME DCM:109056:TEXT DCM:121033:NUM DCM:121031:DATE
        DCM:121032:CODE DCM:126070:TEXT DCM:121028:UIDREF DCM:121111:TEXT DCM:112359:COMPOSITE
        DCM:130885:UIDREF LN:74711-3:TEXT DCM:121000:CONTAINER DCM:128470:COMPOSITE
        DCM:128470:IMAGE DCM:128470:UIDREF DCM:113701:COMPOSITE
    """,
}


#: Table E.3.4-1's option columns: column (as OPTION_TABLES names them, plus
#: clean_descriptors) -> action -> content items.
STRUCTURED_CONTENT_OPTIONS: dict[str, dict[str, str]] = {
    "retain_uids": {
        "K": """
            DCM:113795:IMAGE DCM:121080:IMAGE DCM:121080:WAVEFORM DCM:121120:COMPOSITE
            SCT:371524004:COMPOSITE DCM:122073:COMPOSITE DCM:112357:UIDREF DCM:112373:COMPOSITE
            DCM:112372:COMPOSITE DCM:121012:UIDREF DCM:121198:UIDREF DCM:121342:IMAGE
            DCM:128429:UIDREF DCM:112227:UIDREF DCM:112229:IMAGE DCM:125201:IMAGE DCM:121200:IMAGE
            DCM:121138:IMAGE DCM:112366:COMPOSITE DCM:113769:UIDREF DCM:112371:COMPOSITE
            DCM:111040:COMPOSITE DCM:112361:COMPOSITE DCM:112354:IMAGE DCM:128425:COMPOSITE
            DCM:128425:IMAGE DCM:128425:UIDREF DCM:121126:UIDREF DCM:122075:COMPOSITE
            DCM:121019:UIDREF DCM:121018:UIDREF DCM:121002:COMPOSITE DCM:128436:COMPOSITE
            DCM:128414:COMPOSITE DCM:128414:IMAGE DCM:113503:UIDREF DCM:126100:COMPOSITE
            DCM:121191:IMAGE DCM:121214:IMAGE DCM:112364:COMPOSITE DCM:112002:UIDREF
            DCM:113985:UIDREF DCM:121233:IMAGE DCM:121112:IMAGE DCM:121112:WAVEFORM
            DCM:121232:UIDREF DCM:128447:COMPOSITE DCM:112353:COMPOSITE DCM:128444:COMPOSITE
            DCM:121039:UIDREF DCM:128416:COMPOSITE DCM:110180:UIDREF DCM:121028:UIDREF
            DCM:112359:COMPOSITE DCM:130885:UIDREF DCM:112040:UIDREF DCM:112356:UIDREF
            DCM:121143:WAVEFORM DCM:128470:COMPOSITE DCM:128470:IMAGE DCM:128470:UIDREF
            DCM:113701:COMPOSITE
        """,
    },
    "longitudinal": {
        "C": """
            DCM:126201:DATE DCM:130884:DATETIME DCM:126202:TIME NCDR:15:DATETIME
            SCT:398164008:DATETIME SCT:398325003:DATETIME DCM:113723:DATETIME DCM:111018:DATE
            DCM:111019:TIME LN:11955-2:DATE DCM:121431:DATETIME DCM:121432:DATETIME
            DCM:111527:DATETIME DCM:122165:DATETIME DCM:122105:DATETIME DCM:111536:DATETIME
            DCM:111702:DATETIME DCM:121125:DATETIME DCM:111535:DATETIME DCM:121433:DATETIME
            DCM:111526:DATETIME DCM:122163:DATETIME DCM:122082:DATETIME DCM:122081:DATETIME
            LN:11778-8:DATE DCM:113810:DATETIME DCM:127857:DATE DCM:127858:TIME DCM:122712:DATETIME
            DCM:122146:DATETIME NCDR:52:DATETIME DCM:122701:DATETIME DCM:123003:DATETIME
            DCM:123004:DATETIME DCM:111054:DATE DCM:111469:DATETIME DCM:131561:DATE DCM:131562:TIME
            SCT:398201009:DATETIME DCM:113809:DATETIME DCM:122173:DATETIME SCT:397898000:DATETIME
            DCM:111060:DATE DCM:111061:TIME
        """,
    },
    "clean_descriptors": {
        "C": """
            DCM:125203:TEXT NCIt:C67447:TEXT SCT:440252007:TEXT DCM:112050:TEXT DCM:113720:TEXT
            DCM:113724:TEXT SCT:371524004:TEXT DCM:121106:TEXT SCT:116224001:TEXT DCM:121077:TEXT
            DCM:111021:TEXT DCM:121145:TEXT DCM:122083:TEXT SCT:271921002:TEXT DCM:121122:TEXT
            DCM:121071:TEXT SCT:363698007:TEXT LN:11329-0:TEXT DCM:111033:TEXT LN:18785-6:TEXT
            DCM:113012:TEXT LN:18118-0:TEXT DCM:111516:TEXT DCM:113815:TEXT DCM:121110:TEXT
            DCM:128426:TEXT DCM:109054:TEXT DCM:121173:TEXT DCM:121065:TEXT DCM:122177:TEXT
            DCM:111703:TEXT DCM:126071:TEXT DCM:128230:TEXT DCM:128403:TEXT DCM:130507:TEXT
            DCM:113907:TEXT DCM:113552:TEXT DCM:121075:TEXT DCM:111058:TEXT DCM:131563:TEXT
            SCT:160476009:TEXT DCM:109056:TEXT DCM:126070:TEXT DCM:121111:TEXT
        """,
    },
    "retain_device_identity": {
        "K": """
            DCM:120999:TEXT DCM:113877:TEXT DCM:121013:TEXT DCM:121016:TEXT DCM:121012:UIDREF
            DCM:113880:TEXT DCM:121193:TEXT DCM:121196:TEXT DCM:121198:UIDREF DCM:121122:TEXT
            DCM:113832:TEXT DCM:110119:TEXT LN:74711-3:TEXT DCM:121000:CONTAINER
        """,
    },
    "retain_patient_characteristics": {
        "K": """
            DCM:121033:NUM DCM:121032:CODE
        """,
    },
}


# ---- export tables ----


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    """An image format of ``-I``: its file suffix, its name in messages and the bits per
    sample it holds (``--png-bits``)."""

    suffix: str
    name: str
    bits: tuple[int, ...]


#: Image formats of ``-I`` and ``-i``: PNG, JPEG (Pillow, quality JPEG_QUALITY), BMP,
#: TIFF (Adobe Deflate, TIFF 6.0 Technical Note 2) and JPEG 2000 in a JP2 file
#: (ISO/IEC 15444-1 Annex I; reversible 5-3 wavelet). All but JPEG keep every value.
IMAGE_FORMATS = {
    "png": ImageFormat(".png", "PNG", (8, 16)),
    "jpg": ImageFormat(".jpg", "JPEG", (8,)),
    "bmp": ImageFormat(".bmp", "BMP", (8,)),
    "tiff": ImageFormat(".tiff", "TIFF", (8, 16)),
    "jp2": ImageFormat(".jp2", "JPEG 2000", (8, 16)),
}


#: Other names of the image formats (the original DicomPressor's ``-I`` took them too).
IMAGE_FORMAT_ALIASES = {"jpeg": "jpg", "tif": "tiff", "jpeg2000": "jp2"}


#: What ``-i`` draws at the top left of each image and ``-e`` of each video frame (the
#: original's choice), joined by " | ".
IMAGE_ANNOTATION = ("PatientName", "PatientID", "StudyDate")
VIDEO_ANNOTATION = ("PatientName", "PatientID")


#: Annotation text size: the shorter side of the image over ANNOTATION_SCALE, at least
#: ANNOTATION_MIN_PX pixels (Pillow's bundled font, no font file needed).
ANNOTATION_SCALE = 32
ANNOTATION_MIN_PX = 10


#: Frame rate of ``-E`` when neither the file nor ``--fps`` gives one.
DEFAULT_FPS = 10.0


#: JPEG quality of ``-I jpg`` (Pillow's scale, 1-95).
JPEG_QUALITY = 92


#: VOI LUT Function values (0028,1056), PS3.3 C.11.2.1.3.
VOI_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})


# ---- conversion tables ----

#: Output suffixes of -p (Part 10), -n (bare dataset), -l and -b, as the original's.
PART10_SUFFIX, BARE_SUFFIX, LE_SUFFIX, BE_SUFFIX = "_dcm3", "_nema2", "_le", "_be"


#: -W's output in each folder (the original's name).
MULTIFRAME_NAME = "multiframe.dcm"


#: Bytes of each number whose order a change of byte order reverses, by VR (PS3.5 7.3).
#: OB, UN and text are byte streams and keep their order; AT is two 16-bit numbers.
SWAP_UNIT = {
    **dict.fromkeys(("US", "SS", "OW", "AT"), 2),
    **dict.fromkeys(("UL", "SL", "FL", "OF", "OL"), 4),
    **dict.fromkeys(("FD", "OD", "SV", "UV", "OV"), 8),
}


#: SOP class a dataset without one (ACR-NEMA 2.0) gets from its Modality (PS3.4 B.5).
SOP_CLASS_OF_MODALITY = {
    "CT": CT_IMAGE,
    "MR": MR_IMAGE,
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "US": US_IMAGE,
}


#: The video transfer syntaxes (PS3.5 8.2.5-8.2.11, A.4.5-A.4.10): the Pixel Data is one
#: stream in a container (MP4 or MPEG-TS), not frames; ffmpeg decodes it.
MPEG4_HP41 = "1.2.840.10008.1.2.4.102"


MPEG4_HP42_2D = "1.2.840.10008.1.2.4.104"


MPEG4_HP42_STEREO = "1.2.840.10008.1.2.4.106"


VIDEO_SYNTAXES = frozenset(
    f"1.2.840.10008.1.2.4.{n}"
    for n in (
        "100 100.1 101 101.1 102 102.1 103 103.1 104 104.1 105 105.1 106 106.1 107 108".split()  # noqa: SIM905
    )
)


#: H.264 profile_idc of the High and Stereo High profiles (ITU-T H.264 A.2.4, H.10.1.2)
#: and the largest level_idc each MPEG-4 syntax takes (4.1 and 4.2, times ten).
H264_HIGH, H264_STEREO_HIGH = 100, 128


H264_LEVEL_41, H264_LEVEL_42 = 41, 42


#: An MPEG-4 stream is one fragment (PS3.5 8.2.7), whose length is a 32-bit even number.
MAX_FRAGMENT_BYTES = 0xFFFFFFFE


#: Anatomic Region of a video whose anatomy nobody stated: SNOMED CT "Body structure",
#: the root of its anatomy (PS3.16 CID 4 is extensible).
BODY_STRUCTURE = ("123037004", "SCT", "Body structure")


#: (0028,2114) Lossy Image Compression Method of H.264 (PS3.3 C.7.6.1.1.5.1).
H264_METHOD = "ISO_14496_10"


#: Video Endoscopic and Video Photographic Image Storage (PS3.3 A.32.5, A.32.7) by the
#: Modality of -v --modality.
VIDEO_SOP_CLASS = {
    "XC": "1.2.840.10008.5.1.4.1.1.77.1.4.1",
    "ES": "1.2.840.10008.5.1.4.1.1.77.1.1.1",
}


#: Elements a --params file may not set on a new instance: its identity, the Image Pixel
#: and Multi-frame description and the frame timing come from the image or video.
MADE_FROM_PIXELS = frozenset(
    """
    SOPClassUID SOPInstanceUID SamplesPerPixel PhotometricInterpretation PlanarConfiguration
    NumberOfFrames FrameIncrementPointer Rows Columns PixelAspectRatio BitsAllocated
    BitsStored HighBit PixelRepresentation RescaleIntercept RescaleSlope RescaleType
    FrameTime CineRate PageNumberVector LossyImageCompression LossyImageCompressionRatio
    LossyImageCompressionMethod
    """.split()  # noqa: SIM905
)


# ---- the REST API's limits (--serve) ----

#: Defaults of the ``--serve`` flags: the limits of the spec's "Rate Limits" table.
DEFAULT_HOST = "127.0.0.1"


DEFAULT_PORT = 8000


DEFAULT_RATE_LIMIT_PER_MIN = 30


DEFAULT_SESSION_RATE_LIMIT_PER_MIN = 5


DEFAULT_MAX_SESSIONS = 50


DEFAULT_MAX_UPLOAD_MB = 500


DEFAULT_MAX_FILES = 2000


DEFAULT_PROCESS_TIMEOUT_S = 300.0


DEFAULT_SESSION_TTL_S = 3600.0


#: The public VolView app; view links have the spec's form <VolView base>/?urls=<view URL>.
DEFAULT_VOLVIEW_URL = "https://volview.kitware.app"


DEFAULT_CORS_ORIGIN = "*"


#: A client must send (or take) some bytes this often, or its connection is dropped.
DEFAULT_REQUEST_TIMEOUT_S = 30.0


DEFAULT_SWEEP_INTERVAL_S = 60.0


# ---- options: each declared once ----

#: Where an option belongs (OptionSpec.scope). ACTION: a field of Options that the listed
#: actions take, and a key of the API's ``options`` object unless api=False. COMMON: a
#: field of Options that every action gets from whoever calls it (the CLI, batch, the
#: API). RUN: how the command line runs its jobs. COMMAND: a mode of the command line in
#: place of an action. SERVER: a setting of ``--serve`` (a ServerConfig field).
ACTION, COMMON, RUN, COMMAND, SERVER = "action", "common", "run", "command", "server"


#: What an option's value is (OptionSpec.kind): flag (true or false), text, choice (one of
#: ``choices``), number, integer, window (``CENTRE,WIDTH``), path, keys (repeatable text)
#: and shard (``I/N``).
OPTION_KINDS = ("flag", "text", "choice", "number", "integer", "window", "path", "keys", "shard")


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option: everything the CLI, the API, OpenAPI, the web page and README need.

    The command-line flag is ``--name`` with dashes (``short`` adds or, with long=False,
    is the only spelling). Bounds: ``minimum`` (value >= it), ``above`` (value > it),
    ``maximum``; ``choices`` for a choice or integer. ``actions`` are the actions that
    take an ACTION option. ``field``/``factor``: the config field a SERVER option sets,
    and what its value is multiplied by (MB to bytes). ``cli_default`` is the command
    line's default where it differs from the library's (``--jobs``: the CPU count).
    ``exclusive`` names an argparse group of flags that exclude each other;
    ``conflicts`` names options that may not be given with this one. ``noun`` names a
    choice's value in messages ("unknown header format 'xml'"). A choice may take other
    spellings: ``aliases`` maps each to its choice ("jpeg" to "jpg"), and with
    ``ignore_case`` the case of a given value does not matter; ``Options`` and
    ``parse_option`` hold the choice itself.
    """

    name: str
    kind: str
    help: str
    scope: str = ACTION
    default: Any = None
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    actions: tuple[str, ...] = ()
    api: bool = True
    cli: bool = True
    group: str = "options"
    metavar: str | None = None
    short: str | None = None
    long: bool = True
    exclusive: str | None = None
    conflicts: tuple[str, ...] = ()
    field: str | None = None
    factor: int = 1
    cli_default: Any = None
    noun: str | None = None
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    ignore_case: bool = False

    @property
    def flag(self) -> str:
        """The command-line spelling: ``--long-name`` (or the short flag alone)."""
        if not self.long:
            assert self.short is not None
            return self.short
        return "--" + self.name.replace("_", "-")

    def canonical(self, value: Any) -> Any:
        """Return the choice a given value names (through ``aliases``, in any case with
        ``ignore_case``); any other value comes back as given, for the check to refuse."""
        if not isinstance(value, str) or not (self.aliases or self.ignore_case):
            return value
        key = value.lower() if self.ignore_case else value
        key = self.aliases.get(key, key)
        for choice in self.choices:
            if choice == key or (self.ignore_case and str(choice).lower() == key.lower()):
                return choice
        return value

    @property
    def other_spellings(self) -> str:
        """Say which other spellings a choice takes (`` (also jpeg, tif; upper or lower
        case)``), or nothing."""
        notes = [f"also {', '.join(self.aliases)}"] if self.aliases else []
        if self.ignore_case:
            notes.append("upper or lower case")
        return f" ({'; '.join(notes)})" if notes else ""


#: Help groups of the command line, in the order --help shows them.
OPTION_GROUPS = {
    "where": "input (one of)",
    "options": "options of every action",
    "merge": "merge (-j)",
    "compression": "compression (-x/-X, -z/-Z)",
    "anonymize": "anonymize (-a/-A PARAMS) and headers (-t)",
    "exports": "exports (-I/-i FORMAT, -E/-e)",
    "conversions": "conversions (-w/-W images, -v video)",
    "batch": "batch and watch",
    "server": "server (--serve)",
    "output": "output",
}


OPTIONS: dict[str, OptionSpec] = {
    option.name: option
    for option in (
        # input
        OptionSpec("f", "path", "folder (with subfolders) or file", scope=RUN, short="-f",
                   long=False, metavar="PATH", group="where", exclusive="where"),
        OptionSpec("F", "path", "folder (without subfolders) or file", scope=RUN, short="-F",
                   long=False, metavar="PATH", group="where", exclusive="where"),
        # modes instead of an action
        OptionSpec("version", "flag", "print the version", scope=COMMAND, short="-c",
                   exclusive="action", default=False),
        OptionSpec("serve", "flag", "serve the actions over the REST API (see below)",
                   scope=COMMAND, exclusive="action", default=False),
        OptionSpec("make_sample", "path", "write a small synthetic CT series into DIR (for a "
                   "first try)", scope=COMMAND, exclusive="action", metavar="DIR"),
        # every action
        OptionSpec("output_dir", "path", "write (or copy) results to DIR, created if missing",
                   scope=COMMON, metavar="DIR"),
        OptionSpec("jobs", "integer", "worker processes (default: the CPU count)",
                   scope=COMMON, default=1, minimum=1, metavar="N",
                   cli_default=os.cpu_count() or 1),
        # merge
        OptionSpec("split_at_gaps", "flag", "write one evenly spaced file per run of slices "
                   "between gaps (instead of one file with a gap)", default=False,
                   actions=("merge",), group="merge"),
        # compression
        OptionSpec("codec", "choice", "lossless codec (default j2k: JPEG 2000)", default="j2k",
                   choices=tuple(sorted(CODECS)), actions=("compress_lossless",),
                   group="compression"),
        OptionSpec("ratio", "number", f"target compression ratio (default {DEFAULT_RATIO:g})",
                   minimum=1, actions=("compress_lossy",), conflicts=("psnr",), metavar="R",
                   group="compression"),
        OptionSpec("psnr", "number", "target PSNR in dB (instead of --ratio)", above=0,
                   actions=("compress_lossy",), conflicts=("ratio",), metavar="DB",
                   group="compression"),
        OptionSpec("verify", "flag", "measure the RMSE of every frame, decoding each again "
                   f"(default: of {RMSE_SAMPLE_FRAMES} frames spread over the job)",
                   default=False, actions=("compress_lossy",), group="compression"),
        # anonymize and headers
        OptionSpec("profile", "choice", "basic: the PS3.15 Basic Application Level "
                   "Confidentiality Profile first (default); none: only the PARAMS "
                   "replacements", default="basic", choices=PROFILES, actions=("anonymize",),
                   group="anonymize"),
        OptionSpec("keep_uids", "flag", "Retain UIDs option", default=False,
                   actions=("anonymize",), conflicts=("uid_map",), group="anonymize"),
        OptionSpec("keep_dates", "flag", "Retain Longitudinal Temporal Information",
                   default=False, actions=("anonymize",), conflicts=("shift_dates",),
                   group="anonymize"),
        OptionSpec("keep_descriptions", "flag", "keep descriptions (Clean Descriptors)",
                   default=False, actions=("anonymize",), group="anonymize"),
        OptionSpec("shift_dates", "flag", "Retain Longitudinal Temporal Information with "
                   "Modified Dates: move every date of a patient back by the same whole "
                   "number of days (from the key and the patient's ID)", default=False,
                   actions=("anonymize",), conflicts=("keep_dates",), group="anonymize"),
        OptionSpec("keep_patient_characteristics", "flag", "Retain Patient Characteristics "
                   "option: age, sex, size, weight...", default=False, actions=("anonymize",),
                   group="anonymize"),
        OptionSpec("keep_device_identity", "flag", "Retain Device Identity option: serial "
                   "numbers, station names, device UIDs...", default=False,
                   actions=("anonymize",), group="anonymize"),
        OptionSpec("keep_institution_identity", "flag", "Retain Institution Identity option: "
                   "institution name, address, department", default=False,
                   actions=("anonymize",), group="anonymize"),
        OptionSpec("keep_safe_private", "flag", "Retain Safe Private option: the private "
                   "attributes of PS3.15 Table E.3.10-1 (by creator) stay, the rest go",
                   default=False, actions=("anonymize",), group="anonymize"),
        OptionSpec("clean_graphics", "flag", "Clean Graphics option: graphic annotations "
                   "lose their text objects, ROI overlays stay", default=False,
                   actions=("anonymize",), group="anonymize"),
        OptionSpec("deid_key", "path", "the de-identification key (created, mode 0600, if "
                   "missing): runs with the same key give the same new UIDs and date shifts",
                   actions=("anonymize",), api=False, metavar="FILE", group="anonymize"),
        OptionSpec("uid_map", "path", "add the original -> new UID table (CSV) to FILE, for "
                   "the data custodian; never put it with the outputs", actions=("anonymize",),
                   api=False, conflicts=("keep_uids",), metavar="FILE", group="anonymize"),
        OptionSpec("format", "choice", "headers: text or json", default="text",
                   choices=HEADER_FORMATS, actions=("headers",), group="anonymize",
                   noun="header format"),
        # exports
        OptionSpec("image_format", "choice", "image format: the value of -I and -i",
                   default="png", choices=tuple(IMAGE_FORMATS), aliases=IMAGE_FORMAT_ALIASES,
                   ignore_case=True, actions=("export_png",), cli=False, group="exports",
                   noun="image format"),
        OptionSpec("annotate", "flag", f"draw {' | '.join(IMAGE_ANNOTATION)} (videos: "
                   f"{' | '.join(VIDEO_ANNOTATION)}) at the top left of every frame (the "
                   "command line's -i and -e)", default=False,
                   actions=("export_png", "export_video"), cli=False, group="exports"),
        OptionSpec("window", "window", "window centre and width instead of the file's",
                   actions=("export_png", "export_video"), metavar="C,W", group="exports"),
        OptionSpec("png_bits", "integer", "16: modality values unwindowed in 16-bit PNG, TIFF "
                   "or JPEG 2000 (default 8)", default=8, choices=(8, 16),
                   actions=("export_png",), group="exports"),
        OptionSpec("fps", "number", f"video frame rate when the file states none (default "
                   f"{DEFAULT_FPS:g})", above=0, actions=("export_video",), metavar="N",
                   group="exports"),
        # conversions
        OptionSpec("modality", "choice", "-v: XC (Video Photographic, default) or ES (Video "
                   "Endoscopic)", default="XC", choices=tuple(VIDEO_SOP_CLASS),
                   actions=("video_to_dicom",), group="conversions", noun="video modality"),
        OptionSpec("params_file", "path", "-w, -W, -v: patient and study values, lines "
                   "(GGGG,EEEE)=VALUE, GGGG EEEE VR VALUE or Keyword=VALUE", scope=RUN,
                   short="--params", long=False, metavar="FILE", group="conversions"),
        # batch and watch
        OptionSpec("skip_if_done", "flag", f"skip folders holding {DONE_MARKER}; write it "
                   "after a folder succeeds", scope=RUN, default=False, group="batch"),
        OptionSpec("watch", "number", "every N seconds process new or changed folders "
                   "(implies --skip-if-done)", scope=RUN, above=0, metavar="N",
                   conflicts=("dask",), group="batch"),
        OptionSpec("settle", "number", "watch: wait until no file changed for S seconds "
                   f"(default {DEFAULT_SETTLE_S:g})", scope=RUN, default=DEFAULT_SETTLE_S,
                   minimum=0, metavar="S", group="batch"),
        OptionSpec("lock_timeout", "number", "take over a folder lock older than S seconds "
                   f"(default {DEFAULT_LOCK_TIMEOUT_S:g})", scope=RUN,
                   default=DEFAULT_LOCK_TIMEOUT_S, above=0, metavar="S", group="batch"),
        OptionSpec("scan_state_file", "path", "cache of folder modification times: a watch "
                   "pass (and -f with --skip-if-done) reads only the folders that changed; "
                   "created if missing, '' turns it off", scope=RUN, metavar="FILE",
                   group="batch"),
        OptionSpec("shard", "shard", "process only shard I of N of the job folders (Slurm "
                   "array, Kubernetes Indexed Job): N runs with I = 0..N-1 cover every "
                   "folder once", scope=RUN, metavar="I/N", group="batch"),
        OptionSpec("dask", "text", "run the job folders on a Dask cluster (scheduler "
                   "address, e.g. tcp://host:8786)", scope=RUN, metavar="ADDRESS",
                   conflicts=("watch",), group="batch"),
        # server
        OptionSpec("host", "text", f"bind address ({DEFAULT_HOST})", scope=SERVER,
                   default=DEFAULT_HOST, group="server"),
        OptionSpec("port", "integer", f"port ({DEFAULT_PORT}; 0: any free port)",
                   scope=SERVER, default=DEFAULT_PORT, minimum=0, maximum=65535,
                   group="server"),
        OptionSpec("data_dir", "path", "where sessions live", scope=SERVER, metavar="DIR",
                   group="server"),
        OptionSpec("api_key", "keys", "an API key (repeatable)", scope=SERVER, metavar="KEY",
                   field="api_keys", group="server"),
        OptionSpec("api_keys_file", "path", "keys, one a line", scope=SERVER, metavar="FILE",
                   group="server"),
        OptionSpec("volview_url", "text", f"VolView base for view links "
                   f"({DEFAULT_VOLVIEW_URL})", scope=SERVER, default=DEFAULT_VOLVIEW_URL,
                   metavar="URL", group="server"),
        OptionSpec("public_url", "text", "this server's external base URL (behind a proxy)",
                   scope=SERVER, metavar="URL", group="server"),
        OptionSpec("cors_origin", "text", "Access-Control-Allow-Origin of /api/view "
                   f"({DEFAULT_CORS_ORIGIN})", scope=SERVER, default=DEFAULT_CORS_ORIGIN,
                   metavar="ORIGIN", group="server"),
        OptionSpec("rate_limit", "integer", "API requests per minute per IP "
                   f"({DEFAULT_RATE_LIMIT_PER_MIN}; 0: unlimited)", scope=SERVER,
                   default=DEFAULT_RATE_LIMIT_PER_MIN, minimum=0, metavar="N",
                   field="rate_limit_per_min", group="server"),
        OptionSpec("session_rate_limit", "integer", "sessions created per minute per IP "
                   f"({DEFAULT_SESSION_RATE_LIMIT_PER_MIN}; 0: unlimited)", scope=SERVER,
                   default=DEFAULT_SESSION_RATE_LIMIT_PER_MIN, minimum=0, metavar="N",
                   field="session_rate_limit_per_min", group="server"),
        OptionSpec("max_sessions", "integer", f"concurrent sessions ({DEFAULT_MAX_SESSIONS})",
                   scope=SERVER, default=DEFAULT_MAX_SESSIONS, minimum=1, metavar="N",
                   group="server"),
        OptionSpec("max_upload_mb", "integer", f"MB per upload request "
                   f"({DEFAULT_MAX_UPLOAD_MB})", scope=SERVER, default=DEFAULT_MAX_UPLOAD_MB,
                   minimum=1, metavar="N", field="max_upload_bytes", factor=1024 * 1024,
                   group="server"),
        OptionSpec("max_files", "integer", f"files per session ({DEFAULT_MAX_FILES})",
                   scope=SERVER, default=DEFAULT_MAX_FILES, minimum=1, metavar="N",
                   group="server"),
        OptionSpec("timeout", "number", "seconds per process call "
                   f"({DEFAULT_PROCESS_TIMEOUT_S:g})", scope=SERVER,
                   default=DEFAULT_PROCESS_TIMEOUT_S, above=0, metavar="S",
                   field="process_timeout_s", group="server"),
        OptionSpec("session_ttl", "number", f"seconds a session lives "
                   f"({DEFAULT_SESSION_TTL_S:g})", scope=SERVER, default=DEFAULT_SESSION_TTL_S,
                   above=0, metavar="S", field="session_ttl_s", group="server"),
        # output
        OptionSpec("json", "flag", "print results as JSON", scope=RUN, default=False,
                   group="output"),
        OptionSpec("log_file", "path",
                   f"also log to FILE (rotated at {LOG_FILE_MAX_BYTES >> 20} MB)", scope=RUN,
                   metavar="FILE", group="output"),
        OptionSpec("verbose", "flag", "log more detail", scope=RUN, default=False,
                   exclusive="loudness", group="output"),
        OptionSpec("quiet", "flag", "log only warnings and errors", scope=RUN, default=False,
                   exclusive="loudness", group="output"),
    )
}  # fmt: skip


def _canonical_choices(options: Any) -> None:
    """Hold the choice an alias or another case names (``image_format="JPEG"``: "jpg")."""
    for option in OPTIONS.values():
        if option.kind == "choice" and (option.aliases or option.ignore_case):
            value = getattr(options, option.name, None)
            object.__setattr__(options, option.name, option.canonical(value))


def _options_class() -> type:
    """Build ``Options`` from OPTIONS: a field per ACTION and COMMON option, its default."""
    declared = [
        (o.name, Any, dataclasses.field(default=o.default))
        for o in OPTIONS.values()
        if o.scope in (ACTION, COMMON)
    ]
    internal = [
        # False puts an action's outputs straight into output_dir (the API's session
        # folder) instead of beside the inputs with a copy there.
        ("keep_beside", bool, dataclasses.field(default=True)),
        # replace each input atomically (the uppercase flags: -X, -Z, -U, -A)
        ("in_place", bool, dataclasses.field(default=False)),
        # the params text of an action that takes one (anonymize)
        ("params", Any, dataclasses.field(default=None)),
        # anonymize: the key that derives new UIDs (one per run, so all its jobs agree)
        ("uid_secret", str, dataclasses.field(default="")),
        # a whole-tree action (TREE): the folder it was given (-D puts DICOMDIR beside it)
        ("tree_root", Any, dataclasses.field(default=None)),
    ]
    cls = dataclasses.make_dataclass(
        "Options",
        [*declared, *internal],
        frozen=True,
        namespace={"__post_init__": _canonical_choices},
    )
    cls.__module__ = __name__
    cls.__doc__ = (
        "Options of one run, shared by every action (built by the CLI or the API): one "
        "field per ACTION and COMMON entry of OPTIONS, plus keep_beside, in_place, params, "
        "uid_secret and tree_root."
    )
    return cls


Options = _options_class()


# ==== 3. Errors and logging ====


class DicomPressorError(Exception):
    """An expected failure with a message for the user and an HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class UsageError(DicomPressorError):
    """Flags that cannot work together; the CLI exits 2."""


LOG = logging.getLogger("dicompressor")


def is_fatal(exc: BaseException) -> bool:
    """Tell whether an exception must stop the run (Ctrl+C, exit) rather than one file.

    Codec bindings written in Rust raise their panics as BaseException, so handlers
    around codec calls catch BaseException and let only these through.
    """
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


def one_line(text: str, *, limit: int = 400) -> str:
    """Fold a (library) message onto one line of at most limit characters.

    A traceback some libraries embed in their messages is cut off.
    """
    text = str(text).split("Traceback (most recent call last)", 1)[0]
    folded = " ".join(text.split())
    return folded if len(folded) <= limit else folded[: limit - 3] + "..."


def unreadable(exc: BaseException) -> str:
    """Describe a file pydicom could not read (one line, no traceback)."""
    return one_line(f"unreadable DICOM ({type(exc).__name__}: {exc})", limit=300)


def failure_message(exc: BaseException, doing: str) -> str:
    """Describe in one line an exception that failed one input; re-raise a fatal one.

    Expected failures carry their message; an OSError says what the system said (a full
    disk, a missing file); anything else is a malformed input or a bug, named by its
    type, with the traceback in the debug log.
    """
    if is_fatal(exc):
        raise exc
    if isinstance(exc, DicomPressorError):
        return exc.message
    head = f"cannot {doing}: " if doing else ""
    if isinstance(exc, OSError):
        name = Path(exc.filename).name if isinstance(exc.filename, (str, Path)) else ""
        where = f" ({name})" if name and not name.endswith(".part") else ""
        return f"{head}{exc.strerror or exc}{where}"
    LOG.debug("cannot %s", doing or "go on", exc_info=exc)
    return one_line(f"{head}{type(exc).__name__}: {exc}")


class _LevelFormatter(logging.Formatter):
    """Format records as the spec's ``[INFO] message`` lines."""

    def __init__(self, *, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        text = f"[{record.levelname}] {record.getMessage()}"
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            text = f"{stamp} {text}"
        return text


#: What became of one input (FileOutcome.status).
DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclasses.dataclass(frozen=True)
class FileOutcome:
    """What became of one input (a file, or one frame of it): done, skipped or failed.

    ``message`` is the log line of a done input, why a skipped one was passed over, or
    the one-line error of a failed one. ``warnings`` are logged as warnings; ``data`` is
    what the action keeps of it (an info record, a count, a rendered frame). Picklable:
    worker processes send it back.
    """

    path: Path
    status: str = DONE
    message: str = ""
    outputs: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()
    data: Any = None


def guarded(
    function: Callable[..., FileOutcome], path: Path, *args: Any, doing: str
) -> FileOutcome:
    """Run function(path, *args) for one input: whatever fails, fails that input alone.

    doing names the work in a failure line ("cannot anonymize: ...").
    """
    try:
        return function(path, *args)
    except BaseException as exc:  # one place decides what a failure of one input says
        return FileOutcome(path, FAILED, failure_message(exc, doing))


@dataclasses.dataclass
class ActionResult:
    """What an action produced: output files, log lines, per-file failures, a report."""

    outputs: list[Path] = dataclasses.field(default_factory=list)
    log: list[str] = dataclasses.field(default_factory=list)
    failures: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    report: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs_used: int = 0

    def info(self, message: str) -> None:
        """Record an informational log line."""
        self.log.append(f"[INFO] {message}")
        LOG.info(message)

    def warn(self, message: str) -> None:
        """Record a warning log line."""
        self.log.append(f"[WARNING] {message}")
        LOG.warning(message)

    def fail(self, path: Path, message: str) -> None:
        """Record that one input failed; the action goes on with the others."""
        message = one_line(message, limit=1000)
        self.failures.append((path, message))
        self.log.append(f"[ERROR] {path.name}: {message}")
        LOG.error("%s: %s", path, message)

    def record(self, outcome: FileOutcome) -> None:
        """Record one input's outcome: its outputs, log line and warnings, or its failure.

        A skipped input is logged as ``Skipping <name>: <why>`` and does not count as
        used; a done one counts, with or without outputs (a file left alone is done).
        """
        for warning in outcome.warnings:
            self.warn(warning)
        if outcome.status == FAILED:
            self.fail(outcome.path, outcome.message)
            return
        if outcome.status == SKIPPED:
            self.info(f"Skipping {outcome.path.name}: {outcome.message}")
            return
        self.inputs_used += 1
        self.outputs.extend(outcome.outputs)
        if outcome.message:
            self.info(outcome.message)


# ==== 4. Generic helpers ====

# ---- names and where outputs go ----


def safe_component(text: str, *, default: str = "Patient", max_len: int = 64) -> str:
    """Reduce text to a file-name component of letters, digits, '-', '_' and '.'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    cleaned = re.sub(r"_+", "_", cleaned)[:max_len].strip("._-")
    return cleaned or default


def unique_path(path: Path) -> Path:
    """Return path, or path with ``_1``, ``_2``... before the suffix if it exists."""
    if not path.exists():
        return path
    stem, suffix = path.name[: -len(path.suffix)] if path.suffix else path.name, path.suffix
    n = 1
    while True:
        candidate = path.with_name(f"{stem}_{n}{suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def numbered(path: Path, n: int) -> Path:
    """Return path with ``_n`` before its suffix (path itself for n == 0)."""
    if n == 0:
        return path
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}_{n}{path.suffix}")


#: Endings a file's stem leaves out: ``a.dcm``, ``a.DICOM``, ``a.dic`` and ``a`` give ``a``.
DICOM_ENDINGS = (".dcm", ".dicom", ".dic")


def output_stem(path: Path) -> str:
    """Return a file's name without its DICOM ending (any case); other names whole."""
    if path.suffix.lower() in DICOM_ENDINGS:
        return path.name[: -len(path.suffix)]
    return path.name


def output_folder(source: Path, output_dir: Path | None) -> Path:
    """Return the folder an output of source goes to: output_dir, else beside source."""
    return output_dir if output_dir is not None else source.parent


def output_path(
    source: Path,
    output_dir: Path | None,
    *,
    suffix: str = "",
    extension: str = ".dcm",
    in_place: bool = False,
) -> Path:
    """Return where the output of one input file goes (every action's one rule).

    In place (``-X``, ``-A``...) it is the input itself; otherwise
    ``<output_dir or the input's folder>/<stem><suffix><extension>``, the stem being
    output_stem(source).
    """
    if in_place:
        return source
    return output_folder(source, output_dir) / f"{output_stem(source)}{suffix}{extension}"


# ---- atomic writes ----


def temp_path(target: Path) -> Path:
    """Return a hidden temp name beside target that names the writing process.

    ``.<name>.<pid>.<random>.part``: clean_stale_temp removes those whose process died.
    """
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")


def pid_alive(pid: int) -> bool:
    """Tell whether a process with this id runs on this machine.

    A process killed but not yet reaped by its parent (a zombie: a Dask or pool worker
    killed a moment ago) still answers os.kill(pid, 0), but runs no more: where /proc
    tells its state, it counts as gone, so its lock is stale at once.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]  # the name may hold ")"
    except (OSError, IndexError):
        return True  # no /proc (macOS, Windows): as os.kill says
    return state not in (b"Z", b"X")


def clean_stale_temp(folder: Path, *, max_age_s: float) -> list[Path]:
    """Remove temp files and folders left in folder by a process that died (kill -9).

    A temp name carries its writer's pid; one whose process is gone, or that is older
    than max_age_s, is removed. Returns what was removed.
    """
    removed = []
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        parts = entry.name.split(".")
        if not entry.name.startswith(".") or parts[-1] != "part" or len(parts) < 5:
            continue
        try:
            pid = int(parts[-3])
            age_s = now - entry.lstat().st_mtime
        except (ValueError, OSError):
            continue
        if pid_alive(pid) and age_s < max_age_s:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def publish_new(tmp: Path, target: Path) -> Path:
    """Give a finished temp file its final name, never overwriting (``_1``, ``_2``...).

    A hard link claims the name atomically; where links are not supported the name is
    checked first and the file renamed.
    """
    n = 0
    while True:
        candidate = numbered(target, n)
        try:
            os.link(tmp, candidate)
        except FileExistsError:
            n += 1
            continue
        except OSError:  # no hard links here (FAT, some network shares)
            if candidate.exists():
                n += 1
                continue
            os.replace(tmp, candidate)
            return candidate
        with contextlib.suppress(OSError):
            tmp.unlink()
        return candidate


class OutputFile:
    """A file written through a hidden temp file beside its target, published on success.

    ``replace=True`` renames over the target (``-X``: replace the input atomically);
    otherwise the target is never overwritten and ``path`` tells the name it got. The
    temp file is removed on any failure, so no partial output is ever left.

    A file that replaces another (an input among them) is synced to disk before it takes
    the name, so a power cut leaves the old file or the new one. New files beside inputs
    left as they were are not synced by default (``durable`` says otherwise), as cp,
    dcmulti and gdcmconv do not: a power cut may leave such a file empty, never an input
    damaged. Batch mode syncs a job's outputs before its done marker says so
    (sync_to_disk), and header dumps are never synced (a rerun makes them again).
    """

    def __init__(
        self,
        target: Path,
        *,
        replace: bool,
        on_ready: Callable[[Path], None] | None = None,
        durable: bool | None = None,
    ) -> None:
        self.target = target
        self.replace = replace
        self.on_ready = on_ready
        self.durable = replace if durable is None else durable
        self.path: Path | None = None
        self._tmp = temp_path(target)
        self._handle: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self._tmp.open("xb")
        return self._handle

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self._close(failed=exc_type is not None):
                return
            if self.on_ready is not None:
                self.on_ready(self._tmp)  # complete, not yet under its final name
            if self.replace:
                os.replace(self._tmp, self.target)
                self.path = self.target
            else:
                self.path = publish_new(self._tmp, self.target)
        finally:
            if self.path is None:
                with contextlib.suppress(OSError):
                    self._tmp.unlink()

    def _close(self, *, failed: bool) -> bool:
        """Flush (and sync when durable) and close the temp file; return failed.

        The file is closed whatever fails: after a failed write (a full disk) close()
        flushes the rest in vain but still closes, and a handle left open would try
        again when collected, printing the error where no one asked.
        """
        assert self._handle is not None
        try:
            if not failed:
                self._handle.flush()
                if self.durable:
                    os.fsync(self._handle.fileno())
        except BaseException:
            failed = True
            raise
        finally:
            try:
                self._handle.close()
            except OSError:
                if not failed:
                    raise
        return failed


@contextlib.contextmanager
def atomic_output(target: Path) -> Iterator[BinaryIO]:
    """Write target through a temp file, renamed over it only when complete."""
    with OutputFile(target, replace=True) as handle:
        yield handle


def copy_unique(
    source: Path, folder: Path, *, on_ready: Callable[[Path], None] | None = None
) -> Path:
    """Copy source into folder atomically, never overwriting (``_1``, ``_2``...).

    on_ready sees the complete temp copy before it gets its name (for the job journal).
    """
    output = OutputFile(folder / source.name, replace=False, on_ready=on_ready)
    with output as out, source.open("rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
    assert output.path is not None
    return output.path


# ---- stopping and progress ----


class StopFlag:
    """A stop request a signal handler may set (threading.Event is not signal-safe).

    Event.set() takes a lock that the main thread may hold inside Event.wait() when the
    signal arrives; this flag is a plain attribute, and wait() sleeps in short steps.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Ask to stop."""
        self._set = True

    def is_set(self) -> bool:
        """Tell whether a stop was asked for."""
        return self._set

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to timeout_s, waking early when a stop is asked for."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(0.2, left))
        return self._set


def format_duration(seconds: float) -> str:
    """Format seconds as ``1h02m``, ``3m05s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """A one-line progress display on a terminal: done/total, rate and time left.

    It draws only when its stream is a TTY and it is enabled, so log files, pipes and
    ``--quiet`` stay clean.
    """

    def __init__(
        self,
        label: str,
        *,
        stream: Any = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "files",
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.unit = unit
        self.clock = clock
        self.start = clock()
        self.last_draw = 0.0

    def __call__(self, done: int, total: int) -> None:
        """Report that done of total items are finished."""
        if not self.enabled:
            return
        now = self.clock()
        if done < total and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else 0.0
        text = (
            f"\r{self.label}: {done}/{total} {self.unit} "
            f"({rate:.1f}/s, {format_duration(left)} left)"
        )
        self.stream.write(text.ljust(70))
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


ProgressFn = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    """Progress callback that shows nothing."""


# ---- the worker pool ----


def _apply_each(function: Callable[[Any], Any], tasks: list[Any]) -> list[Any]:
    """Worker: run function on each of a batch of tasks."""
    return [function(task) for task in tasks]


def _batches(tasks: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Yield tasks in lists of size (the last may be shorter)."""
    batch: list[Any] = []
    for task in tasks:
        batch.append(task)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def iter_ordered(
    function: Callable[[Any], Any],
    tasks: Iterable[Any],
    jobs: int,
    progress: ProgressFn,
    total: int,
    *,
    batch: int = 1,
) -> Iterator[Any]:
    """Yield function(task) in task order, from worker processes when jobs > 1.

    At most a few tasks per worker are in flight, so memory stays bounded however many
    tasks (frames) there are. batch > 1 sends tasks to the workers that many at a time:
    for small tasks (one file's header) the round trip costs more than the work.
    """
    if jobs <= 1 or total <= 1:
        for index, task in enumerate(tasks, 1):
            yield function(task)
            progress(index, total)
        return
    from concurrent.futures import ProcessPoolExecutor

    batch = max(1, min(batch, math.ceil(total / (2 * jobs))))  # keep every worker busy
    window = 4 * jobs
    quiet = (_warning_filters(), logging.getLogger("pydicom").level)
    with ProcessPoolExecutor(
        max_workers=min(jobs, total), initializer=_quiet_as_parent, initargs=quiet
    ) as pool:
        pending: deque[Any] = deque()
        done = 0

        def finish_one() -> Iterator[Any]:
            nonlocal done
            for result in pending.popleft().result():
                done += 1
                yield result
                progress(done, total)

        for group in _batches(tasks, batch):
            pending.append(pool.submit(_apply_each, function, group))
            if len(pending) >= window:
                yield from finish_one()
        while pending:
            yield from finish_one()


def _warning_filters() -> list[tuple[str, str, type[Warning], str, int]]:
    """Return this process's warning filters in a picklable form, first filter first."""

    def text(pattern: Any) -> str:  # compiled, a plain string (default filters) or None
        return str(getattr(pattern, "pattern", pattern) or "")

    return [
        (action, text(message), category, text(module), line)
        for action, message, category, module, line in warnings.filters
    ]


def _quiet_as_parent(filters: list[tuple[str, str, type[Warning], str, int]], level: int) -> None:
    """Worker start: the parent's warning filters and pydicom log level (and tune_malloc).

    Workers forked from the CLI inherit them, but the HTTP API's job processes start
    theirs through a fork server, and pydicom's warnings about odd input then reached
    the server's stderr as pairs of source lines.
    """
    tune_malloc()
    warnings.resetwarnings()
    for action, message, category, module, line in reversed(filters):
        warnings.filterwarnings(action, message, category, module, line)  # type: ignore[arg-type]
    logging.getLogger("pydicom").setLevel(level)


#: Work (in seconds in one process) below which worker processes do not pay: a pool of
#: two starts in about 30 ms of CPU and each batch of tasks makes a round trip, which
#: eats what the second core gives to half a second of work.
POOL_MIN_WORK_S = 0.5


def share_workers(
    workers: int, tasks: int, *, cluster: bool = False, task_s: float | None = None
) -> tuple[int, int]:
    """Split ``--jobs`` workers between tasks run side by side and the work inside each.

    The one place that decides it. Returns (outer, inner): how many tasks (job folders,
    single-frame files) run at once, and how many workers each gets for its own frames.
    One task gets every worker for its frames; several run side by side, one worker
    each (worker processes do not start pools of their own). On a cluster (Dask) every
    task is handed out at once and its workers run one core each. task_s, about how
    long one task takes in one process: when all of them take less than
    POOL_MIN_WORK_S, a pool costs more than it saves (starting its processes, sending
    them the tasks), and they run in this process.
    """
    workers = max(1, workers)
    if cluster:
        return max(workers, tasks), 1
    if task_s is not None and tasks * task_s < POOL_MIN_WORK_S:
        return 1, 1
    if tasks <= 1 or workers == 1:
        return 1, workers
    return min(workers, tasks), 1


# ---- option values: one check for the CLI, the API and library callers ----


def cli_label(option: OptionSpec) -> str:
    """Name an option as the command line spells it (``--ratio``)."""
    return option.flag


def api_label(option: OptionSpec) -> str:
    """Name an option as the API's process request spells it (``options.ratio``)."""
    return f"options.{option.name}"


Label = Callable[[OptionSpec], str]


def _shown(raw: Any) -> str:
    """Show a rejected value: command-line text quoted as typed, JSON values as JSON."""
    return repr(raw) if isinstance(raw, str) else json.dumps(raw, default=str)


def parse_shard(text: str, label: str) -> tuple[int, int]:
    """Parse ``I/N`` (0 <= I < N); raise UsageError naming what is wrong."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"{label} takes I/N (e.g. 0/4), not {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"{label} {text}: I must be 0 to N-1 and N at least 1")
    return index, count


def _number(option: OptionSpec, raw: Any, label: str) -> float | int:
    """Convert a number given as text (CLI) or JSON (API); raise UsageError."""
    integer = option.kind == "integer"
    wanted = "a whole number" if integer else "a number"
    if isinstance(raw, str):
        try:
            value: float | int = int(raw) if integer else float(raw)
        except ValueError:
            raise UsageError(f"{label} must be {wanted}, not {raw!r}") from None
    elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise UsageError(f"{label} must be {wanted}, not {_shown(raw)}")
    elif integer and isinstance(raw, float):
        if not raw.is_integer():
            raise UsageError(f"{label} must be {wanted}, not {_shown(raw)}")
        value = int(raw)
    else:
        value = raw if integer else float(raw)
    if not math.isfinite(value):
        raise UsageError(f"{label} must be a finite number, not {value}")
    return value


def _window(raw: Any, label: str) -> tuple[float, float]:
    """Convert ``"C,W"`` (text or JSON) or ``[C, W]`` (JSON) to (centre, width)."""
    problem = UsageError(f"{label} takes CENTRE,WIDTH (e.g. 40,400), not {_shown(raw)}")
    parts = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(parts, (list, tuple)) or len(parts) != 2:
        raise problem
    values = []
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (str, int, float)):
            raise problem
        try:
            values.append(float(part))
        except ValueError:
            raise problem from None
    if not all(math.isfinite(v) for v in values):
        raise problem
    return values[0], values[1]


def parse_option(option: OptionSpec, raw: Any, label: Label = cli_label) -> Any:
    """Convert a given value (command-line text or a JSON value) and check it.

    Raises UsageError with a message naming the option as ``label`` spells it; the
    message is the same for the CLI and the API but for that name.
    """
    name = label(option)
    kind = option.kind
    if kind == "flag":
        if not isinstance(raw, bool):
            raise UsageError(f"{name} must be true or false, not {_shown(raw)}")
        value: Any = raw
    elif kind in ("number", "integer"):
        value = _number(option, raw, name)
    elif kind == "window":
        value = _window(raw, name)
    elif kind == "shard":
        value = parse_shard(str(raw), name)
    elif kind == "path":
        value = Path(raw) if raw else None  # an empty name turns a file option off
    elif kind == "keys":
        value = tuple(raw) if isinstance(raw, (list, tuple)) else (raw,)
    else:  # text, choice
        if not isinstance(raw, str):
            raise UsageError(f"{name} must be text, not {_shown(raw)}")
        value = option.canonical(raw)
    check_value(option, value, label)
    return value


def check_value(option: OptionSpec, value: Any, label: Label = cli_label) -> None:
    """Check a converted value against the option's choices and bounds; raise UsageError."""
    if value is None:
        return
    name = label(option)
    if option.choices and value not in option.choices:
        choices = ", ".join(str(c) for c in option.choices)
        if option.kind != "choice":
            raise UsageError(f"{name} must be one of {choices}, not {_shown(value)}")
        noun = option.noun or option.name.replace("_", " ")
        also = option.other_spellings
        raise UsageError(f"unknown {noun} {_shown(value)}: {name} takes one of {choices}{also}")
    if option.kind == "window":
        width = float(value[1])
        if not width > 0:
            raise UsageError(f"{name} width must be positive, not {width:g}")
        return
    if option.kind not in ("number", "integer"):
        return
    if option.minimum is not None and value < option.minimum:
        raise UsageError(f"{name} must be {option.minimum:g} or more, not {value:g}")
    if option.above is not None and not value > option.above:
        bound = "positive" if option.above == 0 else f"more than {option.above:g}"
        raise UsageError(f"{name} must be {bound}, not {value:g}")
    if option.maximum is not None and value > option.maximum:
        raise UsageError(f"{name} must be {option.maximum:g} or less, not {value:g}")


def check_conflicts(given: Iterable[str], label: Label = cli_label) -> None:
    """Raise UsageError when two given options exclude each other (OptionSpec.conflicts)."""
    names = set(given)
    order = list(OPTIONS)
    for name in (n for n in order if n in names):
        for other in OPTIONS[name].conflicts:
            if other in names and order.index(name) < order.index(other):
                first, second = label(OPTIONS[name]), label(OPTIONS[other])
                raise UsageError(f"give {first} or {second}, not both")


# ==== 5. DICOM helpers ====

# ---- reading: dictionaries, files, headers ----


@functools.cache
def _pydicom_table(name: str) -> Any:
    """Return one of pydicom's dictionary modules (plain data) without importing pydicom.

    The module pydicom loaded when it is loaded; otherwise the file is run on its own
    (about 10 ms, against pydicom's 100 ms), for a header dump that needs only names.
    """
    loaded = sys.modules.get(f"pydicom.{name}")
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("pydicom")
    if package is None or not package.submodule_search_locations:
        raise DicomPressorError("pydicom is not installed: pip install -r requirements.txt")
    source = Path(package.submodule_search_locations[0]) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_dicompressor_{name}", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _repeater_masks() -> tuple[tuple[str, int, int], ...]:
    """Return the repeating-group masks of the DICOM dictionary: (key, bits, care)."""
    return tuple(
        (key, int(key.replace("x", "0"), 16), int("".join("F0"[c == "x"] for c in key), 16))
        for key in _pydicom_table("_dicom_dict").RepeatersDictionary
    )


@functools.lru_cache(maxsize=4096)
def keyword_of(tag: int) -> str:
    """Return a public tag's dictionary keyword ("" when unknown), as pydicom names it.

    Repeating groups (``(60xx,3000)`` Overlay Data...) match their mask; private tags
    have no keyword.
    """
    table = _pydicom_table("_dicom_dict")
    entry = table.DicomDictionary.get(tag)
    if entry is None and not tag >> 16 & 1:
        key = next((k for k, bits, care in _repeater_masks() if not (tag ^ bits) & care), None)
        entry = table.RepeatersDictionary[key] if key is not None else None
    return entry[4] if entry is not None else ""


def private_name(tag: int, creator: str) -> str | None:
    """Return a private tag's description in pydicom's private dictionary, or None.

    The block byte of the element, and for some creators the group's low byte, are
    wildcards (``0019xx10``, ``00xxxx10``), as pydicom looks them up.
    """
    table = _pydicom_table("_private_dict").private_dictionaries.get(creator)
    if table is None:
        return None
    group, element = f"{tag >> 16:04X}", f"{tag & 0xFFFF:04X}"
    for key in (group + element, f"{group}xx{element[2:]}", f"{group[:2]}xxxx{element[2:]}"):
        if key in table:
            return str(table[key][2])
    return None


def new_uid() -> UID:
    """Return a new UID under DicomPressor's root."""
    return generate_uid(prefix=UID_PREFIX)


def has_dicm_prefix(path: Path) -> bool:
    """Tell whether the file has the 128-byte preamble followed by ``DICM``."""
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_candidate(path: Path) -> bool:
    """Tell whether a file in a job folder should be read as DICOM.

    Hidden files (markers, locks, temp files) and files with a clearly non-DICOM ending
    are passed over; everything else is a candidate, and one that fails to read is
    reported by name.
    """
    if path.name.startswith(".") or not path.is_file():
        return False
    if path.name.upper() == "DICOMDIR":
        return False
    return path.suffix.lower() not in NON_DICOM_SUFFIXES or has_dicm_prefix(path)


def is_input(path: Path, kind: str) -> bool:
    """Tell whether a file in a job folder is an input of an action that reads kind.

    DICOM inputs are is_candidate's; images and videos are told by their endings
    (INPUT_ENDINGS). Hidden files never count.
    """
    if kind == DICOM_INPUTS:
        return is_candidate(path)
    if path.name.startswith(".") or not path.is_file():
        return False
    return path.suffix.lower() in INPUT_ENDINGS[kind]


def transfer_syntax_of(ds: Dataset) -> UID:
    """Return the dataset's transfer syntax UID (Explicit VR Little Endian if unknown)."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(uid) if uid else ExplicitVRLittleEndian


def uid_name(uid: str) -> str:
    """Return the standard name of a UID, or the UID itself when it is unknown."""
    name = UID(uid).name
    return name if name and name != uid else str(uid)


def number_of_frames(ds: Dataset) -> int:
    """Return NumberOfFrames as an int (1 when absent or unreadable)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def no_pixels_reason(ds: Dataset) -> str | None:
    """Return why an instance without Pixel Data is passed over, or None when it is a fault.

    Reports, plans, presentation states and the like have no pixels to merge, split,
    compress or export; an instance of an image storage SOP class without them is
    damaged.
    """
    name = uid_name(str(ds.get("SOPClassUID", "") or ""))
    return None if "Image" in name else f"no pixel data ({name or 'no SOP Class UID'})"


@dataclasses.dataclass
class PixelLocation:
    """Where the pixel data value of a file lies, read without loading it."""

    offset: int
    length: int  # 0xFFFFFFFF for encapsulated (undefined length)
    file_size: int

    @property
    def encapsulated(self) -> bool:
        """Tell whether the pixel data is encapsulated (compressed)."""
        return self.length == 0xFFFFFFFF


def locate_value(path: Path, value: bytes) -> int:
    """Return the file offset of the Pixel Data value that pydicom read whole, or -1.

    pydicom keeps no offset for values it reads whole (undefined length), so the value
    is found after the last Pixel Data element header whose bytes match it.
    """
    if not value:
        return -1
    data = path.read_bytes()
    probe = value[: min(len(value), 64)]
    for header in (
        b"\xe0\x7f\x10\x00OB\x00\x00",
        b"\xe0\x7f\x10\x00OW\x00\x00",
        b"\xe0\x7f\x10\x00",
    ):
        end = len(data)
        while True:
            start = data.rfind(header, 0, end)
            if start < 0:
                break
            offset = start + len(header) + 4
            if data[offset : offset + len(probe)] == probe and (
                data[offset : offset + len(value)] == value
            ):
                return offset
            end = start
    return -1


#: Elements every action relies on, read (converted) as soon as a header is read.
HEADER_CHECKED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
)


def _surely_converts(item: Any) -> bool:
    """Tell whether an element as read cannot fail pydicom's conversion.

    That holds for an unsigned short of whole numbers and for ASCII CS or UI text. The
    header check converts anything else; converting these too was a third of the time a
    merge spends reading 400 headers.
    """
    if not isinstance(item, RawDataElement) or item.value is None:
        return False
    if item.VR == "US":
        return len(item.value) % 2 == 0
    return item.VR in ("CS", "UI") and item.value.isascii()


#: How much of a file read_plain_header reads: headers longer than this go to pydicom.
PLAIN_HEAD_BYTES = 1 << 16


#: Values longer than this stay on disk until used (pydicom's defer_size).
DEFER_BYTES = 4096


#: VRs whose value is text, and those with a 4-byte length in Explicit VR (PS3.5 7.1.2).
TEXT_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())  # noqa: SIM905


LONG_LENGTH_VRS = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # noqa: SIM905


NUMBER_FORMATS = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d"}


#: VRs a raw header may name (PS3.5 6.2); anything else sends the file to pydicom.
KNOWN_VRS = TEXT_VRS | LONG_LENGTH_VRS | frozenset(NUMBER_FORMATS) | {"AT"}


_SHORT_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length


RawSpan = tuple[int, str, int, int]  # tag, VR, value length, value offset


_LONG_LENGTH = struct.Struct("<L")


_VR_OF_BYTES = {vr.encode("ascii"): vr for vr in KNOWN_VRS}


def explicit_element_header(data: Any, pos: int) -> tuple[int, str | None, int, int]:
    """Decode the Explicit VR Little Endian element header at pos.

    Return (tag, VR or None when the two bytes name none, value length, where the value
    starts). A delimiter's header decodes too, with VR None.
    """
    group, number, vr_bytes, length = _SHORT_HEADER.unpack_from(data, pos)
    vr = _VR_OF_BYTES.get(vr_bytes)
    if vr in LONG_LENGTH_VRS:
        return group << 16 | number, vr, _LONG_LENGTH.unpack_from(data, pos + 8)[0], pos + 12
    return group << 16 | number, vr, length, pos + 8


# ---- reading: walking a file's element headers to its end ----


#: Transfer syntaxes whose dataset is encoded otherwise than Explicit VR Little Endian
#: (PS3.5 A.1, A.3), for the walk over a file's element headers (walk_file) and
#: ENCODING_SYNTAX.
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


BIG_ENDIAN_SYNTAX = "1.2.840.10008.1.2.2"


@dataclasses.dataclass
class FileWalk:
    """Where a walk over a file's element headers went (walk_file).

    ``problem`` is None for a file that parses to its end, else one line naming the
    element and the byte offset where it stops. ``meta`` and ``body`` are the byte
    ranges of whole elements only: the File Meta's, and of the dataset every top-level
    element before the one that fails (offsets in ``inflated`` for a deflated dataset).
    """

    problem: str | None
    preamble: bytes | None
    meta: tuple[int, int]
    body: tuple[int, int]
    implicit: bool = False
    little: bool = True
    inflated: bytes | None = None


class HeaderDamage(DicomPressorError):
    """A file whose dataset does not parse to its end; ``walk`` says how far it does."""

    def __init__(self, walk: FileWalk) -> None:
        super().__init__(walk.problem or "")
        self.walk = walk

    def __reduce__(self) -> tuple[Any, ...]:
        return (HeaderDamage, (self.walk,))  # worker processes send it back whole


class _Broken(Exception):
    """Where and why a walk over element headers stopped (its message says)."""


@functools.lru_cache(maxsize=4096)
def element_label(tag: int) -> str:
    """Return a tag the DICOM way, ``(0028,0010) Rows`` (private or unknown: the tag)."""
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    entry = None if tag >> 16 & 1 else _pydicom_table("_dicom_dict").DicomDictionary.get(tag)
    return f"{text} {entry[2]}" if entry is not None else text


@functools.lru_cache(maxsize=4096)
def _public_dictionary_vr(tag: int) -> str | None:
    """Return the VR the dictionary gives a public tag (for implicit VR), or None."""
    entry = None if tag >> 16 & 1 else _pydicom_table("_dicom_dict").DicomDictionary.get(tag)
    return str(entry[0]) if entry is not None else None


class _Walker:
    """Walk element headers as pydicom's reader parses them, checking every length.

    Values are skipped, never read; sequences, their items and encapsulated fragments are
    walked into. A dataset's encoding (implicit or explicit VR) is what its first element
    header shows, as pydicom decides it.
    """

    def __init__(self, data: Any, size: int, *, little: bool, where: str) -> None:
        self.data = data
        self.size = size
        self.order = "<" if little else ">"
        self.where = where  # "the file", "the inflated dataset"

    def tag_at(self, pos: int) -> int:
        """Return the tag at pos."""
        group, element = struct.unpack_from(self.order + "HH", self.data, pos)
        return int(group) << 16 | int(element)

    def long_at(self, pos: int) -> int:
        """Return the 4-byte length at pos."""
        return int(struct.unpack_from(self.order + "L", self.data, pos)[0])

    def short_at(self, pos: int) -> int:
        """Return the 2-byte length at pos."""
        return int(struct.unpack_from(self.order + "H", self.data, pos)[0])

    def holder(self, stop: int, inside: str = "its item") -> str:
        """Name what ends at stop: the file, else what is being walked (inside)."""
        return self.where if stop >= self.size else inside

    def looks_implicit(self, pos: int, stop: int) -> bool:
        """Tell whether the element header at pos has no VR (two capital letters)."""
        if stop - pos < 6:
            return False
        first, second = self.data[pos + 4], self.data[pos + 5]
        return not (0x40 < first < 0x5B and 0x40 < second < 0x5B)

    def dataset(
        self,
        pos: int,
        stop: int,
        implicit: bool,
        *,
        delimited: bool = False,
        group: int | None = None,
        ends: list[tuple[int, int, int]] | None = None,
    ) -> int:
        """Walk a dataset's elements from pos to stop; return where the walk ended.

        delimited: an item of undefined length, ended by its Item Delimitation Item.
        group: stop before the first element of another group (the File Meta). ends
        (given for a top level) gets (tag, value offset, end) of each whole element.
        """
        after_pixels = False
        first = pos
        while pos < stop:
            left = stop - pos
            if (
                ends is not None
                and self.data[pos : pos + 4] == b"\0\0\0\0"
                and (not bytes(self.data[pos:stop]).strip(b"\0"))
            ):
                return stop  # NUL bytes to the end: padding
            if left < 8:
                if ends is not None and after_pixels:
                    return stop  # a few bytes after the Pixel Data: padding
                of = f"of {element_label(self.tag_at(pos))} " if left >= 4 else ""
                raise _Broken(
                    f"truncated: {self.holder(stop)} ends {left} byte(s) into the element "
                    f"header {of}at offset {pos}"
                )
            tag = self.tag_at(pos)
            if group is not None and tag >> 16 != group:
                return pos
            if tag == 0xFFFEE00D and delimited:
                return pos + 8
            if tag >> 16 == 0xFFFE:
                raise _Broken(
                    f"a stray {element_label(tag)} at offset {pos}, where an element header "
                    "was expected"
                )
            vr: str | None = None
            guessed = False
            if implicit:
                length, start = self.long_at(pos + 4), pos + 8
            else:
                raw_vr = bytes(self.data[pos + 4 : pos + 6])
                vr = _VR_OF_BYTES.get(raw_vr)
                if vr in LONG_LENGTH_VRS:
                    if left < 12:
                        raise _Broken(
                            f"truncated: {self.holder(stop)} ends {left} byte(s) into the "
                            f"element header of {element_label(tag)} at offset {pos}"
                        )
                    length, start = self.long_at(pos + 8), pos + 12
                elif vr is None and not b"AA" <= raw_vr <= b"ZZ":
                    guessed = True  # pydicom reads this element as implicit VR
                    length, start = self.long_at(pos + 4), pos + 8
                else:
                    length, start = self.short_at(pos + 6), pos + 8
            try:
                pos = self.value(tag, vr, start, length, stop, implicit or guessed)
            except _Broken as exc:
                if not guessed:
                    raise
                shown = " ".join(f"{b:02x}" for b in raw_vr)
                raise _Broken(
                    f"damaged element header at offset {pos}: {element_label(tag)} names no "
                    f"VR (bytes {shown}); read as implicit VR, "
                    + str(exc).removeprefix("truncated: ")
                ) from None
            after_pixels = after_pixels or tag >= 0x7FE00010
            if ends is not None:
                ends.append((tag, start, pos))
        if delimited:
            raise _Broken(
                f"the item of undefined length at offset {first - 8} has no (FFFE,E00D) Item "
                f"Delimitation Item before {self.holder(stop)} ends at offset {stop}"
            )
        return pos

    def value(
        self, tag: int, vr: str | None, start: int, length: int, stop: int, implicit: bool
    ) -> int:
        """Walk one element's value; return where the element ends."""
        known = _public_dictionary_vr(tag) if vr is None else vr
        sequence = known == "SQ"
        if length != 0xFFFFFFFF:
            if start + length > stop:
                raise _Broken(
                    f"truncated: {element_label(tag)} declares {length} bytes at offset "
                    f"{start}, {self.holder(stop)} ends at {stop}"
                )
            if sequence:
                self.items(tag, start, length, start + length, implicit)
            return start + length
        if sequence or vr == "UN":  # an undefined-length UN is a sequence (PS3.5 6.2.2)
            return self.items(tag, start, length, stop, implicit or vr == "UN")
        if known is None and stop - start >= 4 and self.tag_at(start) == 0xFFFEE000:
            return self.items(tag, start, length, stop, implicit)  # as pydicom guesses
        return self.fragments(tag, start, stop)

    def items(self, tag: int, start: int, length: int, stop: int, implicit: bool) -> int:
        """Walk a sequence's items (an undefined length: up to its delimiter)."""
        undefined = length == 0xFFFFFFFF
        end = stop if undefined else start + length
        pos = start
        while pos < end or undefined:
            if end - pos < 8:
                if undefined:
                    raise _Broken(
                        f"{element_label(tag)} (a sequence of undefined length) has no "
                        "(FFFE,E0DD) Sequence Delimitation Item before "
                        f"{self.holder(end, 'its sequence')} ends at {end}"
                    )
                raise _Broken(
                    f"truncated: {element_label(tag)} (a sequence) ends {end - pos} "
                    f"byte(s) into an item header at offset {pos}"
                )
            item_tag, item_length = self.tag_at(pos), self.long_at(pos + 4)
            if item_tag == 0xFFFEE0DD and (undefined or pos + 8 == end):
                return pos + 8
            if item_tag != 0xFFFEE000:
                raise _Broken(
                    f"{element_label(tag)} (a sequence) at offset {start}: an item was "
                    f"expected at offset {pos}, not {element_label(item_tag)}"
                )
            inner = pos + 8
            item_implicit = implicit or self.looks_implicit(inner, end)
            if item_length == 0xFFFFFFFF:
                pos = self.dataset(inner, end, item_implicit, delimited=True)
            elif inner + item_length > end:
                raise _Broken(
                    f"truncated: an item of {element_label(tag)} declares {item_length} "
                    f"bytes at offset {inner}, {self.holder(end, 'its sequence')} ends at {end}"
                )
            else:
                pos = self.dataset(inner, inner + item_length, item_implicit)
        return pos

    def fragments(self, tag: int, start: int, stop: int) -> int:
        """Walk encapsulated data (PS3.5 A.4): items of defined length, then a delimiter."""
        pos, count = start, 0
        while True:
            if stop - pos < 8:
                raise _Broken(
                    f"{element_label(tag)} at offset {start} has an undefined length and "
                    f"no (FFFE,E0DD) Sequence Delimitation Item before {self.holder(stop)} "
                    f"ends at {stop}"
                )
            item_tag, length = self.tag_at(pos), self.long_at(pos + 4)
            if item_tag == 0xFFFEE0DD:
                break
            if item_tag != 0xFFFEE000 or length == 0xFFFFFFFF:
                raise _Broken(
                    f"{element_label(tag)} at offset {start} has an undefined length, but "
                    f"its value does not parse into items: {element_label(item_tag)} at "
                    f"offset {pos} is no item (PS3.5 A.4)"
                )
            if pos + 8 + length > stop:
                raise _Broken(
                    f"truncated: a fragment of {element_label(tag)} declares {length} "
                    f"bytes at offset {pos + 8}, {self.holder(stop)} ends at {stop}"
                )
            pos += 8 + length
            count += 1
        if tag == 0x7FE00010 and count < 2:
            raise _Broken(
                f"{element_label(tag)} at offset {start} holds no fragment after its Basic "
                "Offset Table (PS3.5 A.4)"
            )
        return pos + 8


def walk_file(path: Path) -> FileWalk:
    """Walk a file's element headers from its File Meta to its end (see _Walker).

    A file parses to its end when every element header lies whole in the file, every
    value fits in what holds it (the file, an item, a sequence), sequences and
    encapsulated values parse into items up to their delimiters, and what follows the
    last element is NUL bytes, or fewer bytes than an element header after the Pixel
    Data. Raises OSError when the file cannot be read.
    """
    import mmap

    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return FileWalk("the file is empty", None, (0, 0), (0, 0))
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _walk_mapped(data, size)


def _walk_mapped(data: Any, size: int) -> FileWalk:
    """walk_file() of a mapped file: the File Meta (and command set), then the dataset."""
    preamble = bytes(data[:128]) if size >= 132 and data[128:132] == b"DICM" else None
    pos = 132 if preamble is not None else 0
    meta_walker = _Walker(data, size, little=True, where="the file")
    walk = FileWalk(None, preamble, (pos, pos), (pos, pos))
    elements: list[tuple[int, int, int]] = []
    try:
        for group in (0x0002, 0x0000):  # the File Meta, then a command set (PS3.7 6.3)
            if size - pos >= 8 and meta_walker.short_at(pos) == group:
                implicit = group == 0 or meta_walker.looks_implicit(pos, size)
                pos = meta_walker.dataset(pos, size, implicit, group=group, ends=elements)
    except _Broken as exc:
        walk.problem = str(exc)
        end = elements[-1][2] if elements else walk.meta[0]
        walk.meta = walk.body = (walk.meta[0], end)
        return walk
    walk.meta = (walk.meta[0], pos)
    group_length = next(((s, e) for t, s, e in elements if t == 0x00020000 and e - s == 4), None)
    if group_length is not None:  # a file cut between File Meta elements
        declared = meta_walker.long_at(group_length[0])
        if group_length[1] + declared > size:
            walk.problem = (
                f"truncated: (0002,0000) File Meta Information Group Length declares "
                f"{declared} bytes at offset {group_length[1]}, the file ends at {size}"
            )
            walk.body = (pos, pos)
            return walk
    syntax = next(
        (bytes(data[s:e]).rstrip(b"\0 ").decode("ascii", "replace") for t, s, e in elements
         if t == 0x00020010),
        None,
    )  # fmt: skip
    body, offset, where = data, pos, "the file"
    if syntax == DEFLATED:
        try:
            body = zlib.decompress(bytes(data[pos:]), -zlib.MAX_WBITS)
        except zlib.error as exc:
            walk.problem = f"the deflated dataset at offset {pos} does not inflate: {exc}"
            walk.body = (pos, pos)
            return walk
        walk.inflated, offset, where = body, 0, "the inflated dataset"
    end = len(body) if syntax == DEFLATED else size
    walk.little = syntax != BIG_ENDIAN_SYNTAX
    walker = _Walker(body, end, little=walk.little, where=where)
    walk.implicit = walker.looks_implicit(offset, end)
    if syntax is None and not walk.implicit and walker.short_at(offset) >= 1024:
        walk.little = False  # no syntax named: a big endian group, as pydicom guesses
        walker = _Walker(body, end, little=False, where=where)
    top: list[tuple[int, int, int]] = []
    try:
        walker.dataset(offset, end, walk.implicit, ends=top)
    except _Broken as exc:
        walk.problem = str(exc)
    walk.body = (offset, top[-1][2] if top else offset)
    return walk


# ---- reading: headers, pixel data whole ----


def read_header(
    path: Path, *, check_values: bool = True, image: bool = True
) -> tuple[Dataset, PixelLocation | None]:
    """Read a file's dataset without loading large values; locate its pixel data.

    Raises DicomPressorError naming the problem when the file is not readable DICOM,
    HeaderDamage when it does not parse to its end (walk_file: the element and the
    offset where it breaks), with image when it is no image (neither SOP Class UID nor
    pixel data), and, with check_values, when one of the HEADER_CHECKED values is
    malformed. The headers dump reads without those two checks: it dumps any dataset and
    shows a malformed value as unreadable.
    """
    try:
        size = path.stat().st_size
        plain = read_plain_header(path)  # checked whole: no element runs past the end
        ds = plain or pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except InvalidDicomError as exc:
        if has_dicm_prefix(path):
            _raise_damage(path, exc)
        ds = read_bare_dataset(path)
        if ds is None:
            raise DicomPressorError("not a DICOM file (no DICM prefix or File Meta)") from exc
        if image:
            raise DicomPressorError(
                "not a DICOM file: a bare dataset without preamble and File Meta "
                "(PS3.10 7.1); only -t dumps it, -p makes a Part 10 file of it"
            ) from exc
    except BaseException as exc:  # pydicom raises many types on malformed files
        if is_fatal(exc):
            raise
        _raise_damage(path, exc)
        raise DicomPressorError(unreadable(exc)) from exc
    if plain is None:
        _raise_damage(path, None)
    try:
        syntax = transfer_syntax_of(ds)
        if plain is None:
            _record_read_encoding(ds)
        for tag in tags_of(HEADER_CHECKED) if check_values else ():
            item = ds._dict.get(tag)
            if item is not None and not _surely_converts(item):
                ds[tag]  # converted now, so a malformed value fails here, named
    except BaseException as exc:
        if is_fatal(exc):
            raise
        raise DicomPressorError(unreadable(exc)) from exc
    if not syntax.is_transfer_syntax:
        raise DicomPressorError(
            f"(0002,0010) Transfer Syntax UID {str(syntax)!r} is not a transfer syntax"
        )
    if image and "SOPClassUID" not in ds and "PixelData" not in ds:
        raise DicomPressorError("not a DICOM image (no SOP Class UID, no pixel data)")
    location = None
    if 0x7FE00010 in ds:
        raw = ds.get_item(0x7FE00010, keep_deferred=True)
        tell = getattr(raw, "value_tell", None)
        length = getattr(raw, "length", None)
        if tell is None or length is None:  # read whole (encapsulated or small): find it
            elem = ds[0x7FE00010]
            value = elem.value if isinstance(elem.value, bytes) else b""
            tell = locate_value(path, value)
            length = 0xFFFFFFFF if elem.is_undefined_length else len(value)
        if transfer_syntax_of(ds) == DEFLATED:  # offsets count the inflated stream
            tell = -1
        location = PixelLocation(offset=int(tell), length=int(length), file_size=size)
        if tell >= 0 and not location.encapsulated and tell + length > size:
            raise DicomPressorError(
                f"truncated: (7FE0,0010) Pixel Data declares {length} bytes, "
                f"the file holds {max(0, size - tell)}"
            )
    return ds, location


def _raise_damage(path: Path, cause: BaseException | None) -> None:
    """Raise HeaderDamage when the file does not parse to its end (walk_file)."""
    try:
        walk = walk_file(path)
    except OSError:
        return
    if walk.problem is not None:
        raise HeaderDamage(walk) from cause


def partial_dataset(path: Path, walk: FileWalk) -> FileDataset:
    """Read the whole elements a damaged file holds before its damage (HeaderDamage.walk).

    The File Meta elements that parse, and the dataset's top-level elements before the
    one that fails, as pydicom reads them (larger values left on disk).
    """
    with path.open("rb") as handle:
        handle.seek(walk.meta[0])
        meta = pydicom.filereader.read_dataset(
            handle,
            False,
            True,
            bytelength=walk.meta[1] - walk.meta[0],
            stop_when=lambda tag, vr, length: tag >> 16 != 0x0002,
        )
        source: BinaryIO = handle if walk.inflated is None else io.BytesIO(walk.inflated)
        source.seek(walk.body[0])
        body = pydicom.filereader.read_dataset(
            source,
            walk.implicit,
            walk.little,
            bytelength=walk.body[1] - walk.body[0],
            defer_size=DEFER_BYTES if walk.inflated is None else None,
        )
    ds = FileDataset(
        str(path), body, walk.preamble, FileMetaDataset(meta), walk.implicit, walk.little
    )
    ds.set_original_encoding(walk.implicit, walk.little, body._character_set)
    return ds


def _record_read_encoding(ds: Dataset) -> None:
    """Record the VR encoding pydicom read ds in when it is not what the syntax says.

    pydicom reads a dataset written in implicit VR under an explicit VR syntax (or the
    reverse) as it finds it, but keeps the syntax's encoding as the original one; its
    writer then copies the elements read unconverted and fails on them (no VR). With the
    encoding as read, the writer converts them to the syntax of the output.
    """
    first = next((e for e in ds._dict.values() if isinstance(e, RawDataElement)), None)
    if first is not None and (first.is_implicit_VR, first.is_little_endian) != (
        ds.original_encoding
    ):
        ds.set_original_encoding(
            first.is_implicit_VR, first.is_little_endian, ds.original_character_set
        )


def read_bare_dataset(path: Path) -> Dataset | None:
    """Read a dataset stored without preamble and File Meta (not PS3.10), or None.

    pydicom guesses the encoding; the result counts as a dataset when it has two or more
    elements starting in group 0008, where datasets start (anything else read this way,
    text or an image, comes out as one odd element).
    """
    try:
        with path.open("rb") as handle:
            if handle.read(2) not in (b"\x08\x00", b"\x00\x08"):  # group 0008 first
                return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=DEFER_BYTES, force=True)
    except Exception:  # not even that
        return None
    tags = list(ds._dict)
    return ds if len(tags) >= 2 and tags[0] >> 16 == 0x0008 else None


def read_plain_header(path: Path) -> FileDataset | None:
    """Read the header of a plain Explicit VR Little Endian file as pydicom does, or None.

    The dataset equals ``dcmread(path, defer_size=DEFER_BYTES)``: elements as read, not
    converted, with longer values and the Pixel Data left on disk. Only the plain case is
    taken, where this is about twice as fast (merge reads hundreds of headers): a
    preamble and File Meta, then elements of defined length in ascending order, from
    group 0008 on, up to native Pixel Data that ends the file, all within the first
    PLAIN_HEAD_BYTES. Anything else (other syntaxes, undefined lengths, disorder,
    truncation, trailing elements) gives None, and pydicom reads the file.
    """
    head = _plain_head(path)
    if head is None:
        return None
    data, meta_spans, body_spans = head
    try:
        meta = _plain_elements(data, meta_spans)
        syntax = meta.get(0x00020010)
        if syntax is None or (syntax.value or b"").rstrip(b"\0 ") != EXPLICIT_VR_LE.encode():
            return None
        body = _plain_elements(data, body_spans)
        charset = body.get(0x00080005)
        encoding = (
            pydicom.charset.convert_encodings(
                pydicom.dataelem.convert_raw_data_element(charset).value
            )
            if charset is not None
            else pydicom.charset.default_encoding
        )
    except (struct.error, ValueError, UnicodeError, LookupError, OSError):
        return None
    dataset = Dataset(body)
    dataset.set_original_encoding(False, True, encoding)
    preamble = _ZERO_PREAMBLE if data[:128] == _ZERO_PREAMBLE else data[:128]  # one for all
    ds = FileDataset(str(path), dataset, preamble, FileMetaDataset(meta), False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _plain_head(path: Path) -> tuple[bytes, list[RawSpan], list[RawSpan]] | None:
    """Read a file's first PLAIN_HEAD_BYTES and the spans of its plain header.

    Return (those bytes, the File Meta's spans, the dataset's spans), or None when the
    file is not plain (see read_plain_header); the caller checks the transfer syntax.
    """
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(PLAIN_HEAD_BYTES)
        if size < 132 or data[128:132] != b"DICM":
            return None
        meta, pos = plain_spans(data, 132, meta=True)
        if meta is None:
            return None
        body, end = plain_spans(data, pos, meta=False)
    except (struct.error, OSError):
        return None
    if body is None or end != size:
        return None
    return data, meta, body


def plain_spans(data: bytes, pos: int, *, meta: bool) -> tuple[list[RawSpan] | None, int]:
    """Find the elements of a plain header (read_plain_header) without pydicom.

    Return (tag, VR, length, value offset) of each element, or None when the header is
    not plain, and where parsing stopped. meta parses group 0002 and stops before the
    next group; otherwise parsing runs to the end of data or stops after the Pixel Data
    (whose value may run past data when it is longer than DEFER_BYTES).
    """
    out: list[RawSpan] = []
    last = 0x00020000 if meta else 0x00080000
    end = len(data)
    while pos < end:
        tag, vr, length, start = explicit_element_header(data, pos)
        if meta and tag >> 16 != 0x0002:
            break
        if tag < last or vr is None:
            return None, pos
        last = tag + 1
        if length == 0xFFFFFFFF:
            return None, pos
        deferred = length > DEFER_BYTES and tag != 0x00080005  # as pydicom does
        if start + length > end and not (deferred and tag == 0x7FE00010):
            return None, pos
        out.append((tag, vr, length, start))
        pos = start + length
        if tag == 0x7FE00010 and not meta:
            break
    return out, pos


_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


_INTEGER = re.compile(rb"[+-]?[0-9]+")


def plain_value(vr: str, raw: bytes) -> bytes | None:
    """Return a text value as pydicom converts and writes it back (unpadded), or None.

    Trailing padding goes (each VR's conversion strips it), an IS loses its leading
    spaces too. Only printable ASCII is taken, and a backslash (several values) only in
    CS: anything else gives None, and pydicom's own conversion decides.
    """
    value = raw.rstrip(b"\0 ")
    if not _PRINTABLE.fullmatch(value) or (b"\\" in value and vr != "CS"):
        return None
    if vr == "IS" and value:
        value = value.lstrip(b" ")
        if not _INTEGER.fullmatch(value) or not -(2**31) <= int(value) < 2**31:
            return None
    return value


@dataclasses.dataclass
class PlainHeader:
    """The header of a plain file (read_plain_header's kind) as element spans of its
    first bytes, read without pydicom: for work that needs a few values of many files."""

    data: bytes
    spans: dict[int, RawSpan]  # File Meta and dataset elements by tag

    @classmethod
    def read(cls, path: Path) -> PlainHeader | None:
        """Read a file's plain header, or None when it is not plain (see plain_spans)."""
        head = _plain_head(path)
        if head is None:
            return None
        data, meta, body = head
        spans = {span[0]: span for span in body}
        spans.update((span[0], span) for span in meta)
        plain = cls(data, spans)
        return plain if plain.text(0x00020010, "UI") == EXPLICIT_VR_LE.encode() else None

    def text(self, tag: int, vr: str) -> bytes | None:
        """Return a text element's value (plain_value), or None when it is absent, of
        another VR, or not plain."""
        span = self.spans.get(tag)
        if span is None or span[1] != vr:
            return None
        return plain_value(vr, self.data[span[3] : span[3] + span[2]])

    def number(self, tag: int, default: int | None) -> int | None:
        """Return a one-valued US element (default when absent); -1 when it is not one."""
        span = self.spans.get(tag)
        if span is None:
            return default
        _, vr, length, start = span
        if vr != "US" or length != 2:
            return -1
        return int(struct.unpack_from("<H", self.data, start)[0])

    def frames(self) -> int:
        """Return number_of_frames() of the header (checks_pass() must hold)."""
        value = self.text(0x00280008, "IS") if 0x00280008 in self.spans else None
        return max(1, int(value)) if value else 1

    def checks_pass(self) -> bool:
        """Tell whether read_header() and check_integrity() pass this header.

        Only the plain case is told here: one-valued US numbers, ASCII CS and UI, a
        NumberOfFrames that is a number, a SOP Class UID or Pixel Data, native Pixel
        Data of the size they give. Anything else gives False: read_header() and
        check_integrity() then say what is wrong, if anything is.
        """
        spans, text = self.spans, self.text
        for tag in (0x00280010, 0x00280011, 0x00280002, 0x00280006, 0x00280100, 0x00280101,
                    0x00280102, 0x00280103):  # fmt: skip
            if self.number(tag, 0) == -1:
                return False
        for tag, vr in ((0x00080016, "UI"), (0x00080018, "UI"), (0x0020000E, "UI"),
                        (0x00080060, "CS"), (0x00280004, "CS")):  # fmt: skip
            if tag in spans and text(tag, vr) is None:
                return False
        if 0x00280008 in spans and not text(0x00280008, "IS"):
            return False
        pixels = spans.get(0x7FE00010)
        if pixels is None:
            return 0x00080016 in spans  # read_header: an image has one or the other
        rows, columns = self.number(0x00280010, None), self.number(0x00280011, None)
        samples, bits = self.number(0x00280002, 1), self.number(0x00280100, None)
        if not rows or not columns or not samples or bits not in (1, 8, 16, 32, 64):
            return False
        ybr_422 = samples == 3 and text(0x00280004, "CS") == b"YBR_FULL_422"
        expected = native_pixel_bytes(rows, columns, samples, bits, self.frames(), ybr_422)
        return pixels[2] in (expected, expected + expected % 2)


def _plain_elements(data: bytes, spans: list[RawSpan]) -> dict[BaseTag, RawDataElement]:
    """Return the raw elements of spans of data (plain_spans), for read_plain_header."""
    out: dict[BaseTag, RawDataElement] = {}
    for tag, vr, length, start in spans:
        if length > DEFER_BYTES and tag != 0x00080005:  # left on disk, as pydicom does
            value = None
        else:
            value = (
                data[start : start + length]
                if length
                else pydicom.dataelem.empty_value_for_VR(vr, raw=True)
            )
        if value is None or len(value) <= SHARED_VALUE_BYTES:
            elem = _shared_raw_element(tag, vr, length, value, start)
        else:
            elem = RawDataElement(BaseTag(tag), vr, length, value, start, False, True)
        out[elem.tag] = elem
    return out


_ZERO_PREAMBLE = bytes(128)


#: Longest value whose raw element _shared_raw_element() keeps for the next header.
SHARED_VALUE_BYTES = 256


@functools.lru_cache(maxsize=8192)
def _shared_raw_element(
    tag: int, vr: str, length: int, value: bytes | None, start: int
) -> RawDataElement:
    """Return a raw element, the same object for the same element of another file.

    The slices of a series share most of their header, value for value and offset for
    offset; holding each such element once (raw elements are immutable) keeps a merge
    of 1,200 headers 15 MB smaller.
    """
    return RawDataElement(BaseTag(tag), vr, length, value, start, False, True)


def _read_inputs(
    inputs: Sequence[Path], result: ActionResult, progress: ProgressFn
) -> list[tuple[Path, Dataset, PixelLocation | None]]:
    """Read the headers of inputs; failures are recorded and the rest returned.

    (Reading them in worker processes does not pay: pickling a header back costs about as
    much as parsing it.)
    """
    readable = []
    for index, path in enumerate(inputs, 1):
        try:
            ds, location = read_header(path)
        except DicomPressorError as exc:
            result.fail(path, exc.message)
        else:
            readable.append((path, ds, location))
        progress(index, len(inputs))
    return readable


def check_integrity(ds: Dataset, location: PixelLocation | None) -> None:
    """Raise DicomPressorError unless a file's pixel data is whole as its header says.

    The one check every action that writes DICOM makes of each input before it writes
    anything. read_header has made sure that the dataset parses to its end (walk_file:
    encapsulated Pixel Data parses into items up to its delimiter). Here the Pixel Data
    must be encapsulated exactly when the transfer syntax says so (PS3.5 A.4), and
    native Pixel Data must hold Rows x Columns x Samples per Pixel x Bits Allocated / 8
    x Number of Frames bytes (bits packed when Bits Allocated is 1, two samples a pixel
    in YBR_FULL_422; plus one byte of padding to an even length).
    """
    if location is None:
        return
    syntax = transfer_syntax_of(ds)
    if syntax.is_encapsulated and not location.encapsulated:
        raise DicomPressorError(
            f"(7FE0,0010) Pixel Data is stored native ({location.length} bytes), but "
            f"{uid_name(syntax)} stores it encapsulated, in items (PS3.5 A.4)"
        )
    if location.encapsulated:
        if not syntax.is_encapsulated:
            raise DicomPressorError(
                f"(7FE0,0010) Pixel Data is encapsulated, but {uid_name(syntax)} stores it "
                "native (PS3.5 A.4)"
            )
        return
    factors = {}
    for keyword, least in (("Rows", 1), ("Columns", 1), ("SamplesPerPixel", 1)):
        factors[keyword] = value = ds.get(keyword, 1 if keyword == "SamplesPerPixel" else None)
        if not isinstance(value, int) or value < least:
            shown = "is missing" if value is None else f"value of {value!r} is invalid"
            raise DicomPressorError(
                f"{element_label(int(Tag(keyword)))} {shown} for (7FE0,0010) Pixel Data of "
                f"{location.length} bytes"
            )
    bits = ds.get("BitsAllocated")
    if bits not in (1, 8, 16, 32, 64):
        shown = "is missing" if bits is None else f"value of {bits!r} is invalid"
        raise DicomPressorError(
            f"(0028,0100) Bits Allocated {shown} for (7FE0,0010) Pixel Data of "
            f"{location.length} bytes (1, 8, 16, 32 or 64 expected)"
        )
    frames = number_of_frames(ds)
    rows, columns, samples = factors["Rows"], factors["Columns"], factors["SamplesPerPixel"]
    ybr_422 = samples == 3 and str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422"
    expected = native_pixel_bytes(rows, columns, samples, bits, frames, ybr_422)
    if location.length not in (expected, expected + expected % 2):
        raise DicomPressorError(
            f"(7FE0,0010) Pixel Data holds {location.length} bytes, expected {expected}: "
            f"Rows {rows} x Columns {columns} x {samples} sample(s) x {bits} bits x "
            f"{frames} frame(s)" + (" (YBR_FULL_422)" if ybr_422 else "")
        )


def native_pixel_bytes(
    rows: int, columns: int, samples: int, bits: int, frames: int, ybr_422: bool
) -> int:
    """Return the bytes of native Pixel Data, before its padding to an even length.

    Bits are packed when Bits Allocated is 1; ybr_422 (3 samples in YBR_FULL_422): two
    luminance values share one pair of chrominance values, two values a pixel.
    """
    per_pixel = 2 if ybr_422 else samples
    return (rows * columns * per_pixel * frames * bits + 7) // 8


# ---- reading: values ----


def _as_list(value: Any) -> list[Any]:
    """Return a DICOM value as a list (empty for None)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def _first_number(value: Any) -> float | None:
    """Return the first value of a (multi-valued) number, or None."""
    if value is None or value == "":
        return None
    with contextlib.suppress(TypeError, IndexError):
        if not isinstance(value, (str, bytes, int, float)):
            value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


#: (Rescale Slope, Rescale Intercept) as _first_number() reads them.
Rescale = tuple[float | None, float | None]


def _float_tuple(value: Any, count: int) -> tuple[float, ...] | None:
    """Return value as a tuple of count floats, or None when it is not that."""
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


def _floats(value: Any) -> list[float] | None:
    """Return a multi-valued numeric attribute as floats, or None."""
    try:
        return [float(v) for v in _as_list(value)] or None
    except (TypeError, ValueError):
        return None


def _int_or_none(value: Any) -> int | None:
    """Return value as an int, or None."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _rounded(value: Any, decimals: int = GEOMETRY_DECIMALS) -> Any:
    """Round floats (also inside lists) so near-equal geometry compares equal."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return tuple(_rounded(v, decimals) for v in value)
    if isinstance(value, float):
        return round(value, decimals)
    return value


def value_of(ds: Dataset, tag: int) -> Any:
    """Return an element's value by tag, or None when absent (like ds.get by keyword).

    The element is converted once, as ds[tag] does; merge calls this for every slice,
    where pydicom's keyword and Tag lookups would cost more than the conversion.
    """
    item = ds._dict.get(tag)
    if item is None:
        return None
    return (item if isinstance(item, DataElement) else ds[tag]).value


#: VRs whose single ASCII value text_of reads from the bytes: str() of pydicom's value
#: is that text without its padding.
PLAIN_TEXT_VRS = frozenset(("AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"))


_PLAIN_NUMBERS = re.compile(rb"[0-9eE+\-. \\]*")


def text_of(ds: Dataset, tag: int) -> str | None:
    """Return str() of an element's value by tag, or None when absent.

    A single ASCII value of a PLAIN_TEXT_VRS element is read from the bytes without
    pydicom's conversion, which merge would otherwise pay for several values per slice.
    """
    item = ds._dict.get(tag)
    if item is None:
        return None
    raw = item.value if isinstance(item, RawDataElement) else None
    if isinstance(raw, bytes) and item.VR in PLAIN_TEXT_VRS and raw.isascii() and b"\\" not in raw:
        return raw.decode("ascii").strip(" \0")
    value = value_of(ds, tag)
    return None if value is None else str(value)


def numbers_of(ds: Dataset, tag: int, count: int) -> tuple[float, ...] | None:
    """Return a DS or IS attribute as count finite floats, or None (see _float_tuple).

    Plain numbers are parsed from the bytes: what pydicom's DS conversion gives, without
    its cost. Anything else (and anything float() refuses) goes through pydicom, which
    also raises where it would.
    """
    item = ds._dict.get(tag)
    raw = item.value if isinstance(item, RawDataElement) else None
    if isinstance(raw, bytes) and item.VR in ("DS", "IS") and _PLAIN_NUMBERS.fullmatch(raw):
        try:
            return _float_tuple([float(v) for v in raw.split(b"\\")], count)
        except ValueError:
            pass
    return _float_tuple(value_of(ds, tag), count)


def element_signature(elem: DataElement) -> Any:
    """Return a hashable, comparable form of an element's value."""
    value = elem.value
    if elem.VR == "SQ":
        return tuple(tuple((e.tag, element_signature(e)) for e in item) for item in value or [])
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return tuple(str(v) for v in value)
    if isinstance(value, bytes):
        return value
    return str(value) if value is not None else None


def _value_ok(elem: DataElement) -> bool:
    """Tell whether an element's value can be read (deferred values may not be)."""
    try:
        _ = elem.value
    except Exception:  # pydicom may raise many types on a bad value
        return False
    return True


def raw_value(ds: Dataset, tag: int) -> Any:
    """Return an element's value as element_signature would, converting raw US and text
    values by hand (pydicom's conversion of every element is the slow part of merging).
    """
    if tag not in ds:
        return None
    item = ds.get_item(tag, keep_deferred=True)
    if isinstance(item, DataElement):
        return element_signature(item)
    vr = item.VR or dictionary_VR(tag)
    data = item.value or b""
    if vr == "US":
        order = "<" if item.is_little_endian else ">"
        numbers = struct.unpack(f"{order}{len(data) // 2}H", data[: len(data) // 2 * 2])
        return str(numbers[0]) if len(numbers) == 1 else tuple(str(n) for n in numbers)
    if vr in ("CS", "UI", "SH", "LO"):
        text = data.decode("latin-1").strip(" \0")
        return tuple(text.split("\\")) if "\\" in text else text
    return element_signature(ds[tag])


def same_in_all(datasets: Sequence[Dataset], tag: int) -> bool:
    """Tell whether every dataset has the element with one value.

    Elements pydicom has not converted yet are compared as their raw bytes, so only
    elements that were already converted somewhere cost a conversion.
    """
    # Dataset._dict holds the raw or converted element by tag; reading it directly skips
    # pydicom's Tag conversions, which dominate when 400 headers are compared.
    items = [ds._dict.get(tag) for ds in datasets]
    if any(item is None for item in items):
        return False
    if not any(isinstance(item, DataElement) for item in items):
        first = items[0]
        return all((i.length, i.value) == (first.length, first.value) for i in items[1:])
    # Some were converted (the template's pixel description, say): compare signatures,
    # converting one element of each distinct raw encoding, not all of them.
    signatures = set()
    converted: set[tuple[Any, ...]] = set()
    for ds, item in zip(datasets, items, strict=True):
        if isinstance(item, DataElement):
            signatures.add(element_signature(item))
        else:
            key = (item.VR, item.is_implicit_VR, item.is_little_endian, item.value)
            if key in converted:
                continue
            converted.add(key)
            signatures.add(element_signature(ds[tag]))
        if len(signatures) > 1:
            return False
    return True


# ---- geometry and slice sorting ----


@dataclasses.dataclass(slots=True)
class Slice:
    """One single-frame source instance, as merge needs it (the header stays on disk)."""

    path: Path
    header: Dataset
    pixels: PixelLocation | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance_number: int | None
    syntax: UID
    #: stack_key(), once computed
    stack: tuple[Any, ...] | None = None


def make_slice(path: Path, ds: Dataset, location: PixelLocation | None) -> Slice:
    """Describe a single-frame instance for merging."""
    position = numbers_of(ds, 0x00200032, 3)  # Image Position (Patient)
    orientation = numbers_of(ds, 0x00200037, 6)  # Image Orientation (Patient)
    return Slice(
        path=path,
        header=ds,
        pixels=location,
        position=position,  # type: ignore[arg-type]
        orientation=orientation,
        instance_number=_int_or_none(text_of(ds, 0x00200013)),  # Instance Number
        syntax=transfer_syntax_of(ds),
    )


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Return the unit normal of a slice: row cosines x column cosines (PS3.3 C.7.6.2.1.1)."""
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:6], dtype=float)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 0 else normal


def stack_key(s: Slice) -> tuple[Any, ...]:
    """Return the attributes that must agree for slices to form one stack."""
    ds = s.header
    key: list[Any] = [raw_value(ds, Tag(keyword)) for keyword in STACK_KEYWORDS]
    key.append(_rounded(s.orientation, 3) if s.orientation else None)
    key.append(_rounded(numbers_of(ds, 0x00280030, 2), 4))  # Pixel Spacing
    return tuple(key)


@dataclasses.dataclass
class StackOrder:
    """Slices in spatial order with what the sort found along the way."""

    slices: list[Slice]
    by_position: bool
    distances: list[float]
    notes: list[str]


def sort_slices(slices: list[Slice]) -> StackOrder:
    """Sort slices along the slice normal; fall back to InstanceNumber.

    The position of each slice is projected on the normal of the (shared) orientation, as
    dcmulti, Orthanc and highdicom do. Duplicate positions, gaps and non-uniform spacing
    are described in ``notes``.
    """
    notes: list[str] = []
    geometric = all(s.position is not None and s.orientation is not None for s in slices)
    if geometric and len(slices) > 1:
        normal = slice_normal(slices[0].orientation)  # type: ignore[arg-type]
        if np.linalg.norm(normal) > 0.5:
            keyed = sorted(
                slices,
                key=lambda s: (
                    float(np.dot(normal, s.position)),  # type: ignore[arg-type]
                    s.instance_number if s.instance_number is not None else 0,
                    s.path.name,
                ),
            )
            dist = [float(np.dot(normal, s.position)) for s in keyed]  # type: ignore[arg-type]
            notes.extend(describe_spacing(dist))
            return StackOrder(keyed, True, dist, notes)
        notes.append("ImageOrientationPatient has no valid normal: sorted by InstanceNumber")
    elif len(slices) > 1:
        notes.append("no ImagePositionPatient/ImageOrientationPatient: sorted by InstanceNumber")
    ordered = sorted(
        slices,
        key=lambda s: (s.instance_number is None, s.instance_number or 0, s.path.name),
    )
    numbers = [s.instance_number for s in ordered if s.instance_number is not None]
    if len(set(numbers)) != len(numbers):
        notes.append("duplicate InstanceNumber values")
    return StackOrder(ordered, False, [], notes)


#: Kinds of SpacingIssue (and of merge's warnings, with RESCALE_DIFFERS).
DUPLICATE_POSITIONS, GAP, UNEVEN_SPACING = "duplicate_positions", "gap", "uneven_spacing"


@dataclasses.dataclass(frozen=True)
class SpacingIssue:
    """An irregularity of sorted slice positions: its kind, its steps and a note.

    Step i lies between slice i and slice i + 1 of the sorted order.
    """

    kind: str
    steps: tuple[int, ...]
    note: str


def spacing_issues(distances: list[float]) -> list[SpacingIssue]:
    """Find duplicate positions, gaps (a step over GAP_FACTOR x the typical, the median
    step) and non-uniform spacing in sorted distances."""
    issues: list[SpacingIssue] = []
    steps = np.diff(np.asarray(distances))
    if steps.size == 0:
        return issues
    tiny = np.abs(steps) < 10**-GEOMETRY_DECIMALS
    duplicates = tuple(int(i) for i in np.flatnonzero(tiny))
    if duplicates:
        note = f"{len(duplicates)} duplicate slice position(s)"
        issues.append(SpacingIssue(DUPLICATE_POSITIONS, duplicates, note))
    real = steps[~tiny]
    if real.size == 0:
        return issues
    ordered = sorted(real.tolist())  # np.median would import numpy.ma (about 30 ms)
    middle = len(ordered) // 2
    typical = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    gaps = tuple(int(i) for i in np.flatnonzero(~tiny & (steps > GAP_FACTOR * typical)))
    tolerance = SPACING_TOLERANCE * max(abs(typical), 1e-6)
    if gaps:
        note = (
            f"{len(gaps)} gap(s) in slice positions (step up to {float(real.max()):.4g} mm, "
            f"typical {typical:.4g} mm): slices may be missing"
        )
        issues.append(SpacingIssue(GAP, gaps, note))
    elif float(real.max() - real.min()) > tolerance:
        uneven = tuple(
            int(i) for i in np.flatnonzero(~tiny & (np.abs(steps - typical) > tolerance))
        )
        note = f"non-uniform slice spacing ({float(real.min()):.4g} to {float(real.max()):.4g} mm)"
        issues.append(SpacingIssue(UNEVEN_SPACING, uneven, note))
    return issues


def describe_spacing(distances: list[float]) -> list[str]:
    """Describe duplicate positions, gaps and non-uniform spacing of sorted distances."""
    return [issue.note for issue in spacing_issues(distances)]


def runs_between_gaps(slices: list[Slice]) -> list[list[Slice]]:
    """Sort slices (sort_slices) and cut them at each gap: the evenly spaced runs."""
    order = sort_slices(slices)
    if not order.by_position:
        return [order.slices]
    gaps = next((i.steps for i in spacing_issues(order.distances) if i.kind == GAP), ())
    runs, start = [], 0
    for step in gaps:
        runs.append(order.slices[start : step + 1])
        start = step + 1
    runs.append(order.slices[start:])
    return runs


def group_into_stacks(
    slices: list[Slice],
) -> list[tuple[str, list[Slice]]]:
    """Group slices by SeriesInstanceUID, then into technically consistent stacks."""
    by_series: dict[str, list[Slice]] = defaultdict(list)
    for s in slices:
        by_series[text_of(s.header, 0x0020000E) or ""].append(s)  # Series Instance UID
    stacks: list[tuple[str, list[Slice]]] = []
    for series_uid in sorted(by_series, key=lambda u: _series_sort_key(by_series[u])):
        groups: dict[tuple[Any, ...], list[Slice]] = {}
        for s in by_series[series_uid]:
            groups.setdefault(s.stack if s.stack is not None else stack_key(s), []).append(s)
        for members in sorted(groups.values(), key=len, reverse=True):
            stacks.append((series_uid, members))
    return stacks


def _series_sort_key(members: list[Slice]) -> tuple[int, str]:
    """Order series by SeriesNumber, then by UID."""
    number = _int_or_none(members[0].header.get("SeriesNumber"))
    return (
        number if number is not None else 1 << 30,
        str(members[0].header.get("SeriesInstanceUID", "")),
    )


# ---- writing: elements, headers, pixel data ----


def copy_element(source: Dataset, target: Dataset, keyword: str) -> None:
    """Copy one attribute by keyword when the source has it."""
    if keyword in source:
        elem = source[keyword]
        target.add(DataElement(elem.tag, elem.VR, elem.value))


def dataset_of(*keywords: str, source: Dataset) -> Dataset:
    """Return a dataset holding those of keywords that source has."""
    out = Dataset()
    for keyword in keywords:
        copy_element(source, out, keyword)
    return out


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """Return a Code Sequence item (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def ds_text(value: float) -> str:
    """Format a number as a Decimal String value (at most 16 characters)."""
    digits = 12
    while len(text := f"{value:.{digits}g}") > 16:  # 6 digits always fit
        digits -= 1
    return text


def now_da_tm() -> tuple[str, str]:
    """Return the current local date and time as DICOM DA and TM strings."""
    stamp = time.localtime()
    return time.strftime("%Y%m%d", stamp), time.strftime("%H%M%S", stamp)


def _first_value(*values: Any) -> Any:
    """Return the first value that is not None or empty."""
    for value in values:
        if value not in (None, "", []):
            return value
    return None


def item_header(length: int, tag: int = 0xFFFEE000, little: bool = True) -> bytes:
    """Return an item (or delimiter) header: always tag and 4-byte length (PS3.5 7.5)."""
    return struct.pack("<HHL" if little else ">HHL", tag >> 16, tag & 0xFFFF, length)


def encode_element(tag: int, vr: str, value: bytes) -> bytes:
    """Return one Explicit VR Little Endian element (value padded to even length)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    if vr in LONG_LENGTH_VRS:
        head = struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr.encode(), len(value))
    else:
        head = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value))
    return head + value


def encode_sequence(tag: int, items: Iterable[bytes]) -> bytes:
    """Return a sequence element of defined length holding the encoded items."""
    return encode_element(tag, "SQ", b"".join(item_header(len(i)) + i for i in items))


def encode_items(elements: dict[int, bytes]) -> bytes:
    """Return the encoded elements of one item in tag order."""
    return b"".join(elements[tag] for tag in sorted(elements))


def element_bytes(elem: DataElement) -> bytes:
    """Encode an element in Explicit VR Little Endian.

    ASCII text, numbers and sequences of them take a fast path; anything else goes
    through pydicom's writer. Merge writes its per-frame sequence this way, which is
    several times faster than building and writing a pydicom Dataset per frame.
    """
    if elem.VR == "SQ":  # items of defined length, encoded here too
        items = elem.value or []
        return encode_sequence(int(elem.tag), (encode_items(dataset_bytes(i)) for i in items))
    fast = _fast_element_bytes(elem)
    if fast is not None:
        return fast
    return pydicom_element_bytes(elem)


def pydicom_element_bytes(
    elem: DataElement,
    encodings: str | list[str] | None = None,
    *,
    implicit: bool = False,
    little: bool = True,
) -> bytes:
    """Encode one element with pydicom's writer (Explicit VR Little Endian by default)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little, implicit
    pydicom.filewriter.write_data_element(buffer, elem, encodings)
    return buffer.getvalue()


def _fast_element_bytes(item: DataElement | RawDataElement) -> bytes | None:
    """Encode one element in Explicit VR Little Endian without pydicom's writer, or None.

    A raw element read from an Explicit VR Little Endian file is copied as read; a
    converted one is encoded when it is ASCII text, numbers, AT, bytes or a sequence of
    such items. Anything else (other character sets, ambiguous or unknown VRs, values not
    read yet) gives None: the caller then lets pydicom write the whole dataset.
    """
    tag = int(item.tag)
    if isinstance(item, RawDataElement):
        vr = item.VR
        if (
            item.is_implicit_VR
            or not item.is_little_endian
            or not vr
            or vr == "UN"  # pydicom would convert it to the dictionary VR
            or item.value is None
            or item.length == 0xFFFFFFFF
            or len(item.value) % 2
        ):
            return None
        return encode_element(tag, vr, item.value)
    vr, value = item.VR, item.value
    if vr == "SQ":  # lengths defined or undefined as they were read, like pydicom
        parts = []
        for child in value or []:
            body = fast_dataset_bytes(child)
            if body is None:
                return None
            if getattr(child, "is_undefined_length_sequence_item", False):
                parts.append(item_header(0xFFFFFFFF) + body + item_header(0, 0xFFFEE00D))
            else:
                parts.append(item_header(len(body)) + body)
        content = b"".join(parts)
        if not item.is_undefined_length:
            return encode_element(tag, vr, content)
        head = struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, b"SQ", 0xFFFFFFFF)
        return head + content + item_header(0, 0xFFFEE0DD)
    if item.is_undefined_length:  # encapsulated pixel data: pydicom writes it
        return None
    if value is None or value == "" or (isinstance(value, list) and not value):
        return encode_element(tag, vr, b"")
    values = value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    if vr in TEXT_VRS:
        text = "\\".join(str(v) for v in values)
        return encode_element(tag, vr, text.encode("ascii")) if text.isascii() else None
    if vr in NUMBER_FORMATS:
        return encode_element(tag, vr, struct.pack(f"<{len(values)}{NUMBER_FORMATS[vr]}", *values))
    if vr == "AT":
        return encode_element(
            tag, vr, b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in values)
        )
    if vr in BINARY_VRS and isinstance(value, (bytes, bytearray)):
        return encode_element(tag, vr, bytes(value))
    return None


def fast_dataset_bytes(ds: Dataset) -> bytes | None:
    """Encode ds (not its File Meta) in Explicit VR Little Endian, or None (see above)."""
    parts = []
    for tag in sorted(ds._dict):
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # retired group length (PS3.5 7.2), which pydicom does not write
        encoded = _fast_element_bytes(ds._dict[tag])
        if encoded is None:
            return None
        parts.append(encoded)
    return b"".join(parts)


def encode_file(ds: Dataset) -> bytes:
    """Return ds as a whole file: preamble, File Meta (ds.file_meta) and dataset.

    Datasets in Explicit VR Little Endian (also the compressed syntaxes) are encoded by
    fast_dataset_bytes where it can, which copies the elements that were only read; the
    rest goes through pydicom.
    """
    buffer = io.BytesIO()  # not DicomBytesIO: pydicom would take its encoding from it
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    body = (
        fast_dataset_bytes(ds)
        if not syntax.is_implicit_VR
        and syntax.is_little_endian
        and not syntax.is_deflated
        # a changed character set makes pydicom re-encode every text value
        and ds.original_character_set == ds._character_set
        else None
    )
    if body is None:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()
    write_file_start(buffer, ds.file_meta)
    buffer.write(body)
    return buffer.getvalue()


def add_raw_sequence(ds: Dataset, tag: int, items: list[bytes]) -> None:
    """Put a sequence of encoded items into ds; pydicom writes a raw element's bytes as is."""
    value = b"".join(item_header(len(i)) + i for i in items)
    ds[tag] = RawDataElement(Tag(tag), "SQ", len(value), value, 0, False, True)


def dataset_bytes(ds: Dataset) -> dict[int, bytes]:
    """Encode every element of a dataset; return them by tag."""
    return {int(elem.tag): element_bytes(elem) for elem in ds}


def encoded_element(ds: Dataset, tag: int) -> bytes | None:
    """Return an element of ds encoded in Explicit VR Little Endian, or None when absent.

    An element still as read from an Explicit VR Little Endian file is copied as read,
    without converting it.
    """
    item = ds._dict.get(tag)
    if item is None:
        return None
    fast = _fast_element_bytes(item) if isinstance(item, RawDataElement) else None
    return fast if fast is not None else element_bytes(ds[tag])


def file_meta_for(ds: Dataset, syntax: UID) -> FileMetaDataset:
    """Return File Meta Information for a dataset (PS3.10 7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    meta.ImplementationVersionName = f"DICOMPRESSOR{__version__.replace('.', '')}"[:16]
    return meta


def write_header(handle: BinaryIO, ds: Dataset, syntax: UID) -> None:
    """Write preamble, File Meta and dataset (without Pixel Data) in syntax.

    Raw sequences already in Explicit VR Little Endian (merge's per-frame items) are
    copied as they are: pydicom would parse each one again to check its VRs, which
    costs more than building them did. The rest is what pydicom writes; in Explicit VR
    Little Endian (the compressed syntaxes too) through write_explicit_dataset().
    """
    syntax = UID(syntax)
    ds.file_meta = file_meta_for(ds, syntax)
    ds.preamble = b"\0" * 128
    cuts = [int(tag) for tag in list(ds.keys()) if _is_verbatim_sequence(ds.get_item(tag))]
    segments: list[Dataset] = [Dataset() for _ in range(len(cuts) + 1)]
    for tag in list(ds.keys()):
        if int(tag) not in cuts:
            segments[bisect.bisect(cuts, int(tag))][tag] = ds.get_item(tag)
    head = segments[0]
    head.file_meta, head.preamble = ds.file_meta, ds.preamble
    explicit = not syntax.is_implicit_VR and syntax.is_little_endian and not syntax.is_deflated
    if any(tag >> 16 in (0x0000, 0x0002) or tag == 0x7FE00010 for tag in head._dict):
        explicit = False  # dcmwrite refuses the first two; Pixel Data: its own rules
    stream = DicomFileLike(handle)
    stream.is_little_endian, stream.is_implicit_VR = True, False
    if explicit:  # what dcmwrite(enforce_file_format=True) writes, as it writes it
        write_file_start(handle, head.file_meta, copy_meta=True)  # preamble: zeros
        write_explicit_dataset(stream, head, pydicom.charset.default_encoding)
    else:
        pydicom.dcmwrite(handle, head, enforce_file_format=True)
    encoding = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    for tag, segment in zip(cuts, segments[1:], strict=True):
        raw = ds.get_item(tag)
        handle.write(encode_element(tag, "SQ", raw.value))
        if explicit:
            write_explicit_dataset(stream, segment, encoding)
        else:
            pydicom.filewriter.write_dataset(stream, segment, parent_encoding=encoding)


def file_meta_bytes(meta: FileMetaDataset) -> bytes | None:
    """Return a File Meta group as pydicom's write_file_meta_info(enforce_standard=True)
    writes it (a File Meta Information Version added when missing, its group length
    first), or None when pydicom must write it (values other than ASCII text, or a Type 1
    element missing: pydicom says which)."""
    if any(not meta.get(k) for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                                     "TransferSyntaxUID", "ImplementationClassUID")):  # fmt: skip
        return None
    parts = {}
    for tag in list(meta.keys()):
        if int(tag) != 0x00020000:
            encoded = _fast_element_bytes(meta[tag])
            if encoded is None:
                return None
            parts[int(tag)] = encoded
    if not meta.get("FileMetaInformationVersion"):
        parts[0x00020001] = encode_element(0x00020001, "OB", b"\x00\x01")
    if "ImplementationVersionName" not in meta:
        return None  # pydicom names itself there
    body = b"".join(parts[tag] for tag in sorted(parts))
    return encode_element(0x00020000, "UL", struct.pack("<L", len(body))) + body


def write_file_start(handle: BinaryIO, meta: FileMetaDataset, *, copy_meta: bool = False) -> None:
    """Write a zero preamble, ``DICM`` and the File Meta as dcmwrite(enforce_file_format=True)
    does (file_meta_bytes, else pydicom, which adds its missing elements to meta unless
    copy_meta has it write a copy)."""
    handle.write(b"\0" * 128 + b"DICM")
    encoded = file_meta_bytes(meta)
    if encoded is not None:
        handle.write(encoded)
    else:
        pydicom.filewriter.write_file_meta_info(
            DicomFileLike(handle),
            copy.deepcopy(meta) if copy_meta else meta,
            enforce_standard=True,
        )


def write_explicit_dataset(fp: DicomFileLike, dataset: Dataset, parent_encoding: Any) -> None:
    """Write what pydicom's write_dataset(fp, dataset, parent_encoding) writes in Explicit
    VR Little Endian, faster for elements pydicom converts before it writes them.

    pydicom converts every element it did not read in this encoding and character set
    (a dataset built from another's elements) and encodes the value again. An element
    read from an Explicit VR Little Endian file comes out of that the same way in every
    file that holds it, so each one is converted and encoded once per process
    (_reencoded): a series shares most of its header.
    """
    if (
        dataset.original_encoding == (False, True)
        and dataset.original_character_set == dataset._character_set
    ):
        pydicom.filewriter.write_dataset(fp, dataset, parent_encoding)  # copied as read
        return
    if _needs_vr_correction(dataset):
        dataset = pydicom.filewriter.correct_ambiguous_vr(dataset, True)
    encoding = dataset.get("SpecificCharacterSet", parent_encoding)
    written = encoding if isinstance(encoding, str) else tuple(encoding)
    read: str | tuple[str, ...] | None = None
    for tag in sorted(dataset.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group length (PS3.5 7.2), which pydicom does not write
        item = dataset._dict[tag]
        if (
            isinstance(item, RawDataElement)
            and not item.is_implicit_VR
            and item.is_little_endian
            and item.VR not in (None, "UN", "SQ")
            and " or " not in item.VR
            and item.value is not None
            and len(item.value) <= REENCODED_MAX_BYTES
        ):
            if read is None:  # as Dataset.__getitem__ chooses it, once
                charset = dataset.original_character_set or dataset._character_set
                read = charset if isinstance(charset, str) else tuple(charset)
            used = pydicom.charset.default_encoding if tag == 0x00080005 else read
            fp.write(_reencoded(int(tag), item.VR, bytes(item.value), used, written))
            continue
        elem = dataset[tag]
        fast = _fast_element_bytes(elem) if elem.VR == "SQ" else None
        if fast is not None:  # a sequence of items only read (merge's, a file's own)
            fp.write(fast)
            continue
        with pydicom.tag.tag_in_exception(tag):
            pydicom.filewriter.write_data_element(fp, elem, encoding)


def _needs_vr_correction(ds: Dataset) -> bool:
    """Tell whether pydicom's correct_ambiguous_vr() may change anything in ds.

    Elements read in explicit VR, sequences too, name their VR: only an element made
    with an ambiguous one ("US or SS") or read in implicit VR may need it. Walking the
    items of a merged file's 400 per-frame groups is all that correct_ambiguous_vr()
    would do to it, in a fifth of a second.
    """
    for elem in ds._dict.values():
        if isinstance(elem, RawDataElement):
            if elem.is_implicit_VR or not elem.VR or " or " in elem.VR:
                return True
        elif elem.VR == "SQ":
            if any(_needs_vr_correction(item) for item in elem.value or []):
                return True
        elif " or " in elem.VR:
            return True
    return False


#: Longest value write_explicit_dataset() keeps encoded for the next file.
REENCODED_MAX_BYTES = 1024


@functools.lru_cache(maxsize=8192)
def _reencoded(
    tag: int, vr: str, value: bytes, read: str | tuple[str, ...], written: str | tuple[str, ...]
) -> bytes:
    """Return an element read from Explicit VR Little Endian as pydicom writes it again:
    converted with the read character set, encoded with the written one."""
    raw = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)
    elem = pydicom.dataelem.convert_raw_data_element(
        raw, encoding=read if isinstance(read, str) else list(read)
    )
    with pydicom.tag.tag_in_exception(BaseTag(tag)):
        return pydicom_element_bytes(elem, written if isinstance(written, str) else list(written))


def _is_verbatim_sequence(item: Any) -> bool:
    """Tell whether a dataset item is a raw Explicit VR Little Endian sequence."""
    return (
        isinstance(item, RawDataElement)
        and item.VR == "SQ"
        and not item.is_implicit_VR
        and item.is_little_endian
        and item.value is not None
        and item.length != 0xFFFFFFFF
    )


def pixel_data_vr(bits_allocated: int, encapsulated: bool) -> bytes:
    """Return the VR of Pixel Data: OB for encapsulated or 8-bit, else OW (PS3.5 A.2)."""
    return b"OB" if encapsulated or bits_allocated <= 8 else b"OW"


def element_header(tag: int, vr: bytes, length: int) -> bytes:
    """Return an Explicit VR Little Endian header for an OB/OW element."""
    return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr, length)


@dataclasses.dataclass(frozen=True)
class FileSpan:
    """Bytes of a file, copied to the output by the kernel where it can."""

    path: Path
    offset: int
    length: int


def copy_span(handle: BinaryIO, span: FileSpan) -> None:
    """Append a file span to handle (copy_file_range on Linux, read and write elsewhere)."""
    copy_range = getattr(os, "copy_file_range", None)
    with span.path.open("rb") as source:
        if copy_range is not None:
            handle.flush()
            offset, left = span.offset, span.length
            while left > 0:
                try:
                    done = copy_range(source.fileno(), handle.fileno(), left, offset)
                except OSError:  # e.g. across file systems on old kernels
                    break
                if done == 0:
                    raise DicomPressorError(f"{span.path.name}: truncated pixel data")
                offset, left = offset + done, left - done
            if left == 0:
                return
            span = FileSpan(span.path, offset, left)
        source.seek(span.offset)
        data = source.read(span.length)
    if len(data) != span.length:
        raise DicomPressorError(f"{span.path.name}: truncated pixel data")
    handle.write(data)


def write_native_frames(
    handle: BinaryIO,
    frames: Iterable[bytes | FileSpan],
    frame_bytes: int,
    n_frames: int,
    bits: int,
    *,
    implicit: bool = False,
) -> None:
    """Stream native frames as one Pixel Data element, padded to even length.

    The element header is Explicit VR Little Endian's, or Implicit VR's with implicit.
    """
    total = frame_bytes * n_frames
    length = total + total % 2
    if implicit:
        handle.write(struct.pack("<HHL", 0x7FE0, 0x0010, length))
    else:
        handle.write(element_header(0x7FE00010, pixel_data_vr(bits, False), length))
    written = 0
    for data in frames:
        if isinstance(data, FileSpan):
            copy_span(handle, data)
            written += 1
            continue
        if len(data) != frame_bytes:
            raise DicomPressorError(
                f"frame holds {len(data)} bytes, expected {frame_bytes} (Rows x Columns x "
                "SamplesPerPixel x BitsAllocated/8)"
            )
        handle.write(data)
        written += 1
    if written != n_frames:
        raise DicomPressorError(f"wrote {written} frames, expected {n_frames}")
    if total % 2:
        handle.write(b"\0")


def write_encapsulated_frames(
    handle: BinaryIO, frames: Iterable[list[bytes]], frame_sizes: list[int]
) -> None:
    """Stream encapsulated frames with a basic offset table (PS3.5 A.4).

    frame_sizes gives each frame's encoded size including its item headers, so the
    offset table is written before the frames themselves are read.
    """
    offsets = []
    position = 0
    for size in frame_sizes:
        offsets.append(position)
        position += size
    table = b"" if position >= 2**32 else struct.pack(f"<{len(offsets)}L", *offsets)
    handle.write(element_header(0x7FE00010, b"OB", 0xFFFFFFFF))
    handle.write(item_header(len(table)))
    handle.write(table)
    for fragments in frames:
        for fragment in fragments:
            padded = fragment + b"\0" if len(fragment) % 2 else fragment
            handle.write(item_header(len(padded)))
            handle.write(padded)
    handle.write(item_header(0, 0xFFFEE0DD))


def encapsulated_size(fragment_lengths: Iterable[int]) -> int:
    """Return the bytes a frame's fragments take with their item headers and padding."""
    return sum(8 + n + n % 2 for n in fragment_lengths)


def write_sample_series(folder: Path, *, slices: int = 24, size: int = 128) -> list[Path]:
    """Write a small synthetic CT series (a sphere phantom) with shuffled file names.

    It gives the README's first command data that needs nothing from the user.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = new_uid(), new_uid(), new_uid()
    grid = np.mgrid[0:size, 0:size].astype(float) - (size - 1) / 2
    order = np.random.default_rng(7).permutation(slices)
    paths = []
    for index in range(slices):
        z = index - (slices - 1) / 2
        radius2 = grid[0] ** 2 + grid[1] ** 2 + (z * 4.0 * size / 128) ** 2
        hu = np.where(radius2 < (0.4 * size) ** 2, 40, -1000) + (grid[0] > 0) * 20
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, new_uid()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber, ds.Modality, ds.Manufacturer = "SAMPLE1", "CT", "DicomPressor"
        ds.ReferringPhysicianName, ds.PatientName, ds.PatientID = "", "SAMPLE^PATIENT", "SAMPLE"
        ds.PatientBirthDate, ds.PatientSex, ds.PatientPosition = "", "O", "HFS"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, index + 1
        ds.SeriesDescription = "Sample sphere phantom"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.ImagePositionPatient = [-size / 2, -size / 2, index * 4.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation, ds.SliceThickness, ds.PixelSpacing = index * 4.0, 4.0, [1, 1]
        ds.KVP = 120
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = (hu + 1024).astype("<u2").tobytes()
        ds.file_meta = file_meta_for(ds, ExplicitVRLittleEndian)
        target = folder / f"slice_{int(order[index]):03d}.dcm"
        with atomic_output(target) as handle:
            ds.preamble = b"\0" * 128
            pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        paths.append(target)
    return paths


# ---- building multi-frame datasets ----


def carried_tags(ds: Dataset) -> list[int]:
    """Return the tags of the dataset's elements that merge may carry over."""
    tags = []
    not_copied = tags_of(NOT_COPIED_TO_MULTIFRAME)
    for key in ds._dict:
        tag = int(key)  # plain ints: BaseTag's comparisons are Python-level and slow
        if tag >> 16 in (0x0002, 0xFFFA, 0xFFFC) or tag >= 0x7FE00000 or not tag & 0xFFFF:
            continue
        if tag in not_copied:
            continue
        tags.append(tag)
    return tags


def partition_attributes(
    slices: list[Slice],
) -> tuple[dict[int, DataElement], list[dict[int, DataElement]]]:
    """Split the slices' attributes into shared ones and per-slice varying ones.

    Values are compared as the raw bytes pydicom read, so only the elements that are
    kept get converted.
    """
    per_slice = [carried_tags(s.header) for s in slices]
    all_tags = sorted(set().union(*per_slice))
    first = slices[0].header
    shared: dict[int, DataElement] = {}
    varying: set[int] = set()
    headers = [s.header for s in slices]
    for tag in all_tags:
        if tag not in first._dict:
            varying.add(tag)
            continue
        if same_in_all(headers, tag):
            elem = first[tag]
            if _value_ok(elem):
                shared[tag] = elem
        else:
            varying.add(tag)
    per_frame = []
    for s in slices:
        values = {}
        for tag in varying:
            if tag in s.header._dict:
                elem = s.header[tag]
                if _value_ok(elem):
                    values[tag] = elem
        per_frame.append(values)
    return shared, per_frame


def functional_group_item(keyword: str, source: Dataset, shift: int = 0) -> Dataset | None:
    """Build one functional group sequence item from a single-frame dataset, if possible.

    shift: frames are stored as offset binary, shifted up by this much (to_offset_binary);
    the Rescale Intercept takes it off.
    """
    members = [k for k, g in FUNCTIONAL_GROUP_OF.items() if g == keyword]
    item = dataset_of(*members, source=source)
    if keyword == "PixelValueTransformationSequence":
        if "RescaleIntercept" not in item and "RescaleSlope" not in item:
            return None
        item.setdefault("RescaleIntercept", "0")
        item.setdefault("RescaleSlope", "1")
        if shift:
            item.RescaleIntercept = ds_text(
                float(item.RescaleIntercept) - shift * float(item.RescaleSlope)
            )
        if "RescaleType" not in item:
            item.RescaleType = "HU" if source.get("Modality") == "CT" else "US"
    if keyword == "FrameVOILUTSequence" and (
        "WindowCenter" not in item or "WindowWidth" not in item
    ):
        return None
    if keyword == "PixelMeasuresSequence" and "PixelSpacing" not in item:
        return None
    if len(item) == 0:
        return None
    seq = Dataset()
    setattr(seq, keyword, DicomSequence([item]))
    return seq


def to_offset_binary(
    frame: bytes | np.ndarray, bits_allocated: int, bits_stored: int, out_bits: int
) -> bytes:
    """Store signed pixel values as unsigned ones plus 2**(BitsStored-1) (offset binary).

    frame is either native stored bytes (two's complement in BitsStored bits of
    bits_allocated) or decoded signed values; the result has out_bits per value.
    """
    offset = 1 << (bits_stored - 1)
    dtype = np.dtype("<u2" if bits_allocated == 16 else "u1")
    if isinstance(frame, np.ndarray):
        values = frame.astype(np.int32)
    else:
        values = np.frombuffer(frame, dtype=dtype).astype(np.int32) & ((1 << bits_stored) - 1)
        values = np.where(values >= offset, values - 2 * offset, values)
    return (values + offset).astype("<u2" if out_bits == 16 else "u1").tobytes()


def from_offset_binary(
    frame: bytes, bits_allocated: int, bits_stored: int, out_bits: int
) -> bytes:
    """Undo to_offset_binary: unsigned stored values (bits_allocated each) back to signed
    ones (two's complement, out_bits each); bits_stored is the source's, which set the shift.
    """
    offset = 1 << (bits_stored - 1)
    unsigned = np.dtype("<u2" if bits_allocated == 16 else "u1")
    signed = np.dtype("<i2" if out_bits == 16 else "i1")
    values = np.frombuffer(frame, dtype=unsigned).astype(np.int32) & ((1 << bits_stored) - 1)
    return (values - offset).astype(signed).tobytes()


def multiframe_sop_class(template: Dataset, *, geometric: bool) -> tuple[UID, bool]:
    """Choose the output SOP class for a stack; return (class, is_legacy_enhanced).

    The Legacy Converted Enhanced IODs need one greyscale sample, plane geometry and a
    Frame of Reference, and 16 bits (MR also 8) (PS3.3 C.8.15.2, C.8.13.1, C.8.22.1);
    anything else becomes the matching multi-frame Secondary Capture.
    """
    modality = str(template.get("Modality", ""))
    bits = int(template.BitsAllocated)
    if (
        modality in LEGACY_BY_MODALITY
        and int(template.get("SamplesPerPixel", 1)) == 1
        and geometric
        and template.get("FrameOfReferenceUID")
        and (bits == 16 or (bits == 8 and modality == "MR"))
    ):
        return LEGACY_BY_MODALITY[modality][1], True
    if int(template.get("SamplesPerPixel", 1)) == 3:
        return MF_TRUE_COLOR_SC, False
    if bits == 1:
        return MF_SINGLE_BIT_SC, False
    if bits == 8 and int(template.get("PixelRepresentation", 0)) == 0:
        return MF_GRAY_BYTE_SC, False
    # Byte SC takes neither signed pixels nor a Rescale Intercept to undo offset binary
    # (C.8.6.3), so signed 8-bit frames are widened into Word SC.
    return MF_GRAY_WORD_SC, False


def build_multiframe_dataset(
    order: StackOrder, syntax: UID, photometric: str | None, *, offset_binary: bool = False
) -> tuple[Dataset, list[Rescale]]:
    """Build the header of a Legacy Converted Enhanced or multi-frame SC instance.

    Modules follow PS3.3 A.70-A.72 (Legacy Converted Enhanced CT/MR/PET) and A.8.2-A.8.5
    (multi-frame Secondary Capture). The header has no Pixel Data; merge streams it after.
    Returned with it: each frame's own rescale, as _frame_groups() gives it.
    """
    slices = order.slices
    template = slices[0].header
    sop_class, legacy = multiframe_sop_class(template, geometric=order.by_position)
    shared, per_frame = partition_attributes(slices)
    ds = Dataset()
    unassigned: list[DataElement] = []
    for tag in sorted(shared):
        elem = shared[tag]
        if elem.keyword not in (LEGACY_TOP_LEVEL if legacy else SC_TOP_LEVEL):
            unassigned.append(elem)
        else:
            ds.add(DataElement(elem.tag, elem.VR, elem.value))
    today, now = now_da_tm()

    # SOP Common
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = new_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = today, now
    ds.InstanceNumber = 1
    ds.SpecificCharacterSet = template.get("SpecificCharacterSet", "ISO_IR 100")
    # General Series
    ds.SeriesInstanceUID = new_uid()
    ds.Modality = template.get("Modality") or "OT"
    ds.SeriesNumber = template.get("SeriesNumber") or 1
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        ds.setdefault(keyword, template.get(keyword, ""))
    for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID"):
        ds.setdefault(keyword, template.get(keyword, ""))
    ds.setdefault("AccessionNumber", template.get("AccessionNumber", ""))
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = template.get("StudyInstanceUID") or new_uid()
    # General Image / Multi-frame
    ds.ContentDate = _first_value(template.get("ContentDate"), template.get("StudyDate"), today)
    ds.ContentTime = _first_value(template.get("ContentTime"), template.get("StudyTime"), now)
    ds.NumberOfFrames = len(slices)
    source_type = list(template.get("ImageType", []) or ["ORIGINAL", "PRIMARY"])
    # Image Pixel
    if photometric is not None:  # frames are decoded: colour comes interleaved
        ds.PhotometricInterpretation = photometric
        if int(ds.get("SamplesPerPixel", 1)) == 3:
            ds.PlanarConfiguration = 0
    lossy = [s.header.get("LossyImageCompression") for s in slices]
    ds.LossyImageCompression = "01" if "01" in lossy or str(syntax) in LOSSY_SYNTAXES else "00"
    if "01" in lossy:
        methods = {
            str(m) for s in slices for m in _as_list(s.header.get("LossyImageCompressionMethod"))
        }
        if methods:
            ds.LossyImageCompressionMethod = sorted(methods)
    ds.BurnedInAnnotation = template.get("BurnedInAnnotation", "NO")
    # Contributing Equipment (PS3.3 C.12.1: the conversion itself)
    equipment = Dataset()
    equipment.Manufacturer = "DicomPressor"
    equipment.SoftwareVersions = __version__
    equipment.ContributionDateTime = today + now
    equipment.PurposeOfReferenceCodeSequence = DicomSequence(
        [code_item("109106", "DCM", "Enhanced Multi-frame Conversion Equipment")]
    )
    ds.ContributingEquipmentSequence = DicomSequence(
        [*template.get("ContributingEquipmentSequence", []), equipment]
    )
    # Common Instance Reference: the source instances, per series
    by_series: dict[str, list[Slice]] = defaultdict(list)
    for s in slices:
        by_series[text_of(s.header, 0x0020000E) or ""].append(s)  # Series Instance UID
    ref_series = []
    for series_uid, members in by_series.items():
        references = [reference_bytes(s.header) for s in members]
        item = {
            0x0020000E: encode_element(0x0020000E, "UI", series_uid.encode("ascii")),
            0x0008114A: encode_sequence(0x0008114A, references),
        }
        ref_series.append(encode_items(item))
    add_raw_sequence(ds, Tag("ReferencedSeriesSequence"), ref_series)

    if legacy:
        _add_legacy_enhanced_modules(ds, order, source_type)
    else:
        _add_secondary_capture_modules(ds, order, source_type)
    shift = 1 << (int(template.BitsStored) - 1) if offset_binary else 0
    if offset_binary:
        # Multi-frame Grayscale Word SC stores unsigned pixels (C.8.6.3): signed values are
        # shifted up and the shift undone by Rescale Intercept. The source's Pixel
        # Representation and Pixel Padding Value stay in the Unassigned Shared
        # Converted Attributes, where split finds them to shift back.
        unassigned.append(DataElement(0x00280103, "US", 1))
        padding = ds.pop("PixelPaddingValue", None)
        if padding is not None:
            unassigned.append(padding)
        if int(template.BitsAllocated) == 8:
            # Widened into words, of which Word SC wants 9 to 16 bits stored; split takes
            # the source's pixel description from the Unassigned Shared attributes.
            for tag in (0x00280100, 0x00280101, 0x00280102):  # Bits Allocated/Stored, High Bit
                unassigned.append(DataElement(tag, "US", int(template[tag].value)))
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 9, 8
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = str(-shift)
    shared_groups, frames, rescales = _frame_groups(order, per_frame, unassigned, shift)
    rescale = shared_groups.get("PixelValueTransformationSequence")
    if sop_class == MF_GRAY_WORD_SC and rescale:
        # Word SC takes any rescale (C.8.6.3): the top level says what the frames say.
        for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType"):
            copy_element(rescale[0], ds, keyword)
    if legacy:
        frame_type = Dataset()
        frame_type.FrameType = ds.ImageType
        for keyword in (
            "PixelPresentation",
            "VolumetricProperties",
            "VolumeBasedCalculationTechnique",
        ):
            copy_element(ds, frame_type, keyword)
        if sop_class == LEGACY_MR:
            copy_element(ds, frame_type, "ComplexImageComponent")
            copy_element(ds, frame_type, "AcquisitionContrast")
        setattr(shared_groups, FRAME_TYPE_SEQUENCE[sop_class], DicomSequence([frame_type]))
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared_groups])
    add_raw_sequence(ds, Tag("PerFrameFunctionalGroupsSequence"), frames)
    _dimension_modules(ds)
    return ds, rescales


def source_reference(header: Dataset) -> Dataset:
    """Return an item referencing a source instance by SOP Class and Instance UID."""
    item = Dataset()
    item.ReferencedSOPClassUID = header.get("SOPClassUID", SECONDARY_CAPTURE)
    item.ReferencedSOPInstanceUID = header.get("SOPInstanceUID", "")
    return item


def reference_bytes(header: Dataset) -> bytes:
    """Encode an item referencing a source instance by SOP Class and Instance UID."""
    sop_class = text_of(header, 0x00080016) or SECONDARY_CAPTURE
    instance = text_of(header, 0x00080018) or ""
    return encode_element(0x00081150, "UI", sop_class.encode("ascii", "replace")) + (
        encode_element(0x00081155, "UI", instance.encode("ascii", "replace"))
    )


def _frame_groups(
    order: StackOrder,
    per_frame: list[dict[int, DataElement]],
    unassigned_shared: list[DataElement],
    shift: int = 0,
) -> tuple[Dataset, list[bytes], list[Rescale]]:
    """Build the shared functional groups and the encoded per-frame items (C.7.6.16).

    A macro whose content is the same for every frame goes into the shared group;
    otherwise each frame carries its own. Attributes with no macro of their own go into
    the Unassigned Shared / Per-Frame Converted Attributes Sequences (C.7.6.16.2.25).
    shift is the offset added to frames stored as offset binary: Rescale Intercepts
    take it off again. Also returned: the (Rescale Slope, Rescale Intercept) of each
    Pixel Value Transformation item the frames carry (none when it is shared), as the
    written items say them, so that no one parses the encoded items back.
    """
    slices = order.slices
    shared = Dataset()
    rescales: list[Rescale] = []
    frames: list[dict[int, bytes]] = [{} for _ in slices]
    macros = ["PixelValueTransformationSequence", "FrameVOILUTSequence"]
    if order.by_position:  # plane macros need a Frame of Reference (C.7.6.16.2.1)
        macros[:0] = ["PixelMeasuresSequence", "PlaneOrientationSequence"]
    headers = [s.header for s in slices]
    for keyword in macros:
        members = [Tag(k) for k, g in FUNCTIONAL_GROUP_OF.items() if g == keyword]
        if all(
            same_in_all(headers, tag) or not any(tag in h for h in headers) for tag in members
        ):  # the same for every slice: build it once (the common case, and fast)
            item = functional_group_item(keyword, headers[0], shift)
            if item is not None:
                shared.update(item)
            continue
        items = [functional_group_item(keyword, h, shift) for h in headers]
        if all(i is None for i in items):
            continue
        signatures = {element_signature(i[keyword]) if i is not None else None for i in items}
        if len(signatures) == 1:
            shared.update(items[0])  # type: ignore[arg-type]
            continue
        for frame, item in zip(frames, items, strict=True):
            if item is not None:
                frame.update(dataset_bytes(item))
                if keyword == "PixelValueTransformationSequence":
                    rescales += [
                        (
                            _first_number(v.get("RescaleSlope")),
                            _first_number(v.get("RescaleIntercept")),
                        )
                        for v in item[keyword].value
                    ]
    for index, (frame, s) in enumerate(zip(frames, slices, strict=True)):
        header = s.header
        if s.position is not None and order.by_position:
            position = encoded_element(header, 0x00200032)  # Image Position (Patient)
            assert position is not None
            frame[0x00209113] = encode_sequence(0x00209113, [position])
        content = {
            0x00209056: encode_element(0x00209056, "SH", b"1"),
            0x00209057: encode_element(0x00209057, "UL", struct.pack("<L", index + 1)),
            0x00209157: encode_element(0x00209157, "UL", struct.pack("<2L", 1, index + 1)),
            0x00189220: encode_element(0x00189220, "FD", struct.pack("<d", 0.0)),
        }
        acquired = _frame_datetime(header)
        if acquired:
            for tag in (0x00189074, 0x00189151):  # Frame Acquisition / Reference DateTime
                content[tag] = encode_element(tag, "DT", acquired.encode("ascii", "replace"))
        if s.instance_number is not None:
            number = _int_or_none(text_of(header, 0x00200012)) or 0  # Acquisition Number
            content[0x00209156] = encode_element(0x00209156, "US", struct.pack("<H", number))
        frame[0x00209111] = encode_sequence(0x00209111, [encode_items(content)])
        frame[0x00209172] = encode_sequence(0x00209172, [reference_bytes(header)])
        unassigned = {tag: element_bytes(elem) for tag, elem in per_frame[index].items()}
        for tag in tags_of(PER_FRAME_KEPT):
            encoded = encoded_element(header, tag)
            if encoded is not None:
                unassigned[tag] = encoded
        if unassigned:
            frame[0x00209171] = encode_sequence(0x00209171, [encode_items(unassigned)])
    if unassigned_shared:
        item = Dataset()
        for elem in unassigned_shared:
            item.add(DataElement(elem.tag, elem.VR, elem.value))
        shared.UnassignedSharedConvertedAttributesSequence = DicomSequence([item])
    return shared, [encode_items(frame) for frame in frames], rescales


def _frame_datetime(header: Dataset) -> str | None:
    """Return the acquisition (or content) date-time of a slice as DT, if known."""
    acquired = text_of(header, 0x0008002A)  # Acquisition DateTime
    if acquired:
        return acquired
    # Acquisition Date or Content Date, Acquisition Time or Content Time
    date = _first_value(text_of(header, 0x00080022), text_of(header, 0x00080023))
    when = _first_value(text_of(header, 0x00080032), text_of(header, 0x00080033))
    if date and when:
        return f"{date}{when}"
    return None


def _dimension_modules(ds: Dataset) -> None:
    """Add the Multi-frame Dimension module: stack ID and in-stack position."""
    organization = new_uid()
    org_item = Dataset()
    org_item.DimensionOrganizationUID = organization
    ds.DimensionOrganizationSequence = DicomSequence([org_item])
    ds.DimensionOrganizationType = "3D"
    indices = []
    for pointer, label in (
        (Tag("StackID"), "Stack ID"),
        (Tag("InStackPositionNumber"), "In-Stack Position Number"),
    ):
        item = Dataset()
        item.DimensionOrganizationUID = organization
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = Tag("FrameContentSequence")
        item.DimensionDescriptionLabel = label
        indices.append(item)
    ds.DimensionIndexSequence = DicomSequence(indices)


def _add_legacy_enhanced_modules(ds: Dataset, order: StackOrder, source_type: list[str]) -> None:
    """Add the modules of PS3.3 A.70-A.72 that differ from a classic image."""
    template = order.slices[0].header
    # Enhanced General Equipment (C.7.5.2): type 1 in the enhanced IODs
    for keyword in ("Manufacturer", "ManufacturerModelName", "DeviceSerialNumber"):
        if not ds.get(keyword):
            setattr(ds, keyword, "UNKNOWN")
    if not ds.get("SoftwareVersions"):
        ds.SoftwareVersions = "UNKNOWN"
    # Frame of Reference (C.7.4.1)
    if "FrameOfReferenceUID" not in ds:
        ds.FrameOfReferenceUID = template.get("FrameOfReferenceUID") or new_uid()
    ds.setdefault("PositionReferenceIndicator", "")
    # Enhanced CT/MR/PET Image (C.8.15.2, C.8.13.1, C.8.22.1) as the legacy IODs use it
    values = [str(v) for v in source_type[:2]] + ["", ""]
    first = values[0] if values[0] in ("ORIGINAL", "DERIVED") else "DERIVED"
    second = values[1] if values[1] in ("PRIMARY", "SECONDARY") else "PRIMARY"
    flavor = str(source_type[2]) if len(source_type) > 2 and source_type[2] else "AXIAL"
    ds.ImageType = [first, second, flavor, "NONE"]
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ContentQualification = (
        "RESEARCH" if ds.get("ContentQualification") is None else (ds.ContentQualification)
    )
    ds.PresentationLUTShape = "IDENTITY"
    if ds.SOPClassUID == LEGACY_MR:
        ds.setdefault("ComplexImageComponent", "MAGNITUDE")
        ds.setdefault("AcquisitionContrast", "UNKNOWN")
    # Acquisition Context (C.7.6.14)
    ds.AcquisitionContextSequence = DicomSequence([])
    _add_unknown_laterality(ds)


def _add_unknown_laterality(ds: Dataset) -> None:
    """Add an empty Laterality (General Series, C.7.3.1) where the body part may be paired.

    It is type 2C, required for a paired body part; no frame states it, so it is empty
    (unknown) unless Body Part Examined names a structure that is not paired, where it
    must be absent.
    """
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if "Laterality" not in ds and body_part not in UNPAIRED_BODY_PARTS:
        ds.Laterality = ""


def _add_secondary_capture_modules(ds: Dataset, order: StackOrder, source_type: list[str]) -> None:
    """Add the modules of PS3.3 A.8.2-A.8.5 (multi-frame Secondary Capture)."""
    # SC Equipment (C.8.6.1)
    ds.ConversionType = order.slices[0].header.get("ConversionType") or "WSD"
    # SC Multi-frame Image (C.8.6.3) and Multi-frame (C.7.6.6)
    ds.ImageType = [*(str(v) for v in source_type[:2])] or ["DERIVED", "SECONDARY"]
    if ds.SOPClassUID in (MF_GRAY_BYTE_SC, MF_GRAY_WORD_SC):
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        if ds.get("PresentationLUTShape") is None:
            ds.PresentationLUTShape = "IDENTITY"
    if len(order.slices) == 1:
        pass  # Frame Increment Pointer is type 1C: only for more than one frame (C.8.6.3)
    elif order.by_position:
        ds.FrameIncrementPointer = Tag("SliceLocationVector")
        ds.SliceLocationVector = [round(d, 6) for d in order.distances]
    else:
        ds.FrameIncrementPointer = Tag("PageNumberVector")
        ds.PageNumberVector = list(range(1, len(order.slices) + 1))
    _add_unknown_laterality(ds)
    # General Image (C.7.6.1): type 2C, unknown here
    ds.setdefault("PatientOrientation", "")


# ---- frame access and codecs ----


def expected_frame_bytes(ds: Dataset) -> int:
    """Return the size in bytes of one native frame (PS3.5 8.1.1)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.BitsAllocated)
    if bits == 1:
        return (rows * cols * samples + 7) // 8
    return rows * cols * samples * (bits // 8)


def check_pixel_description(ds: Dataset) -> None:
    """Raise DicomPressorError when the Image Pixel attributes cannot describe a frame."""
    problems = []
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored"):
        value = ds.get(keyword)
        if value is None:
            problems.append(f"{keyword} is missing")
        elif not isinstance(value, int) or value <= 0:
            problems.append(f"{keyword} value of {value!r} is invalid")
    samples = ds.get("SamplesPerPixel", 1)
    if not isinstance(samples, int) or not 1 <= samples <= 4:
        problems.append(f"SamplesPerPixel value of {samples!r} is invalid (1 or 3 expected)")
    if not problems and ds.BitsAllocated not in (1, 8, 16, 32, 64):
        problems.append(f"BitsAllocated value of {ds.BitsAllocated} is not 1, 8, 16, 32 or 64")
    if not problems and ds.BitsStored > ds.BitsAllocated:
        problems.append(
            f"BitsStored ({ds.BitsStored}) is larger than BitsAllocated ({ds.BitsAllocated})"
        )
    if problems:
        raise DicomPressorError("bad Image Pixel description: " + "; ".join(problems))


def read_item_header(handle: BinaryIO) -> tuple[int, int]:
    """Read an encapsulation item header; return (tag, length)."""
    raw = handle.read(8)
    if len(raw) < 8:
        raise DicomPressorError("truncated encapsulated pixel data")
    group, element, length = struct.unpack("<HHL", raw)
    return (group << 16) | element, length


def scan_fragments(path: Path, location: PixelLocation) -> tuple[list[int], list[tuple[int, int]]]:
    """Return (basic offset table, [(offset, length) of each fragment]) of a file."""
    offsets: list[int] = []
    fragments: list[tuple[int, int]] = []
    with path.open("rb") as handle:
        handle.seek(location.offset)
        tag, length = read_item_header(handle)
        if tag != 0xFFFEE000:
            raise DicomPressorError("encapsulated pixel data does not start with an item")
        table = handle.read(length)
        if len(table) < length:
            raise DicomPressorError("truncated basic offset table")
        offsets = list(struct.unpack(f"<{length // 4}L", table[: length // 4 * 4]))
        while True:
            tag, length = read_item_header(handle)
            if tag == 0xFFFEE0DD:
                break
            if tag != 0xFFFEE000 or length == 0xFFFFFFFF:
                raise DicomPressorError(f"bad item (tag {tag:08X}) in encapsulated pixel data")
            start = handle.tell()
            if start + length > location.file_size:
                raise DicomPressorError(
                    f"truncated: a pixel data fragment declares {length} bytes, "
                    f"the file holds {location.file_size - start}"
                )
            fragments.append((start, length))
            handle.seek(length, os.SEEK_CUR)
    if not fragments:
        raise DicomPressorError("encapsulated pixel data holds no fragment")
    return offsets, fragments


def frame_fragments(
    offsets: list[int], fragments: list[tuple[int, int]], n_frames: int
) -> list[list[tuple[int, int]]]:
    """Group fragments into frames using the basic offset table (PS3.5 A.4)."""
    if n_frames == 1:
        return [fragments]
    if len(fragments) == n_frames:
        return [[f] for f in fragments]
    if len(offsets) == n_frames:
        first = fragments[0][0] - 8
        frames: list[list[tuple[int, int]]] = [[] for _ in range(n_frames)]
        bounds = [*offsets, math.inf]
        for start, length in fragments:
            rel = start - 8 - first
            index = max(i for i in range(n_frames) if bounds[i] <= rel)
            frames[index].append((start, length))
        if all(frames):
            return frames
    raise DicomPressorError(
        f"cannot tell the frames apart: {len(fragments)} fragments for {n_frames} frames "
        "and no usable basic offset table"
    )


def read_span(path: Path, offset: int, length: int) -> bytes:
    """Read length bytes at offset, failing clearly when the file is short."""
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        raise DicomPressorError(f"truncated: expected {length} bytes at offset {offset}")
    return data


def stored_frames(
    path: Path, header: Dataset, location: PixelLocation | None
) -> Iterator[bytes] | None:
    """Yield each frame as stored in the file, or None when frames can't be cut out.

    Native little-endian and encapsulated pixel data are read frame by frame from their
    offsets (stored_frame_spans); big endian, deflated, bit-packed and subsampled YBR
    data are not. A video stream (VIDEO_SYNTAXES) has no frames to cut: ffmpeg decodes
    them, and they come as native RGB (video_frames; decode_stored_frame knows them).
    """
    if location is None or location.offset < 0:
        return None
    if str(transfer_syntax_of(header)) in VIDEO_SYNTAXES and location.encapsulated:
        return video_frames(path, header, location)
    spans = stored_frame_spans(path, header, location)
    if spans is None:
        return None
    return (read_spans(path, frame) for frame in spans)


def read_spans(path: Path, spans: Sequence[tuple[int, int]]) -> bytes:
    """Read the (offset, length) spans of a file, joined (one frame as stored)."""
    if len(spans) == 1:
        return read_span(path, *spans[0])
    return b"".join(read_span(path, offset, length) for offset, length in spans)


def stored_frame_spans(
    path: Path, header: Dataset, location: PixelLocation | None
) -> list[list[tuple[int, int]]] | None:
    """Return where each frame is stored in the file: its (offset, length) spans (the
    fragments of an encapsulated frame), or None when frames can't be cut out (see
    stored_frames; video streams neither)."""
    if location is None or location.offset < 0:
        return None
    syntax = transfer_syntax_of(header)
    if str(syntax) in VIDEO_SYNTAXES and location.encapsulated:
        return None
    n_frames = number_of_frames(header)
    if location.encapsulated:
        offsets, fragments = scan_fragments(path, location)
        return frame_fragments(offsets, fragments, n_frames)
    photometric = str(header.get("PhotometricInterpretation", ""))
    if (
        str(syntax) not in NATIVE_LE_SYNTAXES
        or int(header.BitsAllocated) == 1
        or photometric == "YBR_FULL_422"
    ):
        return None
    size = expected_frame_bytes(header)
    if location.length < size * n_frames:
        raise DicomPressorError(
            f"(7FE0,0010) Pixel Data holds {location.length} bytes, expected "
            f"{size * n_frames} for {n_frames} frames"
        )
    return [[(location.offset + i * size, size)] for i in range(n_frames)]


def missing_codec_message(syntax: UID, exc: BaseException) -> str:
    """Explain a codec failure, naming the pip package that provides the codec."""
    package = CODEC_PACKAGE.get(str(syntax))
    hint = f" (codec: pip install {package})" if package else ""
    if package and importlib.util.find_spec(CODEC_MODULE[package]) is not None:
        hint = f" (codec: pip install {package}; it is installed here, so the data may be damaged)"
    reason = one_line(f"{type(exc).__name__}: {exc}", limit=300)
    return f"cannot decode {uid_name(syntax)}: {reason}{hint}"


def decode_frame(source: Path | Dataset, index: int, *, raw: bool) -> np.ndarray:
    """Decode one frame with pydicom's pixel handlers (raw: no YBR to RGB conversion).

    A file is read only as far as that frame needs (a deflated one whole: pydicom's
    decoding from a path does not inflate it); codec failures become one line naming the
    codec's pip package.
    """
    src: str | Dataset = str(source) if isinstance(source, Path) else source
    if isinstance(source, Path):
        with contextlib.suppress(Exception):  # unreadable: pixel_array says why below
            meta_info = pydicom.filereader.read_file_meta_info(source)
            if meta_info.get("TransferSyntaxUID") == DEFLATED:
                src = pydicom.dcmread(source)
    try:
        return pydicom.pixels.pixel_array(src, index=index, raw=raw)
    except BaseException as exc:  # the codec layer raises many types, panics too
        if is_fatal(exc):
            raise
        meta = src if isinstance(src, Dataset) else pydicom.dcmread(src, stop_before_pixels=True)
        raise DicomPressorError(missing_codec_message(transfer_syntax_of(meta), exc)) from exc


def native_frame_bytes(arr: np.ndarray, bits_allocated: int) -> bytes:
    """Return one decoded frame as native little-endian bytes (interleaved colour).

    With BitsAllocated 1 the result is one byte per pixel: ``pack_native_frames`` packs
    the bits of all frames together, as PS3.5 8.1.1 wants.
    """
    if bits_allocated == 1:
        return np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    dtype = np.dtype(arr.dtype).newbyteorder("<")
    if bits_allocated == 8 and arr.dtype.itemsize != 1:
        dtype = np.dtype(np.int8 if arr.dtype.kind == "i" else np.uint8)
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def pack_native_frames(frames: Sequence[bytes], bits_allocated: int) -> bytes:
    """Join native frames into Pixel Data, packing bits when BitsAllocated is 1."""
    if bits_allocated != 1:
        return b"".join(frames)
    bits = np.frombuffer(b"".join(frames), dtype=np.uint8) != 0
    return np.packbits(bits, bitorder="little").tobytes()


def decoded_photometric(ds: Dataset, *, raw: bool) -> str:
    """Return the Photometric Interpretation of frames as pydicom decodes them.

    Decoding with colour conversion (``raw`` False) gives RGB for every YBR variant
    (JPEG 2000's YBR_ICT/YBR_RCT are undone by the codec itself); raw decoding keeps
    YBR, with YBR_FULL_422 upsampled to YBR_FULL.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("SamplesPerPixel", 1)) != 3 or not photometric.startswith("YBR"):
        return photometric
    if not raw or photometric in ("YBR_ICT", "YBR_RCT"):
        return "RGB"
    return "YBR_FULL"


def pixel_description(ds: Dataset, *, planar_configuration: int = 0) -> dict[str, Any]:
    """Return the Image Pixel values a codec needs for one frame of ds."""
    return {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "samples_per_pixel": int(ds.get("SamplesPerPixel", 1)),
        "bits_allocated": int(ds.BitsAllocated),
        "bits_stored": int(ds.BitsStored),
        "pixel_representation": int(ds.get("PixelRepresentation", 0)),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        "planar_configuration": planar_configuration,
        "number_of_frames": 1,
    }


@dataclasses.dataclass(frozen=True)
class FrameJob:
    """One frame to decode, and encode again unless target_syntax is None (picklable).

    ``data`` is the frame as stored: native bytes or the encoded codestream, so a worker
    needs neither the file nor its header; or, when it is empty, ``spans`` says where in
    ``stored_in`` the frame is, and the worker reads it (no copy through a pipe).
    ``boxes`` (left, top, right, bottom; right and bottom exclusive, inside the frame)
    are set to ``fill`` (one value per sample) first.
    """

    data: bytes
    source_syntax: str
    source: dict[str, Any]
    raw: bool
    target_syntax: str | None = None
    target: dict[str, Any] | None = None
    ratio: float | None = None
    psnr: float | None = None
    boxes: tuple[tuple[int, int, int, int], ...] = ()
    fill: tuple[int, ...] = ()
    verify: bool = True  # a lossy encoding: decode it again to measure its error
    stored_in: str = ""
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def stored(self) -> bytes:
        """Return the frame as stored (read from its file when the job holds no data)."""
        return (
            self.data
            if self.data or not self.spans
            else read_spans(Path(self.stored_in), self.spans)
        )


def decode_stored_frame(
    data: bytes, syntax: UID, description: dict[str, Any], *, raw: bool
) -> np.ndarray:
    """Decode one stored frame (native bytes or one codestream) to an array."""
    if str(syntax) in VIDEO_SYNTAXES:  # decoded already, by ffmpeg (stored_frames)
        return video_frame_array(data, description)
    decoder = pydicom.pixels.get_decoder(syntax)
    source = pydicom.encaps.encapsulate([data]) if syntax.is_encapsulated else data
    try:
        array, _ = decoder.as_array(
            source, index=0, raw=raw, pixel_keyword="PixelData", **description
        )
    except BaseException as exc:  # the codec layer raises many types, panics too
        if is_fatal(exc):
            raise
        raise DicomPressorError(missing_codec_message(syntax, exc)) from exc
    return array


def htj2k_encoder() -> Callable[..., bytes] | None:
    """Return imagecodecs' HTJ2K encoder (OpenJPH), or None when it is not installed."""
    try:
        import imagecodecs
    except ImportError:
        return None
    encoder = getattr(imagecodecs, "htj2k_encode", None)
    available = getattr(getattr(imagecodecs, "HTJ2K", None), "available", encoder is not None)
    return encoder if available else None


#: Photometric interpretations HTJ2K lossless takes (PS3.5 8.2.4, as JPEG 2000 lossless),
#: with the largest Bits Stored each may have here.
HTJ2K_PHOTOMETRICS = {
    "MONOCHROME1": 24,
    "MONOCHROME2": 24,
    "PALETTE COLOR": 16,
    "RGB": 24,
    "YBR_FULL": 24,
    "YBR_RCT": 24,
}


def check_htj2k_pixels(description: dict[str, Any]) -> None:
    """Raise DicomPressorError when frames of this description cannot be stored as HTJ2K.

    pydicom checks the other codecs against PS3.5 before encoding; imagecodecs does not.
    Bits Allocated must be a whole number of bytes (PS3.5 8.2.4), and Bits Stored at most
    24: openjpeg, which decodes HTJ2K for pydicom, reads no more (its JPEG 2000 encoder
    takes no more either).
    """
    photometric = str(description["photometric_interpretation"])
    limit = HTJ2K_PHOTOMETRICS.get(photometric)
    bits_allocated, bits_stored = description["bits_allocated"], description["bits_stored"]
    problem = None
    if limit is None:
        problem = f"Photometric Interpretation {photometric} is not one it takes"
    elif bits_allocated not in (8, 16, 24, 32):
        problem = f"Bits Allocated {bits_allocated} is not 8, 16, 24 or 32"
    elif bits_stored > limit:
        problem = f"Bits Stored {bits_stored} is more than {limit} ({photometric})"
    if problem is not None:
        raise DicomPressorError(f"cannot store these pixels as HTJ2K: {problem}")


def codec_available(codec: Codec) -> bool:
    """Tell whether the encoder of a ``--codec`` choice is installed."""
    if codec.name == "htj2k":
        return htj2k_encoder() is not None
    return bool(pydicom.pixels.get_encoder(codec.syntax).is_available)


def codec_refusal(syntax: str, description: dict[str, Any]) -> str | None:
    """Return why frames of this description cannot be encoded in syntax here, or None.

    The same checks refuse a codec and decide which other one to suggest (the
    encoders' own limits, then pydicom's table of what each transfer syntax takes,
    PS3.5 8.2).
    """
    rows, columns = description["rows"], description["columns"]
    samples = description["samples_per_pixel"]
    bits_allocated, bits_stored = description["bits_allocated"], description["bits_stored"]
    photometric = str(description["photometric_interpretation"])
    name = uid_name(UID(syntax))
    if bits_allocated == 1:
        return "cannot compress 1-bit (bit-packed) pixels: no DICOM codec takes them (PS3.5 8.2)"
    if syntax in (CODECS["j2k"].syntax, J2K_LOSSY) and min(rows, columns) < J2K_MIN_SIDE:
        return (
            f"{rows} x {columns} pixels is too small for JPEG 2000 (openjpeg needs "
            f"{J2K_MIN_SIDE} or more on each side)"
        )
    limit = MAX_BITS_STORED.get(syntax)
    if limit is not None and bits_stored > limit:
        return (
            f"{bits_stored}-bit pixels are too deep for {name} (its encoder takes up to "
            f"{limit} bits stored)"
        )
    if syntax == J2K_LOSSY and photometric == "PALETTE COLOR":
        return "PALETTE COLOR pixels index a palette: lossy compression would change the colours"
    if syntax == CODECS["htj2k"].syntax:
        try:
            check_htj2k_pixels(description)
        except DicomPressorError as exc:
            return exc.message
        return None
    frame_bytes = rows * columns * samples * ((bits_allocated + 7) // 8)
    if syntax == CODECS["jpegls"].syntax and frame_bytes < JPEGLS_MIN_FRAME_BYTES:
        return (
            f"{rows} x {columns} pixels is too small for JPEG-LS (pyjpegls needs "
            f"{JPEGLS_MIN_FRAME_BYTES} bytes or more a frame, this one has {frame_bytes})"
        )
    from pydicom.pixels.encoders.base import ENCODING_PROFILES

    profiles = ENCODING_PROFILES.get(UID(syntax))
    signed = description["pixel_representation"]
    if profiles is not None and not any(
        photometric == p and samples == n and signed in r and bits_allocated in a
        and bits_stored in b
        for p, n, r, a, b in profiles
    ):  # fmt: skip
        return (
            f"{name} does not take {photometric} pixels of {samples} sample(s) with Bits "
            f"Allocated {bits_allocated}, Bits Stored {bits_stored} and Pixel "
            f"Representation {signed} (PS3.5 8.2)"
        )
    return None


def codec_suggestion(syntax: str, description: dict[str, Any], *, lossy: bool) -> str:
    """Return what to use instead of a refused syntax: the installed lossless codecs
    that take these frames (codec_refusal), as ``; use ...``, or that none does."""
    takers = [
        codec.name
        for codec in CODECS.values()
        if codec.syntax != syntax
        and codec_refusal(codec.syntax, description) is None
        and codec_available(codec)
    ]
    if not takers:
        return "; no other codec here takes them"
    if lossy:
        return (
            "; use -x (lossless)"
            if takers[0] == "j2k"
            else (f"; use -x --codec {' or '.join(takers)} (lossless)")
        )
    return f"; use --codec {' or '.join(takers)}"


def htj2k_encode(array: np.ndarray) -> bytes:
    """Encode a frame as an HTJ2K lossless codestream (PS3.5 A.4.6, ...4.201).

    Reversible 5/3 wavelet, no multi-component transform (so RGB stays RGB and the
    Photometric Interpretation is unchanged, as for ``--codec j2k``).
    """
    encoder = htj2k_encoder()
    if encoder is None:
        raise DicomPressorError("no HTJ2K encoder: pip install 'imagecodecs>=2026.1'")
    return bytes(encoder(np.ascontiguousarray(array), reversible=True, rgb=False))


def mask_array(
    array: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], fill: Sequence[int]
) -> np.ndarray:
    """Return a frame (rows x columns [x samples]) with each box set to fill."""
    if not array.flags.writeable:
        array = array.copy()
    value = fill[0] if array.ndim == 2 else np.asarray(fill, dtype=array.dtype)
    for left, top, right, bottom in boxes:
        array[top:bottom, left:right] = value
    return array


def mask_native_frame(
    data: bytes,
    description: dict[str, Any],
    boxes: Sequence[tuple[int, int, int, int]],
    fill: Sequence[int],
) -> bytes | None:
    """Return a native little-endian frame with boxes set to fill, or None when it can't.

    The stored words are changed in place of being decoded, so every bit outside the
    boxes stays as it was, the bits above Bits Stored too (a fill is sign-extended).
    Interleaved samples of 8, 16, 32 or 64 bits only.
    """
    bits = description["bits_allocated"]
    samples = description["samples_per_pixel"]
    rows, columns = description["rows"], description["columns"]
    if bits not in (8, 16, 32, 64) or (samples > 1 and description["planar_configuration"]):
        return None
    if len(data) != rows * columns * samples * bits // 8:
        return None
    words = np.frombuffer(data, dtype=f"<u{bits // 8}").reshape(rows, columns, samples).copy()
    stored = [value & ((1 << bits) - 1) for value in fill]
    return mask_array(words, boxes, stored).tobytes()


def _frame_job(job: FrameJob) -> tuple[bytes, float, int]:
    """Worker: decode a frame, encode it when asked; return (bytes, squared error, samples).

    With boxes, they are filled first (on the stored words of a native frame that stays
    native). The error is measured by decoding the result again, for lossy encodings with
    ``verify`` only (else 0 samples).
    """
    stored = job.stored
    if job.boxes and job.target_syntax is None and job.source_syntax in NATIVE_LE_SYNTAXES:
        masked = mask_native_frame(stored, job.source, job.boxes, job.fill)
        if masked is not None:
            return masked, 0.0, 0
    array = decode_stored_frame(stored, UID(job.source_syntax), job.source, raw=job.raw)
    if job.boxes:
        array = mask_array(array, job.boxes, job.fill)
    if job.target_syntax is None or job.target is None:
        return native_frame_bytes(array, int(job.source["bits_allocated"])), 0.0, 0
    kwargs = dict(job.target)
    if job.target_syntax in (CODECS["j2k"].syntax, J2K_LOSSY):
        kwargs["use_mct"] = False
    if job.ratio is not None:
        kwargs["j2k_cr"] = [job.ratio]
    if job.psnr is not None:
        kwargs["j2k_psnr"] = [job.psnr]
    try:
        if job.target_syntax == CODECS["htj2k"].syntax:
            return htj2k_encode(array), 0.0, 0
        encoded = pydicom.pixels.get_encoder(UID(job.target_syntax)).encode(array, **kwargs)
        if (job.ratio is None and job.psnr is None) or not job.verify:
            return encoded, 0.0, 0
        import openjpeg  # the lossy path is JPEG 2000 only

        decoded = openjpeg.decode(encoded).astype(np.float64).reshape(array.shape)
    except BaseException as exc:  # the codec layer raises many types, panics too
        if is_fatal(exc):
            raise
        message = one_line(f"{type(exc).__name__}: {exc}", limit=300)
        if "destination buffer is too small" in message:  # pyjpegls, on a tiny frame
            message = (
                f"{job.target['rows']} x {job.target['columns']} pixels is too small for "
                "pyjpegls (the codestream does not fit in twice the frame's bytes)"
            )
        raise DicomPressorError(
            f"cannot encode as {uid_name(UID(job.target_syntax))}: {message}"
        ) from exc
    error = float(np.sum((decoded - array.astype(np.float64)) ** 2))
    return encoded, error, int(array.size)


# ---- params files: tag lines and rectangles ----

#: What a params line does to its element (Replacement.mode): SET inserts or replaces it,
#: MODIFY changes it where the file has it, BLANK empties it where the file has it
#: (keeping its VR), REMOVE deletes it (a private creator with its whole block).
SET, MODIFY, BLANK, REMOVE = "set", "modify", "blank", "remove"


@dataclasses.dataclass(frozen=True)
class Replacement:
    """One params line's change to the element ``tag`` (line ``line`` of the params).

    ``vr`` and ``value`` are what SET and MODIFY write. A line that names no VR
    (``vr_given`` False) has the dictionary's; where the file holds the element with
    another VR the tag may have (US or SS), ``text``, the value as written, is converted
    again for it. An ``m`` line of a private tag without a VR has ``vr`` None: the
    element's own VR is used.
    """

    tag: int
    vr: str | None
    value: Any
    line: int
    mode: str = SET
    text: str = ""
    vr_given: bool = True

    @property
    def where(self) -> str:
        """Return the tag as ``(GGGG,EEEE)``."""
        return _tag_text(self.tag)


@dataclasses.dataclass(frozen=True)
class Rectangle:
    """A box -a blacks out in every frame: columns LEFT..RIGHT-1, rows TOP..BOTTOM-1.

    ``kind`` is the original DicomPressor's: r for every image, ri for single-frame
    images only, rv for multi-frame images only.
    """

    kind: str
    left: int
    top: int
    right: int
    bottom: int
    line: int

    def applies_to(self, n_frames: int) -> bool:
        """Tell whether the rectangle is for an image of n_frames frames."""
        return self.kind == "r" or (self.kind == "rv") == (n_frames > 1)


@dataclasses.dataclass(frozen=True)
class AnonymizeParams:
    """Anonymize's params: the tag lines, applied in order, and the rectangles."""

    replacements: tuple[Replacement, ...] = ()
    rectangles: tuple[Rectangle, ...] = ()


_TAG_LINE = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?\s*=(.*)")


_ORIGINAL_LINE = re.compile(r"([0-9A-Fa-f]{4})\s+([0-9A-Fa-f]{4})(?:\s+(\S+)(?:\s+(.*))?)?")


_KEYWORD_LINE = re.compile(r"([A-Za-z][A-Za-z0-9]*)\s*=(.*)")


_MODIFY_LINE = re.compile(r"([A-Za-z])\s+([0-9A-Fa-f]{4})\s+([0-9A-Fa-f]{4})(?:\s+(.*))?")


_RECTANGLE_LINE = re.compile(r"(r|ri|rv)(?:\s+(.*))?", re.IGNORECASE)


def _tag_text(tag: int) -> str:
    """Return a tag as ``(GGGG,EEEE)``."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _named(tag: int) -> str:
    """Return a tag with its keyword, the DICOM way: ``(0010,0010) PatientName``."""
    if _is_private_creator(tag):
        return f"{_tag_text(tag)} (private creator)"
    keyword = keyword_of(tag)
    return f"{_tag_text(tag)} {keyword}" if keyword else _tag_text(tag)


def _is_private_creator(tag: int) -> bool:
    """Tell whether a tag is a private creator, (gggg,0010)-(gggg,00FF) of an odd group."""
    return bool(tag >> 16 & 1) and 0x10 <= tag & 0xFFFF <= 0xFF


def _creator_of(tag: int) -> int | None:
    """Return the private creator tag of a private element's block (None: not one)."""
    group, element = tag >> 16, tag & 0xFFFF
    return (group << 16) | element >> 8 if group & 1 and element >= 0x1000 else None


def _tag_vrs(tag: int) -> tuple[str, ...]:
    """Return the VRs a tag may have: the dictionary's, LO for a private creator, or ()."""
    if tag >> 16 & 1:
        return ("LO",) if _is_private_creator(tag) else ()
    try:
        return tuple(v.strip() for v in dictionary_VR(tag).split(" or "))
    except KeyError:
        return ()


def _refusal(tag: int, *, pixels: bool) -> str | None:
    """Return why params may not change a tag, or None (pixels: nor the pixel description)."""
    group, element = tag >> 16, tag & 0xFFFF
    if group == 0x0002:
        return (
            f"{_named(tag)} is File Meta Information (group 0002): it is made from the "
            "dataset when the file is written"
        )
    if group == 0x0000 or element == 0x0000:
        return f"{_tag_text(tag)} is a group length, which the writer computes"
    if group == 0xFFFE:
        return f"{_tag_text(tag)} is an item or delimiter tag, not an element"
    if group == 0x7FE0:
        return (
            f"{_named(tag)} is pixel data: params never change it (anonymize blacks out "
            "boxes of it with r, ri and rv lines)"
        )
    if group > 0x7FE0:
        return f"{_tag_text(tag)} comes after the pixel data (signatures, padding): not settable"
    if pixels and tag in tags_of(PIXEL_DESCRIPTION):
        return f"{_named(tag)} describes the pixel data, which is kept as it is: not settable"
    if group in (0x0001, 0x0003, 0x0005, 0x0007):
        return f"{_tag_text(tag)} is in group {group:04X}, where PS3.5 7.8.1 allows no element"
    if group & 1 and (element < 0x0010 or 0x0100 <= element < 0x1000):
        return (
            f"{_tag_text(tag)} is no private tag: a private group holds creators "
            "(gggg,0010-00FF) and the elements of their blocks (gggg,1000-FFFF)"
        )
    return None


def _value_from_text(vr: str, text: str) -> Any:
    """Convert a params value to what pydicom stores for vr; raise ValueError if invalid.

    Numbers become int (SL, SS, SV, UL, US, UV) or float (FL, FD), several of them with
    ``\\`` between; DS and IS stay the text written, once it is a valid value.
    """
    if text == "":
        return [] if vr == "SQ" else (b"" if vr in BINARY_VRS else None)
    if vr == "SQ" or vr in BINARY_VRS or vr == "AT":
        raise ValueError(f"a {vr} value cannot be given as text (only an empty value)")
    parts = text.split("\\")
    if vr in INTEGER_VRS:
        try:
            numbers: list[Any] = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"{text!r} is not a {vr} integer") from None
    elif vr in FLOAT_VRS:
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"{text!r} is not a {vr} number") from None
    else:
        for part in parts:
            validate_value(vr, part, pydicom_config.RAISE)
        return text
    for number in numbers:
        validate_value(vr, number, pydicom_config.RAISE)
    return numbers[0] if len(numbers) == 1 else numbers


def _converted(tag: int, vrs: Sequence[str], text: str) -> tuple[str, Any]:
    """Return (VR, value) for the first of vrs that takes text; ValueError names the first."""
    problem = ""
    for vr in vrs:
        try:
            return vr, _value_from_text(vr, text)
        except ValueError as exc:  # pydicom's words end with a link to PS3.5: left out
            problem = problem or one_line(str(exc).split(". Please see")[0], limit=200)
    raise ValueError(f"{_tag_text(tag)} {vrs[0]}: {problem}")


def _given_vr(tag: int, token: str) -> str:
    """Return the VR a line names for tag; ValueError when it is none or not the tag's."""
    vr = token.upper()
    if vr not in DICOM_VRS:
        raise ValueError(f"{token} is not a DICOM VR")
    choices = _tag_vrs(tag)
    if choices and vr not in choices:
        raise ValueError(f"{_named(tag)} has VR {' or '.join(choices)}, not {vr}")
    return vr


def _tag_edit(
    number: int, tag: int, vr_token: str | None, text: str, mode: str, *, pixels: bool, form: str
) -> Replacement:
    """Check one tag line and return its Replacement; ValueError names the problem.

    form is how a line with a VR is written, for the message on a private tag without one.
    """
    problem = _refusal(tag, pixels=pixels)
    if problem is not None:
        raise ValueError(problem)
    if mode == REMOVE:
        return Replacement(tag, None, None, number, REMOVE, "", False)
    vr = _given_vr(tag, vr_token) if vr_token is not None else None
    if mode == BLANK:
        if _is_private_creator(tag):
            raise ValueError(f"{_named(tag)} cannot be emptied: a block needs its creator's name")
        return Replacement(tag, vr, None, number, BLANK, "", vr is not None)
    if vr is not None:
        return Replacement(tag, vr, _converted(tag, [vr], text)[1], number, mode, text, True)
    choices = _tag_vrs(tag)
    if choices:
        vr, value = _converted(tag, choices, text)
        return Replacement(tag, vr, value, number, mode, text, False)
    if mode == MODIFY:  # a private element, changed with the VR it has in each file
        return Replacement(tag, None, None, number, MODIFY, text, False)
    raise ValueError(
        f"{_tag_text(tag)} is not in the DICOM dictionary (a private tag?): give its VR as "
        f"'{form}'"
    )


def _rectangle(number: int, kind: str, rest: str) -> Rectangle:
    """Check one rectangle line (``r LEFT TOP RIGHT BOTTOM``); ValueError names the problem."""
    shown = f"{kind} {rest}".strip()
    words = rest.split()
    if len(words) != 4:
        raise ValueError(
            f"a rectangle is {kind} LEFT TOP RIGHT BOTTOM (4 whole numbers of pixels), "
            f"not {one_line(shown, limit=60)!r}"
        )
    numbers = []
    for name, word in zip(("LEFT", "TOP", "RIGHT", "BOTTOM"), words, strict=True):
        if not re.fullmatch(r"[0-9]{1,9}", word):
            raise ValueError(
                f"rectangle {shown!r}: {name} {word!r} is not a whole number of pixels (0 or more)"
            )
        numbers.append(int(word))
    left, top, right, bottom = numbers
    for low, high, low_name, high_name in (
        (left, right, "LEFT", "RIGHT"),
        (top, bottom, "TOP", "BOTTOM"),
    ):
        if high <= low:
            raise ValueError(
                f"rectangle {shown!r} is empty: {high_name} ({high}) must be more than "
                f"{low_name} ({low}), as right and bottom are exclusive"
            )
    return Rectangle(kind, left, top, right, bottom, number)


def _keyword_tag(keyword: str) -> int:
    """Return the tag of a keyword of a params line; ValueError when it names none."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return tag


def _anonymize_line(
    number: int, line: str, *, rectangles: bool = True, pixels: bool = True
) -> Replacement | Rectangle:
    """Read one line in anonymize's forms; ValueError names the problem.

    ``(GGGG,EEEE)=VALUE``, ``Keyword=VALUE`` and ``GGGG EEEE VR VALUE`` set an element
    (inserted when absent); ``(GGGG,EEEE)=``, ``Keyword=``, ``GGGG EEEE`` and
    ``GGGG EEEE VR`` empty it where the file has it; ``r``, ``ri`` and ``rv`` lines are
    rectangles (where rectangles is True).
    """
    if match := _RECTANGLE_LINE.fullmatch(line):
        if not rectangles:
            raise ValueError("rectangles (r, ri, rv) black out pixels of -a; here only tag lines")
        return _rectangle(number, match[1].lower(), match[2] or "")
    form = "GGGG EEEE VR VALUE"
    if match := _TAG_LINE.fullmatch(line):
        tag, vr_token, text = int(match[1] + match[2], 16), None, match[3].strip()
    elif match := _ORIGINAL_LINE.fullmatch(line):
        tag, vr_token, text = int(match[1] + match[2], 16), match[3], (match[4] or "").strip()
        if vr_token is not None and vr_token.upper() not in DICOM_VRS:
            raise ValueError(
                f"{vr_token!r} is not a VR: write GGGG EEEE VR VALUE (or (GGGG,EEEE)=VALUE, "
                "whose VR is the dictionary's)"
            )
    elif match := _KEYWORD_LINE.fullmatch(line):
        tag, vr_token, text = _keyword_tag(match[1]), None, match[2].strip()
    else:
        shapes = "(GGGG,EEEE)=VALUE, GGGG EEEE [VR VALUE], Keyword=VALUE"
        shapes += ", or r|ri|rv LEFT TOP RIGHT BOTTOM" if rectangles else ""
        raise ValueError(f"cannot read {one_line(line, limit=60)!r}: expected {shapes}")
    return _tag_edit(number, tag, vr_token, text, SET if text else BLANK, pixels=pixels, form=form)


def _modify_line(number: int, line: str) -> Replacement:
    """Read one line of -m's params; ValueError names the problem.

    ``i GGGG EEEE VR VALUE`` inserts or replaces; ``m GGGG EEEE [VR] VALUE`` changes an
    element the file has (its 4th token is the VR only when it is a VR the tag may have:
    another VR's name there is refused as ambiguous); ``r GGGG EEEE`` removes;
    ``(GGGG,EEEE)=VALUE`` and ``Keyword=VALUE`` set, inserting when absent.
    """
    edit = functools.partial(_tag_edit, number, pixels=True, form="i GGGG EEEE VR VALUE")
    if match := _TAG_LINE.fullmatch(line):
        return edit(int(match[1] + match[2], 16), None, match[3].strip(), SET)
    if match := _KEYWORD_LINE.fullmatch(line):
        return edit(_keyword_tag(match[1]), None, match[2].strip(), SET)
    match = _MODIFY_LINE.fullmatch(line)
    if match is None:
        if (rectangle := _RECTANGLE_LINE.fullmatch(line)) and rectangle[1].lower() == "r":
            raise ValueError(
                f"{one_line(line, limit=60)!r}: -m's r removes a tag (r GGGG EEEE); "
                "rectangles (r LEFT TOP RIGHT BOTTOM) are anonymize's"
            )
        raise ValueError(
            f"cannot read {one_line(line, limit=60)!r}: expected i GGGG EEEE VR VALUE, "
            "m GGGG EEEE [VR] VALUE, r GGGG EEEE, (GGGG,EEEE)=VALUE or Keyword=VALUE"
        )
    action, tag, rest = match[1].lower(), int(match[2] + match[3], 16), (match[4] or "").strip()
    first, _, value = rest.partition(" ")
    value = value.strip()
    if action == "r":
        if rest:
            raise ValueError(f"r takes a tag alone (r {match[2]} {match[3]}), not {rest!r} too")
        return edit(tag, None, "", REMOVE)
    if action == "i":
        if first.upper() not in DICOM_VRS:
            shown = f"{first!r} is not a VR" if first else "the VR is missing"
            raise ValueError(f"i needs the VR (i {match[2]} {match[3]} VR VALUE): {shown}")
        return edit(tag, first, value, SET)
    if action != "m":
        raise ValueError(f"unknown action {match[1]!r}: i (insert), m (modify) or r (remove)")
    if first.upper() not in DICOM_VRS:
        return edit(tag, None, rest, MODIFY)
    choices = _tag_vrs(tag)
    if choices and first.upper() not in choices:
        raise ValueError(
            f"{_named(tag)} has VR {' or '.join(choices)}, not {first}: for a value that "
            f"starts with {first!r}, name the VR first (m {match[2]} {match[3]} "
            f"{choices[0]} {rest})"
        )
    return edit(tag, first, value, MODIFY)


def _read_params(text: str, what: str, read: Callable[[int, str], Any]) -> list[Any]:
    """Read every line of a params text with read; report every bad line at once.

    Blank lines and ``#`` comment lines are skipped. A tag on two lines, and a private
    element on a line before the one that sets its creator, are errors too.
    DicomPressorError lists each problem with its line number.
    """
    items: list[Any] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            items.append(read(number, line))
        except ValueError as exc:
            problems.append((number, str(exc)))
    edits = [i for i in items if isinstance(i, Replacement)]
    first_line: dict[int, int] = {}
    for edit in edits:
        if edit.tag in first_line:
            problems.append((edit.line, f"{edit.where} is already on line {first_line[edit.tag]}"))
        first_line.setdefault(edit.tag, edit.line)
    creators = {e.tag: e.line for e in edits if e.mode == SET and _is_private_creator(e.tag)}
    for edit in edits:
        creator = _creator_of(edit.tag)
        if creator in creators and creators[creator] > edit.line and edit.mode != REMOVE:
            problems.append(
                (
                    edit.line,
                    f"{edit.where} comes before line {creators[creator]}, which sets its "
                    f"private creator {_tag_text(creator)}: set the creator first",
                )
            )
    if problems:
        problems.sort(key=lambda problem: problem[0])
        raise DicomPressorError(
            f"invalid {what}: " + "; ".join(f"line {n}: {m}" for n, m in problems)
        )
    return items


def parse_anonymize_params(text: str) -> AnonymizeParams:
    """Parse anonymize's params: tag lines (_anonymize_line) and rectangles.

    Raises DicomPressorError naming every bad line by its number; nothing is applied.
    """
    items = _read_params(text, "anonymize params", _anonymize_line)
    return AnonymizeParams(
        tuple(i for i in items if isinstance(i, Replacement)),
        tuple(i for i in items if isinstance(i, Rectangle)),
    )


def parse_modify_params(text: str) -> list[Replacement]:
    """Parse -m's params (_modify_line); DicomPressorError names every bad line."""
    return _read_params(text, "modify params", _modify_line)


def parse_tag_params(text: str) -> list[Replacement]:
    """Parse tag lines in anonymize's forms, without rectangles (-w's --params)."""
    read = functools.partial(_anonymize_line, rectangles=False, pixels=False)
    return _read_params(text, "params", read)


def _own_vr(ds: Dataset, tag: int) -> str | None:
    """Return the VR an element of ds has (None when unknown or ambiguous)."""
    vr = str(ds[tag].VR or "")
    return vr if vr in DICOM_VRS else None


def _line_value(r: Replacement, own: str | None) -> tuple[str, Any]:
    """Return the VR and value a SET or MODIFY line writes over an element of VR own."""
    if r.vr_given or own is None or own == r.vr:
        if r.vr is None:
            raise DicomPressorError(f"line {r.line}: {r.where} has no VR in this file: name it")
        return r.vr, r.value
    if own in _tag_vrs(r.tag) or (r.vr is None and own not in BINARY_VRS):
        try:
            return own, _value_from_text(own, r.text)
        except ValueError as exc:
            raise DicomPressorError(
                f"line {r.line}: {r.where} has VR {own} in this file: {one_line(str(exc))}"
            ) from None
    if r.vr is None:
        raise DicomPressorError(
            f"line {r.line}: {r.where} has VR {own} in this file, which takes no text: name "
            "the VR (m GGGG EEEE VR VALUE)"
        )
    return r.vr, r.value


def _decode_text_values(ds: Dataset) -> None:
    """Convert every element of ds (and of its items) still as read, but pixel data.

    Before (0008,0005) changes: text read in the old character set is then written in
    the new one, instead of as the bytes read.
    """
    for tag in list(ds.keys()):
        if tag >= 0x7FE00000:
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value or []:
                _decode_text_values(item)


def _check_encodable(ds: Dataset, r: Replacement, text: str) -> None:
    """Raise DicomPressorError when the character set of ds cannot hold a line's text."""
    declared = ds.get("SpecificCharacterSet") or ""
    terms = [declared] if isinstance(declared, str) else [str(t) for t in declared]
    terms = [t.strip() for t in terms]
    fix = "add the line (0008,0005)=ISO_IR 192 (UTF-8)"
    if terms in ([""], ["ISO_IR 6"]):
        raise DicomPressorError(
            f"line {r.line}: {r.where} {one_line(text, limit=60)!r} is not ASCII and the "
            f"file declares no (0008,0005) Specific Character Set: {fix}"
        )
    codec = pydicom.charset.python_encoding.get(terms[0])
    if len(terms) > 1 or codec is None:
        return  # ISO 2022 code extensions: pydicom switches between them as needed
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        raise DicomPressorError(
            f"line {r.line}: {r.where} {one_line(text, limit=60)!r} cannot be written in "
            f"the file's character set {terms[0]}: {fix}"
        ) from None


def _remove_private_block(ds: Dataset, creator: int) -> int:
    """Remove every element of a private creator's block; return how many."""
    group, block = creator >> 16, creator & 0xFF
    tags = [t for t in ds._dict if t.group == group and t.element >> 8 == block]
    for tag in tags:
        del ds[tag]
    return len(tags)


def apply_replacements(ds: Dataset, replacements: Sequence[Replacement]) -> int:
    """Apply params lines to ds in their order; return how many changed it.

    SET inserts or replaces, MODIFY and BLANK change only an element ds has (BLANK keeps
    its VR), REMOVE deletes one (a private creator with its block). Raises
    DicomPressorError, naming the line, for what this dataset cannot take: a private
    element inserted into a block without a creator, a value its element's own VR
    refuses, text its character set cannot hold.
    """
    changed = 0
    texts: list[tuple[Replacement, str]] = []
    for r in replacements:
        present = r.tag in ds
        if r.mode == REMOVE:
            if present:
                del ds[r.tag]
            removed = _remove_private_block(ds, r.tag) if _is_private_creator(r.tag) else 0
            changed += bool(present or removed)
            continue
        if not present and r.mode in (MODIFY, BLANK):
            continue
        own = _own_vr(ds, r.tag) if present else None
        if r.mode == BLANK:
            vr = own or r.vr or (_tag_vrs(r.tag) or ("UN",))[0]
            value = _value_from_text(vr, "")
        else:
            vr, value = _line_value(r, own)
        creator = _creator_of(r.tag)
        if not present and creator is not None and creator not in ds:
            raise DicomPressorError(
                f"line {r.line}: {r.where} is an element of the private block of "
                f"{_tag_text(creator)}, which has no private creator in this file: set "
                f"{_tag_text(creator)} (VR LO) on an earlier line"
            )
        if r.tag == 0x00080005:
            _decode_text_values(ds)
        ds[r.tag] = DataElement(r.tag, vr, value)
        changed += 1
        if isinstance(value, str) and not value.isascii():
            texts.append((r, value))
    for r, text in texts:
        _check_encodable(ds, r, text)
    return changed


# ---- de-identification ----


class UidMap:
    """Map original UIDs to new ones, the same new UID for the same original.

    One map is kept for a whole action call, so that every file processed together
    keeps its study, series, frame of reference and references consistent.
    """

    def __init__(self, secret: str = "") -> None:
        self._secret = (secret or secrets.token_hex(16)).encode("ascii")
        self._new: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._new)

    def pairs(self) -> dict[str, str]:
        """Return every original UID met so far and its replacement."""
        return dict(self._new)

    def keyed_hash(self, text: str) -> bytes:
        """Return the HMAC-SHA256 of text under this map's key (for other derived values)."""
        return hmac.new(self._secret, text.encode("utf-8", "replace"), "sha256").digest()

    def get(self, old: str) -> str:
        """Return the replacement of old (empty stays empty).

        The new UID is a keyed hash of the old one: the same secret gives the same UID
        in every process, so the jobs of one run (``--jobs``, several folders) agree,
        while without the secret nobody can map new UIDs back to old ones.
        """
        old = str(old).strip("\0 ")
        if not old:
            return old
        if old not in self._new:
            digest = hmac.new(self._secret, old.encode("ascii", "replace"), "sha256").digest()
            self._new[old] = f"{UID_PREFIX}9.{int.from_bytes(digest[:14], 'big')}"
        return self._new[old]


def is_standard_uid(value: str) -> bool:
    """Tell whether a UID is a well-known one (SOP class, transfer syntax...), kept as is."""
    value = str(value).strip("\0 ")
    return value.startswith("1.2.840.10008.") or uid_name(value) != value


@dataclasses.dataclass(frozen=True)
class ProfileChoice:
    """The options of the profile a de-identification uses (fields named as in OPTIONS)."""

    keep_uids: bool = False
    keep_dates: bool = False
    keep_descriptions: bool = False
    shift_dates: bool = False
    keep_safe_private: bool = False
    keep_patient_characteristics: bool = False
    keep_device_identity: bool = False
    keep_institution_identity: bool = False
    clean_graphics: bool = False
    # per file, not an option: -a's rectangles blacked out its burned-in text
    clean_pixels: bool = False

    @classmethod
    def of(cls, options: Any) -> ProfileChoice:
        """Return the choice that the options of a run make."""
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(**{name: bool(getattr(options, name, False)) for name in names})

    @property
    def date_code(self) -> str:
        """Return the action on dates and times: K (Full Dates), M (Modified Dates) or D."""
        return "K" if self.keep_dates else "M" if self.shift_dates else "D"

    @property
    def method_codes(self) -> list[tuple[str, str]]:
        """Return the CID 7050 codes of the profile and the options used, in code order.

        Clean Structured Content (E.3.4) is always applied: SR content keeps its tree.
        """
        return [code for field, code in DEID_METHODS if field is None or getattr(self, field)]


#: How each choice changes Table E.1-1: (choice, option column, {row action: action}).
#: Later entries win, so a date that the device option keeps is still shifted. A C row
#: with no cleaner here (free text, AE titles) keeps its Basic Profile action. Actions
#: beyond the table's: M shifts a date (Modified Dates), G cleans graphic annotations,
#: C cleans structured content (keeps the tree, E.3.4).
_OPTION_EFFECTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("keep_uids", "retain_uids", {"K": "K"}),
    ("keep_patient_characteristics", "retain_patient_characteristics", {"K": "K"}),
    ("keep_device_identity", "retain_device_identity", {"K": "K"}),
    ("keep_institution_identity", "retain_institution_identity", {"K": "K"}),
    ("clean_graphics", "clean_graphics", {"C": "G"}),
    ("keep_dates", "longitudinal", {"C": "K"}),
    ("shift_dates", "longitudinal", {"C": "M"}),
)


@functools.lru_cache(maxsize=16)
def profile_actions(choice: ProfileChoice) -> dict[int, str]:
    """Return tag -> action of Table E.1-1 with the chosen options (PS3.15 E.1.1).

    Actions: D, Z, X, U, K, and M (shift a date), G (clean graphic annotations), C (clean
    structured content). The table is built once per choice (callers must not change it).
    """
    actions = dict(basic_profile())
    for keyword, code in BEYOND_TABLE_E11.items():
        actions[tag_for_keyword(keyword)] = code
    for tag in table_tags(OPTION_TABLES["clean_structured_content"]["C"]):
        actions[tag] = "C"
    if choice.keep_descriptions:
        for keyword in CLEAN_DESCRIPTORS:
            actions[tag_for_keyword(keyword)] = "K"
    for name, column, effects in _OPTION_EFFECTS:
        if not getattr(choice, name):
            continue
        for row_action, names in OPTION_TABLES[column].items():
            action = effects.get(row_action)
            for tag in table_tags(names) if action else ():
                if action == "M" and _dictionary_vr(tag) not in DATE_TIME_VRS:
                    continue  # a binary timestamp cannot be shifted: its Basic action stays
                actions[tag] = "K" if action == "M" and _dictionary_vr(tag) == "TM" else action
    return actions


def _dictionary_vr(tag: int) -> str:
    """Return the first dictionary VR of a tag ("UN" when unknown)."""
    return dictionary_VR(tag).split(" or ")[0] if dictionary_has_tag(tag) else "UN"


def _removed_by_rule(tag: BaseTag) -> bool:
    """Tell whether a public tag goes by a rule: curves (Table E.1-1), group 0004 (E.1.1)."""
    group = tag.group
    return group == 0x0004 or (0x5000 <= group <= 0x50FF and group % 2 == 0)


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    """Return the VR of an element, without loading its value when it is raw."""
    item = ds.get_item(tag, keep_deferred=True)
    vr = getattr(item, "VR", None)
    if vr:
        return str(vr)
    return _dictionary_vr(tag)


def _new_uids(value: Any, uids: UidMap, *, all_uids: bool) -> Any:
    """Replace each UID of a UI value (only the non-standard ones unless all_uids)."""
    values = list(value) if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    changed = [uids.get(v) if v and (all_uids or not is_standard_uid(v)) else v for v in values]
    return changed if len(changed) != 1 else changed[0]


@dataclasses.dataclass
class Deidentification:
    """What de-identifying one dataset applies, and what it did.

    ``actions`` from profile_actions; ``uids`` the run's UID map (its key also derives
    ``shift_days``, the patient's date shift); ``replace_uids`` replaces the UIDs the
    table does not list too. ``removed_items`` counts content items removed (E.3.4).
    """

    actions: Mapping[int, str]
    uids: UidMap
    choice: ProfileChoice = dataclasses.field(default_factory=ProfileChoice)
    replace_uids: bool = True
    shift_days: int = 0
    removed_items: int = 0


def deidentify_dataset(
    ds: Dataset,
    actions: Mapping[int, str],
    uids: UidMap,
    *,
    replace_uids: bool,
    choice: ProfileChoice | None = None,
    shift_days: int = 0,
) -> Deidentification:
    """Apply Table E.1-1 actions to ds and every nested item, in place; return what ran.

    Elements the table does not list are kept, except private ones (all, or all but the
    safe ones of Table E.3.10-1), curves and overlays whose data goes (the whole 60xx
    group); dates and times it does not list are handled as the listed ones (E.1.1
    suggests it), their non-standard UIDs are replaced through uids when replace_uids.
    Inside a sequence marked D, text values other than CS get dummy values too, so that a
    code or person sequence keeps its structure but none of its words. Content sequences
    (SR) keep their tree (Clean Structured Content, E.3.4): codes, numbers, units,
    coordinates and relationships stay, the items of Table E.3.4-1 go, text, names and
    dates are replaced and content item references renumbered. A sequence whose items
    all went is removed rather than left empty.
    """
    job = Deidentification(actions, uids, choice or ProfileChoice(), replace_uids, shift_days)
    before = content_paths(ds)
    _clean_dataset(ds, job, "", "", frozenset())
    if job.removed_items:
        renumber_content_references(ds, before)
    return job


def mark_deidentified(ds: Dataset, choice: ProfileChoice) -> None:
    """Add the attributes that record a de-identification (PS3.15 E.1.1, PS3.3 C.7.1.1)."""
    codes = choice.method_codes
    # Patient (C.7.1.1): Patient Identity Removed, De-identification Method (Code Sequence)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [meaning for _, meaning in codes]
    ds.DeidentificationMethodCodeSequence = [code_item(v, "DCM", m) for v, m in codes]
    # SOP Common (C.12.1): Longitudinal Temporal Information Modified (E.2, E.3.6)
    temporal = {"K": "UNMODIFIED", "M": "MODIFIED"}.get(choice.date_code, "REMOVED")
    ds.LongitudinalTemporalInformationModified = temporal


def _verbatim_pixel_span(
    ds: Dataset, path: Path, location: PixelLocation | None
) -> FileSpan | None:
    """Return the source file's whole native Pixel Data element when it can be copied.

    That is when the element is still the one read (deferred, untouched), is the last
    element, its value is native and the transfer syntax is not deflated; the element's
    header in the file is checked against what was read.
    """
    raw = ds._dict.get(0x7FE00010)
    syntax = transfer_syntax_of(ds)
    if (
        location is None
        or location.offset < 0
        or location.encapsulated
        or not isinstance(raw, RawDataElement)
        or raw.value is not None
        or max(int(tag) for tag in ds._dict) != 0x7FE00010
        or syntax == DEFLATED
    ):
        return None
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    start = location.offset - (8 if implicit else 12)
    if start < 0:
        return None
    head = read_span(path, start, location.offset - start)
    order = "<" if little else ">"
    if implicit:
        expected = struct.pack("<HHL", 0x7FE0, 0x0010, location.length)
    else:
        expected = struct.pack(f"{order}HH2s2xL", 0x7FE0, 0x0010, head[4:6], location.length)
        if head[4:6] not in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):
            return None
    if head != expected:
        return None
    return FileSpan(path, start, location.offset - start + location.length)


def write_keeping_pixels(
    handle: BinaryIO, ds: Dataset, source: Path, location: PixelLocation | None
) -> None:
    """Write ds as a file; copy its native Pixel Data element from source unread.

    The header is encoded in memory and written at once; the pixel data goes from file
    to file (by the kernel where it can). Anything else is written by pydicom whole.
    """
    span = _verbatim_pixel_span(ds, source, location)
    if span is None:
        pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        return
    pixels = ds._dict.pop(0x7FE00010)
    try:
        handle.write(encode_file(ds))
    finally:
        ds._dict[Tag(0x7FE00010)] = pixels
    copy_span(handle, span)


def write_edited(
    ds: Dataset, path: Path, location: PixelLocation | None, output: OutputFile
) -> Path:
    """Write a dataset whose header was edited, keeping the source's pixel data as stored.

    The File Meta follows the dataset (SOP class and instance, transfer syntax); an
    instance without SOP Class or Instance UID is refused (its File Meta needs them).
    """
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if not ds.get(k)]
    if missing:
        raise DicomPressorError(f"no {' and no '.join(missing)}: cannot write File Meta")
    ds.file_meta = file_meta_for(ds, transfer_syntax_of(ds))
    ds.preamble = b"\0" * 128
    with output as handle:
        write_keeping_pixels(handle, ds, path, location)
    assert output.path is not None
    return output.path


# ---- de-identification: elements, sequences, overlays, private attributes ----

#: Value representations that get a dummy inside a sequence marked D: text only (CS
#: codes, numbers and coordinates stay, so the structure keeps its meaning).
DUMMY_TEXT_VRS = frozenset("AE AS LO LT PN SH ST UC UR UT".split())  # noqa: SIM905


#: (0070,0008) Text Object Sequence and what a graphic annotation item holds besides it:
#: (0070,0009) Graphic Object Sequence, (0070,0209) Compound Graphic Sequence.
TEXT_OBJECTS, GRAPHIC_OBJECTS = 0x00700008, (0x00700009, 0x00700209)


def _clean_dataset(
    ds: Dataset, job: Deidentification, mode: str, parent: str, keep: frozenset[int]
) -> None:
    """Apply the actions to one dataset or item.

    mode is "dummy" inside a D sequence and "content" for the items of a content
    sequence; parent is the keyword of the enclosing sequence; keep: tags kept whatever
    the table says.
    """
    _clean_overlays(ds, job.choice)
    safe = safe_private_tags(ds) if job.choice.keep_safe_private else frozenset()
    for tag in list(ds.keys()):
        if tag.is_private:
            if int(tag) not in safe:
                del ds[tag]
            elif _vr_of(ds, tag) == "SQ":
                _clean_items(ds, tag, job, "", "K")
            continue
        if _removed_by_rule(tag):
            del ds[tag]
            continue
        vr = _vr_of(ds, tag)
        if vr == "UN" and dictionary_has_tag(tag):  # a public element stored as UN:
            vr = ds[tag].VR  # pydicom reads it by its dictionary VR (a UID stays a UID)
        code = "K" if int(tag) in keep else job.actions.get(int(tag))
        if code is None:
            code = _unlisted_code(vr, mode, job.choice)
        code = _in_context(ds, tag, vr, code, parent)
        _apply(ds, tag, vr, code, job, mode)


def _unlisted_code(vr: str, mode: str, choice: ProfileChoice) -> str:
    """Return the action on an element Table E.1-1 does not list (by its VR, E.1.1)."""
    if vr in DATE_TIME_VRS:
        code = choice.date_code
        return "K" if code == "M" and vr == "TM" else code
    return "D" if mode == "dummy" and vr in DUMMY_TEXT_VRS else "K"


@functools.cache
def context_types() -> Mapping[int, Mapping[str, str]]:
    """Return CONTEXT_TYPES as tag -> {parent keyword or "*": Type}."""
    table: dict[int, dict[str, str]] = {}
    for keyword, places in CONTEXT_TYPES.items():
        for place in places.split():
            parent, _, kind = place.partition(":")
            table.setdefault(tag_for_keyword(keyword), {})[parent] = kind
    return types.MappingProxyType(table)


def _in_context(ds: Dataset, tag: BaseTag, vr: str, code: str, parent: str) -> str:
    """Adjust X and Z to the Type the attribute has where it is (CONTEXT_TYPES, E.1.1)."""
    if code not in ("X", "Z"):
        return code
    where = context_types().get(int(tag), {})
    kind = where.get(parent) or where.get("*")
    if kind == "2":
        return "Z"
    if vr != "SQ" or code == "X":
        return code
    if kind == "1":
        return "U"  # a reference that must have an item: kept, its UIDs replaced
    return "Z" if not ds[tag].value else "X"  # empty as it came, or removed (not emptied)


def _apply(
    ds: Dataset, tag: BaseTag, vr: str, code: str, job: Deidentification, mode: str
) -> None:
    """Apply one action to one element."""
    if code == "X":
        del ds[tag]
    elif code == "Z":
        ds[tag] = DataElement(tag, vr, _value_from_text(vr, ""))
    elif vr == "SQ":  # D, U, K, C and G keep a sequence and clean what it holds
        if code in ("D", "G") or (mode == "dummy" and int(tag) not in job.actions):
            inner = "dummy"  # (a sequence an option keeps is cleaned as one, not dummied)
        else:
            inner = "content" if code == "C" else ""
        _clean_items(ds, tag, job, inner, code)
    elif vr == "UI":  # K from the table or an option keeps it; unlisted UIDs are replaced
        kept = code == "K" and int(tag) in job.actions
        if code in ("U", "D") or (job.replace_uids and not kept):
            elem = ds[tag]
            elem.value = _new_uids(elem.value, job.uids, all_uids=code in ("U", "D"))
    elif code == "M" and vr in ("DA", "DT"):
        text = "\\".join(str(v) for v in _as_list(ds[tag].value))
        if text:
            moved = shift_date(vr, text, job.shift_days)
            ds[tag] = DataElement(tag, vr, moved if moved is not None else DUMMY_VALUES[vr])
    elif code == "D":
        dummy = b"" if vr in BINARY_VRS else DUMMY_VALUES.get(vr)
        ds[tag] = DataElement(tag, vr, dummy)


def _clean_items(ds: Dataset, tag: BaseTag, job: Deidentification, mode: str, code: str) -> None:
    """Clean the items of a sequence; remove the sequence when none is left.

    Content items that Table E.3.4-1 removes go; with code G (Clean Graphics) text
    objects go, and a graphic annotation item left without graphics goes too.
    """
    elem = ds[tag]
    items = list(elem.value)
    keyword = keyword_of(int(tag))
    kept = []
    for item in items:
        keep: frozenset[int] = frozenset()
        if mode == "content":
            action = content_item_action(item, job.choice)
            if action == "X":
                job.removed_items += 1
                continue
            keep = CONTENT_VALUE_TAGS if action == "K" else keep
        if code == "G" and TEXT_OBJECTS in item:
            del item[TEXT_OBJECTS]
        _clean_dataset(item, job, mode, keyword, keep)
        if code == "G" and not any(t in item for t in GRAPHIC_OBJECTS):
            continue
        kept.append(item)
    if items and all(len(item) == 0 for item in kept):
        del ds[tag]  # every item went (or was emptied): no empty sequence is left
    elif len(kept) != len(items):
        elem.value = kept


def _clean_overlays(ds: Dataset, choice: ProfileChoice) -> None:
    """Remove overlays (PS3.3 C.9.2) whose data Table E.1-1 removes, as whole 60xx groups.

    Overlay Data (60xx,3000) is X: its group goes with it, so no overlay is left
    half-described. With Clean Graphics (E.3.3) an ROI overlay (60xx,0040 "R") stays, as
    region outlines; graphics overlays, which may hold text, still go. The free text of
    what stays goes: Overlay Description (60xx,0022), Label (60xx,1500), Comments
    (60xx,4000).
    """
    groups = {t.group for t in list(ds.keys()) if 0x6000 <= t.group <= 0x60FF and t.group % 2 == 0}
    for group in groups:
        base = group << 16
        roi = False
        if base | 0x0040 in ds:
            roi = str(ds[base | 0x0040].value or "").strip().upper() == "R"
        whole = base | 0x3000 in ds and not (choice.clean_graphics and roi)
        for tag in [t for t in list(ds.keys()) if t.group == group]:
            if whole or tag.element in (0x0022, 0x1500, 0x4000):
                del ds[tag]


@functools.cache
def safe_private_table() -> Mapping[tuple[int, str], frozenset[int]]:
    """Return Table E.3.10-1 as (group, Private Creator) -> element offsets."""
    table: dict[tuple[int, str], frozenset[int]] = {}
    for line in "".join(SAFE_PRIVATE_TABLE).splitlines():
        creator, group, offsets = line.split("|")
        key = (int(group, 16), creator)
        table[key] = table.get(key, frozenset()) | {int(o, 16) for o in offsets.split()}
    return types.MappingProxyType(table)


def safe_private_tags(ds: Dataset) -> frozenset[int]:
    """Return the private tags of ds that Table E.3.10-1 calls safe, with their creators."""
    creators: dict[tuple[int, int], str] = {}
    for tag in list(ds.keys()):
        if tag.is_private and 0x10 <= tag.element <= 0xFF:
            value = ds[tag].value
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value or "")
            creators[(tag.group, tag.element)] = text.strip(" \0")
    table = safe_private_table()
    kept: set[int] = set()
    for tag in list(ds.keys()):
        if not tag.is_private or tag.element < 0x1000:
            continue
        block = tag.element >> 8
        offsets = table.get((tag.group, creators.get((tag.group, block), "")))
        if offsets and tag.element & 0xFF in offsets:
            kept.update((int(tag), (tag.group << 16) | block))
    return frozenset(kept)


# ---- de-identification: structured content and dates ----

#: The value elements of a content item that Table E.3.4-1 keeps (K): Text Value, Person
#: Name, Date, Time, DateTime, UID (PS3.3 Table C.17-5... the Content Item Macro).
CONTENT_VALUE_TAGS = frozenset(
    [0x0040A160, 0x0040A123, 0x0040A121, 0x0040A122, 0x0040A120, 0x0040A124]
)


#: (0040,A730) Content Sequence, (0040,DB73) Referenced Content Item Identifier.
CONTENT_SEQUENCE, REFERENCED_CONTENT_ITEM = 0x0040A730, 0x0040DB73


#: Which choice turns a column of Table E.3.4-1 on, and what its actions become (None:
#: the item stays and the element rules treat its value).
_CONTENT_OPTION_EFFECTS: tuple[tuple[str, str, str | None], ...] = (
    ("keep_descriptions", "clean_descriptors", "K"),
    ("keep_patient_characteristics", "retain_patient_characteristics", "K"),
    ("keep_device_identity", "retain_device_identity", "K"),
    ("keep_uids", "retain_uids", "K"),
    ("keep_dates", "longitudinal", "K"),
    ("shift_dates", "longitudinal", None),
)


@functools.lru_cache(maxsize=16)
def structured_content_actions(choice: ProfileChoice) -> dict[str, str | None]:
    """Return "scheme:code:value type" -> X (remove the item), K (keep its value) or None.

    None (Table E.3.4-1's D and X/D, or an option's C) keeps the item and lets the
    element rules replace its value: a dummy text or name, a new UID, a date per option.
    """
    actions: dict[str, str | None] = {}
    for code, names in STRUCTURED_CONTENT_TABLE.items():
        actions.update(dict.fromkeys(names.split(), "X" if code == "X" else None))
    for name, column, effect in _CONTENT_OPTION_EFFECTS:
        if getattr(choice, name):
            for names in STRUCTURED_CONTENT_OPTIONS.get(column, {}).values():
                actions.update(dict.fromkeys(names.split(), effect))
    return actions


def content_item_action(item: Dataset, choice: ProfileChoice) -> str | None:
    """Return Table E.3.4-1's action on a content item (by its concept name), or None."""
    value_type = item.get("ValueType")
    names = item.get("ConceptNameCodeSequence")
    if not value_type or not names:
        return None
    name = names[0]
    value = name.get("CodeValue") or name.get("LongCodeValue") or name.get("URNCodeValue")
    key = f"{name.get('CodingSchemeDesignator', '')}:{value}:{value_type}"
    return structured_content_actions(choice).get(key)


def content_paths(ds: Dataset) -> dict[int, tuple[tuple[int, ...], Dataset]]:
    """Return id(item) -> (its position, the item) for every content item of an SR tree.

    Positions are what Referenced Content Item Identifier (0040,DB73) holds: 1 for the
    root, then the 1-based index in each Content Sequence down to the item (C.17.3.2.5).
    """
    found: dict[int, tuple[tuple[int, ...], Dataset]] = {}
    stack: list[tuple[Dataset, tuple[int, ...]]] = [(ds, (1,))]
    while stack:
        parent, path = stack.pop()
        elem = parent.get(CONTENT_SEQUENCE)
        for index, item in enumerate(elem.value if elem is not None else (), 1):
            found[id(item)] = (path + (index,), item)
            stack.append((item, path + (index,)))
    return found


def renumber_content_references(
    ds: Dataset, before: Mapping[int, tuple[tuple[int, ...], Dataset]]
) -> None:
    """Point each by-reference content item at its target's new position.

    A reference whose target was removed is removed with its item, until none is left.
    ``before`` is content_paths(ds) taken before items were removed.
    """
    old_of = {key: path for key, (path, _) in before.items()}
    targets: dict[int, tuple[int, ...]] = {}  # the original target of each reference
    while True:
        now = content_paths(ds)
        new_of = {old_of[key]: path for key, (path, _) in now.items() if key in old_of}
        new_of[(1,)] = (1,)
        referring = [item for _, item in now.values() if REFERENCED_CONTENT_ITEM in item]
        for item in referring:
            value = _as_list(item[REFERENCED_CONTENT_ITEM].value)
            targets.setdefault(id(item), tuple(int(v) for v in value))
        dangling = {id(item) for item in referring if targets[id(item)] not in new_of}
        if not dangling:
            for item in referring:
                item[REFERENCED_CONTENT_ITEM].value = list(new_of[targets[id(item)]])
            return
        for parent in [ds, *(item for _, item in now.values())]:
            elem = parent.get(CONTENT_SEQUENCE)
            if elem is not None and any(id(i) in dangling for i in elem.value):
                elem.value = [i for i in elem.value if id(i) not in dangling]
                if not elem.value:
                    del parent[CONTENT_SEQUENCE]


#: A DA or DT value: year, month, day, and the rest of a DT (time, fraction, offset).
_DATE_VALUE = re.compile(r"(\d{4})(\d{2})?(\d{2})?(.*)")


def shift_date(vr: str, value: str, days: int) -> str | None:
    """Return a DA or DT value (each of its values) moved by whole days, or None.

    The time of a DT stays, as a whole-day move keeps every time of day; a DT of only a
    year or a month stays that precise. None: a value that is not a date.
    """
    moved_values = []
    for text in value.split("\\"):
        text = text.strip()
        if not text:
            moved_values.append(text)
            continue
        match = _DATE_VALUE.fullmatch(text.replace(".", "") if vr == "DA" else text)
        if match is None:
            return None
        year, month, day, rest = match.groups()
        if vr == "DA" and (day is None or rest):
            return None
        if rest and day is None:
            return None
        try:
            moved = datetime.date(int(year), int(month or 1), int(day or 1))
            moved += datetime.timedelta(days=days)
        except (ValueError, OverflowError):
            return None
        shown = f"{moved.year:04d}" + (f"{moved.month:02d}" if month else "")
        moved_values.append(shown + (f"{moved.day:02d}" if day else "") + rest)
    return "\\".join(moved_values)


def date_shift_days(uids: UidMap, patient_id: str) -> int:
    """Return the whole days (never zero) --shift-dates moves a patient's dates by.

    A keyed hash of the patient's original ID: the same key gives the same shift to the
    same patient in every run, process and machine, so intervals between studies survive.
    """
    digest = uids.keyed_hash("shift-dates\0" + patient_id.strip(" \0"))
    return -(1 + int.from_bytes(digest[:8], "big") % DATE_SHIFT_MAX_DAYS)


# ---- de-identification: keys and UID maps ----


def read_deid_key(path: Path) -> str:
    """Return the de-identification key in path, creating the file (0600) when missing.

    Two runs creating it at once agree: the file is written aside and linked into place,
    and the one that loses reads the winner's key. Raises DicomPressorError naming path.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return _create_deid_key(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise DicomPressorError(
            f"{path}: cannot read the de-identification key: {reason}"
        ) from exc
    if len(text) < 32 or not re.fullmatch(r"[0-9a-fA-F]+", text):
        raise DicomPressorError(
            f"{path}: not a de-identification key (expected at least 32 hex digits)"
        )
    return text.lower()


def _create_deid_key(path: Path) -> str:
    """Write a new random key to path (mode 0600) unless another run did; return the key."""
    key = secrets.token_hex(DEID_KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise DicomPressorError(f"{path}: cannot create the key: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(key + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_deid_key(path)
        except OSError:  # no hard links here
            if path.exists():
                return read_deid_key(path)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return key


def key_id(secret: str) -> str:
    """Return a short name of a key that reveals nothing of it (for the UID map)."""
    return hmac.new(secret.encode("ascii"), b"key id", "sha256").hexdigest()[:12]


@contextlib.contextmanager
def locked_file(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file lock (created if missing) while the block runs."""
    with lock.open("a") as handle:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    time.sleep(0.1)
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def merge_uid_map(path: Path, pairs: Mapping[str, str], secret: str) -> int:
    """Add original -> new UID rows to the CSV at path; return how many rows were new.

    The rows of every run and job go into the one file: under a lock (``path.lock``) the
    file is read, the new rows appended, and the whole written aside and renamed over it
    (mode 0600), so readers see the old file or the new one. A row names the key that
    made it (key_id): runs with different keys give the same original different rows.
    """
    header = ",".join(UID_MAP_COLUMNS)
    ident = key_id(secret)
    try:
        with locked_file(path.with_name(path.name + ".lock")):
            lines = [header]
            if path.exists():
                lines = path.read_text(encoding="ascii").splitlines() or [header]
                if lines[0] != header:
                    raise DicomPressorError(
                        f"{path}: not a UID map (its first line is not {header})"
                    )
            known = set(lines[1:])
            new = [f"{old},{pairs[old]},{ident}" for old in sorted(pairs)]
            new = [row for row in new if row not in known]
            if new:
                output = OutputFile(path, replace=True, on_ready=lambda tmp: tmp.chmod(0o600))
                with output as handle:
                    handle.write(("\n".join([*lines, *new]) + "\n").encode("ascii"))
    except OSError as exc:
        raise DicomPressorError(
            f"{path}: cannot write the UID map: {exc.strerror or exc}"
        ) from exc
    return len(new)


# ---- header dumps ----


def _is_bulk(tag: int, vr: str, length: int | None) -> bool:
    """Tell whether an element is bulk data, left out of JSON and elided in text."""
    if keyword_of(int(tag)) in BULK_DATA_KEYWORDS:
        return True
    if 0x6000 <= tag >> 16 <= 0x60FF and tag & 0xFFFF == 0x3000:  # Overlay Data
        return True
    return vr in BINARY_VRS and length is not None and length > BULK_DATA_THRESHOLD


def _raw_length(ds: Dataset, tag: BaseTag) -> int | None:
    """Return the encoded length of an element's value without loading it if possible."""
    item = ds.get_item(tag, keep_deferred=True)
    length = getattr(item, "length", None)
    if length is not None and length != 0xFFFFFFFF:
        return int(length)
    value = ds[tag].value
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    return None


def without_bulk_data(ds: Dataset) -> Dataset:
    """Return a copy of ds (nested items too) without its bulk data elements."""
    out = Dataset()
    tags = ds.keys()  # tags, not elements: raw values stay unread
    for tag in tags:
        vr = _vr_of(ds, tag)
        if vr != "SQ" and _is_bulk(tag, vr, _raw_length(ds, tag) if vr in BINARY_VRS else 0):
            continue
        elem = ds[tag]
        if vr == "SQ":
            out[tag] = DataElement(tag, "SQ", [without_bulk_data(i) for i in elem.value or []])
        else:
            out[tag] = elem
    return out


def _show_value(elem: DataElement) -> str:
    """Return an element's value as one readable line."""
    value = elem.value
    if value is None or value == "":
        return "(empty)"
    if isinstance(value, (bytes, bytearray)):
        return _show_bytes(value)
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return _show_text("\\".join(str(v) for v in value))
    return _show_text(str(value))


def _show_bytes(value: bytes) -> str:
    """Return binary data as its length and first bytes."""
    head = " ".join(f"{b:02x}" for b in value[:16])
    return f"<{len(value)} bytes: {head}{' ...' if len(value) > 16 else ''}>"


def _show_text(text: str) -> str:
    """Return text as one line, cut to DUMP_VALUE_CHARS."""
    if not text:
        return "(empty)"
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= DUMP_VALUE_CHARS else text[: DUMP_VALUE_CHARS - 3] + "..."


#: How pydicom cleans each VR's text when it converts a value (pydicom.values), for
#: values shown straight from the bytes read: the padding stripped from the whole
#: value, from each value, or both ends of each value.
_STRIP_WHOLE = frozenset("AS CS DA DT TM UI LT ST UT PN".split())  # noqa: SIM905


_STRIP_EACH_RIGHT = frozenset("LO SH UC".split())  # noqa: SIM905


_STRIP_EACH_BOTH = frozenset("AE DS IS".split())  # noqa: SIM905


def _show_raw(item: RawDataElement) -> str | None:
    """Return the dump of a raw value as its conversion would show it, or None.

    ASCII text and numbers are shown from the bytes read, which is several times faster
    than converting them; anything else (other characters, AT, UN, odd sizes) gives
    None and is converted by pydicom.
    """
    if item.value is None or not item.VR:
        return None
    return _show_raw_value(item.VR, item.value, "<" if item.is_little_endian else ">")


def _show_raw_value(vr: str, data: bytes, order: str = "<") -> str | None:
    """_show_raw() of a VR and the value's bytes (order: the byte order of numbers).

    Short values are shown once per process (the files of a series share most of
    their values).
    """
    if len(data) <= 256:
        return _show_short_raw_value(vr, data, order)
    return _shown_raw_value(vr, data, order)


@functools.lru_cache(maxsize=8192)
def _show_short_raw_value(vr: str, data: bytes, order: str) -> str | None:
    """_shown_raw_value(), cached."""
    return _shown_raw_value(vr, data, order)


def _shown_raw_value(vr: str, data: bytes, order: str) -> str | None:
    """Return _show_raw_value()'s text, computed."""
    if vr == "UN":
        return None
    if vr in NUMBER_FORMATS:
        size = struct.calcsize("<" + NUMBER_FORMATS[vr])
        if len(data) % size:
            return None
        numbers = struct.unpack(f"{order}{len(data) // size}{NUMBER_FORMATS[vr]}", data)
        return _show_text("\\".join(str(n) for n in numbers))
    if vr in BINARY_VRS:
        return _show_bytes(data) if data else "(empty)"
    if not data.isascii():
        return None
    text = data.decode("ascii")
    if vr in _STRIP_WHOLE:
        return _show_text(text.rstrip("\0 "))
    if vr in _STRIP_EACH_RIGHT:
        return _show_text("\\".join(v.rstrip("\0 ") for v in text.split("\\")))
    if vr in _STRIP_EACH_BOTH:
        return _show_text("\\".join(v.strip() for v in text.rstrip("\0 ").split("\\")))
    return None


def dump_lines(ds: Dataset, depth: int = 0) -> Iterator[str]:
    """Yield the text dump of ds: tag, VR, keyword and value; items indented."""
    indent = "  " * depth
    tags = ds.keys()
    for tag in tags:
        vr = _vr_of(ds, tag)
        if tag.is_private:  # the name depends on the private creator
            name = "PrivateCreator" if tag.is_private_creator else f"[{ds[tag].name}]"
            head = f"{indent}{_tag_text(int(tag))} {vr} {name}"
        else:
            head = indent + _public_head(int(tag), vr)
        if vr == "SQ":
            items = ds[tag].value or []
            yield f"{head}: {len(items)} item(s)"
            for number, item in enumerate(items, 1):
                yield f"{indent}  Item {number}"
                yield from dump_lines(item, depth + 2)
            continue
        length = _raw_length(ds, tag) if vr in BINARY_VRS else 0
        if _is_bulk(tag, vr, length):
            encapsulated = getattr(
                ds.get_item(tag, keep_deferred=True), "length", None
            ) == 0xFFFFFFFF or (int(tag) == 0x7FE00010 and transfer_syntax_of(ds).is_compressed)
            kind = "encapsulated, " if encapsulated else ""
            shown = f"{length} bytes" if length is not None else "undefined length"
            yield f"{head}: <bulk data elided: {kind}{shown}>"
            continue
        raw = ds._dict[tag]
        shown = _show_raw(raw) if isinstance(raw, RawDataElement) else None
        if shown is None:
            elem = ds[tag]
            shown = _show_value(elem) if _value_ok(elem) else "<unreadable value>"
        yield f"{head}: {shown}"


@functools.lru_cache(maxsize=4096)
def _public_head(tag: int, vr: str) -> str:
    """Return ``(GGGG,EEEE) VR Keyword`` of a public tag (the same in every file)."""
    return f"{_tag_text(tag)} {vr} {keyword_of(tag) or '[unknown]'}"


class _NotFast(Exception):
    """A file (or part of it) the raw header dump leaves to pydicom."""


def fast_header_text(path: Path) -> str | None:
    """Return header_text() of a file without pydicom, or None.

    Explicit VR Little Endian files are parsed straight from a memory map and named from
    pydicom's dictionaries (keyword_of, private_name): the same lines as the pydicom
    path, several times faster, and the toolkit need not be loaded. Files it does not
    handle (other syntaxes, no preamble, undefined-length values other than sequences,
    values to convert, duplicate tags, anything malformed) give None, and the caller
    dumps them through pydicom.
    """
    import mmap

    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 132:
                return None
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _fast_dump(path, data, size)
    except (_NotFast, struct.error, ValueError, OSError, KeyError, IndexError):
        return None


def _fast_dump(path: Path, data: Any, size: int) -> str:
    """Dump a mapped file (see fast_header_text); raise _NotFast where it cannot."""
    if data[128:132] != b"DICM":
        raise _NotFast
    meta, pos = _raw_elements(data, 132, size, group=0x0002)
    syntax = next((v for t, _, _, v in meta if t == 0x00020010), None)
    if syntax is None:
        raise _NotFast
    if bytes(syntax).rstrip(b"\0 ") != EXPLICIT_VR_LE.encode():
        raise _NotFast  # encapsulated pixel data has an undefined length: pydicom's
    elements, end = _raw_elements(data, pos, size)
    if end != size:
        raise _NotFast
    lines = [f"# {path.name}", "# File Meta Information"]
    lines.extend(_raw_dump_lines(meta, 1))
    lines.append("# Dataset")
    lines.extend(_raw_dump_lines(elements, 1))
    return "\n".join(lines) + "\n"


RawElement = tuple[int, str, int, Any]  # tag, VR, length, value (items for a sequence)


def _raw_elements(
    data: Any, pos: int, end: int, *, group: int | None = None, item: bool = False
) -> tuple[list[RawElement], int]:
    """Parse Explicit VR Little Endian elements from pos to end (or a delimiter).

    Return the elements and where parsing stopped. Sequences are parsed into lists of
    items; other values are copied out of the map, but for bulk data, which a dump
    elides (its value is None). group stops at the first element of another group (the
    File Meta); item stops at an Item Delimitation Item.
    """
    out: list[RawElement] = []
    last = -1
    while pos < end:
        tag, vr, length, start = explicit_element_header(data, pos)
        if group is not None and tag >> 16 != group:
            break
        if tag == 0xFFFEE00D and item:  # Item Delimitation Item
            return out, pos + 8
        if tag >> 16 == 0xFFFE or tag <= last:  # stray delimiters, duplicates, disorder
            raise _NotFast
        last = tag
        if vr is None:
            raise _NotFast
        if vr == "SQ":
            items, after = _raw_items(data, start, length, end)
            out.append((tag, vr, length, items))
            pos = after
            continue
        if length == 0xFFFFFFFF or start + length > end:
            raise _NotFast  # encapsulated or truncated: pydicom's reader decides
        bulk = (vr in BINARY_VRS and length > BULK_DATA_THRESHOLD) or _bulk_by_tag(tag)
        out.append((tag, vr, length, None if bulk else data[start : start + length]))
        pos = start + length
    if item:
        raise _NotFast  # an undefined-length item without its delimiter
    return out, pos


def _raw_items(data: Any, start: int, length: int, end: int) -> tuple[list[Any], int]:
    """Parse a sequence's items; return them and the position after the sequence."""
    stop = end if length == 0xFFFFFFFF else start + length
    if stop > end:
        raise _NotFast
    items = []
    pos = start
    while pos < stop:
        tag_group, tag_element, item_length = struct.unpack_from("<HHL", data, pos)
        tag = tag_group << 16 | tag_element
        if tag == 0xFFFEE0DD and length == 0xFFFFFFFF:  # Sequence Delimitation Item
            return items, pos + 8
        if tag != 0xFFFEE000:
            raise _NotFast
        if item_length == 0xFFFFFFFF:
            elements, pos = _raw_elements(data, pos + 8, stop, item=True)
        else:
            elements, after = _raw_elements(data, pos + 8, pos + 8 + item_length)
            if after != pos + 8 + item_length:
                raise _NotFast
            pos = after
        items.append(elements)
    if length == 0xFFFFFFFF or pos != stop:
        raise _NotFast
    return items, pos


def _raw_dump_lines(elements: list[RawElement], depth: int) -> Iterator[str]:
    """Yield dump_lines() for raw elements; raise _NotFast for values to convert.

    Text is shown only when it is ASCII (then every character set agrees on it).
    """
    indent = "  " * depth
    creators = {
        (t & 0xFFFF0000) | (t & 0xFF) << 8: bytes(v).decode("latin-1").rstrip("\0 ")
        for t, _, _, v in elements
        if t >> 16 & 1 and 0x10 <= t & 0xFFFF <= 0xFF
    }
    for tag, vr, length, value in elements:
        if tag >> 16 & 1:  # private: named as pydicom names it
            element = tag & 0xFFFF
            if 0x10 <= element <= 0xFF:
                name = "PrivateCreator"
            else:
                creator = creators.get(tag & 0xFFFFFF00)
                if creator:
                    described = private_name(tag, creator)
                    name = f"[[{described}]]" if described is not None else "[Private tag data]"
                elif element >> 8 == 0:
                    name = "[Private Creator]"
                else:
                    name = "[Private tag data]"
            head = f"{indent}{_tag_text(tag)} {vr} {name}"
        else:
            head = indent + _public_head(tag, vr)
        if vr == "SQ":
            yield f"{head}: {len(value)} item(s)"
            for number, item in enumerate(value, 1):
                yield f"{indent}  Item {number}"
                yield from _raw_dump_lines(item, depth + 2)
            continue
        if value is None:  # bulk data (_raw_elements)
            yield f"{head}: <bulk data elided: {length} bytes>"
            continue
        shown = _show_raw_value(vr, bytes(value))
        if shown is None:
            if vr == "UN" and tag >> 16 & 1:
                shown = _show_bytes(bytes(value)) if length else "(empty)"
            else:
                raise _NotFast
        yield f"{head}: {shown}"


@functools.lru_cache(maxsize=4096)
def _bulk_by_tag(tag: int) -> bool:
    """_is_bulk() for what the tag alone decides (bulk data keywords, overlay data)."""
    return _is_bulk(tag, "", 0)


#: The mark of a partial dump: the last line of a text dump, a top-level key in JSON.
INCOMPLETE_MARK = "INCOMPLETE"


def dump_source(path: Path) -> tuple[Dataset, str | None]:
    """Read what a header dump shows: the dataset, and why it is partial (None: whole).

    A file that does not parse to its end gives the elements before its damage and the
    one-line problem (HeaderDamage); anything else that stops the reading is raised.
    """
    try:
        ds, _ = read_header(path, check_values=False, image=False)
    except HeaderDamage as exc:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return partial_dataset(path, exc.walk), exc.message
        except Exception:  # not even that part reads: the failure alone
            raise exc from None
    return ds, None


def header_text(path: Path, ds: Dataset, *, incomplete: str | None = None) -> str:
    """Return the text dump of a file: File Meta, then the dataset.

    A partial dump (incomplete: why) ends with a line ``# INCOMPLETE: <why>``.
    """
    lines = [f"# {path.name}", "# File Meta Information"]
    meta = getattr(ds, "file_meta", None)
    if meta:
        lines.extend(dump_lines(meta, 1))
    else:
        lines.append("  (none: a bare dataset, without preamble and File Meta)")
    lines.append("# Dataset")
    lines.extend(dump_lines(ds, 1))
    if incomplete is not None:
        lines.append(f"# {INCOMPLETE_MARK}: {incomplete}; nothing after it is shown")
    return "\n".join(lines) + "\n"


def header_json(ds: Dataset, *, incomplete: str | None = None) -> tuple[str, list[str]]:
    """Return the DICOM JSON Model of ds (PS3.18 F.2) without bulk data, sorted, and the
    tags of the elements left out because their values cannot be converted.

    A partial dump (incomplete: why) has the top-level key ``"INCOMPLETE"`` (why), which
    no DICOM JSON reader takes for a tag: it cannot pass for the whole header.
    """
    kept = without_bulk_data(ds)
    left_out: list[str] = []
    try:
        data = kept.to_json_dict(bulk_data_threshold=1 << 62)
    except Exception:  # a value pydicom cannot convert: find it, leave it out
        for tag in list(kept.keys()):
            try:
                Dataset({tag: kept[tag]}).to_json_dict(bulk_data_threshold=1 << 62)
            except Exception:
                left_out.append(_tag_text(int(tag)))
                del kept[tag]
        data = kept.to_json_dict(bulk_data_threshold=1 << 62)
    if incomplete is not None:
        data[INCOMPLETE_MARK] = f"{incomplete}; nothing after it is included"
    return json.dumps(data, indent=2, sort_keys=True) + "\n", left_out


# ---- DICOMDIR ----


@dataclasses.dataclass
class DirectoryRecord:
    """One directory record (PS3.3 F.3.2.2) without its two offsets and, in a leaf, its
    Referenced File ID: those are set when the DICOMDIR is written (dicomdir_bytes).

    ``key`` tells a record from its siblings, as pydicom's RecordNode.key does: the
    Patient ID, the Study or Series Instance UID, a leaf's SOP Instance UID. ``elements``
    holds each element encoded in Explicit VR Little Endian, by tag.
    """

    kind: str
    key: str
    elements: dict[int, bytes]


@dataclasses.dataclass
class DirectoryEntry:
    """One instance's directory records, highest level first, and the keys given
    placeholder values (DICOMDIR_PLACEHOLDERS) because the instance lacks them."""

    uid: str
    records: list[DirectoryRecord]
    filled: list[str]


def plain_directory_entry(path: Path) -> DirectoryEntry | None:
    """Return the directory records of a plain image file, read from its bytes, or None.

    The records are those pydicom's creators make (PATIENT, STUDY, SERIES, IMAGE with
    DIRECTORY_RECORD_KEYS, the Specific Character Set when the file has one), value for
    value, byte for byte. Plain means what read_plain_header takes (Explicit VR Little
    Endian, native Pixel Data ending the file), a class in DIRECTORY_IMAGE_SOP_CLASSES,
    the values printable ASCII in their dictionary VR, every check of directory_entry()
    passed. Anything else gives None: pydicom then reads the file and says what is wrong.
    """
    plain = PlainHeader.read(path)
    if plain is None or not plain.checks_pass():
        return None
    text, spans = plain.text, plain.spans
    uids = [text(tag, "UI") for tag in (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)]
    modality = text(0x00080060, "CS") if 0x00080060 in spans else b""
    if (
        not all(uids)
        or uids[0].decode() not in DIRECTORY_IMAGE_SOP_CLASSES  # type: ignore[union-attr]
        or modality is None
        or modality.decode() in DIRECTORY_OTHER_LEAF_MODALITIES
        or 0x00420011 in spans  # Encapsulated Document: an ENCAP DOC record
        or 0x300A0002 in spans  # RT Plan Label: an RT PLAN record
    ):
        return None
    charset = None
    if 0x00080005 in spans:
        charset = text(0x00080005, "CS")
        if charset is None:
            return None
    filled: list[str] = []
    records = []
    for kind, keys in DIRECTORY_RECORD_KEYS.items():
        elements = {0x00041410: encode_element(0x00041410, "US", b"\xff\xff")}
        elements[0x00041430] = encode_element(0x00041430, "CS", kind.encode())
        if charset is not None:
            elements[0x00080005] = encode_element(0x00080005, "CS", charset)
        for tag, vr, keyword, required in keys:
            value = text(tag, vr) if tag in spans else b""
            if value is None:
                return None
            if required and not value:
                value = DICOMDIR_PLACEHOLDERS[keyword].encode()
                filled.append(keyword)
            elements[tag] = encode_element(tag, vr, value)
        records.append(DirectoryRecord(kind, "", elements))
    assert uids[0] is not None and uids[1] is not None
    leaf = records[-1].elements
    leaf[0x00041510] = encode_element(0x00041510, "UI", uids[0])
    leaf[0x00041511] = encode_element(0x00041511, "UI", uids[1])
    leaf[0x00041512] = encode_element(0x00041512, "UI", EXPLICIT_VR_LE.encode())
    patient_id = text(0x00100020, "LO") if 0x00100020 in spans else b""
    keys = [patient_id or DICOMDIR_PLACEHOLDERS["PatientID"].encode(), uids[2], uids[3], uids[1]]
    for record, key in zip(records, keys, strict=True):
        record.key = key.decode()  # type: ignore[union-attr]
    return DirectoryEntry(uids[1].decode(), records, filled)


def directory_records(ds: Dataset) -> tuple[list[Dataset], list[str]]:
    """Return pydicom's directory records of an instance, highest level first (PS3.3 F.5),
    and the keys given placeholders.

    A record key PS3.3 F.5 makes Type 1 that the instance lacks or leaves empty gets its
    DICOMDIR_PLACEHOLDERS value (as dcmmkdir's "invent" option does), in the records
    only: the records are made from a copy of the header.
    """
    probe = Dataset(dict(ds._dict))  # a new element dict: the file's dataset is kept
    probe.file_meta = ds.file_meta
    filled: list[str] = []
    while True:  # pydicom's own record creators (PS3.3 F.5) name the key they miss
        try:
            return list(_record_maker()._recordify(probe)), filled
        except ValueError as exc:
            if "record creator" not in str(exc):
                raise
            missing = [
                k for k in DICOMDIR_PLACEHOLDERS if str(Tag(k)) in str(exc) and k not in filled
            ]
            if not missing:
                raise
            setattr(probe, missing[0], DICOMDIR_PLACEHOLDERS[missing[0]])
            filled.append(missing[0])


@functools.cache
def _record_maker() -> FileSet:
    """Return the FileSet whose record creators directory_records() calls (it holds none)."""
    return FileSet()


def directory_record(record: Dataset) -> DirectoryRecord:
    """Encode one of pydicom's directory records as pydicom's FileSet writes it."""
    from pydicom.fileset import RecordNode

    encoding = record.get("SpecificCharacterSet", pydicom.charset.default_encoding)
    elements = {}
    for tag in sorted(record.keys()):
        if (tag.element == 0 and tag.group > 6) or tag in (0x00041400, 0x00041420, 0x00041500):
            continue
        elements[int(tag)] = pydicom_element_bytes(record[tag], encoding)
    key = RecordNode(copy.copy(record)).key
    return DirectoryRecord(str(record.DirectoryRecordType), str(key), elements)


def add_to_file_set(fs: FileSet, path: Path) -> None:
    """Add a file to fs with the records directory_records() makes (a conformant copy).

    pydicom stages a copy of the whole file, which it writes in the copy's layout.
    """
    from pydicom.fileset import RecordNode

    ds = pydicom.dcmread(path)
    _record_read_encoding(ds)  # pydicom stages a copy of the file: it must convert
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records, _ = directory_records(ds)
        node = None
        for record in records:
            child = RecordNode(record)
            if node is not None:
                child.parent = node
            node = child
        assert node is not None
        fs.add_custom(ds, node)


def is_conformant_file_id(parts: Sequence[str]) -> bool:
    """Tell whether path components form a File ID (PS3.10 8.2: <= 8 of A-Z 0-9 _, <= 8)."""
    return 0 < len(parts) <= MAX_FILE_ID_COMPONENTS and all(
        FILE_ID_COMPONENT.fullmatch(p) for p in parts
    )


def _pydicom_version() -> str:
    """Return pydicom's version as its File Meta names it (``3.0.2``), without loading it."""
    loaded = sys.modules.get("pydicom")
    if loaded is not None:
        return ".".join(loaded.__version_info__)
    from importlib.metadata import version

    match = re.match(r"(\d+\.\d+\.\d+)", version("pydicom"))
    return match.group(1) if match else version("pydicom")


def dicomdir_bytes(entries: Sequence[DirectoryEntry], file_ids: Mapping[str, list[str]]) -> bytes:
    """Return a DICOMDIR (PS3.10 7.2, PS3.3 F.2) of the entries, as pydicom writes it.

    Records hang under the first record with their key (the first instance of a SOP
    Instance UID keeps its records); each leaf references ``file_ids[its UID]``. The File
    Meta names pydicom (its implementation UID and version), the File-set UID is new
    under pydicom's root, the File-set ID empty; records are items of defined length,
    their offsets counted from the start of the file (PS3.3 F.3.2.1).
    """
    tree: dict[str, Any] = {}  # key -> (record, children): insertion order kept
    seen: set[str] = set()
    for entry in entries:
        if entry.uid in seen:
            continue
        seen.add(entry.uid)
        level = tree
        for record in entry.records:
            level = level.setdefault(record.key, (record, {}))[1]
    order: list[tuple[DirectoryRecord, DirectoryRecord | None, DirectoryRecord | None]] = []

    def walk(level: dict[str, Any]) -> None:
        nodes = list(level.values())
        for index, (record, children) in enumerate(nodes):
            after = nodes[index + 1][0] if index + 1 < len(nodes) else None
            lower = next(iter(children.values()))[0] if children else None
            order.append((record, after, lower))
            walk(children)

    walk(tree)
    uid = f"{PYDICOM_ROOT_UID}{secrets.randbelow(10 ** (64 - len(PYDICOM_ROOT_UID)))}"[:64]
    meta = b"".join(
        [
            encode_element(0x00020001, "OB", b"\x00\x01"),
            encode_element(0x00020002, "UI", MEDIA_STORAGE_DIRECTORY.encode()),
            encode_element(0x00020003, "UI", uid.encode()),
            encode_element(0x00020010, "UI", EXPLICIT_VR_LE.encode()),
            encode_element(0x00020012, "UI", f"{PYDICOM_ROOT_UID}1".encode()),
            encode_element(0x00020013, "SH", f"PYDICOM {_pydicom_version()}".encode()),
        ]
    )
    head = b"\0" * 128 + b"DICM" + encode_element(0x00020000, "UL", struct.pack("<L", len(meta)))
    head += meta + encode_element(0x00041130, "CS", b"")
    file_id = {}
    offset = len(head) + 12 + 12 + 10 + 12  # the first item, after the root's elements
    offsets: dict[int, int] = {}
    for record, _, lower in order:
        offsets[id(record)] = offset
        if lower is None:
            ids = "\\".join(file_ids[record.key])
            file_id[id(record)] = encode_element(0x00041500, "CS", ids.encode())
        size = sum(len(e) for e in record.elements.values()) + 24
        offset += 8 + size + len(file_id.get(id(record), b""))
    items = []
    for record, after, lower in order:
        elements = dict(record.elements)
        for tag, other in ((0x00041400, after), (0x00041420, lower)):
            value = offsets[id(other)] if other is not None else 0
            elements[tag] = encode_element(tag, "UL", struct.pack("<L", value))
        if id(record) in file_id:
            elements[0x00041500] = file_id[id(record)]
        body = b"".join(elements[tag] for tag in sorted(elements))
        items.append(item_header(len(body)) + body)
    roots = [offsets[id(record)] for record, _ in tree.values()]
    first, last = (roots[0], roots[-1]) if roots else (0, 0)
    return b"".join(
        [
            head,
            encode_element(0x00041200, "UL", struct.pack("<L", first)),
            encode_element(0x00041202, "UL", struct.pack("<L", last)),
            encode_element(0x00041212, "US", b"\0\0"),
            encode_element(0x00041220, "SQ", b"".join(items)),
        ]
    )


# ---- byte order: bare datasets and re-encoding ----


def swapped(value: bytes, unit: int) -> bytes:
    """Reverse the byte order of each unit-byte number in value (a short tail stays)."""
    if unit <= 1 or len(value) < unit:
        return value
    whole = len(value) // unit * unit
    numbers = np.frombuffer(value, dtype=np.uint8, count=whole).reshape(-1, unit)
    return numbers[:, ::-1].tobytes() + value[whole:]


def encoded_header(tag: int, vr: str, length: int, *, implicit: bool, little: bool) -> bytes:
    """Return an element header in the given encoding (PS3.5 7.1.1-7.1.3)."""
    order = "<" if little else ">"
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack(f"{order}HHL", group, element, length)
    if vr in LONG_LENGTH_VRS:
        return struct.pack(f"{order}HH2s2xL", group, element, vr.encode("ascii"), length)
    return struct.pack(f"{order}HH2sH", group, element, vr.encode("ascii"), length)


def _stored_vr(ds: Dataset, tag: int, item: Any, little: bool) -> str:
    """Return the VR an element is written with: as read (explicit), else the dictionary's.

    Ambiguous dictionary VRs (US or SS, OB or OW) are resolved as pydicom writes them,
    from Pixel Representation and Bits Allocated; an unknown private element is UN.
    """
    vr = getattr(item, "VR", None)
    if vr and " or " not in vr and not getattr(item, "is_implicit_VR", False):
        return str(vr)
    elem = ds[tag]  # converted: the dictionary (private ones through their creator)
    if elem.VR and " or " in elem.VR:
        elem = copy.copy(elem)
        pydicom.filewriter.correct_ambiguous_vr_element(elem, ds, little)
    return str(elem.VR or "UN")


def recode_dataset(
    ds: Dataset, *, implicit: bool, little: bool, source_little: bool | None = None
) -> bytes:
    """Encode ds (not its File Meta) in an encoding: VR implicit or explicit, byte order.

    Each value is taken as the file holds it and only byte-swapped where the byte order
    changes: numbers and OW, OF, OL, OD, OV by their unit (SWAP_UNIT), OB, UN and text as
    they are. So a round trip between native syntaxes gives the same bytes back.
    Retired group lengths (gggg,0000) are left out; sequences keep their defined or
    undefined lengths. Encapsulated (compressed) Pixel Data cannot be recoded.
    """
    if source_little is None:
        source_little = ds.original_encoding[1] is not False
    parts = []
    for tag in sorted(ds._dict):
        if not tag & 0xFFFF and tag >> 16 > 2:
            continue  # a retired group length: no longer true once headers change size
        item = ds._dict[tag]
        vr = _stored_vr(ds, tag, item, source_little)
        if vr == "SQ":
            parts.append(_recoded_sequence(ds[tag], implicit=implicit, little=little))
            continue
        if getattr(item, "length", 0) == 0xFFFFFFFF or getattr(item, "is_undefined_length", 0):
            raise DicomPressorError(
                f"{_tag_text(int(tag))} is encapsulated (compressed): decompress it first (-u)"
            )
        if isinstance(item, RawDataElement):
            value = item.value or b""
            item_little = item.is_little_endian
        else:  # converted by pydicom: numbers in the target order, bytes as they were read
            value = _converted_value_bytes(item, vr, little)
            item_little = source_little if isinstance(item.value, (bytes, bytearray)) else little
        if item_little != little:
            value = swapped(value, SWAP_UNIT.get(vr, 1))
        if not implicit and vr not in LONG_LENGTH_VRS and len(value) > 0xFFFF:
            vr = "UN"  # PS3.5 6.2.2: a value too long for its VR's 2-byte length
        parts.append(encoded_header(tag, vr, len(value), implicit=implicit, little=little))
        parts.append(value)
    return b"".join(parts)


def _converted_value_bytes(elem: DataElement, vr: str, little: bool) -> bytes:
    """Encode the value of an element pydicom converted already, in the target order."""
    elem = DataElement(elem.tag, vr, elem.value)
    return pydicom_element_bytes(elem, implicit=True, little=little)[8:]


def _recoded_sequence(elem: DataElement, *, implicit: bool, little: bool) -> bytes:
    """Encode a sequence element and its items in an encoding (lengths kept defined or not)."""
    body = []
    for child in elem.value:
        source_little = child.original_encoding[1] is not False
        content = recode_dataset(
            child, implicit=implicit, little=little, source_little=source_little
        )
        if getattr(child, "is_undefined_length_sequence_item", False):
            body.append(item_header(0xFFFFFFFF, 0xFFFEE000, little=little) + content)
            body.append(item_header(0, 0xFFFEE00D, little=little))
        else:
            body.append(item_header(len(content), 0xFFFEE000, little=little) + content)
    value = b"".join(body)
    tag = int(elem.tag)
    if elem.is_undefined_length:
        head = encoded_header(tag, "SQ", 0xFFFFFFFF, implicit=implicit, little=little)
        return head + value + item_header(0, 0xFFFEE0DD, little=little)
    return encoded_header(tag, "SQ", len(value), implicit=implicit, little=little) + value


def part10_bytes(ds: Dataset, body: bytes, syntax: UID) -> bytes:
    """Return a whole Part 10 file: preamble, ``DICM``, File Meta for ds (PS3.10 7.1), body."""
    buffer = io.BytesIO()
    write_file_start(buffer, file_meta_for(ds, syntax))
    buffer.write(body)
    return buffer.getvalue()


def _walk_items(
    data: bytes, pos: int, end: int, little: bool, content: Callable[..., int] | None
) -> int:
    """Walk the items of an undefined-length element from pos; return the end of its delimiter.

    content(start, stop, undefined) checks one item's content and returns where it ends;
    None: the items are pixel data fragments, of defined length, not checked.
    """
    order = "<" if little else ">"
    while True:
        if pos + 8 > end:
            raise ValueError(f"a sequence runs past the end of the file (offset {pos})")
        group, element, length = struct.unpack_from(f"{order}HHL", data, pos)
        tag = group << 16 | element
        pos += 8
        if tag == 0xFFFEE0DD:
            return pos
        if tag != 0xFFFEE000:
            raise ValueError(
                f"({group:04X},{element:04X}) where an item was expected at {pos - 8}"
            )
        if length == 0xFFFFFFFF:
            if content is None:
                raise ValueError(f"a pixel data fragment of undefined length at offset {pos}")
            pos = content(pos, end, True)
            continue
        if pos + length > end:
            raise ValueError(f"an item runs past the end of the file (offset {pos})")
        if content is not None:
            content(pos, pos + length, False)
        pos += length


def walk_dataset(
    data: bytes, pos: int, end: int, *, implicit: bool, little: bool, item: bool = False
) -> int:
    """Check that data[pos:end] is a dataset in this encoding; return where it ends.

    Tags ascend, explicit VRs are VRs, every value and sequence fits; an item of
    undefined length ends at its delimiter. Raises ValueError saying where it is not.
    """
    order = "<" if little else ">"
    last = -1

    def items_in(implicit_items: bool, little_items: bool) -> Callable[..., int]:
        def content(start: int, stop: int, undefined: bool) -> int:
            return walk_dataset(
                data, start, stop, implicit=implicit_items, little=little_items, item=undefined
            )

        return content

    while pos < end:
        if pos + 8 > end:
            raise ValueError(f"{end - pos} stray byte(s) at offset {pos}")
        group, element = struct.unpack_from(f"{order}HH", data, pos)
        tag = group << 16 | element
        if item and tag == 0xFFFEE00D:
            return pos + 8
        if tag <= last:
            raise ValueError(f"tags out of order at offset {pos} ({_tag_text(tag)})")
        last = tag
        if implicit:
            vr, (length,) = None, struct.unpack_from(f"{order}L", data, pos + 4)
            start = pos + 8
        else:
            raw_vr = bytes(data[pos + 4 : pos + 6])
            if raw_vr not in _VR_OF_BYTES:
                raise ValueError(f"no VR at offset {pos + 4} ({_tag_text(tag)})")
            vr = raw_vr.decode("ascii")
            if vr in LONG_LENGTH_VRS:
                (length,) = struct.unpack_from(f"{order}L", data, pos + 8)
                start = pos + 12
            else:
                (length,) = struct.unpack_from(f"{order}H", data, pos + 6)
                start = pos + 8
        if length == 0xFFFFFFFF:
            if tag == 0x7FE00010:  # encapsulated: fragments, not datasets
                pos = _walk_items(data, start, end, little, None)
            elif vr in (None, "SQ"):
                pos = _walk_items(data, start, end, little, items_in(implicit, little))
            elif vr == "UN":  # PS3.5 6.2.2: its items are Implicit VR Little Endian
                pos = _walk_items(data, start, end, little, items_in(True, True))
            else:
                raise ValueError(f"{_tag_text(tag)} {vr} has an undefined length")
            continue
        if start + length > end:
            raise ValueError(
                f"{_tag_text(tag)} declares {length} bytes at offset {start}, "
                f"{end - start} are left"
            )
        if vr == "SQ" and length:
            walk_sequence_items(data, start, start + length, implicit=implicit, little=little)
        pos = start + length
    if item:
        raise ValueError("an item of undefined length has no delimiter")
    return pos


def walk_sequence_items(data: bytes, pos: int, end: int, *, implicit: bool, little: bool) -> None:
    """Check the items of a sequence of defined length (see walk_dataset)."""
    order = "<" if little else ">"
    while pos < end:
        if pos + 8 > end:
            raise ValueError(f"a sequence ends inside an item header (offset {pos})")
        group, element, length = struct.unpack_from(f"{order}HHL", data, pos)
        if (group, element) != (0xFFFE, 0xE000):
            raise ValueError(f"({group:04X},{element:04X}) where an item was expected at {pos}")
        if length == 0xFFFFFFFF:
            pos = walk_dataset(data, pos + 8, end, implicit=implicit, little=little, item=True)
        else:
            walk_dataset(data, pos + 8, pos + 8 + length, implicit=implicit, little=little)
            pos += 8 + length


#: (VR implicit, little endian) of each native syntax, and the syntax of each encoding.
ENCODING_SYNTAX = {
    (True, True): IMPLICIT_VR_LE,
    (False, True): EXPLICIT_VR_LE,
    (False, False): BIG_ENDIAN_SYNTAX,
}


def bare_encoding(data: bytes) -> tuple[bool, bool]:
    """Return (implicit VR, little endian) of a dataset stored without preamble and meta.

    A dataset starts in group 0008 (ACR-NEMA 2.0 files with their group length); the
    byte order shows in that group number, explicit VR in the bytes after the tag, and
    the whole file must then read as a dataset to its last byte (walk_dataset). Raises
    DicomPressorError saying why it is not one.
    """
    if len(data) < 8:
        raise DicomPressorError(f"not a DICOM dataset: {len(data)} bytes")
    problems = []
    for little in (True, False):
        (group,) = struct.unpack_from("<H" if little else ">H", data, 0)
        if group != 0x0008:
            continue
        for implicit in (False, True) if data[4:6] in _VR_OF_BYTES else (True,):
            try:
                walk_dataset(data, 0, len(data), implicit=implicit, little=little)
            except (ValueError, struct.error) as exc:
                problems.append(str(exc))  # the likeliest encoding's problem comes first
                continue
            return implicit, little
    problem = problems[0] if problems else "it does not start with a group 0008 element"
    raise DicomPressorError(f"not a DICOM dataset: {problem}")


# ---- new instances from images and videos ----


@dataclasses.dataclass(frozen=True)
class ImagePixels:
    """An image's pixels as DICOM stores them: grey 8 or 16 bits, or RGB 8 bits."""

    array: np.ndarray  # (rows, columns) uint8 or uint16, or (rows, columns, 3) uint8
    notes: tuple[str, ...] = ()

    @property
    def colour(self) -> bool:
        """Tell whether the pixels are RGB."""
        return self.array.ndim == 3

    @property
    def bits(self) -> int:
        """Return Bits Allocated (and Stored): 8 or 16."""
        return self.array.dtype.itemsize * 8

    @property
    def kind(self) -> str:
        """Describe the pixels in words: ``RGB 8-bit``, ``grey 16-bit``."""
        return f"{'RGB' if self.colour else 'grey'} {self.bits}-bit"

    @property
    def size(self) -> str:
        """Return ``<columns> x <rows>``, as image sizes are said."""
        return f"{self.array.shape[1]} x {self.array.shape[0]}"

    def frame_bytes(self) -> bytes:
        """Return the pixels as one native little-endian frame (PS3.5 8.1.1)."""
        return native_frame_bytes(self.array, self.bits)


def named(path: Path, notes: Iterable[str]) -> tuple[str, ...]:
    """Return notes about a file as warnings that name it."""
    return tuple(f"{path.name}: {note}" for note in notes)


def natural_key(path: Path) -> tuple[Any, ...]:
    """Sort key of a file name with its numbers compared as numbers (img2 before img10)."""
    parts = re.split(r"(\d+)", path.name.lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def read_image(path: Path) -> ImagePixels:
    """Read an image file into pixels a Secondary Capture stores; raise DicomPressorError.

    Pillow reads PNG, JPEG, BMP and TIFF, and JPEG 2000 when it has openjpeg (else
    pylibjpeg-openjpeg decodes it). The EXIF orientation is applied, so a photo stands as
    it is shown. 16-bit grey stays 16-bit; palette images become RGB (grey when the
    palette is), CMYK and other colour spaces RGB; an opaque alpha channel is dropped, a
    transparent one composited onto black. A multi-page file gives its first page.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError, features

    if path.suffix.lower() in (".jp2", ".j2k", ".jpx") and not features.check("jpg_2000"):
        return _openjpeg_image(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            file_format = image.format
            pages = int(getattr(image, "n_frames", 1) or 1)
            image.load()
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, Warning) as exc:
        raise DicomPressorError(
            f"not an image Pillow can read ({one_line(str(exc), limit=160)})"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's words for damaged files
        raise DicomPressorError(f"damaged image: {one_line(str(exc), limit=200)}") from exc
    notes = [f"{pages} pages: only the first is converted"] if pages > 1 else []
    if file_format == "PNG" and _png_depth(path) == (16, True):  # Pillow reads 8 bits
        notes.append("16-bit colour reduced to 8 bits (colour Secondary Capture takes 8)")
    mode = image.mode
    if mode.startswith("I;16"):
        return ImagePixels(np.asarray(image).astype(np.uint16), tuple(notes))
    if mode in ("I", "I;32", "I;32L", "I;32B"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise DicomPressorError(
                f"32-bit integer pixels ({int(values.min())}..{int(values.max())}) do not fit "
                "the 16 bits a Secondary Capture stores"
            )
        return ImagePixels(values.astype(np.uint16), tuple(notes))
    if mode == "F":
        raise DicomPressorError(
            "floating-point pixels (mode F): no Secondary Capture IOD stores them"
        )
    if mode == "P":
        palette = np.frombuffer(image.palette.tobytes(), dtype=np.uint8)
        grey = image.palette.mode == "RGB" and bool(
            np.all(palette[0::3] == palette[1::3]) and np.all(palette[1::3] == palette[2::3])
        )
        transparent = "transparency" in image.info
        image = image.convert(
            ("LA" if grey else "RGBA") if transparent else ("L" if grey else "RGB")
        )
        mode = image.mode
    if mode in ("1", "L"):
        return ImagePixels(np.asarray(image.convert("L")), tuple(notes))
    if "A" in mode or mode in ("RGBa", "La", "PA"):
        return ImagePixels(_without_alpha(image, notes), tuple(notes))
    return ImagePixels(np.asarray(image.convert("RGB")), tuple(notes))


def _png_depth(path: Path) -> tuple[int, bool]:
    """Return a PNG's bit depth and whether it is colour (its IHDR chunk, PNG 11.2.2)."""
    with path.open("rb") as handle:
        head = handle.read(26)
    return (head[24], head[25] in (2, 6)) if len(head) == 26 else (0, False)


def _without_alpha(image: Any, notes: list[str]) -> np.ndarray:
    """Drop an alpha channel: as it is when opaque, else composited onto black (noted)."""
    alpha = np.asarray(image.getchannel("A"))
    grey = image.mode in ("LA", "La")
    base = np.asarray(image.convert("L" if grey else "RGB"))
    if alpha.size == 0 or int(alpha.min()) == 255:
        return base
    notes.append("transparent pixels composited onto black (DICOM has no alpha channel)")
    weight = alpha.astype(np.uint32) if grey else alpha.astype(np.uint32)[..., None]
    return ((base.astype(np.uint32) * weight + 127) // 255).astype(np.uint8)


def _openjpeg_image(path: Path) -> ImagePixels:
    """Read a JPEG 2000 file through pylibjpeg-openjpeg (when Pillow has no openjpeg)."""
    try:
        import openjpeg
    except ImportError as exc:
        raise DicomPressorError(
            "no JPEG 2000 decoder: Pillow lacks openjpeg; pip install pylibjpeg-openjpeg"
        ) from exc
    try:
        array = openjpeg.decode(path)
    except Exception as exc:  # the codec's own error types
        raise DicomPressorError(
            f"damaged JPEG 2000 image: {one_line(str(exc), limit=200)}"
        ) from exc
    notes: list[str] = []
    if array.ndim == 3 and array.shape[2] in (2, 4):  # grey or RGB with alpha
        alpha = array[..., -1].astype(np.float64) / max(1, int(np.iinfo(array.dtype).max))
        if float(alpha.min()) < 1.0:
            notes.append("transparent pixels composited onto black (DICOM has no alpha channel)")
        array = np.rint(array[..., :-1] * alpha[..., None]).astype(array.dtype)
        array = array[..., 0] if array.shape[2] == 1 else array
    if array.dtype.kind == "i":
        raise DicomPressorError("signed JPEG 2000 samples: a Secondary Capture stores unsigned")
    if array.ndim == 3 and array.dtype.itemsize > 1:
        raise DicomPressorError(
            f"{array.dtype.itemsize * 8}-bit colour: the Secondary Capture IODs take 8-bit RGB"
        )
    return ImagePixels(array.astype(np.uint16 if array.dtype.itemsize > 1 else np.uint8), ())


@dataclasses.dataclass(frozen=True)
class NewSeries:
    """The study and series that the new instances of one call join, and --params.

    One call handles one folder (or the files given), so its images or videos form one
    study with one series, not a study each; --params values apply to every instance
    and may give the study (and series) UIDs of an existing study to join.
    """

    study_uid: str
    series_uid: str
    date: str
    time: str
    replacements: tuple[Replacement, ...]


def new_series(params: str | None) -> NewSeries:
    """Start the study and series of a call; check --params (DicomPressorError)."""
    replacements = parse_new_instance_params(params or "")
    today, now = now_da_tm()
    return NewSeries(str(new_uid()), str(new_uid()), today, now, tuple(replacements))


def parse_new_instance_params(text: str) -> list[Replacement]:
    """Parse --params (anonymize's tag lines); the pixels and the SOP identity are ours."""
    replacements = parse_tag_params(text)
    problems = [
        f"line {r.line}: {r.where} {keyword_of(r.tag)} is made from the pixels, not from --params"
        for r in replacements
        if r.tag in tags_of(MADE_FROM_PIXELS)
    ]
    if problems:
        raise DicomPressorError("invalid params: " + "; ".join(problems))
    return replacements


def new_instance(
    sop_class: str,
    series: NewSeries,
    *,
    number: int,
    modality: str,
    conversion: str,
    created_s: float,
    secondary_capture: bool = True,
) -> Dataset:
    """Start a new instance without pixels: the modules every image IOD has (PS3.3 A.8).

    SOP Common, Patient, General Study, General Series, General Equipment, SC Equipment
    and General Image; Patient and Study values are empty (Type 2) unless --params sets
    them (apply them after the pixels with apply_replacements). created_s (the source
    file's modification time) gives Content Date and Time. Without secondary_capture
    (a video IOD) the SC Equipment and SC Image values are left out.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # --params values may be any text (UTF-8)
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = new_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = series.date, series.time
    # Patient (C.7.1.1) and General Study (C.7.2.1)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, "")
    ds.StudyInstanceUID = UID(series.study_uid)
    ds.StudyDate, ds.StudyTime = series.date, series.time
    for keyword in ("ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, keyword, "")
    # General Series (C.7.3.1) and General Equipment (C.7.5.1)
    ds.Modality = modality
    ds.SeriesInstanceUID = UID(series.series_uid)
    ds.SeriesNumber = 1
    ds.Manufacturer = ""
    # General Image (C.7.6.1)
    stamp = time.localtime(created_s)
    ds.ContentDate = time.strftime("%Y%m%d", stamp)
    ds.ContentTime = time.strftime("%H%M%S", stamp)
    ds.InstanceNumber = number
    ds.PatientOrientation = ""
    # Burned In Annotation (Type 1 in C.8.6.3): nobody checked the pixels for text, so
    # YES, which keeps de-identification careful; --params may say NO
    ds.BurnedInAnnotation = "YES"
    if secondary_capture:
        # SC Equipment (C.8.6.1): how the image was captured; SC Image (C.8.6.2)
        ds.ConversionType = conversion
        ds.SecondaryCaptureDeviceManufacturer = "DicomPressor"
        ds.SecondaryCaptureDeviceSoftwareVersions = __version__
        ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = series.date, series.time
    return ds


def finish_new_instance(ds: Dataset, series: NewSeries) -> None:
    """Apply --params, then add the empty Laterality the body part may call for (C.7.3.1)."""
    apply_replacements(ds, series.replacements)
    _add_unknown_laterality(ds)


def set_pixel_description(
    ds: Dataset, rows: int, columns: int, *, colour: bool, bits: int
) -> None:
    """Set the Image Pixel module (C.7.6.3) for unsigned grey or RGB pixels."""
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0


def multiframe_sc_class(*, colour: bool, bits: int) -> str:
    """Return the multi-frame Secondary Capture class of such pixels (PS3.3 A.8.3-A.8.5)."""
    if colour:
        return MF_TRUE_COLOR_SC
    return MF_GRAY_BYTE_SC if bits == 8 else MF_GRAY_WORD_SC


def add_multiframe_sc(ds: Dataset, frames: int, *, pointer: str) -> None:
    """Add the Multi-frame (C.7.6.6) and SC Multi-frame Image (C.8.6.3) values.

    pointer names the attribute Frame Increment Pointer points at (FrameTime for video,
    PageNumberVector for pages); the grey classes get the identity rescale C.8.6.3 wants.
    """
    ds.NumberOfFrames = frames
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if ds.SOPClassUID in (MF_GRAY_BYTE_SC, MF_GRAY_WORD_SC):
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.PresentationLUTShape = "IDENTITY"
    if frames > 1:  # Type 1C: only for more than one frame
        ds.FrameIncrementPointer = Tag(pointer)
        if pointer == "PageNumberVector":
            ds.PageNumberVector = list(range(1, frames + 1))


# ---- video streams: MP4, H.264 and ffmpeg ----


def video_ffmpeg() -> str:
    """Return imageio-ffmpeg's bundled ffmpeg (videos in and out), or fail naming the package."""
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError) as exc:
        raise DicomPressorError(
            f"no ffmpeg for video ({one_line(str(exc), limit=200)}): pip install imageio-ffmpeg"
        ) from exc


def run_ffmpeg(argv: list[str], *, doing: str) -> None:
    """Run ffmpeg to the end; DicomPressorError with its first words when it fails."""
    with tempfile.TemporaryFile() as errors:
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=errors, check=False).returncode  # fmt: skip
        if code != 0:
            errors.seek(0)
            text = one_line(errors.read().decode("utf-8", "replace"), limit=300)
            raise DicomPressorError(f"ffmpeg cannot {doing} (exit {code}): {text}")


def mp4_boxes(data: Any, start: int, end: int) -> Iterator[tuple[str, int, int]]:
    """Yield (type, content start, end) of the boxes in data[start:end] (ISO/IEC 14496-12 4.2)."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">L4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise DicomPressorError(f"damaged MP4: box {kind!r} at offset {pos} runs past its end")
        yield kind.decode("latin-1"), pos + header, pos + size
        pos += size


def _box(data: Any, start: int, end: int, *path: str) -> tuple[int, int] | None:
    """Return (content start, end) of the first box along path under data[start:end]."""
    for name in path:
        found = next(((s, e) for kind, s, e in mp4_boxes(data, start, end) if kind == name), None)
        if found is None:
            return None
        start, end = found
    return start, end


@dataclasses.dataclass(frozen=True)
class VideoTrack:
    """What the first video track of an MP4 file says: its codec, frames, rate, config."""

    codec: str  # the sample entry type: avc1, avc3, hvc1, mp4v...
    frames: int
    frame_time_ms: float
    constant_rate: bool
    config: bytes  # the avcC box's content (empty for other codecs)


def mp4_video_track(path: Path) -> VideoTrack:
    """Read the first video track of an MP4 file (moov/trak boxes, ISO/IEC 14496-12 8)."""
    import mmap

    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        moov = _box(data, 0, len(data), "moov")
        if moov is None:
            raise DicomPressorError("damaged MP4: no moov box")
        for kind, start, end in mp4_boxes(data, *moov):
            handler = _box(data, start, end, "mdia", "hdlr") if kind == "trak" else None
            if handler is None or bytes(data[handler[0] + 8 : handler[0] + 12]) != b"vide":
                continue
            return _video_track(data, start, end)
    raise DicomPressorError("the MP4 holds no video track")


def _video_track(data: Any, start: int, end: int) -> VideoTrack:
    """Read one video trak box (see mp4_video_track)."""
    mdhd = _box(data, start, end, "mdia", "mdhd")
    stbl = _box(data, start, end, "mdia", "minf", "stbl")
    if mdhd is None or stbl is None:
        raise DicomPressorError("damaged MP4: a video track without mdhd or stbl")
    version = data[mdhd[0]]
    at = mdhd[0] + (20 if version == 1 else 12)
    (timescale,) = struct.unpack_from(">L", data, at)
    stsd, stsz, stts = (_box(data, *stbl, name) for name in ("stsd", "stsz", "stts"))
    if stsd is None or stsz is None or stts is None:
        raise DicomPressorError("damaged MP4: a video track without stsd, stsz or stts")
    entry = next(mp4_boxes(data, stsd[0] + 8, stsd[1]), None)
    if entry is None:
        raise DicomPressorError("damaged MP4: no sample description")
    codec, entry_start, entry_end = entry
    config = _box(data, entry_start + 78, entry_end, "avcC") if codec in ("avc1", "avc3") else None
    (frames,) = struct.unpack_from(">L", data, stsz[0] + 8)
    (count,) = struct.unpack_from(">L", data, stts[0] + 4)
    deltas = [struct.unpack_from(">LL", data, stts[0] + 8 + 8 * i) for i in range(count)]
    ticks = sum(n * d for n, d in deltas)
    samples = sum(n for n, _ in deltas) or 1
    frame_time_ms = 1000.0 * ticks / samples / timescale if timescale and ticks else 0.0
    return VideoTrack(
        codec,
        int(frames),
        frame_time_ms,
        len({d for n, d in deltas if n}) <= 1,
        bytes(data[config[0] : config[1]]) if config else b"",
    )


class _Bits:
    """Read bits and Exp-Golomb codes from an H.264 RBSP (ITU-T H.264 7.2, 9.1)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u(self, n: int) -> int:
        """Read n bits as an unsigned number."""
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError: the RBSP ended
            value = value << 1 | (byte >> (7 - (self.pos & 7))) & 1
            self.pos += 1
        return value

    def ue(self) -> int:
        """Read an unsigned Exp-Golomb code."""
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("an Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        """Read a signed Exp-Golomb code."""
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


@dataclasses.dataclass(frozen=True)
class H264Parameters:
    """What an H.264 sequence parameter set says that PS3.5 8.2.7-8.2.9 ask about."""

    profile: int
    level: int
    chroma_format: int  # 0 grey (4:0:0), 1 4:2:0, 2 4:2:2, 3 4:4:4
    bit_depth: int
    width: int
    height: int
    sample_aspect: tuple[int, int] | None  # None: not stated (square)
    aspect_idc: int | None

    @property
    def name(self) -> str:
        """Describe profile and level: ``H.264 High profile, level 4.1``."""
        profiles = {66: "Baseline", 77: "Main", 88: "Extended", 100: "High", 110: "High 10",
                    122: "High 4:2:2", 244: "High 4:4:4", 128: "Stereo High"}  # fmt: skip
        profile = profiles.get(self.profile, f"profile_idc {self.profile}")
        return f"H.264 {profile} profile, level {self.level / 10:g}"


#: H.264 profiles whose SPS carries chroma format and bit depth (H.264 7.3.2.1.1).
_HIGH_SPS_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def h264_parameters(avcc: bytes) -> H264Parameters:
    """Parse the first SPS of an avcC box (ISO/IEC 14496-15 5.3.3, ITU-T H.264 7.3.2.1.1)."""
    try:
        if len(avcc) < 8 or avcc[5] & 0x1F == 0:
            raise ValueError("no sequence parameter set in avcC")
        (length,) = struct.unpack_from(">H", avcc, 6)
        nal = avcc[8 : 8 + length]
        bits = _Bits(nal[1:].replace(b"\0\0\3", b"\0\0"))  # the RBSP: emulation bytes out
        return _sps(bits)
    except (ValueError, IndexError, struct.error) as exc:
        raise DicomPressorError(f"damaged H.264 parameters ({exc})") from None


def _sps(bits: _Bits) -> H264Parameters:
    """Read the fields of an SPS up to its VUI aspect ratio (see h264_parameters)."""
    profile = bits.u(8)
    bits.u(8)  # constraint_set flags
    level = bits.u(8)
    bits.ue()  # seq_parameter_set_id
    chroma, depth = 1, 8
    if profile in _HIGH_SPS_PROFILES:
        chroma = bits.ue()
        if chroma == 3:
            bits.u(1)  # separate_colour_plane_flag
        depth = 8 + bits.ue()
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma != 3 else 12):
                if bits.u(1):
                    last = following = 8
                    for _ in range(16 if index < 6 else 64):
                        if following:
                            following = (last + bits.se() + 256) % 256
                        last = following or last
    bits.ue()  # log2_max_frame_num_minus4
    order_type = bits.ue()
    if order_type == 0:
        bits.ue()
    elif order_type == 1:
        bits.u(1)
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width = (bits.ue() + 1) * 16
    map_units = bits.ue() + 1
    frames_only = bits.u(1)
    if not frames_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    height = map_units * 16 * (2 - frames_only)
    bits.u(1)  # direct_8x8_inference_flag
    if bits.u(1):  # frame_cropping_flag
        unit_x = 2 if chroma in (1, 2) else 1
        unit_y = (2 if chroma == 1 else 1) * (2 - frames_only)
        left, right, top, bottom = (bits.ue() for _ in range(4))
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    aspect, idc = None, None
    if bits.u(1) and bits.u(1):  # vui_parameters_present, aspect_ratio_info_present
        idc = bits.u(8)
        if idc == 255:
            aspect = (bits.u(16), bits.u(16))
        elif idc == 1:
            aspect = (1, 1)
    return H264Parameters(profile, level, chroma, depth, width, height, aspect, idc)


def mpeg4_syntax(sps: H264Parameters) -> tuple[str | None, str]:
    """Return the MPEG-4 AVC/H.264 transfer syntax that takes a stream, or None and why.

    PS3.5 8.2.7-8.2.9: 4:2:0 with 8 bits (YBR_PARTIAL_420), square pixels
    (aspect_ratio_idc 1 when stated). High profile up to level 4.1 is ...4.102 (the
    BD-compatible ...4.103 promises Blu-ray frame sizes, rates and buffers that are not
    checked here, and ...4.102 takes every such stream), level 4.2 ...4.104 (2D; ...4.105
    is for frame-packed 3D, which a plain stream does not say it is); Stereo High up to
    4.2 is ...4.106.
    """
    name = sps.name
    if sps.chroma_format != 1 or sps.bit_depth != 8:
        formats = {0: "4:0:0 (grey)", 1: "4:2:0", 2: "4:2:2", 3: "4:4:4"}
        shown = f"{formats.get(sps.chroma_format, '?')} {sps.bit_depth}-bit"
        return None, f"{name}, {shown}: the MPEG-4 syntaxes take 4:2:0 8-bit (PS3.5 8.2.7)"
    if sps.aspect_idc is not None and sps.aspect_idc != 1:
        shown = (
            ":".join(str(v) for v in sps.sample_aspect or ())
            or f"aspect_ratio_idc {sps.aspect_idc}"
        )
        return (
            None,
            f"{name}, pixels {shown}: the MPEG-4 syntaxes take square pixels (PS3.5 8.2.7)",
        )
    if sps.profile == H264_HIGH and sps.level <= H264_LEVEL_41:
        return MPEG4_HP41, name
    if sps.profile == H264_HIGH and sps.level <= H264_LEVEL_42:
        return MPEG4_HP42_2D, name
    if sps.profile == H264_STEREO_HIGH and sps.level <= H264_LEVEL_42:
        return MPEG4_HP42_STEREO, name
    return None, f"{name}: the MPEG-4 syntaxes take the High profile up to level 4.2 (PS3.5 8.2.7)"


def video_stream_path(path: Path, location: PixelLocation, folder: Path) -> Path:
    """Write the video stream of a video-syntax file to a temp file in folder; return it.

    The fragments are joined (PS3.5 8.2.7: one fragment, or several to join); a padding
    byte after a complete MP4 is left out, so the stream comes back as it went in.
    """
    _, fragments = scan_fragments(path, location)
    target = temp_path(folder / f"{path.name}.video")
    try:
        with target.open("xb") as handle:
            for offset, length in fragments:
                copy_span(handle, FileSpan(path, offset, length))
        _drop_mp4_padding(target)
    except BaseException:
        with contextlib.suppress(OSError):
            target.unlink()
        raise
    return target


def _drop_mp4_padding(path: Path) -> None:
    """Cut the even-length padding byte of an MP4 stream whose boxes end one byte early."""
    with path.open("r+b") as handle:
        head = handle.read(8)
        size = os.fstat(handle.fileno()).st_size
        if len(head) < 8 or head[4:8] != b"ftyp" or size % 2:
            return
        pos = 0
        while pos + 8 <= size:
            handle.seek(pos)
            length, _ = struct.unpack(">L4s", handle.read(8))
            if length == 1:
                (length,) = struct.unpack(">Q", handle.read(8))
            if length < 8:
                return
            pos += length
        if pos == size - 1:
            handle.seek(size - 1)
            if handle.read(1) == b"\0":
                handle.truncate(size - 1)


def video_frames(path: Path, header: Dataset, location: PixelLocation) -> Iterator[bytes]:
    """Yield each frame of a video-syntax file decoded to RGB by ffmpeg (8 bits, interleaved).

    pydicom decodes no video; stored_frames hands these frames on as if stored natively
    (decode_stored_frame knows them). The count must be Number of Frames.
    """
    exe = video_ffmpeg()
    rows, columns = int(header.Rows), int(header.Columns)
    wanted = number_of_frames(header)
    size = rows * columns * 3
    stream = video_stream_path(path, location, Path(tempfile.gettempdir()))
    errors = tempfile.TemporaryFile()  # noqa: SIM115 (open while the frames are read)
    argv = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(stream),
            "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-"]  # fmt: skip
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
    )
    assert process.stdout is not None
    count = 0
    try:
        while count < wanted:
            frame = process.stdout.read(size)
            if len(frame) < size:
                break
            count += 1
            yield frame
        if count < wanted:
            code = process.wait()
            errors.seek(0)
            said = one_line(errors.read().decode("utf-8", "replace"), limit=200)
            raise DicomPressorError(
                f"the video stream decodes to {count} frames of {columns} x {rows}, "
                f"(0028,0008) Number of Frames says {wanted}"
                + (f" (ffmpeg exit {code}: {said})" if code or said else "")
            )
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
        errors.close()
        with contextlib.suppress(OSError):
            stream.unlink()


def video_frame_array(data: bytes, description: dict[str, Any]) -> np.ndarray:
    """Return a frame from video_frames as a (rows, columns, 3) array."""
    return np.frombuffer(data, dtype=np.uint8).reshape(
        int(description["rows"]), int(description["columns"]), 3
    )


# ==== 6. Actions ====

# ---- merge ----


def merged_name(template: Dataset, stack_index: int, stack_count: int) -> str:
    """Return ``<Patient>_series<N>_multiframe.dcm`` (``-<k>`` per extra stack)."""
    patient = safe_component(str(template.get("PatientName", "") or ""), default="Patient")
    number = _int_or_none(template.get("SeriesNumber"))
    series = str(number) if number is not None else "0"
    if stack_count > 1:
        series += f"-{stack_index}"
    return f"{patient}_series{series}_multiframe.dcm"


@dataclasses.dataclass
class MergePlan:
    """A stack ready to write: the header, the frames' sources and how to copy pixels."""

    dataset: Dataset
    order: StackOrder
    syntax: UID
    encapsulated: bool
    frame_bytes: int
    decode: bool
    #: Signed frames stored as offset binary (multi-frame SC allows unsigned only).
    offset_binary: bool = False
    #: The frames' own rescales (build_multiframe_dataset), for merge_warnings.
    rescales: list[Rescale] = dataclasses.field(default_factory=list)


def _plan_stack(members: list[Slice]) -> MergePlan:
    """Sort a stack, check it can be written, choose how its pixels are copied."""
    order = sort_slices(members)
    template = order.slices[0].header
    check_pixel_description(template)
    if int(template.BitsAllocated) == 1:
        raise DicomPressorError("BitsAllocated 1 (bit-packed frames) cannot be merged")
    if str(template.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        raise DicomPressorError(
            "PALETTE COLOR slices cannot be merged: no multi-frame Secondary Capture IOD "
            "takes a palette (PS3.3 A.8.2-A.8.5), so the colours would be lost; "
            "-I png exports them in colour"
        )
    sop_class, legacy = multiframe_sop_class(template, geometric=order.by_position)
    # Grayscale SC stores unsigned pixels only: signed ones go into Word SC as offset
    # binary (8-bit ones widened to 16, see multiframe_sop_class).
    offset_binary = (
        sop_class == MF_GRAY_WORD_SC and int(template.get("PixelRepresentation", 0)) == 1
    )
    syntaxes = {s.syntax for s in order.slices}
    encapsulated = (
        not offset_binary
        and len(syntaxes) == 1
        and all(
            s.pixels is not None and s.pixels.encapsulated and s.pixels.offset >= 0
            for s in order.slices
        )
    )
    syntax = next(iter(syntaxes)) if encapsulated else ExplicitVRLittleEndian
    needs_decode = not encapsulated and (
        str(template.get("PhotometricInterpretation", "")) == "YBR_FULL_422"  # subsampled
        or any(
            str(s.syntax) not in NATIVE_LE_SYNTAXES or s.pixels is None or s.pixels.offset < 0
            for s in order.slices
        )
    )
    # One decoded slice means all are decoded, so every frame has the same photometric.
    photometric = decoded_photometric(template, raw=False) if needs_decode else None
    ds, rescales = build_multiframe_dataset(
        order, syntax, photometric, offset_binary=offset_binary
    )
    frame_bytes = expected_frame_bytes(ds)
    return MergePlan(
        ds, order, syntax, encapsulated, frame_bytes, needs_decode, offset_binary, rescales
    )


def _native_frames(plan: MergePlan) -> Iterator[bytes | FileSpan]:
    """Yield each slice's frame as native little-endian bytes, one at a time.

    Offset binary frames are written with the output's Bits Allocated (16 where signed
    8-bit frames are widened) and shifted by the sources' Bits Stored.
    """
    template = plan.order.slices[0].header
    bits, stored = int(template.BitsAllocated), int(template.BitsStored)
    out_bits = int(plan.dataset.BitsAllocated)
    source_bytes = expected_frame_bytes(template) if plan.offset_binary else plan.frame_bytes
    for s in plan.order.slices:
        if not plan.decode and s.pixels is not None:
            if s.pixels.length < source_bytes:
                raise DicomPressorError(
                    f"{s.path.name}: (7FE0,0010) Pixel Data holds {s.pixels.length} bytes, "
                    f"expected {source_bytes}"
                )
            span = FileSpan(s.path, s.pixels.offset, source_bytes)
            if plan.offset_binary:
                data = read_span(span.path, span.offset, span.length)
                yield to_offset_binary(data, bits, stored, out_bits)
            else:
                yield span
        else:
            try:
                arr = decode_frame(s.path, 0, raw=False)
            except DicomPressorError as exc:
                raise DicomPressorError(f"{s.path.name}: {exc.message}") from exc
            if plan.offset_binary:
                yield to_offset_binary(arr, bits, stored, out_bits)
            else:
                yield native_frame_bytes(arr, out_bits)


def _encapsulated_frames(
    plan: MergePlan,
) -> tuple[list[int], Iterator[list[bytes]]]:
    """Return each frame's encoded size and an iterator over its fragments."""
    layout = []
    for s in plan.order.slices:
        assert s.pixels is not None
        try:
            _, fragments = scan_fragments(s.path, s.pixels)
        except DicomPressorError as exc:
            raise DicomPressorError(f"{s.path.name}: {exc.message}") from exc
        layout.append((s.path, fragments))
    sizes = [encapsulated_size(n for _, n in fragments) for _, fragments in layout]

    def frames() -> Iterator[list[bytes]]:
        for path, fragments in layout:
            yield [read_span(path, start, length) for start, length in fragments]

    return sizes, frames()


def write_merged(plan: MergePlan, target: Path) -> Path:
    """Write a planned stack atomically, streaming the frames; return the name it got."""
    output = OutputFile(target, replace=False)
    with output as handle:
        write_header(handle, plan.dataset, plan.syntax)
        if plan.encapsulated:
            sizes, frames = _encapsulated_frames(plan)
            write_encapsulated_frames(handle, frames, sizes)
        else:
            write_native_frames(
                handle,
                _native_frames(plan),
                plan.frame_bytes,
                len(plan.order.slices),
                int(plan.dataset.BitsAllocated),
            )
    assert output.path is not None
    return output.path


def _merge_candidate(path: Path, ds: Dataset, location: PixelLocation | None) -> FileOutcome:
    """Make a slice of one file (data: its SOP Instance UID and the Slice), or skip it."""
    if location is None:
        reason = no_pixels_reason(ds)
        if reason is None:
            raise DicomPressorError("no (7FE0,0010) Pixel Data to merge")
        return FileOutcome(path, SKIPPED, reason)
    frames = number_of_frames(ds)
    if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return FileOutcome(path, SKIPPED, f"already multi-frame ({frames} frames)")
    check_integrity(ds, location)
    uid = text_of(ds, 0x00080018) or ""  # SOP Instance UID
    candidate = make_slice(path, ds, location)
    candidate.stack = stack_key(candidate)  # malformed values fail this file
    # Merge reads nothing more from a slice's File Meta (the Slice has its transfer
    # syntax); at 1,200 slices the groups hold about 1 MB until the merge ends.
    ds.file_meta = None  # type: ignore[assignment]
    return FileOutcome(path, DONE, data=(uid, candidate))


#: A kind of merge warning besides the SpacingIssue kinds: frames whose Rescale Slope or
#: Intercept differs from the first frame's.
RESCALE_DIFFERS = "rescale_differs"


#: What readers make of a merged file (ITK and GDCM read it so, and itk-wasm, which
#: VolView uses): the file is correct, the user is told at merge time.
READER_NOTES = {
    GAP: "ITK, GDCM and itk-wasm (VolView) read frames that are not evenly spaced with "
    "a spacing of 1 x 1 x 1 mm, in-plane too; --split-at-gaps writes one evenly spaced "
    "file per run of slices",
    UNEVEN_SPACING: "ITK, GDCM and itk-wasm (VolView) read frames that are not evenly "
    "spaced with a spacing of 1 x 1 x 1 mm, in-plane too",
    DUPLICATE_POSITIONS: "readers that build a volume from the positions get two frames "
    "in one place",
    RESCALE_DIFFERS: "ITK, GDCM and itk-wasm (VolView) apply the first frame's Rescale "
    "Slope and Intercept to every frame, so the other frames' values come out wrong",
}


class MergeWarning(TypedDict):
    """One warning about a merged file, as ``--json`` and the API give it."""

    kind: str
    series: str
    output: str
    slices: list[str]
    message: str


def _series_label(series_uid: str) -> str:
    """Name a series in messages: by its UID, or as slices without one."""
    return f"series {series_uid}" if series_uid else "slices without Series Instance UID"


def merge_warnings(
    plan: MergePlan, series_uid: str, target: Path, spacing: list[SpacingIssue]
) -> list[MergeWarning]:
    """Say what readers will get wrong in a merged file: slices not evenly spaced (gaps,
    uneven steps, duplicates) and frames whose rescale differs from the first's.

    ``spacing`` is spacing_issues() of the plan's distances. ``slices`` names the source
    slices concerned: both sides of each irregular step, or the frames whose Rescale
    Slope/Intercept is not the first frame's.
    """
    names = [s.path.name for s in plan.order.slices]
    found: list[tuple[str, str, list[str]]] = []
    if plan.order.by_position:
        for issue in spacing:
            steps = sorted({i for step in issue.steps for i in (step, step + 1)})
            found.append((issue.kind, issue.note, [names[i] for i in steps]))
    values = plan.rescales
    if len(values) == len(names) and len(set(values)) > 1:
        differ = [name for name, v in zip(names, values, strict=True) if v != values[0]]
        slopes = sorted({v[0] for v in values if v[0] is not None})
        note = (
            f"Rescale Slope/Intercept differs between frames ({len(differ)} of {len(names)} "
            f"frames differ from the first; slopes {slopes[0]:g} to {slopes[-1]:g})"
        )
        found.append((RESCALE_DIFFERS, note, differ))
    series = _series_label(series_uid)
    return [
        MergeWarning(
            kind=kind,
            series=series_uid,
            output=str(target),
            slices=slices,
            message=f"{series}: {target.name}: {note}; {READER_NOTES[kind]}",
        )
        for kind, note, slices in found
    ]


def _merge_stack(
    first: Path,
    members: list[Slice],
    series_uid: str,
    number: tuple[int, int],
    output_dir: Path | None,
) -> FileOutcome:
    """Plan and write one stack; number is (this stack, stacks of its series).

    The outcome's data is its list of MergeWarning; other notes of the sort are logged.
    """
    plan = _plan_stack(members)
    name = merged_name(plan.order.slices[0].header, *number)
    target = write_merged(plan, output_folder(first, output_dir) / name)
    kind = uid_name(plan.dataset.SOPClassUID)
    message = f"Merged {len(members)} slices -> {target.name} ({kind}, {plan.syntax.name})"
    series = _series_label(series_uid)
    issues = spacing_issues(plan.order.distances)
    found = merge_warnings(plan, series_uid, target, issues)
    spacing = {i.note for i in issues}
    notes = [f"{series}: {note}" for note in plan.order.notes if note not in spacing]
    notes.extend(w["message"] for w in found)
    return FileOutcome(first, DONE, message, (target,), tuple(notes), found)


def merge(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Merge single-frame slices into one multi-frame instance per stack.

    Parameters
    ----------
    inputs
        Single-frame DICOM files (any mix of series); multi-frame files are passed over.
    output_dir
        Folder for the merged files; None writes each beside its first slice.
    options
        Run options; ``output_dir`` there gets a copy of each result. ``split_at_gaps``
        cuts each stack at its gaps (a step over GAP_FACTOR x the typical one) and
        writes one file per run of slices between them.

    Returns
    -------
    ActionResult
        One output per stack. Each is a Legacy Converted Enhanced CT/MR/PET image (or a
        multi-frame Secondary Capture) with new (0020,000E) Series and (0008,0018) SOP
        Instance UIDs, shared and per-frame functional groups, a Dimension Index
        Sequence, (0008,1115) Referenced Series Sequence and per-frame Conversion
        Source Attributes pointing at the sources. ``data["warnings"]`` lists, per
        output, what readers will get wrong (MergeWarning: gaps, uneven spacing,
        duplicate positions, per-frame rescale), each also a [WARNING] line.
    """
    check_options(ACTIONS["merge"], options)
    result = ActionResult()
    result.data["warnings"] = []
    readable = _read_inputs(inputs, result, progress)
    slices = []
    seen_instances: dict[str, Path] = {}
    for path, ds, location in readable:
        outcome = guarded(_merge_candidate, path, ds, location, doing="read")
        if outcome.status != DONE:
            result.record(outcome)
            continue
        uid, candidate = outcome.data
        if uid and uid in seen_instances:
            result.info(
                f"Skipping {path.name}: same SOP Instance UID as {seen_instances[uid].name}"
            )
            continue
        seen_instances[uid] = path
        slices.append(candidate)
    if not slices:
        if not result.failures:
            raise DicomPressorError("nothing to merge: no single-frame DICOM images found")
        return result
    stacks = group_into_stacks(slices)
    if options.split_at_gaps:
        runs = [(uid, run) for uid, members in stacks for run in runs_between_gaps(members)]
        if len(runs) > len(stacks):
            result.info(f"Cut {len(stacks)} stack(s) at gaps into {len(runs)} evenly spaced runs")
        stacks = runs
    result.info(f"Processing {len(slices)} files in {len(stacks)} stack(s)...")
    per_series_count = Counter(uid for uid, _ in stacks)
    per_series_seen: Counter[str] = Counter()
    for series_uid, members in stacks:
        per_series_seen[series_uid] += 1
        series = _series_label(series_uid)
        number = (per_series_seen[series_uid], per_series_count[series_uid])
        outcome = guarded(
            _merge_stack, members[0].path, members, series_uid, number, output_dir, doing=""
        )
        if outcome.status == FAILED:  # a malformed element read late fails the stack
            for s in members:
                result.fail(s.path, f"cannot merge {series}: {outcome.message}")
            continue
        for warning in outcome.warnings:
            result.warn(warning)
        result.data["warnings"].extend(outcome.data)
        result.inputs_used += len(members)
        result.outputs.extend(outcome.outputs)
        result.info(outcome.message)
    result.info("Done.")
    return result


# ---- split ----


def _flatten_groups(target: Dataset, groups: Dataset | None) -> None:
    """Copy the attributes inside functional group macros to the top level."""
    if groups is None:
        return
    for elem in groups:
        if elem.VR != "SQ" or not elem.value:
            continue
        item = elem.value[0]
        if elem.keyword == "UnassignedPerFrameConvertedAttributesSequence" or (
            elem.keyword == "UnassignedSharedConvertedAttributesSequence"
        ):
            for inner in item:
                target.add(DataElement(inner.tag, inner.VR, inner.value))
            continue
        if elem.keyword in (
            "PixelMeasuresSequence",
            "PlaneOrientationSequence",
            "PlanePositionSequence",
            "PixelValueTransformationSequence",
            "FrameVOILUTSequence",
        ):
            for inner in item:
                target.add(DataElement(inner.tag, inner.VR, inner.value))
        elif elem.keyword.endswith("FrameTypeSequence") and "FrameType" in item:
            target.ImageType = item.FrameType


#: Top-level attributes of a multi-frame instance that its single-frame parts drop.
MULTIFRAME_ONLY = frozenset(
    {
        "NumberOfFrames",
        "FrameIncrementPointer",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
        "DimensionOrganizationSequence",
        "DimensionOrganizationType",
        "DimensionIndexSequence",
        "PixelData",
        "ContributingEquipmentSequence",
        "ReferencedSeriesSequence",
        "SliceLocationVector",
        "PageNumberVector",
        "FrameTimeVector",
        "FrameLabelVector",
        "PixelPresentation",
        "VolumetricProperties",
        "VolumeBasedCalculationTechnique",
        "ContentQualification",
        "ComplexImageComponent",
        "AcquisitionContrast",
        "AcquisitionContextSequence",
        "PresentationLUTShape",
        "ExtendedOffsetTable",
        "ExtendedOffsetTableLengths",
    }
)


def _split_header(source: Dataset, index: int) -> Dataset:
    """Build the header of frame index of a multi-frame instance as a single-frame one."""
    out = Dataset()
    for elem in source:
        if elem.keyword in MULTIFRAME_ONLY or elem.tag >= 0x7FE00000:
            continue
        if elem.tag.group == 0x0002 or not _value_ok(elem):
            continue
        out.add(DataElement(elem.tag, elem.VR, elem.value))
    shared = source.get("SharedFunctionalGroupsSequence")
    per_frame = source.get("PerFrameFunctionalGroupsSequence")
    _flatten_groups(out, shared[0] if shared else None)
    frame_groups = per_frame[index] if per_frame and index < len(per_frame) else None
    _flatten_groups(out, frame_groups)
    restored_identity = False
    reference = None
    if frame_groups is not None and "ConversionSourceAttributesSequence" in frame_groups:
        reference = frame_groups.ConversionSourceAttributesSequence[0]
    if reference is not None and reference.get("ReferencedSOPInstanceUID"):
        # An instance DicomPressor (or another converter) merged: restore its identity.
        out.SOPClassUID = reference.ReferencedSOPClassUID
        out.SOPInstanceUID = reference.ReferencedSOPInstanceUID
        series = source.get("ReferencedSeriesSequence")
        owner = _owning_series(series, str(reference.ReferencedSOPInstanceUID))
        if owner:
            out.SeriesInstanceUID = owner
        restored_identity = True
    if not restored_identity:
        sop_class = str(source.get("SOPClassUID", ""))
        out.SOPClassUID = SINGLE_FRAME_CLASS.get(sop_class, sop_class or SECONDARY_CAPTURE)
        out.SOPInstanceUID = new_uid()
        out.InstanceNumber = index + 1
        if out.SOPClassUID in (CT_IMAGE, MR_IMAGE, PET_IMAGE) and "ImageType" in out:
            out.ImageType = [str(v) for v in out.ImageType][:3] or ["DERIVED", "PRIMARY"]
        vector = source.get("SliceLocationVector")
        if vector is not None and index < len(_as_list(vector)) and "SliceLocation" not in out:
            out.SliceLocation = _as_list(vector)[index]
        if "SourceImageSequence" not in out:
            out.SourceImageSequence = DicomSequence([source_reference(source)])
    offsets = _floats(source.get("GridFrameOffsetVector"))
    if (
        offsets
        and index < len(offsets)
        and "ImageOrientationPatient" in out
        and ("ImagePositionPatient" in out)
    ):
        # RT Dose (PS3.3 C.8.8.3.2): frame planes lie at offsets along the normal.
        normal = slice_normal([float(v) for v in out.ImageOrientationPatient])
        origin = np.array([float(v) for v in out.ImagePositionPatient])
        out.ImagePositionPatient = [f"{v:.6g}" for v in origin + normal * offsets[index]]
    if "GridFrameOffsetVector" in out:  # type 1C, only with Frame Increment Pointer to it
        del out.GridFrameOffsetVector
    if {"ImagePositionPatient", "ImageOrientationPatient"} <= set(out.dir()) and (
        "SliceLocation" not in out
    ):
        normal = slice_normal([float(v) for v in out.ImageOrientationPatient])
        location = float(np.dot(normal, [float(v) for v in out.ImagePositionPatient]))
        out.SliceLocation = f"{location:.6g}"
    if "LossyImageCompression" in source:
        out.LossyImageCompression = source.LossyImageCompression
    return out


def _owning_series(series: Any, instance_uid: str) -> str | None:
    """Find the series in a Referenced Series Sequence that holds an instance."""
    for item in series or []:
        for ref in item.get("ReferencedInstanceSequence", []):
            if str(ref.get("ReferencedSOPInstanceUID", "")) == instance_uid:
                return str(item.SeriesInstanceUID)
    return None


def _stored_as_offset_binary(ds: Dataset) -> bool:
    """Tell whether merge stored signed frames as offset binary (see to_offset_binary)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not shared or int(ds.get("PixelRepresentation", 0)) != 0:
        return False
    unassigned = shared[0].get("UnassignedSharedConvertedAttributesSequence")
    return bool(unassigned) and int(unassigned[0].get("PixelRepresentation", 0)) == 1


def split_one(path: Path, output_dir: Path | None) -> FileOutcome:
    """Split one multi-frame file into single-frame files in a folder of its own."""
    ds, location = read_header(path)
    if location is None:
        reason = no_pixels_reason(ds)
        if reason is None:
            raise DicomPressorError("no (7FE0,0010) Pixel Data to split")
        return FileOutcome(path, SKIPPED, reason)
    check_pixel_description(ds)
    n_frames = number_of_frames(ds)
    if n_frames < 2:
        return FileOutcome(path, SKIPPED, "single frame, nothing to split")
    check_integrity(ds, location)
    syntax = transfer_syntax_of(ds)
    frame_bytes = expected_frame_bytes(ds)
    decode = False
    frame_spans: list[list[tuple[int, int]]] = []
    out_syntax = syntax
    shifted = _stored_as_offset_binary(ds)
    if location.encapsulated and location.offset >= 0 and not shifted:
        offsets, fragments = scan_fragments(path, location)
        frame_spans = frame_fragments(offsets, fragments, n_frames)
    elif (
        str(syntax) not in NATIVE_LE_SYNTAXES or location.offset < 0 or int(ds.BitsAllocated) == 1
    ):
        decode = True
        out_syntax = ExplicitVRLittleEndian
    elif location.length < frame_bytes * n_frames:
        raise DicomPressorError(
            f"(7FE0,0010) Pixel Data holds {location.length} bytes, expected "
            f"{frame_bytes * n_frames} for {n_frames} frames"
        )
    else:
        out_syntax = ExplicitVRLittleEndian
    base = output_folder(path, output_dir)
    base.mkdir(parents=True, exist_ok=True)
    folder = unique_path(base / f"{safe_component(output_stem(path), default='split')}_frames")
    staging = temp_path(folder)
    staging.mkdir()
    try:
        for index in range(n_frames):
            header = _split_header(ds, index)
            if decode:
                header.PhotometricInterpretation = decoded_photometric(ds, raw=False)
                if int(header.get("SamplesPerPixel", 1)) == 3:
                    header.PlanarConfiguration = 0
            # the header has the source's pixel description back (widened 8-bit frames)
            bits, out_bits, stored = int(ds.BitsAllocated), int(header.BitsAllocated), 0
            if shifted:  # the Rescale Intercept, of the frame or the top level, gives it back
                stored = int(header.BitsStored)
                slope = float(header.get("RescaleSlope", 1) or 1)
                header.RescaleIntercept = ds_text(
                    float(header.RescaleIntercept) + (1 << stored - 1) * slope
                )
            target = staging / f"{folder.name[:-7]}_{index + 1:04d}.dcm"
            with target.open("wb") as handle:
                write_header(handle, header, out_syntax)
                if frame_spans:
                    fragments = [read_span(path, s, n) for s, n in frame_spans[index]]
                    write_encapsulated_frames(
                        handle, [fragments], [encapsulated_size(len(f) for f in fragments)]
                    )
                elif decode:
                    frame = decode_frame(path, index, raw=False)
                    data = pack_native_frames([native_frame_bytes(frame, bits)], bits)
                    if shifted:
                        data = from_offset_binary(data, bits, stored, out_bits)
                    write_native_frames(handle, [data], len(data), 1, out_bits)
                else:
                    data = read_span(path, location.offset + index * frame_bytes, frame_bytes)
                    if shifted:
                        data = from_offset_binary(data, bits, stored, out_bits)
                    write_native_frames(handle, [data], len(data), 1, out_bits)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    message = f"Split {path.name} into {n_frames} files -> {folder.name}/"
    return FileOutcome(path, DONE, message, tuple(sorted(folder.iterdir())))


def split(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Split each multi-frame file into single-frame files (merge's inverse).

    Parameters
    ----------
    inputs
        DICOM files; single-frame ones are passed over.
    output_dir
        Parent of the per-file ``<stem>_frames/`` folders; None puts them beside inputs.
    options
        Run options.

    Returns
    -------
    ActionResult
        One file per frame. For frames merged from single-frame instances, the source's
        (0008,0016) SOP Class UID, (0008,0018) SOP Instance UID, series and per-frame
        values (position, orientation, rescale, window, (0020,1041) Slice Location,
        (0020,0013) Instance Number) are restored; other frames get a new SOP Instance
        UID and a Source Image Sequence. Compressed frames stay compressed.
    """
    result = ActionResult()
    for index, path in enumerate(inputs, 1):
        result.record(guarded(split_one, path, output_dir, doing="split"))
        progress(index, len(inputs))
    if not result.outputs and not result.failures:
        raise DicomPressorError("nothing to split: no multi-frame DICOM images found")
    result.info("Done.")
    return result


# ---- compression and decompression ----


@dataclasses.dataclass(frozen=True)
class TranscodeMode:
    """What a transcoding action does: target syntax, output suffix, lossy settings."""

    name: str
    syntax: str | None  # None: decompress to Explicit VR Little Endian
    suffix: str
    ratio: float | None = None
    psnr: float | None = None

    @property
    def lossy(self) -> bool:
        """Tell whether the encoding loses information."""
        return self.ratio is not None or self.psnr is not None


def _made_from(output: Path, source: Dataset) -> bool:
    """Tell whether an existing output file was transcoded from source.

    Lossless and decompressed outputs keep the SOP Instance UID; lossy ones name it in
    their Source Image Sequence. Another file of that name (from a folder whose files
    have the same names, in --output-dir) is not a reason to skip: the new output then
    gets a ``_1`` name.
    """
    uid = str(source.get("SOPInstanceUID", ""))
    try:
        made = pydicom.dcmread(output, stop_before_pixels=True)
    except Exception:  # an unreadable file of that name: not ours
        return False
    if str(made.get("SOPInstanceUID", "")) == uid:
        return bool(uid)
    return any(
        str(item.get("ReferencedSOPInstanceUID", "")) == uid
        for item in made.get("SourceImageSequence", [])
    )


def _earlier_output(target: Path, ds: Dataset) -> Path | None:
    """Return target, target_1, ... when one is ds's earlier output (_made_from), else None."""
    n = 0
    while (candidate := numbered(target, n)).exists():
        if _made_from(candidate, ds):
            return candidate
        n += 1
    return None


def _skip_reason(path: Path, ds: Dataset, mode: TranscodeMode, target: Path) -> str | None:
    """Return why a file is left alone, or None when it must be transcoded."""
    syntax = transfer_syntax_of(ds)
    if mode.syntax is None and syntax == ExplicitVRLittleEndian:
        return "already uncompressed (Explicit VR Little Endian)"
    if mode.syntax is not None and syntax == mode.syntax:
        return f"already {uid_name(syntax)}"
    if target != path and (earlier := _earlier_output(target, ds)) is not None:
        return f"{earlier.name} exists already"
    if "PixelData" not in ds:
        reason = no_pixels_reason(ds)
        if reason is None:  # an image without its pixels: damaged
            raise DicomPressorError("no (7FE0,0010) Pixel Data")
        return reason
    return None


def _transcoded_dataset(ds: Dataset, *, raw: bool) -> Dataset:
    """Copy ds without its pixel data, described as pydicom's decoded frames are."""
    out = Dataset()
    tags = ds.keys()
    for tag in tags:
        if tag >= 0x7FE00000 or tag.group in (0xFFFA, 0xFFFC):
            continue
        item = ds.get_item(tag)  # raw elements stay raw: odd values pass through as read
        out[tag] = copy.copy(item) if isinstance(item, DataElement) else item
    out.PhotometricInterpretation = decoded_photometric(ds, raw=raw)
    if int(out.get("SamplesPerPixel", 1)) > 1:
        out.PlanarConfiguration = 0
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        out.pop(keyword, None)
    return out


def _mark_lossy(out: Dataset, ratio: float) -> None:
    """Make out a lossy derived image of the instance it was (PS3.3 C.7.6.1.1.5).

    Lossy Image Compression attributes, DERIVED, Derivation Code "Lossy Compression"
    (DCM 113040), a Source Image Sequence item pointing at the original as its
    "Uncompressed predecessor" (DCM 121320), and a new SOP Instance UID.
    """
    source = Dataset()
    source.ReferencedSOPClassUID = out.SOPClassUID
    source.ReferencedSOPInstanceUID = out.SOPInstanceUID
    source.PurposeOfReferenceCodeSequence = [
        code_item("121320", "DCM", "Uncompressed predecessor")
    ]
    out.SourceImageSequence = [*out.get("SourceImageSequence", []), source]
    codes = [c for c in out.get("DerivationCodeSequence", []) if c.get("CodeValue") != "113040"]
    out.DerivationCodeSequence = [*codes, code_item("113040", "DCM", "Lossy Compression")]
    out.LossyImageCompression = "01"
    ratios = [str(v) for v in _as_list(out.get("LossyImageCompressionRatio"))]
    methods = [str(v) for v in _as_list(out.get("LossyImageCompressionMethod"))]
    out.LossyImageCompressionRatio = [*ratios, f"{ratio:.4g}"]
    out.LossyImageCompressionMethod = [*methods, J2K_METHOD]
    image_type = [str(v) for v in _as_list(out.get("ImageType"))] or ["DERIVED", "PRIMARY"]
    image_type[0] = "DERIVED"
    out.ImageType = image_type
    out.SOPInstanceUID = new_uid()


#: Frames sent to a worker process at a time. Each round trip through the pool costs
#: about a millisecond of system time here: one frame a trip took a fifth of the CPU
#: of a JPEG-LS file (5 ms a frame), eight leave at most eight frames' work unshared at
#: the end (half a second of lossless JPEG 2000, a twentieth of its 400 frames).
FRAME_BATCH = 8


def _frame_jobs(
    path: Path, header: Dataset, location: PixelLocation | None, raw: bool, out: Dataset
) -> Iterator[FrameJob]:
    """Yield one FrameJob per frame (target fields left empty).

    Frames stored where they can be cut out are read by the worker that takes them
    (stored_frame_spans); others are decoded here and handed over.
    """
    syntax = str(transfer_syntax_of(header))
    planar = int(header.get("PlanarConfiguration", 0) or 0)
    source = pixel_description(header, planar_configuration=planar)
    spans = stored_frame_spans(path, header, location)
    if spans is not None:
        for frame in spans:
            yield FrameJob(b"", syntax, source, raw, stored_in=str(path), spans=tuple(frame))
        return
    frames = stored_frames(path, header, location)  # a video stream, decoded by ffmpeg
    if frames is not None:
        for data in frames:
            yield FrameJob(data, syntax, source, raw)
        return
    # Decoded here, whole file at once; the workers get native frames.
    ds = pydicom.dcmread(path)
    bits = int(out.BitsAllocated)
    native = pixel_description(out)
    for index in range(number_of_frames(ds)):
        data = native_frame_bytes(decode_frame(ds, index, raw=raw), bits)
        yield FrameJob(pack_native_frames([data], bits), str(ExplicitVRLittleEndian), native, True)


def _write_native_pixels(
    handle: BinaryIO, frames: Iterable[bytes], out: Dataset, n_frames: int, bits: int, syntax: str
) -> None:
    """Write native frames as Pixel Data, in Implicit or Explicit VR Little Endian."""
    if bits == 1:
        data = pack_native_frames(list(frames), bits)
        frames, frame_bytes, n_frames = [data], len(data), 1
    else:
        frame_bytes = expected_frame_bytes(out)
    implicit = syntax == ImplicitVRLittleEndian
    write_native_frames(handle, frames, frame_bytes, n_frames, bits, implicit=implicit)


def _write_pixels(
    handle: BinaryIO, out: Dataset, syntax: str, frames: Iterable[bytes], n_frames: int
) -> None:
    """Write Pixel Data in syntax: native frames (NATIVE_LE_SYNTAXES) or encoded ones."""
    if syntax in NATIVE_LE_SYNTAXES:
        _write_native_pixels(handle, frames, out, n_frames, int(out.BitsAllocated), syntax)
        return
    encoded = list(frames)
    write_encapsulated_frames(
        handle, ([e] for e in encoded), [encapsulated_size([len(e)]) for e in encoded]
    )


def transcode_file(
    path: Path,
    mode: TranscodeMode,
    output_dir: Path | None,
    options: Options,
    progress: ProgressFn,
    measured: Collection[int] | None = None,
    read: tuple[Dataset, PixelLocation | None] | None = None,
) -> FileOutcome:
    """Compress or decompress one file; a file already in the target syntax is left alone.

    Frames are read one by one, decoded and encoded in worker processes when
    ``options.jobs`` > 1, and written atomically (over the input itself with
    ``in_place``). A lossy encoding measures the error of the frames in measured (None:
    every frame); data is then (squared error, samples, frames measured, frames). read:
    read_header(path), when the caller has read it.
    """
    target = output_path(path, output_dir, suffix=mode.suffix, in_place=options.in_place)
    header, location = read if read is not None else read_header(path)
    reason = _skip_reason(path, header, mode, target)
    if reason is not None:  # nothing to do is done
        return FileOutcome(path, DONE, f"{path.name}: left alone, {reason}")
    check_pixel_description(header)
    check_integrity(header, location)
    raw = not transfer_syntax_of(header).is_compressed  # native YBR stays YBR: bit-exact
    out = _transcoded_dataset(header, raw=raw)
    n_frames = number_of_frames(header)
    jobs = _frame_jobs(path, header, location, raw, out)
    # Over the input with in_place; otherwise never over another file (_1, _2).
    output = OutputFile(target, replace=options.in_place)
    if mode.syntax is None:
        frames = (
            r[0]
            for r in iter_ordered(
                _frame_job, jobs, options.jobs, progress, n_frames, batch=FRAME_BATCH
            )
        )
        with output as handle:
            write_header(handle, out, ExplicitVRLittleEndian)
            _write_pixels(handle, out, ExplicitVRLittleEndian, frames, n_frames)
        assert output.path is not None
        message = f"{path.name} -> {output.path.name}: decompressed {n_frames} frame(s)"
        return FileOutcome(path, DONE, message, (output.path,))
    encoded, message, quality = _encode_frames(
        out, jobs, n_frames, mode, options, progress, measured
    )
    with output as handle:
        write_header(handle, out, mode.syntax)
        _write_pixels(handle, out, mode.syntax, encoded, n_frames)
    assert output.path is not None
    line = f"{path.name} -> {output.path.name}: {message}"
    return FileOutcome(path, DONE, line, (output.path,), data=quality)


def _encode_frames(
    out: Dataset,
    jobs: Iterator[FrameJob],
    n_frames: int,
    mode: TranscodeMode,
    options: Options,
    progress: ProgressFn,
    measured: Collection[int] | None,
) -> tuple[list[bytes], str, tuple[float, int, int, int] | None]:
    """Encode every frame for out (lossy attributes set on it).

    Return the frames, the log text and, for a lossy encoding, (squared error, samples,
    frames measured, frames): the error of the frames in measured (None: every one).
    """
    assert mode.syntax is not None
    description = pixel_description(out)
    problem = codec_refusal(mode.syntax, description)
    if problem is not None:  # one line, and only codecs that take the frames suggested
        if description["bits_allocated"] != 1:
            problem += codec_suggestion(mode.syntax, description, lossy=mode.lossy)
        raise DicomPressorError(problem)
    ratio = None
    if mode.ratio is not None:
        # openjpeg's ratio counts BitsStored bits per sample; ours counts the bytes stored.
        scale = description["bits_stored"] / description["bits_allocated"]
        ratio = max(1.0, mode.ratio * scale)
    tasks = (
        dataclasses.replace(
            job,
            target_syntax=str(mode.syntax),
            target=description,
            ratio=ratio,
            psnr=mode.psnr,
            verify=measured is None or index in measured,
        )
        for index, job in enumerate(jobs)
    )
    results = list(
        iter_ordered(_frame_job, tasks, options.jobs, progress, n_frames, batch=FRAME_BATCH)
    )
    encoded = [r[0] for r in results]
    achieved = expected_frame_bytes(out) * n_frames / max(1, sum(len(e) for e in encoded))
    text = f"{uid_name(mode.syntax)}, ratio {achieved:.2f}:1"
    if not mode.lossy:
        return encoded, text, None
    _mark_lossy(out, achieved)
    squared, samples = sum(r[1] for r in results), sum(r[2] for r in results)
    frames = sum(1 for r in results if r[2])
    if frames:
        text += f", RMSE {math.sqrt(squared / samples):.3f}"
    if 0 < frames < n_frames:
        numbers = ", ".join(str(i + 1) for i, r in enumerate(results) if r[2])
        text += f" over {frames} of {n_frames} frames ({numbers})"
    return encoded, text, (squared, samples, frames, n_frames)


def spread(count: int, wanted: int) -> list[int]:
    """Return up to wanted indices of range(count), evenly spread, the first and the last."""
    if count <= wanted:
        return list(range(count))
    if wanted <= 1:
        return [0][:wanted]
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def quality_line(done: Sequence[FileOutcome]) -> str | None:
    """Return the log line of the error of a lossy job's files (data of transcode_file).

    None for fewer than two files (each file's own line says it). The frames measured
    and where they are, when they are a sample: --verify measures every frame.
    """
    measured = [(o.path, o.data) for o in done if o.data is not None]
    if len(measured) < 2:
        return None
    frames, total = sum(q[2] for _, q in measured), sum(q[3] for _, q in measured)
    if not frames:
        return (
            f"RMSE not measured: none of the {total} frames compressed was among the "
            "sampled ones (--verify measures every frame)"
        )
    rmse = math.sqrt(sum(q[0] for _, q in measured) / sum(q[1] for _, q in measured))
    line = f"RMSE {rmse:.3f} over {frames} of {total} frames"
    if frames == total:
        return line
    where = ", ".join(
        path.name if q[3] == 1 else f"{path.name} ({q[2]} frames)" for path, q in measured if q[2]
    )
    return f"{line}, sampled: {where} (--verify measures every frame)"


def run_multi_frame_last(
    worker: Callable[[Any], FileOutcome | int],
    tasks: list[Any],
    jobs: int,
    progress: ProgressFn,
    again: Callable[[int, int], FileOutcome],
    *,
    batch: int = 1,
) -> tuple[list[FileOutcome], list[int]]:
    """Run a worker over per-file tasks, jobs side by side; multi-frame files afterwards.

    The worker reads its file's header once; a multi-frame file it hands back (its frame
    count instead of an outcome) is run by again(index, frames), one at a time, with
    every worker on its frames. Return the outcomes in task order and the indices run
    afterwards; progress counts files done.
    """
    total = len(tasks)
    results: list[Any] = []
    done = 0
    for result in iter_ordered(worker, tasks, jobs, _no_progress, total, batch=batch):
        results.append(result)
        if not isinstance(result, int):
            done += 1
            progress(done, total)
    later = [index for index, result in enumerate(results) if isinstance(result, int)]
    for index in later:
        results[index] = again(index, results[index])
        done += 1
        progress(done, total)
    return results, later


#: FileOutcome.data of a file _transcode_task could not read the header of.
NOT_READ = "not read"


def _transcode_task(
    task: tuple[Path, TranscodeMode, Path | None, Options, Collection[int] | None, bool],
) -> FileOutcome | int:
    """Worker: transcode one whole file; its header is read once, here.

    A header that cannot be read fails the file with read_header's message (data
    NOT_READ). Unless whole is true, a multi-frame file is left to the caller, which
    gives its frames every worker: its frame count comes back instead of an outcome.
    """
    path, mode, output_dir, options, measured, whole = task
    try:
        header = read_header(path)
    except DicomPressorError as exc:
        return FileOutcome(path, FAILED, exc.message, data=NOT_READ)
    frames = number_of_frames(header[0])
    if frames > 1 and not whole:
        return frames
    doing = "decompress" if mode.syntax is None else "compress"
    return guarded(
        transcode_file,
        path,
        mode,
        output_dir,
        options,
        _no_progress,
        measured,
        header,
        doing=doing,
    )


def _transcode(
    inputs: Sequence[Path],
    mode: TranscodeMode,
    output_dir: Path | None,
    options: Options,
    progress: ProgressFn,
) -> ActionResult:
    """Run one transcoding mode over files; failures are per file.

    Single-frame files are spread over worker processes one file each; the frames of a
    multi-frame file are spread over the workers instead. A lossy encoding measures the
    error of RMSE_SAMPLE_FRAMES frames of each multi-frame file and of as many of the
    single-frame files, spread evenly (every frame with ``verify``), and the log says which.
    """
    result = ActionResult()
    total = len(inputs)
    every = not mode.lossy or options.verify
    sampled = set(spread(total, RMSE_SAMPLE_FRAMES))
    outer, inner = share_workers(options.jobs, total)
    each = dataclasses.replace(options, jobs=inner)
    tasks = [
        (p, mode, output_dir, each, None if every else ((0,) if i in sampled else ()), False)
        for i, p in enumerate(inputs)
    ]

    def again(index: int, frames: int) -> FileOutcome:
        measured = None if every else spread(frames, RMSE_SAMPLE_FRAMES)
        outcome = _transcode_task((inputs[index], mode, output_dir, options, measured, True))
        assert isinstance(outcome, FileOutcome)
        return outcome

    ran, later = run_multi_frame_last(_transcode_task, tasks, outer, progress, again)
    handed_back = set(later)
    first = [o for index, o in enumerate(ran) if index not in handed_back]
    unread = [o for o in first if o.data == NOT_READ]
    outcomes = [o for o in first if o.data != NOT_READ] + [ran[index] for index in later]
    for outcome in [*unread, *outcomes]:
        result.record(outcome)
    quality = quality_line([o for o in outcomes if o.status == DONE]) if mode.lossy else None
    if quality is not None:
        result.info(quality)
    result.info("Done.")
    return result


def compress_lossless(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Compress losslessly (JPEG 2000 by default; ``--codec`` jpegls, rle or htj2k).

    Parameters
    ----------
    inputs
        DICOM files in any transfer syntax pydicom can decode.
    output_dir
        Folder for ``<stem>_jll.dcm`` (per codec suffix); None writes beside the input.
    options
        ``codec``, ``jobs`` and ``in_place`` (replace the input atomically).

    Returns
    -------
    ActionResult
        One output per transcoded file, with (0002,0010) Transfer Syntax UID set and the
        (0008,0018) SOP Instance UID kept; files already in the target syntax are left
        alone and reported.
    """
    check_options(ACTIONS["compress_lossless"], options)
    codec = CODECS[options.codec]
    if not codec_available(codec):  # pydicom 3.0 decodes HTJ2K; imagecodecs (OpenJPH) encodes
        package = (
            "'imagecodecs>=2026.1' (Python 3.11 or later)"
            if codec.name == "htj2k"
            else codec.package
        )
        raise DicomPressorError(f"no encoder for {uid_name(codec.syntax)}: pip install {package}")
    mode = TranscodeMode("compress_lossless", codec.syntax, codec.suffix)
    return _transcode(inputs, mode, output_dir, options, progress)


def compress_lossy(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Compress with JPEG 2000 lossy at ``--ratio`` (default 10) or ``--psnr``.

    Parameters
    ----------
    options
        ``ratio`` or ``psnr``; ``verify``: decode every encoded frame again to measure
        its error (by default RMSE_SAMPLE_FRAMES frames of the job are, spread evenly).

    Returns
    -------
    ActionResult
        One output per file, with (0028,2110) Lossy Image Compression "01", (0028,2112)
        the achieved ratio, (0028,2114) "ISO_15444_1", DERIVED as value 1 of (0008,0008)
        Image Type and a new (0008,0018) SOP Instance UID. The log gives the achieved
        ratio of each file and the RMSE of the frames measured: of each file measured,
        and of the whole job (which frames, when they are a sample).
    """
    check_options(ACTIONS["compress_lossy"], options)
    ratio = options.ratio if options.psnr is None else None
    if ratio is None and options.psnr is None:
        ratio = DEFAULT_RATIO
    mode = TranscodeMode("compress_lossy", J2K_LOSSY, LOSSY_SUFFIX, ratio, options.psnr)
    return _transcode(inputs, mode, output_dir, options, progress)


def decompress(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Decompress to Explicit VR Little Endian.

    Returns
    -------
    ActionResult
        One output per file, with (0028,0004) Photometric Interpretation and (0028,0006)
        Planar Configuration matching the decoded pixels (YBR becomes RGB for JPEG).
    """
    mode = TranscodeMode("decompress", None, DECOMPRESSED_SUFFIX)
    return _transcode(inputs, mode, output_dir, options, progress)


# ---- anonymize ----


def black_fill(ds: Dataset) -> tuple[int, ...]:
    """Return the stored value of each sample that a viewer shows as black (masks' fill).

    Grey: the lowest value Bits Stored allows, so black through the modality LUT and any
    window; the highest for MONOCHROME1, and the other way round where the modality LUT
    falls (a negative Rescale Slope, a LUT whose last entry is below its first). RGB: 0;
    YBR_FULL: Y 0 with Cb and Cr in the middle; PALETTE COLOR: the darkest entry's index.
    """
    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        middle = 0 if signed else 1 << bits - 1
        return (low, middle, middle) if photometric.startswith("YBR") else (low, low, low)
    if photometric == "PALETTE COLOR":
        return (_darkest_palette_index(ds, low, high),)
    transformation = ds
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
        transformation = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    slope = ds.get("RescaleSlope", transformation.get("RescaleSlope"))
    falling = False
    if slope not in (None, ""):
        falling = float(slope) < 0
    elif "ModalityLUTSequence" in ds:
        table = list(ds.ModalityLUTSequence[0].get("LUTData", []) or [])
        falling = len(table) > 1 and table[-1] < table[0]
    return (high if (photometric == "MONOCHROME1") != falling else low,)


def _darkest_palette_index(ds: Dataset, low: int, high: int) -> int:
    """Return the index whose palette colour is darkest (sum of R, G, B), low if unknown."""
    try:
        descriptor = ds.RedPaletteColorLookupTableDescriptor
        count, first = int(descriptor[0]) or 65536, int(descriptor[1])
        indices = np.arange(max(low, first), min(high, first + count - 1) + 1)
        dtype = np.uint8 if int(ds.BitsAllocated) == 8 else np.uint16
        colours = pydicom.pixels.apply_color_lut(indices.astype(dtype), ds)
        return int(indices[int(np.argmin(colours.astype(np.float64).sum(axis=-1)))])
    except Exception:  # a palette pydicom cannot read: the lowest value, as for grey
        return low


def mask_boxes(
    rectangles: Sequence[Rectangle], ds: Dataset, name: str
) -> tuple[tuple[tuple[int, int, int, int], ...], list[str]]:
    """Return the boxes of the rectangles for this image, clipped to it, and warnings.

    r applies to every image, ri to single-frame and rv to multi-frame ones; a rectangle
    wholly outside the image is said so and left out.
    """
    if not rectangles or "PixelData" not in ds:
        return (), []
    rows, columns, n_frames = int(ds.Rows), int(ds.Columns), number_of_frames(ds)
    boxes, notes = [], []
    for r in rectangles:
        if not r.applies_to(n_frames):
            continue
        box = (min(r.left, columns), min(r.top, rows), min(r.right, columns), min(r.bottom, rows))
        if box[0] >= box[2] or box[1] >= box[3]:
            notes.append(
                f"{name}: the rectangle of line {r.line} lies outside its {columns} x {rows} "
                "pixels: nothing blacked out there"
            )
            continue
        boxes.append(box)
    return tuple(boxes), notes


def _masked_syntax(source: UID, description: dict[str, Any], name: str) -> tuple[str, str]:
    """Return the transfer syntax masked pixels go in (MASKED_SYNTAX) and the log's words.

    A target whose encoder is missing, or does not take these pixels, gives Explicit VR
    Little Endian and a warning text starting with "!".
    """
    if str(source) in NATIVE_LE_SYNTAXES:
        return str(source), ""
    if str(source) in VIDEO_SYNTAXES:
        raise DicomPressorError(
            f"{uid_name(source)} is a video stream: rectangles black out frames, and "
            "writing every decoded frame uncompressed is not done here"
        )
    target = MASKED_SYNTAX.get(str(source))
    if target is None:
        return str(ExplicitVRLittleEndian), f"{uid_name(source)} is written as Explicit VR LE"
    problem = _encoder_problem(target, description)
    if problem is not None:
        return str(ExplicitVRLittleEndian), (
            f"!{name}: {problem}: its masked pixels are written as Explicit VR Little Endian, "
            f"not {uid_name(UID(target))}"
        )
    if target == str(source):
        return target, ""
    why = "the lossless syntax of its family"
    if str(source) in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"):
        why = "JPEG again would lose more"
    elif str(source) in ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"):
        why = "there is no JPEG Lossless encoder here"
    return target, f"{uid_name(source)} is written as {uid_name(UID(target))}: {why}"


def _encoder_problem(syntax: str, description: dict[str, Any]) -> str | None:
    """Return why frames of this description cannot be encoded losslessly in syntax."""
    if syntax == CODECS["htj2k"].syntax:
        if htj2k_encoder() is None:
            return f"no encoder for {uid_name(UID(syntax))} (pip install 'imagecodecs>=2026.1')"
        try:
            check_htj2k_pixels(description)
        except DicomPressorError as exc:
            return exc.message
        return None
    if not pydicom.pixels.get_encoder(UID(syntax)).is_available:
        return f"no encoder for {uid_name(UID(syntax))} (pip install {CODEC_PACKAGE[syntax]})"
    rows, columns = description["rows"], description["columns"]
    bits_stored, limit = description["bits_stored"], MAX_BITS_STORED.get(syntax)
    if description["bits_allocated"] == 1:
        return "1-bit pixels have no codec"
    if limit is not None and bits_stored > limit:
        return f"{bits_stored}-bit pixels are too deep for {uid_name(UID(syntax))}"
    if syntax == CODECS["j2k"].syntax and min(rows, columns) < J2K_MIN_SIDE:
        return f"{rows} x {columns} pixels is too small for JPEG 2000 (openjpeg)"
    return None


def write_masked(
    output: OutputFile,
    path: Path,
    header: Dataset,
    location: PixelLocation | None,
    boxes: tuple[tuple[int, int, int, int], ...],
    *,
    jobs: int,
) -> tuple[str, list[str]]:
    """Write header with the boxes of every frame blacked out; return (log text, warnings).

    The frames are decoded, filled with black_fill and encoded again losslessly
    (_masked_syntax), in worker processes when jobs > 1; every pixel outside the boxes
    keeps its value. header keeps its own pixel description; the output's Photometric
    Interpretation is that of the decoded frames (YBR becomes RGB when decoded).
    """
    source = transfer_syntax_of(header)
    check_pixel_description(header)
    raw = not source.is_compressed  # native stays as stored (YBR stays YBR)
    out = _transcoded_dataset(header, raw=raw)
    description = pixel_description(out)
    syntax, said = _masked_syntax(source, description, path.name)
    method = LOSSY_METHODS.get(str(source))
    if method is not None and syntax != str(source) and "LossyImageCompression" not in out:
        # General Image (C.7.6.1.1.5): the loss stays on record in a lossless syntax
        out.LossyImageCompression, out.LossyImageCompressionMethod = "01", method
    warnings_ = [said[1:]] if said.startswith("!") else []
    encode = syntax not in NATIVE_LE_SYNTAXES
    n_frames = number_of_frames(header)
    fill = black_fill(out)
    tasks = (
        dataclasses.replace(
            job,
            boxes=boxes,
            fill=fill,
            target_syntax=syntax if encode else None,
            target=description if encode else None,
        )
        for job in _frame_jobs(path, header, location, raw, out)
    )
    frames = (r[0] for r in iter_ordered(_frame_job, tasks, jobs, _no_progress, n_frames))
    encoded = list(frames) if encode else []
    with output as handle:
        write_header(handle, out, UID(syntax))
        _write_pixels(handle, out, syntax, encoded if encode else frames, n_frames)
    text = f"blacked out {len(boxes)} rectangle(s) in {n_frames} frame(s)"
    if said and not said.startswith("!"):
        text += f"; {said}"
    return text, warnings_


def anonymize_file(
    path: Path,
    target: Path,
    params: AnonymizeParams,
    choice: ProfileChoice | None,
    uids: UidMap,
    *,
    replace: bool,
    jobs: int = 1,
    read: tuple[Dataset, PixelLocation | None] | None = None,
) -> tuple[Path, list[str], str]:
    """Write the anonymized copy of path; return (the name it got, warnings, log text).

    choice None is ``--profile none``: only the params are applied. replace renames
    over target (``-A``, target is the input); otherwise target is never overwritten
    (``_1``, ``_2``...). Rectangles of the params that apply to the image are blacked out
    in every frame (write_masked, with jobs workers for the frames); otherwise the pixel
    data is copied as it is. read: read_header(path), when the caller has read it.
    """
    ds, location = read if read is not None else read_header(path)
    check_integrity(ds, location)
    boxes, warnings_ = mask_boxes(params.rectangles, ds, path.name)
    if not boxes and str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES":
        warnings_.append(
            f"{path.name}: (0028,0301) Burned In Annotation is YES: text burned into the "
            "pixels is not removed"
        )
    if choice is not None:
        shift_days = 0
        if choice.shift_dates:
            patient = str(ds.get("PatientID", "") or "")
            shift_days = date_shift_days(uids, patient)
            if not patient.strip(" \0"):
                warnings_.append(
                    f"{path.name}: no (0010,0020) Patient ID: its dates move as those of "
                    "every other file without one"
                )
        deidentify_dataset(
            ds,
            profile_actions(choice),
            uids,
            replace_uids=not choice.keep_uids,
            choice=choice,
            shift_days=shift_days,
        )
        mark_deidentified(ds, dataclasses.replace(choice, clean_pixels=bool(boxes)))
    if boxes:
        ds.BurnedInAnnotation = "NO"  # General Image (C.7.6.1): the text is blacked out
    apply_replacements(ds, params.replacements)
    output = OutputFile(target, replace=replace)
    if not boxes:
        return write_edited(ds, path, location, output), warnings_, ""
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if not ds.get(k)]
    if missing:
        raise DicomPressorError(f"no {' and no '.join(missing)}: cannot write File Meta")
    text, said = write_masked(output, path, ds, location, boxes, jobs=jobs)
    assert output.path is not None
    return output.path, warnings_ + said, text


def _outside_outputs(options: Options, output_dir: Path | None) -> None:
    """Refuse a key or UID map that would travel with the outputs (in --output-dir)."""
    if output_dir is None:
        return
    folder = output_dir.resolve()
    for name in ("deid_key", "uid_map"):
        path = getattr(options, name)
        if path is not None and folder in Path(path).resolve().parents:
            flag = OPTIONS[name].flag
            raise UsageError(
                f"{flag} {path} is in the output folder {output_dir}: keep the key and the "
                "UID map away from the de-identified files"
            )


def anonymize(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """De-identify files with the PS3.15 Basic Profile, then apply the user's params.

    Parameters
    ----------
    inputs
        DICOM files processed together: their UIDs are replaced consistently.
    output_dir
        Folder for ``<stem>_anon.dcm``; None writes beside each input.
    options
        ``params`` (the params text), ``profile`` ("basic" or "none"), the options of
        PS3.15 Table E.1-1: ``keep_uids`` (Retain UIDs), ``keep_dates`` (Retain
        Longitudinal Temporal Information Full Dates), ``shift_dates`` (... Modified
        Dates), ``keep_descriptions`` (Clean Descriptors, kept as they are),
        ``keep_patient_characteristics``, ``keep_device_identity``,
        ``keep_institution_identity``, ``keep_safe_private``, ``clean_graphics``;
        ``deid_key`` (a key file: the same key gives the same new UIDs and date shifts
        in every run; created if missing), ``uid_map`` (a CSV file the original -> new
        UIDs are added to) and ``in_place`` (replace each input atomically, ``-A``).

    Returns
    -------
    ActionResult
        One output per file. With the basic profile the attributes of PS3.15 Table E.1-1
        (and of BEYOND_TABLE_E11) are removed, emptied or given dummy values, also inside
        sequences, as the chosen options say; private elements are removed (but the safe
        ones with keep_safe_private); overlays whose data goes lose their 60xx group;
        SR content keeps its tree, codes, numbers and coordinates (Clean Structured
        Content); (0008,0018) SOP Instance, (0020,000D) Study, (0020,000E) Series,
        (0020,0052) Frame of Reference and every other non-standard UID get new values,
        the same for the same original across all inputs (and runs with one key);
        (0012,0062) Patient Identity Removed is YES, (0012,0063) De-identification
        Method and (0012,0064) De-identification Method Code Sequence name the profile
        and options (CID 7050), (0028,0303) Longitudinal Temporal Information Modified
        is REMOVED (UNMODIFIED with keep_dates, MODIFIED with shift_dates). The params'
        tag lines are applied last. Their rectangles (r, ri, rv) are blacked out in
        every frame of the images they apply to (black_fill), whose pixels are then
        written losslessly (MASKED_SYNTAX; every pixel outside the boxes keeps its
        value), with (0028,0301) Burned In Annotation NO and, with the profile, the Clean
        Pixel Data Option (DCM 113101) among the method codes. Other pixel data is
        copied as it is: a file with Burned In Annotation YES and no rectangle for it
        gives a warning. data["uids_replaced"] counts the UIDs replaced per file, summed.
    """
    check_options(ACTIONS["anonymize"], options)
    params = parse_anonymize_params(options.params or "")
    _outside_outputs(options, output_dir)
    choice = ProfileChoice.of(options) if options.profile == "basic" else None
    result = ActionResult()
    # One key for the whole call: every worker derives the same new UID for an old one.
    secret = options.uid_secret or secrets.token_hex(16)
    if options.deid_key is not None:
        key_path = Path(options.deid_key)
        secret = read_deid_key(key_path)
        if os.name == "posix" and key_path.stat().st_mode & 0o077:
            result.warn(f"{key_path}: the key can be read by other users (chmod 600)")
    options = dataclasses.replace(options, uid_secret=secret)
    label = "basic profile" if choice is not None else "params only"
    counts = f"{len(params.replacements)} replacements"
    if params.rectangles:
        counts += f", {len(params.rectangles)} rectangles"
    result.info(f"Anonymizing {len(inputs)} files ({label}, {counts})...")
    if choice is not None and choice.keep_descriptions:
        result.warn("descriptions are kept as they are: check them for identifying text")
    # Masked multi-frame files run one at a time with every worker on their frames; the
    # other files side by side (share_workers), as compression does.
    outer, inner = share_workers(options.jobs, len(inputs))
    each = dataclasses.replace(options, jobs=inner)
    tasks = [(path, output_dir, each, params, choice, False) for path in inputs]

    def again(index: int, _frames: int) -> FileOutcome:
        outcome = _anonymize_task((inputs[index], output_dir, options, params, choice, True))
        assert isinstance(outcome, FileOutcome)
        return outcome

    outcomes, _ = run_multi_frame_last(_anonymize_task, tasks, outer, progress, again, batch=8)
    replaced = 0
    mapped: dict[str, str] = {}
    for outcome in outcomes:
        result.record(outcome)
        pairs = outcome.data or {}
        replaced += len(pairs)
        mapped.update(pairs)
    result.data["uids_replaced"] = replaced
    if options.uid_map is not None:
        added = merge_uid_map(Path(options.uid_map), mapped, secret)
        result.info(f"UID map {options.uid_map}: {added} new of {len(mapped)} UIDs")
    result.info("Done.")
    return result


def _anonymize_task(
    task: tuple[Path, Path | None, Options, AnonymizeParams, ProfileChoice | None, bool],
) -> FileOutcome | int:
    """Worker: anonymize one file (its data: the original -> new UIDs of the file).

    Its header is read once, here. Unless whole is true, a multi-frame file with
    rectangles to black out is left to the caller (run_multi_frame_last), which gives its
    frames every worker: its frame count comes back instead of an outcome.
    """
    path, output_dir, options, params, choice, whole = task
    header = guarded(lambda p: FileOutcome(p, data=read_header(p)), path, doing="anonymize")
    if header.status == FAILED:
        return header
    frames = number_of_frames(header.data[0])
    if params.rectangles and frames > 1 and not whole:
        return frames
    read = header.data
    return guarded(
        _anonymize_one, path, output_dir, options, params, choice, read, doing="anonymize"
    )


def _anonymize_one(
    path: Path,
    output_dir: Path | None,
    options: Options,
    params: AnonymizeParams,
    choice: ProfileChoice | None,
    read: tuple[Dataset, PixelLocation | None],
) -> FileOutcome:
    """Anonymize one file into its output (or over itself in place); read: its header."""
    target = output_path(path, output_dir, suffix=ANON_SUFFIX, in_place=options.in_place)
    uids = UidMap(options.uid_secret)
    written, notes, masked = anonymize_file(
        path, target, params, choice, uids, replace=options.in_place, jobs=options.jobs, read=read
    )
    shown = "replaced" if options.in_place else f"-> {written.name}"
    message = f"Anonymized {path.name} {shown}" + (f" ({masked})" if masked else "")
    return FileOutcome(path, DONE, message, (written,), tuple(notes), uids.pairs())


# ---- modify ----


def modify(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Change, insert or remove elements as the params say (``-m`` / ``-M``).

    Parameters
    ----------
    inputs
        DICOM files; each is changed on its own.
    output_dir
        Folder for ``<stem>_mod.dcm``; None writes beside each input.
    options
        ``params`` (the params text: parse_modify_params), ``in_place`` (replace each
        input atomically, ``-M``) and ``jobs``.

    Returns
    -------
    ActionResult
        One output per file, with the elements the lines name inserted, changed or
        removed, in the lines' order (apply_replacements). The instance stays the same
        instance: (0008,0018) SOP Instance UID is kept (a line may set it), and the File
        Meta follows the dataset. Pixel data is copied as it is; the lines may not touch
        group 0002, the pixel description or Pixel Data.
    """
    check_options(ACTIONS["modify"], options)
    edits = parse_modify_params(options.params or "")
    result = ActionResult()
    result.info(f"Modifying {len(inputs)} files ({len(edits)} lines)...")
    tasks = [(path, output_dir, options, edits) for path in inputs]
    for outcome in iter_ordered(_modify_task, tasks, options.jobs, progress, len(tasks), batch=8):
        result.record(outcome)
    result.info("Done.")
    return result


def _modify_task(task: tuple[Path, Path | None, Options, list[Replacement]]) -> FileOutcome:
    """Worker: modify one file."""
    return guarded(_modify_one, *task, doing="modify")


def _modify_one(
    path: Path, output_dir: Path | None, options: Options, edits: list[Replacement]
) -> FileOutcome:
    """Write the modified copy of one file (or replace it atomically in place)."""
    target = output_path(path, output_dir, suffix=MODIFY_SUFFIX, in_place=options.in_place)
    ds, location = read_header(path)
    check_integrity(ds, location)
    changed = apply_replacements(ds, edits)
    written = write_edited(ds, path, location, OutputFile(target, replace=options.in_place))
    shown = "replaced" if options.in_place else f"-> {written.name}"
    message = f"Modified {path.name} {shown} ({changed} of {len(edits)} lines changed it)"
    return FileOutcome(path, DONE, message, (written,))


# ---- headers ----


def headers(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Write each file's header as ``<stem>.txt`` or, with ``format`` json, ``<stem>.json``.

    Parameters
    ----------
    inputs
        DICOM files.
    output_dir
        Folder for the dumps; None writes beside each input.
    options
        ``format``: "text" (tag, VR, keyword and value per line, sequence items
        indented, bulk data elided with its length) or "json" (the DICOM JSON Model,
        PS3.18 F.2, without bulk data).

    Returns
    -------
    ActionResult
        One dump per file; no DICOM file is changed.
    """
    check_options(ACTIONS["headers"], options)
    suffix = ".json" if options.format == "json" else ".txt"
    result = ActionResult()
    tasks = [(path, output_dir, suffix) for path in inputs]
    # A plain file's text dump (and creating its file) takes about half a millisecond.
    cost = TEXT_DUMP_S if suffix == ".txt" else None
    jobs, _ = share_workers(options.jobs, len(tasks), task_s=cost)
    for outcome in iter_ordered(_headers_task, tasks, jobs, progress, len(tasks), batch=8):
        result.record(outcome)
    result.info("Done.")
    return result


#: About how long a text dump of one plain file takes, creating its file included
#: (issue 21's profile: 0.13 ms to dump, 0.3 to 0.7 ms to create a file here).
TEXT_DUMP_S = 0.0005


def _headers_task(task: tuple[Path, Path | None, str]) -> FileOutcome:
    """Worker: dump one file's header."""
    return guarded(_dump_header, *task, doing="dump the header")


def _dump_header(path: Path, output_dir: Path | None, suffix: str) -> FileOutcome:
    """Write one file's header dump (suffix .txt or .json).

    Beside its file the dump is derived data, so a new run replaces the old one rather
    than adding ``_1`` copies. In --output-dir, where files of several folders may share
    a name, a dump never overwrites another (``_1``, ``_2``).
    """
    output = OutputFile(
        output_path(path, output_dir, extension=suffix), replace=output_dir is None, durable=False
    )
    left_out: list[str] = []
    problem = None
    text = fast_header_text(path) if suffix == ".txt" else None
    if text is None:
        load_toolkit()
        ds, problem = dump_source(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if suffix == ".json":
                text, left_out = header_json(ds, incomplete=problem)
            else:
                text = header_text(path, ds, incomplete=problem)
    with output as handle:
        handle.write(text.encode("utf-8"))
    assert output.path is not None
    if problem is not None:  # the file fails; its partial dump says so inside
        shown = f"{problem} (partial dump {output.path.name}, marked {INCOMPLETE_MARK})"
        return FileOutcome(path, FAILED, shown)
    notes = ()
    if left_out:
        notes = (
            f"{path.name}: values that cannot be read, left out of the JSON: "
            + ", ".join(left_out),
        )
    return FileOutcome(path, DONE, f"{path.name} -> {output.path.name}", (output.path,), notes)


# ---- DICOMDIR ----


def directory_entry(path: Path) -> FileOutcome:
    """Read one file's directory records; data: its DirectoryEntry.

    A plain file's records come from its bytes (plain_directory_entry); any other file
    is read through pydicom, which says what it lacks.
    """
    entry = plain_directory_entry(path)
    if entry is not None:
        return FileOutcome(path, data=entry)
    load_toolkit()
    header, location = read_header(path)
    for keyword in DICOMDIR_REQUIRED_UIDS:
        if not header.get(keyword):
            tag = _tag_text(int(tag_for_keyword(keyword)))
            raise DicomPressorError(
                f"cannot be put in a DICOMDIR: no {tag} {keyword} (its records need it, PS3.3 F.5)"
            )
    check_integrity(header, location)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records, filled = directory_records(pydicom.dcmread(path))  # values read whole
        encoded = [directory_record(record) for record in records]
    return FileOutcome(path, data=DirectoryEntry(str(header.SOPInstanceUID), encoded, filled))


def directory_entries(
    inputs: Sequence[Path], top: Path, result: ActionResult, progress: ProgressFn
) -> tuple[list[tuple[DirectoryEntry, Path]], dict[str, list[str]], Counter[str]]:
    """Read the records of every input, recording each outcome in result.

    Return each entry with its file in input order (a repeated SOP Instance UID keeps
    the first file's records), each UID's File ID relative to top (the last file's), and
    how many files got a placeholder for each key.
    """
    entries: list[tuple[DirectoryEntry, Path]] = []
    file_ids: dict[str, list[str]] = {}
    invented: Counter[str] = Counter()
    for index, path in enumerate(inputs, 1):
        outcome = guarded(directory_entry, path, doing="be put in a DICOMDIR")
        result.record(outcome)
        if outcome.status == DONE:
            entry = outcome.data
            if entry.uid not in file_ids:
                entries.append((entry, path))
                invented.update(entry.filled)
            file_ids[entry.uid] = list(path.relative_to(top).parts)
        progress(index, len(inputs))
    return entries, file_ids, invented


def file_set_of(paths: Iterable[Path]) -> FileSet:
    """Return a pydicom FileSet of the files, for a conformant copy (_dicomdir_copy)."""
    load_toolkit()
    fs = FileSet()
    for path in paths:
        add_to_file_set(fs, path)
    return fs


def _dicomdir_copy(fs: FileSet, root: Path, parent: Path) -> Path:
    """Write fs as a conformant copy (DICOMDIR and PT/ST/SE/IM files) in parent; return it."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = temp_path(parent / f"{root.name}{DICOMDIR_COPY_SUFFIX}")
    staging.mkdir()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fs.write(staging)
        copy_root = unique_path(parent / f"{root.name}{DICOMDIR_COPY_SUFFIX}")
        os.rename(staging, copy_root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return copy_root


def _write_dicomdir(
    result: ActionResult,
    found: tuple[list[tuple[DirectoryEntry, Path]], dict[str, list[str]], Counter[str]],
    root: Path,
    output_dir: Path | None,
    target: Path,
    texts: tuple[str, str, str, str],
    check: Callable[[Path], None] | None = None,
) -> ActionResult:
    """Write the DICOMDIR of what directory_entries found (-d, -D); log what was made.

    Without output_dir and with every File ID conformant it is target, referencing the
    files in place (check(target) first, when given); otherwise a conformant copy of
    root's files (_dicomdir_copy). texts: how the placeholder warning ends, where the
    in-place DICOMDIR is and how its line ends, and why a copy is made without output_dir.
    """
    entries, file_ids, invented = found
    unchanged, where, in_place_end, why_copy = texts
    if invented:
        keys = ", ".join(f"{k} ({n} files)" for k, n in sorted(invented.items()))
        result.warn(
            f"directory records got placeholder values for keys the files lack: {keys}; "
            f"the files themselves are unchanged{unchanged}"
        )
    if not file_ids:
        return result
    if output_dir is None and all(is_conformant_file_id(p) for p in file_ids.values()):
        if check is not None:
            check(target)
        replaced = target.exists()
        # Synced when it replaces a DICOMDIR (a power cut leaves the old one or the new
        # one); a new one is not, as no new file beside untouched inputs is.
        with OutputFile(target, replace=True, durable=replaced) as handle:
            handle.write(dicomdir_bytes([entry for entry, _ in entries], file_ids))
        result.outputs.append(target)
        result.info(
            f"{'Replaced' if replaced else 'Wrote'} DICOMDIR in {where} referencing "
            f"{len(file_ids)} files in place{in_place_end}"
        )
    else:
        fs = file_set_of(path for _, path in entries)
        copy_root = _dicomdir_copy(fs, root, output_folder(root, output_dir))
        result.outputs.append(copy_root / "DICOMDIR")
        result.outputs.extend(
            sorted(p for p in copy_root.rglob("*") if p.is_file() and p.name != "DICOMDIR")
        )
        why = "--output-dir given" if output_dir is not None else why_copy
        result.info(
            f"Wrote a conformant copy of {len(file_ids)} files with its DICOMDIR in "
            f"{copy_root} ({why})"
        )
    result.info("Done.")
    return result


def dicomdir(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Make a DICOMDIR (PS3.10, PS3.3 F) for the files of one folder.

    Parameters
    ----------
    inputs
        Every DICOM file of one folder (a per-folder action).
    output_dir
        None: when every file name is a conformant File ID (up to 8 components of up to
        8 characters A-Z 0-9 _) the DICOMDIR is written in the folder and references
        the files where they are; otherwise a conformant copy is made beside the folder
        in ``<folder>_DICOMDIR/`` (``_1``, ``_2``... when taken): DICOMDIR plus
        PT000000/ST000000/SE000000/IM000000 files. Given: that copy is made in
        ``output_dir/<folder>_DICOMDIR/``.
    options
        Not used.

    Returns
    -------
    ActionResult
        The DICOMDIR (a Media Storage Directory instance with PATIENT, STUDY, SERIES and
        IMAGE records) and, for a copy, the copied files; the log says which was made.
        Inputs are never changed.
    """
    if not inputs:
        raise DicomPressorError("no DICOM files to put in a DICOMDIR")
    root = Path(os.path.commonpath([str(p.parent) for p in inputs]))
    result = ActionResult()
    found = directory_entries(inputs, root, result, progress)
    texts = (
        " (anonymized files empty these)",
        f"{root.name}/",
        " (their names are conformant File IDs)",
        "file names are not conformant File IDs (<= 8 characters A-Z 0-9 _)",
    )
    return _write_dicomdir(result, found, root, output_dir, root / "DICOMDIR", texts)


# ---- export: the pixel pipeline (pure functions) ----


@dataclasses.dataclass(frozen=True)
class Lut:
    """A lookup table: values for inputs first, first + 1, ... (PS3.3 C.11.1.1.1)."""

    first: int
    table: np.ndarray
    bits: int

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Look values up; inputs outside the table take its first or last entry."""
        index = np.rint(values).astype(np.int64) - self.first
        return self.table[np.clip(index, 0, len(self.table) - 1)]


@dataclasses.dataclass(frozen=True)
class Window:
    """A VOI window: center, width and the VOI LUT Function (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """How one frame's decoded values become display values (picklable, per frame).

    ``photometric`` is that of the decoded frame (YBR already converted to RGB).
    """

    photometric: str
    bits_out: int = 8
    slope: float = 1.0
    intercept: float = 0.0
    modality_lut: Lut | None = None
    window: Window | None = None
    voi_lut: Lut | None = None
    padding: tuple[int, int] | None = None  # stored values excluded from the auto range
    #: The modality values shown as black and white when no window or VOI LUT applies:
    #: the range over all frames of a file or video (None: the frame's own range).
    value_range: tuple[float, float] | None = None
    palette: np.ndarray | None = None  # (2**BitsStored, 3) table of a PALETTE COLOR image
    palette_bits: int = 8
    colour_bits: int = 8  # BitsStored of RGB samples
    offset16: int = 0  # added to modality values in 16-bit output
    annotation: tuple[str, ...] = ()  # values drawn at the top left (annotate_frame)


@dataclasses.dataclass(frozen=True)
class RenderJob:
    """One frame to decode and render (picklable): its stored bytes, or where to decode it.

    With ``target`` the worker writes the image to a temp file beside it and returns the
    temp path; without, it returns the frame as RGB bytes (for the video).
    """

    path: str
    index: int
    spec: RenderSpec
    data: bytes | None = None
    syntax: str = ""
    description: dict[str, Any] | None = None
    target: str | None = None
    image_format: str = "png"
    error: str | None = None


def _lut_of(item: Dataset, *, signed_first: bool) -> Lut:
    """Read a Modality or VOI LUT Sequence item (LUT Descriptor and LUT Data)."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 1 << 16
    first = descriptor[1]
    if signed_first and first >= 1 << 15:
        first -= 1 << 16
    bits = descriptor[2]
    data = item.LUTData
    if isinstance(data, bytes):
        table = np.frombuffer(data, dtype="<u2" if len(data) >= 2 * entries else "u1")
    else:
        table = np.asarray(data if isinstance(data, (list, tuple)) else [data])
    table = table[:entries].astype(np.float64)
    if len(table) == 0:
        raise DicomPressorError("(0028,3006) LUT Data is empty")
    return Lut(first, table, bits)


def modality_values(stored: np.ndarray, spec: RenderSpec) -> np.ndarray:
    """Apply the Modality LUT or the rescale to stored values (PS3.3 C.11.1)."""
    if spec.modality_lut is not None:
        return spec.modality_lut.apply(stored)
    values = stored.astype(np.float64)
    if spec.slope != 1.0:
        values *= spec.slope
    if spec.intercept != 0.0:
        values += spec.intercept
    return values


def apply_window(values: np.ndarray, window: Window, y_max: float = 255.0) -> np.ndarray:
    """Map values through a VOI window onto 0..y_max (PS3.3 C.11.2.1.2 and C.11.2.1.3).

    LINEAR: ``((x - (c - 0.5)) / (w - 1) + 0.5) * y_max``, clipped (width 1: a threshold
    at c - 0.5); LINEAR_EXACT: ``((x - c) / w + 0.5) * y_max``, clipped; SIGMOID:
    ``y_max / (1 + exp(-4 (x - c) / w))``.
    """
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        with np.errstate(over="ignore"):
            return y_max / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "LINEAR_EXACT":
        y = ((values - c) / w + 0.5) * y_max
    elif w <= 1:
        return np.where(values <= c - 0.5, 0.0, y_max)
    else:
        y = ((values - (c - 0.5)) / (w - 1) + 0.5) * y_max
    return np.clip(y, 0.0, y_max)


def value_range(values: np.ndarray, stored: np.ndarray, spec: RenderSpec) -> tuple[float, float]:
    """Return the least and greatest modality value of a frame, padding pixels left out."""
    sample = values
    if spec.padding is not None:
        low, high = spec.padding
        kept = values[(stored < low) | (stored > high)]
        if kept.size:
            sample = kept
    return float(sample.min()), float(sample.max())


def auto_range(values: np.ndarray, stored: np.ndarray, spec: RenderSpec) -> np.ndarray:
    """Stretch spec's value_range, else the frame's range (padding pixels left out),
    linearly onto 0..255.

    A range of one value renders black.
    """
    lo, hi = spec.value_range or value_range(values, stored, spec)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((values - lo) * (255.0 / (hi - lo)), 0.0, 255.0)


def render_frame(frame: np.ndarray, spec: RenderSpec) -> np.ndarray:
    """Turn one decoded frame into display values: uint8 (or uint16), 2-D grey or RGB.

    Grey: Modality LUT, then VOI (window, VOI LUT, the value_range of the file or video,
    or the frame's own range), MONOCHROME1 inverted. PALETTE COLOR: the palette. RGB: as
    decoded, scaled to 8 bits. With ``bits_out`` 16, grey frames give the modality values
    plus ``offset16`` (rounded, clipped to 0..65535, not inverted) and colour frames are
    scaled to 0..65535.
    """
    full = 65535.0 if spec.bits_out == 16 else 255.0
    dtype = np.uint16 if spec.bits_out == 16 else np.uint8
    if spec.palette is not None:
        rgb = spec.palette[np.clip(frame.astype(np.int64), 0, len(spec.palette) - 1)]
        scale = full / ((1 << spec.palette_bits) - 1)
        return np.rint(rgb * scale).astype(dtype)
    if frame.ndim == 3:
        if frame.shape[-1] != 3:
            raise DicomPressorError(f"{frame.shape[-1]} samples per pixel: only 1 or 3")
        if spec.bits_out == 8 and frame.dtype == np.uint8 and spec.colour_bits == 8:
            return frame
        scale = full / ((1 << spec.colour_bits) - 1)
        return np.rint(np.clip(frame, 0, None) * scale).clip(0, full).astype(dtype)
    values = modality_values(frame, spec)
    if spec.bits_out == 16:
        return np.clip(np.rint(values) + spec.offset16, 0, 65535).astype(np.uint16)
    if spec.window is not None:
        display = apply_window(values, spec.window)
    elif spec.voi_lut is not None:
        display = spec.voi_lut.apply(values) * (255.0 / ((1 << spec.voi_lut.bits) - 1))
    else:
        display = auto_range(values, frame, spec)
    if spec.photometric == "MONOCHROME1":
        display = 255.0 - display
    return np.rint(np.clip(display, 0.0, 255.0)).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def annotation_font(size_px: int) -> Any:
    """Return Pillow's bundled scalable font at size_px pixels (no font file is read)."""
    from PIL import ImageFont

    try:
        font = ImageFont.load_default(size=size_px)
    except TypeError:  # Pillow before 10.1: one bitmap size only
        font = None
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise DicomPressorError(
            "annotations need Pillow's scalable bundled font (Pillow 10.1 or later, with "
            "FreeType): pip install -U pillow"
        )
    return font


def fit_text(text: str, font: Any, width_px: float) -> str:
    """Return text, or its longest start with "…" added that is at most width_px wide
    ("" when not even "…" fits)."""
    if font.getlength(text) <= width_px:
        return text
    low, high = 0, len(text)  # text[:low] + "…" fits, text[:high] + "…" does not
    if font.getlength("…") > width_px:
        return ""
    while high - low > 1:
        middle = (low + high) // 2
        if font.getlength(text[:middle].rstrip() + "…") <= width_px:
            low = middle
        else:
            high = middle
    return text[:low].rstrip() + "…"


def fit_fields(fields: Sequence[str], font: Any, width_px: float) -> str:
    """Join fields with " | " in at most width_px: the first field (the patient's name)
    is shortened first, so the others stay whole while they fit; else the line's end."""
    text = " | ".join(fields)
    if font.getlength(text) <= width_px or len(fields) < 2:
        return fit_text(text, font, width_px)
    rest = " | " + " | ".join(fields[1:])
    first = fit_text(fields[0], font, width_px - font.getlength(rest))
    return first + rest if first else fit_text(text, font, width_px)


def annotate_frame(image: np.ndarray, fields: Sequence[str]) -> np.ndarray:
    """Draw fields at the top left of an 8-bit grey or RGB frame, white on a black box.

    The font is Pillow's bundled one at the shorter side over ANNOTATION_SCALE pixels,
    at least ANNOTATION_MIN_PX; a line wider than the frame is shortened with "…"
    (fit_fields). The box (a quarter of the font size from the edges, as much padding
    around the text) stays inside the frame, and no pixel outside it changes.
    """
    from PIL import Image, ImageDraw

    rows, columns = image.shape[:2]
    size = max(ANNOTATION_MIN_PX, round(min(rows, columns) / ANNOTATION_SCALE))
    font = annotation_font(size)
    pad = max(1, round(size / 4))
    fitted = fit_fields(fields, font, columns - 4 * pad)
    if not fitted:
        return image
    ascent, descent = font.getmetrics()
    width = min(columns - pad, 2 * pad + math.ceil(font.getlength(fitted)))
    height = min(rows - pad, 2 * pad + ascent + descent)
    if width <= 0 or height <= 0:
        return image
    mode = "L" if image.ndim == 2 else "RGB"
    box = Image.new(mode, (width, height), 0)
    ImageDraw.Draw(box).text(
        (pad, pad), fitted, font=font, fill=255 if mode == "L" else (255,) * 3
    )
    canvas = Image.fromarray(image)
    canvas.paste(box, (pad, pad))
    return np.asarray(canvas)


# ---- export: reading what a frame needs from the header ----


def readable_name(value: str) -> str:
    """Show a person name (PN) as "FAMILY, prefix given middle suffix": its first
    non-empty component group (alphabetic, else ideographic or phonetic), PS3.5 6.2."""
    group = next((g for g in value.split("=") if g.strip("^ ")), "")
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    rest = " ".join(p for p in (prefix, given, middle, suffix) if p)
    return f"{family}, {rest}" if family and rest else family or rest


def annotation_fields(ds: Dataset, keywords: Sequence[str]) -> tuple[str, ...]:
    """Return the values of keywords as annotate_frame shows them: person names readable
    (readable_name), dates as YYYY-MM-DD, control characters as spaces, "-" for a value
    that is missing or empty."""
    shown = []
    for keyword in keywords:
        value = ds.get(keyword)
        text = "" if value is None else str(value)
        vr = ds[keyword].VR if keyword in ds else ""
        if vr == "PN":
            text = readable_name(text)
        elif vr == "DA" and re.fullmatch(r"\d{8}", text.strip()):
            text = f"{text[:4]}-{text[4:6]}-{text[6:8]}"
        text = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split())
        shown.append(text or "-")
    return tuple(shown)


def _macro(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """Return a frame's functional group macro item: its own, else the shared one."""
    for groups_keyword, position in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_keyword)
        if groups and position < len(groups):
            sequence = groups[position].get(keyword)
            if sequence:
                return sequence[0]
    return None


def _window_of(item: Dataset, function_default: str) -> Window | None:
    """Return the first window of a dataset or FrameVOILUT item, or None."""
    center = _first_number(item.get("WindowCenter"))
    width = _first_number(item.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(item.get("VOILUTFunction", "") or function_default).upper()
    return Window(center, width, function)


def _check_window(window: Window, path: Path) -> None:
    """Raise DicomPressorError for a window PS3.3 C.11.2.1.2 does not allow."""
    if window.function not in VOI_FUNCTIONS:
        raise DicomPressorError(
            f"(0028,1056) VOI LUT Function {window.function!r} is not LINEAR, "
            f"LINEAR_EXACT or SIGMOID in {path.name}"
        )
    least = 1.0 if window.function == "LINEAR" else 0.0
    if window.width < least or (window.function != "LINEAR" and window.width <= 0):
        raise DicomPressorError(
            f"(0028,1051) Window Width value of {window.width:g} is invalid for "
            f"{window.function} (it must be {'>= 1' if least else '> 0'})"
        )


def _padding_of(ds: Dataset) -> tuple[int, int] | None:
    """Return the stored values Pixel Padding Value (and Range Limit) mark (C.7.5.1.1.2)."""
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1

    def value(keyword: str) -> int | None:
        raw = _first_number(ds.get(keyword))
        if raw is None:
            return None
        number = int(raw)
        bits = 8 if int(ds.get("BitsAllocated", 16) or 16) == 8 else 16
        return number - (1 << bits) if signed and number >= 1 << (bits - 1) else number

    padding = value("PixelPaddingValue")
    if padding is None:
        return None
    limit = value("PixelPaddingRangeLimit")
    if limit is None:
        return padding, padding
    return min(padding, limit), max(padding, limit)


def _palette_table(ds: Dataset) -> tuple[np.ndarray, int]:
    """Return a PALETTE COLOR image's palette for every stored value, and its entry bits."""
    from pydicom.pixels import apply_color_lut

    if "RedPaletteColorLookupTableDescriptor" not in ds:  # Type 1 in the LUT module
        raise DicomPressorError(
            "PALETTE COLOR without a Palette Color Lookup Table (no (0028,1101) Red "
            "Palette Color Lookup Table Descriptor): its colours are unknown"
        )
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    palette_ds = Dataset()
    for elem in ds:
        if elem.tag.group == 0x0028 and 0x1100 <= elem.tag.element <= 0x1223:
            palette_ds.add(elem)
    palette_ds.PhotometricInterpretation = "PALETTE COLOR"
    palette_ds.BitsStored = bits_stored
    palette_ds.PixelRepresentation = 0
    # segmented tables (0028,1221-1223) are words in the byte order of the file
    little = ds.original_encoding[1]
    if little is None:
        little = transfer_syntax_of(ds) != ExplicitVRBigEndian
    palette_ds.set_original_encoding(False, little, ds.original_character_set)
    table = apply_color_lut(np.arange(1 << bits_stored), palette_ds)
    bits = 16 if table.dtype == np.uint16 else 8
    if bits == 16 and int(table.max(initial=0)) < 256:  # 8-bit values in 16-bit entries
        bits = 8
    return table, bits


def _offset16(ds: Dataset, spec: RenderSpec) -> int:
    """Return what 16-bit output adds to modality values: minus the least value possible.

    The least value is that of the lowest stored value BitsStored and Pixel
    Representation allow, through the Modality LUT or rescale; it is 0 when no modality
    value can be negative. So frames of one series share one offset.
    """
    bits = int(ds.get("BitsStored", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if spec.modality_lut is not None:
        least = float(spec.modality_lut.table.min())
    else:
        least = min(lo * spec.slope, hi * spec.slope) + spec.intercept
    return max(0, -math.floor(least))


def render_spec(
    ds: Dataset, index: int, options: Options, path: Path, *, palette: Any = None
) -> RenderSpec:
    """Collect what frame index of ds needs to be rendered (see ``render_frame``).

    Modality: the frame's Pixel Value Transformation macro (own, else shared), else
    (0028,3000) Modality LUT Sequence, else (0028,1052)/(0028,1053) Rescale
    Intercept/Slope. VOI: ``--window`` (with the file's VOI LUT Function), else the
    frame's Frame VOI LUT macro, else the first (0028,1050)/(0028,1051) window, else
    (0028,3010) VOI LUT Sequence, else the frame's range.
    """
    photometric = decoded_photometric(ds, raw=False)
    bits_out = int(options.png_bits or 8)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3:
        return RenderSpec(
            photometric, bits_out=bits_out, colour_bits=int(ds.get("BitsStored", 8) or 8)
        )
    if photometric == "PALETTE COLOR":
        table, bits = palette if palette is not None else _palette_table(ds)
        return RenderSpec(photometric, bits_out=bits_out, palette=table, palette_bits=bits)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    slope, intercept, modality_lut = 1.0, 0.0, None
    transformation = _macro(ds, index, "PixelValueTransformationSequence")
    if transformation is not None and "RescaleSlope" in transformation:
        slope = _first_number(transformation.get("RescaleSlope")) or 1.0
        intercept = _first_number(transformation.get("RescaleIntercept")) or 0.0
    elif ds.get("ModalityLUTSequence"):
        modality_lut = _lut_of(ds.ModalityLUTSequence[0], signed_first=signed)
    else:
        slope = _first_number(ds.get("RescaleSlope")) or 1.0
        intercept = _first_number(ds.get("RescaleIntercept")) or 0.0
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").upper()
    window, voi_lut = None, None
    override = options.window
    frame_voi = _macro(ds, index, "FrameVOILUTSequence")
    if override is not None:
        if frame_voi is not None and frame_voi.get("VOILUTFunction"):
            function = str(frame_voi.VOILUTFunction).upper()
        window = Window(float(override[0]), float(override[1]), function)
    elif (
        own := (_window_of(frame_voi, function) if frame_voi is not None else None)
        or _window_of(ds, function)
    ) is not None:
        window = own  # the frame's window, else the file's
    elif ds.get("VOILUTSequence"):
        modality_signed = signed or intercept < 0 or slope < 0
        voi_lut = _lut_of(ds.VOILUTSequence[0], signed_first=modality_signed)
    if window is not None:
        _check_window(window, path)
    spec = RenderSpec(
        photometric,
        bits_out=bits_out,
        slope=slope,
        intercept=intercept,
        modality_lut=modality_lut,
        window=window,
        voi_lut=voi_lut,
        padding=_padding_of(ds),
    )
    if bits_out == 16:
        spec = dataclasses.replace(spec, offset16=_offset16(ds, spec))
    return spec


def _frame_rate(ds: Dataset, options: Options) -> float:
    """Return frames per second: (0018,1063) Frame Time, (0018,1065) Frame Time Vector,
    (0018,0040) Cine Rate or (0008,2144) Recommended Display Frame Rate, else ``--fps``,
    else 10.

    The vector holds the time from each frame to the next one's start, its first value
    the first frame's (0 by PS3.3 C.7.6.5.1.2): the video plays at the mean of the
    values after the first (a vector of one value: that value).
    """
    frame_time = _first_number(ds.get("FrameTime"))
    if frame_time is not None and frame_time > 0:
        return 1000.0 / frame_time
    vector = _floats(ds.get("FrameTimeVector"))
    if vector:
        steps = vector[1:] or vector
        mean_ms = sum(steps) / len(steps)
        if math.isfinite(mean_ms) and mean_ms > 0:
            return 1000.0 / mean_ms
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _first_number(ds.get(keyword))
        if rate is not None and rate > 0:
            return rate
    fps = options.fps
    return float(fps) if fps else DEFAULT_FPS


# ---- export: encoding and the worker ----


def png16_rgb_bytes(rgb: np.ndarray) -> bytes:
    """Encode a (rows, columns, 3) uint16 array as a 16-bit RGB PNG (Pillow cannot)."""
    rows, columns = rgb.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">L", len(body)) + kind + body + struct.pack(">L", crc)

    scanlines = np.zeros((rows, 1 + columns * 6), dtype=np.uint8)  # filter type 0 per row
    scanlines[:, 1:] = rgb.astype(">u2").view(np.uint8).reshape(rows, columns * 6)
    header = struct.pack(">LLBBBBB", columns, rows, 16, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)),
            chunk(b"IEND", b""),
        )
    )


def tiff16_rgb_bytes(rgb: np.ndarray) -> bytes:
    """Encode a (rows, columns, 3) uint16 array as a 16-bit RGB TIFF, one Adobe Deflate
    strip (TIFF 6.0 baseline fields; Pillow cannot hold 16-bit colour)."""
    rows, columns = rgb.shape[:2]
    strip = zlib.compress(np.ascontiguousarray(rgb, dtype="<u2").tobytes(), 6)
    bits_at, resolution_at, strip_at = 8, 14, 30  # after the 8-byte header
    ifd_at = strip_at + len(strip) + len(strip) % 2  # IFDs start on a word boundary
    short, long_, rational = 3, 4, 5
    entries = [  # (tag, type, count, value or offset), in tag order
        (256, long_, 1, columns),  # ImageWidth
        (257, long_, 1, rows),  # ImageLength
        (258, short, 3, bits_at),  # BitsPerSample 16, 16, 16
        (259, short, 1, 8),  # Compression: Adobe Deflate
        (262, short, 1, 2),  # PhotometricInterpretation: RGB
        (273, long_, 1, strip_at),  # StripOffsets
        (277, short, 1, 3),  # SamplesPerPixel
        (278, long_, 1, rows),  # RowsPerStrip
        (279, long_, 1, len(strip)),  # StripByteCounts
        (282, rational, 1, resolution_at),  # XResolution 1/1
        (283, rational, 1, resolution_at + 8),  # YResolution 1/1
        (284, short, 1, 1),  # PlanarConfiguration: interleaved
        (296, short, 1, 1),  # ResolutionUnit: none
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHLH2x" if kind == short and count == 1 else "<HHLL", tag, kind, count, v)
        for tag, kind, count, v in entries
    )
    return b"".join(
        (
            struct.pack("<2sHL", b"II", 42, ifd_at),
            struct.pack("<3H", 16, 16, 16),
            struct.pack("<4L", 1, 1, 1, 1),
            strip,
            b"\0" * (len(strip) % 2),
            ifd,
            struct.pack("<L", 0),  # no next IFD
        )
    )


def modality_note(image_format: str, offset16: int) -> str:
    """Say how a 16-bit grey image's values give the modality values."""
    return f"modality value = {IMAGE_FORMATS[image_format].name} value - {offset16}"


def tiff_bytes(image: np.ndarray, offset16: int = 0) -> bytes:
    """Encode a rendered frame as TIFF, Adobe Deflate: 8-bit grey or RGB, 16-bit grey
    (its ImageDescription says the offset, as PNG's text does) or 16-bit RGB."""
    from PIL import Image

    if image.dtype == np.uint16 and image.ndim == 3:
        return tiff16_rgb_bytes(image)
    buffer = io.BytesIO()
    info = {270: modality_note("tiff", offset16)} if image.dtype == np.uint16 else {}
    Image.fromarray(image).save(
        buffer, format="TIFF", compression="tiff_adobe_deflate", tiffinfo=info
    )
    return buffer.getvalue()


def bmp_bytes(image: np.ndarray, offset16: int = 0) -> bytes:
    """Encode a rendered 8-bit frame as BMP (grey: 8 bits with a grey palette; RGB: 24)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="BMP")
    return buffer.getvalue()


def jp2_bytes(image: np.ndarray, offset16: int = 0) -> bytes:
    """Encode a rendered frame as a lossless JPEG 2000 JP2 file (reversible 5-3 wavelet).

    Pillow encodes it (8-bit grey or RGB, 16-bit grey with a comment saying the offset);
    16-bit RGB, which Pillow cannot hold, and any frame when Pillow has no JPEG 2000
    goes through pylibjpeg-openjpeg's encoder, which needs 32 pixels on each side.
    """
    from PIL import Image, features

    if (image.dtype == np.uint16 and image.ndim == 3) or not features.check("jpg_2000"):
        return _openjpeg_jp2(image)
    buffer = io.BytesIO()
    extra = {"comment": modality_note("jp2", offset16)} if image.dtype == np.uint16 else {}
    Image.fromarray(image).save(
        buffer, format="JPEG2000", irreversible=False, mct=int(image.ndim == 3), **extra
    )
    return buffer.getvalue()


def _openjpeg_jp2(image: np.ndarray) -> bytes:
    """Encode a frame as a lossless JP2 file with pylibjpeg-openjpeg (see jp2_bytes)."""
    rows, columns = image.shape[:2]
    if min(rows, columns) < 32:
        raise DicomPressorError(
            f"JPEG 2000 of {'16-bit colour' if image.ndim == 3 else 'this frame'} goes "
            f"through openjpeg, which needs at least 32 pixels on each side, not "
            f"{columns} x {rows}: export it as png or tiff"
        )
    try:
        from openjpeg.utils import encode_array
    except ImportError as exc:
        raise DicomPressorError(
            "no JPEG 2000 encoder for this frame: pip install pylibjpeg-openjpeg"
        ) from exc
    return bytes(
        encode_array(
            np.ascontiguousarray(image),
            bits_stored=8 * image.itemsize,
            photometric_interpretation=1 if image.ndim == 3 else 2,  # sRGB, greyscale
            codec_format=1,  # JP2
        )
    )


#: The encoders of the image formats that encode_image does not write itself.
IMAGE_ENCODERS: dict[str, Callable[[np.ndarray, int], bytes]] = {
    "bmp": bmp_bytes,
    "tiff": tiff_bytes,
    "jp2": jp2_bytes,
}


def encode_image(image: np.ndarray, image_format: str, offset16: int = 0) -> bytes:
    """Encode a rendered frame as PNG (8 or 16 bits), JPEG, or through IMAGE_ENCODERS
    (BMP, TIFF, JPEG 2000)."""
    import io

    from PIL import Image, PngImagePlugin

    encoder = IMAGE_ENCODERS.get(image_format)
    if encoder is not None:
        return encoder(image, offset16)
    if image.dtype == np.uint16 and image.ndim == 3:
        return png16_rgb_bytes(image)
    buffer = io.BytesIO()
    if image.dtype == np.uint16:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", f"modality value = PNG value - {offset16}")
        info.add_text("ModalityValueOffset", str(offset16))
        Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    elif image_format == "jpg":
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _decode_job(job: RenderJob) -> np.ndarray:
    """Decode the frame of a job: from its stored bytes, else from the file."""
    if job.data is not None and job.description is not None:
        return decode_stored_frame(job.data, UID(job.syntax), job.description, raw=False)
    return decode_frame(Path(job.path), job.index, raw=False)


def _render_job(job: RenderJob) -> FileOutcome:
    """Worker: decode and render a frame; its data is the temp file of the image, or the
    frame as RGB bytes (video). A frame that fails, fails with its number.
    """
    if job.error is not None:
        return FileOutcome(Path(job.path), FAILED, job.error)
    return guarded(_render_frame, Path(job.path), job, doing=f"render frame {job.index + 1}")


def _render_frame(path: Path, job: RenderJob) -> FileOutcome:
    """Render one frame (see _render_job)."""
    try:
        image = render_frame(_decode_job(job), job.spec)
    except DicomPressorError as exc:
        raise DicomPressorError(f"frame {job.index + 1}: {exc.message}") from exc
    if job.spec.annotation:
        image = annotate_frame(image, job.spec.annotation)
    if job.target is None:
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return FileOutcome(path, data=np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    data = encode_image(image, job.image_format, job.spec.offset16)
    tmp = temp_path(Path(job.target))
    handle = tmp.open("xb")  # mode 0666 less the umask, as OutputFile's
    try:
        with handle:
            handle.write(data)  # not synced, like other new outputs (see OutputFile)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return FileOutcome(path, data=str(tmp))


# ---- export: planning files and frames, the action ----


@dataclasses.dataclass
class ExportSource:
    """A file whose frames are exported: its header and where its pixels are."""

    path: Path
    header: Dataset
    location: PixelLocation | None
    frames: int
    spans: list[list[tuple[int, int]]] | None = None  # stored_frame_spans, found once


def _render_plan(
    path: Path, source: ExportSource, options: Options, indices: list[int]
) -> FileOutcome:
    """Work out how each frame of a file renders; data: (specs, stored frames or None)."""
    ds = source.header
    palette = None
    if decoded_photometric(ds, raw=False) == "PALETTE COLOR":
        palette = _palette_table(ds)
    specs = [render_spec(ds, i, options, path, palette=palette) for i in indices]
    if source.spans is not None:  # found when the file was read (_exportable)
        stored = (read_spans(path, frame) for frame in source.spans)
    else:
        stored = stored_frames(path, ds, source.location)
    return FileOutcome(path, data=(specs, stored))


@dataclasses.dataclass(frozen=True)
class SharedVoi:
    """One VOI for all frames of a video, or one range for all frames of a file.

    ``window`` or ``voi_lut``: a video's first frame's, for every frame; else
    ``value_range``, the range of modality values over all frames. With ``keep_own``
    (images) a frame keeps a window or VOI LUT of its own; a video replaces them.
    """

    window: Window | None = None
    voi_lut: Lut | None = None
    value_range: tuple[float, float] | None = None
    keep_own: bool = False

    def apply(self, spec: RenderSpec) -> RenderSpec:
        """Return spec with this VOI (colour frames and 16-bit output have none)."""
        if not windowed(spec):
            return spec
        if self.keep_own:
            return dataclasses.replace(spec, value_range=self.value_range)
        return dataclasses.replace(
            spec, window=self.window, voi_lut=self.voi_lut, value_range=self.value_range
        )


def windowed(spec: RenderSpec) -> bool:
    """Tell whether frames of spec go through a VOI: grey frames, 8-bit output."""
    return spec.palette is None and spec.bits_out == 8 and spec.photometric.startswith("MONO")


def _frame_jobs_of(
    source: ExportSource,
    options: Options,
    targets: Sequence[Path | None],
    image_format: str,
    frame_indices: Sequence[int] | None = None,
    voi: SharedVoi | None = None,
    annotation: Sequence[str] = (),
) -> Iterator[RenderJob]:
    """Yield one RenderJob per frame of source; a problem becomes a job with an error.

    voi, when given, is the VOI of every frame (SharedVoi); annotation names the
    attributes whose values are drawn on every frame (annotation_fields).
    """
    path, ds = source.path, source.header
    indices = list(frame_indices) if frame_indices is not None else list(range(source.frames))
    prepared = guarded(_render_plan, path, source, options, indices, doing="prepare the rendering")
    if prepared.status == FAILED:  # malformed LUTs and the like fail this file only
        for i in indices:
            yield RenderJob(str(path), i, RenderSpec("MONOCHROME2"), error=prepared.message)
        return
    specs, stored = prepared.data
    if annotation:
        fields = annotation_fields(ds, annotation)
        specs = [dataclasses.replace(spec, annotation=fields) for spec in specs]
    syntax = str(transfer_syntax_of(ds))
    planar = int(ds.get("PlanarConfiguration", 0) or 0)
    description = pixel_description(ds, planar_configuration=planar)
    wanted = set(indices)
    position = 0
    for index in range(source.frames):
        data = None
        error = None
        if stored is not None:
            try:
                data = next(stored)
            except DicomPressorError as exc:
                error, stored = exc.message, None
            except StopIteration:
                error, stored = f"frame {index + 1} is missing", None
        if index not in wanted:
            continue
        target = targets[position]
        spec = voi.apply(specs[position]) if voi is not None else specs[position]
        yield RenderJob(
            str(path),
            index,
            spec,
            data=data,
            syntax=syntax,
            description=description if data is not None else None,
            target=str(target) if target is not None else None,
            image_format=image_format,
            error=error,
        )
        position += 1
        if position == len(indices):
            return


def _range_job(job: RenderJob) -> FileOutcome:
    """Worker: decode a frame; data: the range of its modality values (value_range), or
    None for a colour frame."""
    if job.error is not None:
        return FileOutcome(Path(job.path), FAILED, job.error)
    return guarded(_frame_range, Path(job.path), job, doing=f"read frame {job.index + 1}")


def _frame_range(path: Path, job: RenderJob) -> FileOutcome:
    """Return the range of one frame's modality values (see _range_job)."""
    frame = _decode_job(job)
    if frame.ndim != 2:
        return FileOutcome(path)
    return FileOutcome(path, data=value_range(modality_values(frame, job.spec), frame, job.spec))


def first_job(jobs: Iterator[RenderJob]) -> tuple[RenderJob | None, Iterator[RenderJob]]:
    """Return the first job without an error (None when none has) and every job again.

    The jobs read to find it come first, then the rest of jobs: one plan of the file and
    one read of each frame serve both (the caller closes jobs when it stops early).
    """
    before: list[RenderJob] = []
    for job in jobs:
        before.append(job)
        if job.error is None:
            return job, itertools.chain(before, jobs)
    return None, iter(before)


def shared_range(
    jobs: Iterator[RenderJob], workers: int, count: int
) -> tuple[float, float] | None:
    """Return the range of modality values over every frame of jobs (decoded in workers;
    frames that fail are left out, the rendering reports them), or None."""
    low, high = math.inf, -math.inf
    for outcome in iter_ordered(_range_job, jobs, workers, _no_progress, count):
        if outcome.status == DONE and outcome.data is not None:
            low, high = min(low, outcome.data[0]), max(high, outcome.data[1])
    return (low, high) if low <= high else None


def _file_voi(source: ExportSource, options: Options) -> SharedVoi | None:
    """Return one range for every frame of a multi-frame file without a stored window or
    VOI LUT (``-I``), so its frames stay comparable; None when there is nothing to share."""
    if source.frames < 2 or options.window is not None or int(options.png_bits or 8) != 8:
        return None
    with contextlib.closing(_frame_jobs_of(source, options, [None] * source.frames, "")) as jobs:
        first, every = first_job(jobs)
        if first is None or not windowed(first.spec) or first.spec.window or first.spec.voi_lut:
            return None
        found = shared_range(every, options.jobs, source.frames)
    return SharedVoi(value_range=found, keep_own=True) if found is not None else None


def _claim_stem(folder: Path, stem: str, claimed: set[tuple[Path, str]]) -> str:
    """Return stem, or stem_1, stem_2... when another input of this run took it."""
    candidate, n = stem, 0
    while (folder, candidate.lower()) in claimed:
        n += 1
        candidate = f"{stem}_{n}"
    claimed.add((folder, candidate.lower()))
    return candidate


def _claim_targets(
    folder: Path,
    base: str,
    claimed: set[tuple[Path, str]],
    targets_of: Callable[[str], list[Path]],
    *,
    keep_existing: bool,
    source: Path | None = None,
) -> list[Path]:
    """Claim a stem (_claim_stem) and return its output names.

    Beside the input a rerun replaces its own images or video. With keep_existing (in
    --output-dir, where another folder's file may have the same name) a stem whose
    outputs exist is passed over: the new ones get ``_1``, ``_2``. So is a stem with a
    file older than source: no export of it, but what it may have been made from
    (``photo.png`` of -w's ``photo.dcm``, ``clip.mp4`` of -v's ``clip.dcm``).
    """
    while True:
        targets = targets_of(_claim_stem(folder, base, claimed))
        existing = [t for t in targets if t.exists()]
        if not existing:
            return targets
        if keep_existing or (source is not None and any(_older(t, source) for t in existing)):
            continue
        return targets


def _older(path: Path, than: Path) -> bool:
    """Tell whether path was last modified before than (False when either is gone)."""
    try:
        return path.stat().st_mtime < than.stat().st_mtime
    except OSError:
        return False


def _image_targets(folder: Path, stem: str, frames: int, suffix: str) -> list[Path]:
    """Return the image names of a file: stem.png, or stem_frame0001.png... per frame."""
    if frames == 1:
        return [folder / f"{stem}{suffix}"]
    return [folder / f"{stem}_frame{i + 1:04d}{suffix}" for i in range(frames)]


def _read_sources(inputs: Sequence[Path], result: ActionResult) -> list[ExportSource]:
    """Read the headers of inputs; images without pixel data fail, other instances are
    passed over (no_pixels_reason).
    """
    readable = []
    for path, ds, location in _read_inputs(inputs, result, _no_progress):
        outcome = guarded(_exportable, path, ds, location, doing="read")
        if outcome.status != DONE:
            result.record(outcome)
            continue
        readable.append(ExportSource(path, ds, location, number_of_frames(ds), outcome.data))
    return readable


def _exportable(path: Path, ds: Dataset, location: PixelLocation | None) -> FileOutcome:
    """Check that a file's frames can be found before any is planned (NumberOfFrames may
    be absurd); an instance that is no image is skipped. data: stored_frame_spans."""
    if location is None:
        reason = no_pixels_reason(ds)
        if reason is not None:
            return FileOutcome(path, SKIPPED, reason)
        raise DicomPressorError("no (7FE0,0010) Pixel Data to export")
    check_pixel_description(ds)
    return FileOutcome(path, data=stored_frame_spans(path, ds, location))


def export_png(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Export every frame as an image: PNG, JPEG, BMP, TIFF or JPEG 2000 (IMAGE_FORMATS).

    Each grey frame goes through the Modality LUT (the frame's Pixel Value
    Transformation, (0028,3000) Modality LUT Sequence or (0028,1052)/(0028,1053) Rescale
    Intercept/Slope), then the VOI (``--window C,W``, else the frame's Frame VOI LUT, the
    first (0028,1050)/(0028,1051) window with (0028,1056) VOI LUT Function, or the
    (0028,3010) VOI LUT Sequence; with none, the range of the modality values over all
    frames of the file, pixels equal to (0028,0120) Pixel Padding Value left out, so the
    frames of one file stay comparable), MONOCHROME1 inverted. PALETTE COLOR goes
    through its palette; YBR is converted to RGB.

    With ``png_bits`` 16 a grey frame gives its modality values, unwindowed and not
    inverted, rounded to integers, plus an offset: minus the least value the file's
    BitsStored, Pixel Representation and rescale allow, or 0 when none can be negative
    (CT stored as 12-bit unsigned with intercept -1024: offset 1024, so the PNG holds the
    stored values). The PNG's ``ModalityValueOffset`` text says it (the TIFF's
    ImageDescription, the JP2's comment); values beyond 0..65535 are clipped. Colour
    frames are scaled to 0..65535 (8-bit x 257). PNG, BMP, TIFF and JPEG 2000 keep every
    value, so they hold the same pixels.

    With ``annotate`` (``-i``) (0010,0010) Patient's Name, (0010,0020) Patient ID and
    (0008,0020) Study Date are drawn at the top left of every 8-bit image
    (annotate_frame).

    Parameters
    ----------
    inputs
        DICOM files in any transfer syntax pydicom can decode.
    output_dir
        Folder for the images; None writes each beside its input.
    options
        ``window`` (center, width), ``png_bits`` (8 or 16: png, tiff, jp2 only),
        ``image_format`` (png, jpg at quality 92, bmp, tiff, jp2), ``annotate`` (not with
        16 bits), ``jobs`` (frames render in that many worker processes).

    Returns
    -------
    ActionResult
        ``<stem>.png`` (.jpg, .bmp, .tiff, .jp2) for a single frame,
        ``<stem>_frame0001.png``... for multi-frame files; beside the input an existing
        image of that name is replaced, in output_dir it is kept and the new one gets
        ``<stem>_1`` (as does a second input with the same stem in one run). Inputs are
        never modified; a file that cannot be decoded fails alone and leaves no image.
    """
    check_options(ACTIONS["export_png"], options)
    image_format = options.image_format
    result = ActionResult()
    sources = _read_sources(inputs, result)
    if not sources:
        if not result.failures:
            raise DicomPressorError("nothing to export: no DICOM images found")
        return result
    total = sum(s.frames for s in sources)
    result.info(f"Processing {len(sources)} files ({total} frames)...")
    suffix = IMAGE_FORMATS[image_format].suffix
    claimed: set[tuple[Path, str]] = set()
    plans: list[tuple[ExportSource, list[Path]]] = []
    input_set = {p.resolve() for p in inputs}
    for source in sources:
        folder = output_folder(source.path, output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        targets = _claim_targets(
            folder,
            safe_component(output_stem(source.path), default="image"),
            claimed,
            lambda stem, f=folder, n=source.frames: _image_targets(f, stem, n, suffix),
            keep_existing=output_dir is not None,
            source=source.path,
        )
        if any(t.resolve() in input_set for t in targets):
            raise DicomPressorError(f"an output name of {source.path.name} is an input's name")
        plans.append((source, targets))

    annotation = IMAGE_ANNOTATION if options.annotate else ()

    def jobs() -> Iterator[RenderJob]:
        for source, targets in plans:
            voi = _file_voi(source, options)
            yield from _frame_jobs_of(
                source, options, targets, image_format, voi=voi, annotation=annotation
            )

    outcomes = iter_ordered(_render_job, jobs(), options.jobs, progress, total, batch=FRAME_BATCH)
    for source, targets in plans:
        temps: list[str] = []
        error = None
        for _ in targets:
            outcome = next(outcomes)
            if outcome.status == DONE:
                temps.append(outcome.data)
            elif error is None:
                error = outcome.message
        if error is not None:
            for tmp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            result.fail(source.path, error)
            continue
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
        result.outputs.extend(targets)
        result.inputs_used += 1
        shown = targets[0].name if len(targets) == 1 else f"{len(targets)} images"
        result.info(f"{source.path.name} -> {shown}")
    result.info("Done.")
    return result


# ---- export: video ----


def ffmpeg_executable() -> str:
    """Return imageio-ffmpeg's bundled ffmpeg, or fail naming the pip package."""
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError) as exc:
        raise DicomPressorError(
            f"no ffmpeg for -E ({one_line(str(exc), limit=200)}): pip install imageio-ffmpeg"
        ) from exc


def _fps_text(fps: float) -> str:
    """Format a frame rate for ffmpeg: an integer, else a fraction over 1000."""
    if abs(fps - round(fps)) < 1e-6:
        return str(int(round(fps)))
    return f"{int(round(fps * 1000))}/1000"


def write_video(target: Path, frames: Iterator[bytes], width: int, height: int, fps: float) -> int:
    """Encode RGB frames to target as H.264 MP4 (yuv420p, odd sizes padded to even).

    The video is written to a temp file in target's folder and renamed over target once
    ffmpeg succeeded; return the number of frames written (none: nothing is written).
    """
    exe = ffmpeg_executable()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    tmp.open("xb").close()  # the name taken, mode 0666 less the umask, as OutputFile's
    log = tmp.with_suffix(".log")
    argv = [
        exe, "-y", "-hide_banner", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
        "-r", _fps_text(fps), "-i", "-",
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-c:v", "libx264", "-preset", "fast", "-crf", "18", "-pix_fmt", "yuv420p",
        "-movflags", "+faststart", "-f", "mp4", str(tmp),
    ]  # fmt: skip
    count = 0
    try:
        with log.open("wb") as errors:
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors
            )
            assert process.stdin is not None
            try:
                for frame in frames:
                    process.stdin.write(frame)
                    count += 1
                process.stdin.close()
            except BrokenPipeError:
                pass
            except BaseException:
                process.kill()
                process.wait()
                raise
            code = process.wait()
        if code != 0:
            text = one_line(log.read_text(errors="replace"), limit=300)
            raise DicomPressorError(f"ffmpeg failed (exit {code}): {text}")
        if count:  # not synced, like other new outputs (see OutputFile)
            os.replace(tmp, target)
        return count
    finally:
        for leftover in (tmp, log):
            with contextlib.suppress(OSError):
                leftover.unlink()


@dataclasses.dataclass
class VideoPlan:
    """One video: its name, the frames of which files, in order, and its frame rate."""

    target: Path
    parts: list[tuple[ExportSource, int]]  # (file, frame index)
    fps: float
    width: int
    height: int
    multi_frame: bool  # the frames of one multi-frame file (else one slice per file)


def _video_jobs(
    plan: VideoPlan, options: Options, voi: SharedVoi | None = None
) -> Iterator[RenderJob]:
    """Yield the render jobs of a video's frames, in order (RGB bytes, no file)."""
    annotation = VIDEO_ANNOTATION if options.annotate else ()
    if plan.multi_frame:
        source = plan.parts[0][0]
        yield from _frame_jobs_of(
            source, options, [None] * len(plan.parts), "", voi=voi, annotation=annotation
        )
        return
    for source, index in plan.parts:
        yield from _frame_jobs_of(
            source, options, [None], "", [index], voi=voi, annotation=annotation
        )


def _video_voi(plan: VideoPlan, options: Options) -> SharedVoi | None:
    """Return the one VOI of a whole video: ``--window`` (None here: every frame has it),
    else its first frame's window or VOI LUT, else the range of modality values over all
    its frames (padding left out). Colour videos have none."""
    if options.window is not None:
        return None
    with contextlib.closing(_video_jobs(plan, options)) as jobs:
        first, every = first_job(jobs)
        if first is None or not windowed(first.spec):
            return None
        if first.spec.window is not None or first.spec.voi_lut is not None:
            return SharedVoi(window=first.spec.window, voi_lut=first.spec.voi_lut)
        return SharedVoi(value_range=shared_range(every, options.jobs, len(plan.parts)))


def _video_frames(
    plan: VideoPlan, outcomes: Iterator[FileOutcome], failed: list[tuple[Path, str]]
) -> Iterator[bytes]:
    """Yield the rendered frames; a slice that failed is noted in failed and left out,
    a frame of a multi-frame file that failed stops the video.
    """
    expected = plan.width * plan.height * 3
    for (source, _), outcome in zip(plan.parts, outcomes, strict=True):
        message = outcome.message
        if outcome.status == DONE and len(outcome.data) != expected:
            message = "frame size differs from the first slice of its series"
        elif outcome.status == DONE:
            yield outcome.data
            continue
        if plan.multi_frame:
            raise DicomPressorError(message)
        failed.append((source.path, message))


def series_video_name(template: Dataset, stack_index: int, stack_count: int) -> str:
    """Return ``<Patient>_series<N>.mp4`` (``-<k>`` per extra stack of the series)."""
    patient = safe_component(str(template.get("PatientName", "") or ""), default="Patient")
    number = template.get("SeriesNumber")
    series = str(number) if number not in (None, "") else "0"
    if stack_count > 1:
        series += f"-{stack_index}"
    return f"{patient}_series{series}.mp4"


def _video_plans(
    sources: list[ExportSource], output_dir: Path | None, options: Options, result: ActionResult
) -> list[VideoPlan]:
    """One video per multi-frame file, one per stack of single-frame slices."""
    plans: list[VideoPlan] = []
    claimed: set[tuple[Path, str]] = set()
    singles: list[Slice] = []
    by_path = {s.path: s for s in sources}

    def video_target(folder: Path, base: str, source: Path) -> Path:
        (target,) = _claim_targets(
            folder,
            base,
            claimed,
            lambda stem: [folder / f"{stem}.mp4"],
            keep_existing=output_dir is not None,
            source=source,
        )
        return target

    for source in sources:
        if source.frames == 1:
            singles.append(make_slice(source.path, source.header, source.location))
            continue
        folder = output_folder(source.path, output_dir)
        target = video_target(
            folder, safe_component(output_stem(source.path), default="video"), source.path
        )
        plans.append(
            VideoPlan(
                target,
                [(source, i) for i in range(source.frames)],
                _frame_rate(source.header, options),
                int(source.header.Columns),
                int(source.header.Rows),
                True,
            )
        )
    stacks = group_into_stacks(singles)
    per_series: dict[str, int] = {}
    for uid, _ in stacks:
        per_series[uid] = per_series.get(uid, 0) + 1
    seen: dict[str, int] = {}
    for uid, members in stacks:
        seen[uid] = seen.get(uid, 0) + 1
        order = sort_slices(members)
        for note in order.notes:
            result.warn(f"series {uid}: {note}")
        first = order.slices[0]
        folder = output_folder(first.path, output_dir)
        name = series_video_name(first.header, seen[uid], per_series[uid])
        target = video_target(folder, name[: -len(".mp4")], first.path)
        plans.append(
            VideoPlan(
                target,
                [(by_path[s.path], 0) for s in order.slices],
                _frame_rate(first.header, options),
                int(first.header.Columns),
                int(first.header.Rows),
                False,
            )
        )
    return plans


def _export_video_stream(path: Path, source: ExportSource, target: Path) -> FileOutcome:
    """Export a video-syntax file's stream as MP4 without re-encoding it.

    An MP4 stream (what -v stores) is written as it is; another container (MPEG-TS) is
    copied into MP4 by ffmpeg. An existing video of that name is replaced, as -E does.
    """
    assert source.location is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    stream = video_stream_path(path, source.location, target.parent)
    try:
        with stream.open("rb") as handle:
            is_mp4 = handle.read(8)[4:8] == b"ftyp"
        if not is_mp4:
            remuxed = temp_path(target)
            try:
                run_ffmpeg(
                    [video_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                     "-i", str(stream), "-map", "0:v:0", "-c:v", "copy", "-movflags",
                     "+faststart", "-f", "mp4", str(remuxed)],
                    doing="copy the video stream into MP4",
                )  # fmt: skip
                os.replace(remuxed, stream)
            finally:
                with contextlib.suppress(OSError):
                    remuxed.unlink()
        os.replace(stream, target)
    finally:
        with contextlib.suppress(OSError):
            stream.unlink()
    message = f"{uid_name(transfer_syntax_of(source.header))} stream copied -> {target.name}"
    return FileOutcome(path, DONE, message, (target,))


def export_video(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Export MP4 videos (H.264, yuv420p) through imageio-ffmpeg's bundled ffmpeg.

    Frames are rendered as ``export_png`` renders 8-bit images (same modality,
    MONOCHROME1, palette and YBR handling), in ``options.jobs`` worker processes, and
    piped to ffmpeg as RGB; odd sizes are padded to even with black. A video has one VOI:
    ``--window``, else its first frame's window or VOI LUT, else the range of the
    modality values over all its frames (padding left out), so brightness changes
    between frames stay visible. A stored MPEG-4 stream is copied as it is, unless
    ``annotate`` (``-e``) draws (0010,0010) Patient's Name and (0010,0020) Patient ID at
    the top left of every frame: then it is decoded, drawn on and encoded again.

    Parameters
    ----------
    inputs
        DICOM files: each multi-frame file gives one video; single-frame slices are
        grouped like merge groups them (series, then consistent stacks) and each stack
        gives one video of its slices in spatial order.
    output_dir
        Folder for the videos; None writes each beside its (first) input.
    options
        ``fps``: the frame rate when the file states none ((0018,1063) Frame Time as
        1000/FrameTime, (0018,1065) Frame Time Vector as 1000 over the mean of its values
        after the first, (0018,0040) Cine Rate, (0008,2144) Recommended Display Frame
        Rate); default 10. ``window``, ``annotate``, ``jobs``.

    Returns
    -------
    ActionResult
        ``<stem>.mp4`` per multi-frame file, ``<Patient>_series<N>.mp4`` per series of
        slices (``-<k>`` per extra stack); an existing video of that name is replaced.
        A multi-frame file with an undecodable frame fails and leaves no video; an
        undecodable slice fails alone and its series' video goes on without it.
    """
    check_options(ACTIONS["export_video"], options)
    ffmpeg_executable()
    result = ActionResult()
    sources = _read_sources(inputs, result)
    if not sources:
        if not result.failures:
            raise DicomPressorError("nothing to export: no DICOM images found")
        return result
    plans = _video_plans(sources, output_dir, options, result)
    total = sum(len(p.parts) for p in plans)
    result.info(f"Processing {len(sources)} files into {len(plans)} video(s)...")
    done = 0
    for plan in plans:
        source = plan.parts[0][0]
        stream = plan.multi_frame and str(transfer_syntax_of(source.header)) in VIDEO_SYNTAXES
        if stream and not options.annotate:  # annotated: decoded, drawn on, encoded again
            result.record(
                guarded(_export_video_stream, source.path, source, plan.target, doing="export")
            )
            done += len(plan.parts)
            continue
        failed: list[tuple[Path, str]] = []
        outcomes = iter_ordered(
            _render_job,
            _video_jobs(plan, options, _video_voi(plan, options)),
            options.jobs,
            lambda n, _, start=done: progress(start + n, total),
            len(plan.parts),
        )
        try:
            count = write_video(
                plan.target,
                _video_frames(plan, outcomes, failed),
                plan.width,
                plan.height,
                plan.fps,
            )
        except DicomPressorError as exc:
            count = 0
            if plan.multi_frame:
                failed = [(plan.parts[0][0].path, exc.message)]
            elif not failed:
                failed = [(source.path, exc.message) for source, _ in plan.parts]
        done += len(plan.parts)
        for path, message in failed:
            result.fail(path, message)
        if count == 0:
            continue
        result.outputs.append(plan.target)
        result.inputs_used += len(plan.parts) - len(failed) if not plan.multi_frame else 1
        result.info(f"{count} frames at {plan.fps:.4g} fps -> {plan.target.name}")
    result.info("Done.")
    return result


# ---- info and summary ----


class InfoRecord(TypedDict):
    """The shape of ``--info --json`` for one file."""

    file: str
    patient: dict[str, str]
    study: dict[str, str]
    series: dict[str, str]
    modality: str
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    bits_stored: int | None
    frames: int
    transfer_syntax: dict[str, str]
    sop_class: dict[str, str]
    photometric_interpretation: str
    compressed: bool
    geometry: dict[str, Any]


def _text(ds: Dataset, keyword: str) -> str:
    """Return an attribute as text ('' when absent)."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def geometry_of(ds: Dataset) -> dict[str, Any]:
    """Describe where the frames lie: orientation, first/last position, spacing."""
    geometry: dict[str, Any] = {}
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    flat_first, flat_last = Dataset(), Dataset()
    _flatten_groups(flat_first, shared[0] if shared else None)
    _flatten_groups(flat_last, shared[0] if shared else None)
    if per_frame:
        _flatten_groups(flat_first, per_frame[0])
        _flatten_groups(flat_last, per_frame[-1])
    for source in (ds, flat_first):
        for key, keyword in (
            ("orientation", "ImageOrientationPatient"),
            ("pixel_spacing", "PixelSpacing"),
            ("slice_thickness", "SliceThickness"),
            ("first_position", "ImagePositionPatient"),
        ):
            value = _floats(source.get(keyword))
            if value is not None and key not in geometry:
                geometry[key] = value[0] if key == "slice_thickness" else value
    last = _floats(flat_last.get("ImagePositionPatient"))
    if last is not None and per_frame and len(per_frame) > 1:
        geometry["last_position"] = last
    if "FrameOfReferenceUID" in ds:
        geometry["frame_of_reference_uid"] = str(ds.FrameOfReferenceUID)
    return geometry


def info_record(path: Path) -> InfoRecord:
    """Read one file and describe it for ``--info``."""
    ds, _ = read_header(path)
    syntax = transfer_syntax_of(ds)
    sop_class = str(ds.get("SOPClassUID", ""))
    return InfoRecord(
        file=str(path),
        patient={"name": _text(ds, "PatientName"), "id": _text(ds, "PatientID")},
        study={
            "instance_uid": _text(ds, "StudyInstanceUID"),
            "date": _text(ds, "StudyDate"),
            "description": _text(ds, "StudyDescription"),
        },
        series={
            "instance_uid": _text(ds, "SeriesInstanceUID"),
            "number": _text(ds, "SeriesNumber"),
            "description": _text(ds, "SeriesDescription"),
        },
        modality=_text(ds, "Modality"),
        rows=_int_or_none(ds.get("Rows")),
        columns=_int_or_none(ds.get("Columns")),
        bits_allocated=_int_or_none(ds.get("BitsAllocated")),
        bits_stored=_int_or_none(ds.get("BitsStored")),
        frames=number_of_frames(ds),
        transfer_syntax={"uid": str(syntax), "name": uid_name(syntax)},
        sop_class={"uid": sop_class, "name": uid_name(sop_class) if sop_class else ""},
        photometric_interpretation=_text(ds, "PhotometricInterpretation"),
        compressed=bool(syntax.is_compressed),
        geometry=geometry_of(ds),
    )


def format_info(record: InfoRecord) -> list[str]:
    """Render an info record as aligned text lines."""
    geometry = record["geometry"]

    def fmt(values: Any) -> str:
        if isinstance(values, list):
            return "\\".join(f"{v:g}" for v in values)
        return f"{values:g}" if isinstance(values, float) else str(values)

    patient, study, series = record["patient"], record["study"], record["series"]
    syntax, sop_class = record["transfer_syntax"], record["sop_class"]
    pairs = [
        ("File", record["file"]),
        ("Patient", f"{patient['name']} (ID {patient['id']})"),
        ("Study", f"{study['date']} {study['description']}".strip()),
        ("Study UID", study["instance_uid"]),
        ("Series", f"#{series['number']} {series['description']}".strip()),
        ("Series UID", series["instance_uid"]),
        ("Modality", record["modality"]),
        ("SOP class", f"{sop_class['name']} ({sop_class['uid']})"),
        ("Size", f"{record['rows']} x {record['columns']} (rows x columns)"),
        ("Bits", f"{record['bits_stored']} stored / {record['bits_allocated']} allocated"),
        ("Frames", str(record["frames"])),
        ("Photometric", record["photometric_interpretation"]),
        ("Transfer syntax", f"{syntax['name']} ({syntax['uid']})"),
        ("Compressed", "yes" if record["compressed"] else "no"),
    ]
    lines = [f"{label + ':':<20}{value}" for label, value in pairs]
    labels = {
        "orientation": "Orientation",
        "first_position": "First position",
        "last_position": "Last position",
        "pixel_spacing": "Pixel spacing",
        "slice_thickness": "Slice thickness",
        "frame_of_reference_uid": "Frame of reference",
    }
    for key, label in labels.items():
        if key in geometry:
            lines.append(f"{label + ':':<20}{fmt(geometry[key])}")
    return lines


def info(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Describe each file: patient, study, series, pixels, syntax, SOP class, geometry.

    Parameters
    ----------
    inputs
        DICOM files.
    output_dir, options
        Unused: info writes no file.

    Returns
    -------
    ActionResult
        ``report`` holds the text, ``data["files"]`` the records; no outputs.
    """
    result = ActionResult()
    records = []
    for index, path in enumerate(inputs, 1):
        outcome = guarded(lambda p: FileOutcome(p, data=info_record(p)), path, doing="read")
        result.record(outcome)
        if outcome.status == DONE:
            records.append(outcome.data)
            if result.report:
                result.report.append("")
            result.report.extend(format_info(outcome.data))
        progress(index, len(inputs))
    result.data["files"] = records
    return result


def _summary_entry(path: Path) -> FileOutcome:
    """Read what summary counts of one file: (size, its keys, frames)."""
    size = path.stat().st_size
    ds, _ = read_header(path)
    keys = (
        f"{_text(ds, 'PatientName')} ({_text(ds, 'PatientID')})",
        _text(ds, "StudyInstanceUID"),
        _text(ds, "SeriesInstanceUID"),
        _text(ds, "Modality") or "?",
        uid_name(transfer_syntax_of(ds)),
    )
    return FileOutcome(path, data=(size, keys, number_of_frames(ds)))


def summary(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Count files per patient, study, series, modality and transfer syntax.

    Parameters
    ----------
    inputs
        Files of a folder (tree); unreadable ones are counted and listed, not failed.
    output_dir, options
        Unused: summary writes no file.

    Returns
    -------
    ActionResult
        ``report`` holds the text, ``data`` the counts; no outputs.
    """
    result = ActionResult()
    counters: dict[str, Counter[str]] = {
        k: Counter() for k in ("patients", "studies", "series", "modalities", "transfer_syntaxes")
    }
    total_bytes = 0
    frames = 0
    bad_files: list[dict[str, str]] = []
    for index, path in enumerate(inputs, 1):
        outcome = guarded(_summary_entry, path, doing="read")
        if outcome.status == FAILED:  # a malformed file is listed, not a failure
            bad_files.append({"file": str(path), "error": outcome.message})
            progress(index, len(inputs))
            continue
        size, keys, count = outcome.data
        total_bytes += size
        frames += count
        for name, key in zip(
            ("patients", "studies", "series", "modalities", "transfer_syntaxes"), keys, strict=True
        ):
            counters[name][key] += 1
        result.inputs_used += 1
        progress(index, len(inputs))
    data: dict[str, Any] = {
        "files": result.inputs_used,
        "frames": frames,
        "total_bytes": total_bytes,
        "patients": len(counters["patients"]),
        "studies": len(counters["studies"]),
        "series": len(counters["series"]),
        "per_patient": dict(sorted(counters["patients"].items())),
        "per_study": dict(sorted(counters["studies"].items())),
        "per_series": dict(sorted(counters["series"].items())),
        "per_modality": dict(sorted(counters["modalities"].items())),
        "per_transfer_syntax": dict(sorted(counters["transfer_syntaxes"].items())),
        "unreadable": bad_files,
    }
    result.data = data
    lines = [
        f"DICOM files:        {data['files']} ({frames} frames, {total_bytes / 1048576:.1f} MB)",
        f"Patients:           {data['patients']}",
        f"Studies:            {data['studies']}",
        f"Series:             {data['series']}",
        f"Unreadable files:   {len(bad_files)}",
    ]
    for title, key in (
        ("Per modality", "per_modality"),
        ("Per transfer syntax", "per_transfer_syntax"),
        ("Per patient", "per_patient"),
        ("Per study", "per_study"),
        ("Per series", "per_series"),
    ):
        lines.append(f"{title}:")
        lines.extend(f"  {name or '(none)'}: {count}" for name, count in data[key].items())
    if bad_files:
        lines.append("Unreadable:")
        lines.extend(f"  {u['file']}: {u['error']}" for u in bad_files)
    result.report = lines
    return result


# ---- conversions: Part 10, bare datasets, byte order ----


def _each_file(
    inputs: Sequence[Path],
    progress: ProgressFn,
    convert: Callable[[Path], FileOutcome],
    doing: str,
    result: ActionResult | None = None,
) -> ActionResult:
    """Run convert on each input under one guard each; record the outcomes."""
    result = result if result is not None else ActionResult()
    for index, path in enumerate(inputs, 1):
        result.record(guarded(convert, path, doing=doing))
        progress(index, len(inputs))
    result.info("Done.")
    return result


def _add_identity(ds: Dataset) -> list[str]:
    """Add the UIDs a Part 10 file and every IOD need when a dataset lacks them; name them.

    ACR-NEMA 2.0 had no UIDs: the SOP class comes from the Modality (SOP_CLASS_OF_MODALITY,
    else Secondary Capture), the instance, study and series UIDs are new.
    """
    added = []
    if not ds.get("SOPClassUID"):
        modality = str(ds.get("Modality", "") or "").strip().upper()
        ds.SOPClassUID = UID(SOP_CLASS_OF_MODALITY.get(modality, SECONDARY_CAPTURE))
        source = f"Modality {modality}" if modality else "no Modality"
        added.append(f"(0008,0016) SOP Class UID {uid_name(ds.SOPClassUID)} ({source})")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            setattr(ds, keyword, new_uid())
            added.append(f"{_tag_text(int(tag_for_keyword(keyword)))} {keyword} (new)")
    return added


def _part10_file(path: Path, output_dir: Path | None, options: Options) -> FileOutcome:
    """Make a Part 10 file of a bare dataset (see to_part10)."""
    if has_dicm_prefix(path):
        return FileOutcome(path, SKIPPED, "already a Part 10 file (preamble, DICM, File Meta)")
    data = path.read_bytes()
    implicit, little = bare_encoding(data)
    ds = pydicom.filereader.read_dataset(io.BytesIO(data), implicit, little)
    notes = []
    added = _add_identity(ds)
    if added:
        notes.append("the dataset had no " + ", ".join(added) + ": added")
    syntax = ENCODING_SYNTAX.get((implicit, little))
    if syntax is None:  # implicit VR big endian (old ACR-NEMA machines): no DICOM syntax
        syntax = EXPLICIT_VR_LE
        body = recode_dataset(ds, implicit=False, little=True, source_little=False)
        notes.append(
            "Implicit VR Big Endian is no DICOM transfer syntax: re-encoded as Explicit VR "
            "Little Endian (16-bit values byte-swapped)"
        )
    elif added:
        body = recode_dataset(ds, implicit=implicit, little=little, source_little=little)
    else:
        body = data  # the dataset as it is, byte for byte
    target = output_path(path, output_dir, suffix=PART10_SUFFIX, in_place=options.in_place)
    output = OutputFile(target, replace=options.in_place)
    with output as handle:
        handle.write(part10_bytes(ds, body, UID(syntax)))
    assert output.path is not None
    message = f"{path.name} -> {output.path.name}: Part 10 file, {uid_name(UID(syntax))}"
    return FileOutcome(path, DONE, message, (output.path,), named(path, notes))


def to_part10(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Make DICOM Part 10 files of ACR-NEMA 2.0 files and bare datasets (no preamble, no meta).

    The encoding is told from the data (bare_encoding: implicit or explicit VR, little or
    big endian, the whole file read as a dataset); the dataset is written after a
    preamble, ``DICM`` and File Meta Information whose (0002,0002)/(0002,0003) are its
    SOP Class and Instance UIDs and (0002,0010) the syntax found. Its bytes stay as they
    are, unless it lacks (0008,0016) SOP Class UID, (0008,0018) SOP Instance UID, Study
    or Series Instance UID (ACR-NEMA 2.0 has none; they are added, with a warning) or is
    Implicit VR Big Endian (no DICOM syntax: it becomes Explicit VR Little Endian).

    Returns
    -------
    ActionResult
        ``<stem>_dcm3.dcm`` per file (the input itself, atomically, with ``in_place``);
        Part 10 inputs are passed over; a file that is no dataset fails, in words.
    """
    check_options(ACTIONS["to_part10"], options)
    return _each_file(
        inputs,
        progress,
        lambda path: _part10_file(path, output_dir, options),
        "make a Part 10 file",
    )


def meta_end(data: bytes) -> int:
    """Return where the File Meta group of a Part 10 file's bytes ends (the dataset starts)."""
    pos = 132
    while pos + 8 <= len(data):
        tag, vr, length, start = explicit_element_header(data, pos)
        if tag >> 16 != 0x0002:
            return pos
        if vr is None:
            raise DicomPressorError(f"damaged File Meta: no VR at offset {pos}")
        pos = start + length
    return pos


def _decompressed_copy(
    path: Path, folder: Path, options: Options, read: tuple[Dataset, PixelLocation | None]
) -> Path:
    """Decompress a file to Explicit VR Little Endian in folder (as -u does); return it.

    read: read_header(path).
    """
    mode = TranscodeMode("decompress", None, "")
    each = dataclasses.replace(options, in_place=False)
    outcome = transcode_file(path, mode, folder, each, _no_progress, None, read)
    return outcome.outputs[0]


def _bare_file(path: Path, output_dir: Path | None, options: Options) -> FileOutcome:
    """Write the dataset of a Part 10 file without preamble and meta (see to_bare_dataset)."""
    header, location = read_header(path)
    check_integrity(header, location)
    syntax = transfer_syntax_of(header)
    target = output_path(path, output_dir, suffix=BARE_SUFFIX, in_place=options.in_place)
    notes = []
    if syntax == ImplicitVRLittleEndian:
        data = path.read_bytes()
        body = data[meta_end(data) :]  # byte for byte
    elif syntax.is_encapsulated:
        with tempfile.TemporaryDirectory(prefix=".dicompressor-", dir=target.parent) as tmp:
            copy = _decompressed_copy(path, Path(tmp), options, (header, location))
            native = pydicom.dcmread(copy)
        body = recode_dataset(native, implicit=True, little=True)
        notes.append(f"{uid_name(syntax)} decompressed: a bare dataset holds native pixels")
    else:
        body = recode_dataset(pydicom.dcmread(path), implicit=True, little=True)
    output = OutputFile(target, replace=options.in_place)
    with output as handle:
        handle.write(body)
    assert output.path is not None
    message = (
        f"{path.name} -> {output.path.name}: bare Implicit VR Little Endian dataset "
        "(no preamble, no File Meta)"
    )
    return FileOutcome(path, DONE, message, (output.path,), named(path, notes))


def to_bare_dataset(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Write each file's dataset as ACR-NEMA 2.0 readers read it: Implicit VR Little Endian.

    No preamble, no ``DICM``, no File Meta (group 0002): the dataset alone, as a bare
    DICOM dataset and the ACR-NEMA 2.0 file form are stored (unlike the original's -n,
    which wrote a whole Part 10 file). An Implicit VR Little Endian dataset is copied
    byte for byte; others are re-encoded value for value (recode_dataset), compressed
    pixels decompressed first. ``-p`` gives the same dataset back.

    Returns
    -------
    ActionResult
        ``<stem>_nema2.dcm`` per file (the input itself, atomically, with ``in_place``).
    """
    check_options(ACTIONS["to_bare_dataset"], options)
    return _each_file(
        inputs,
        progress,
        lambda path: _bare_file(path, output_dir, options),
        "write a bare dataset",
    )


def _byte_order_file(
    path: Path, output_dir: Path | None, options: Options, *, little: bool
) -> FileOutcome:
    """Convert one file to Explicit VR Little or Big Endian (see to_little_endian)."""
    header, location = read_header(path)
    syntax = transfer_syntax_of(header)
    wanted = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    suffix = LE_SUFFIX if little else BE_SUFFIX
    if syntax == wanted:
        return FileOutcome(path, DONE, f"{path.name}: left alone, already {uid_name(wanted)}")
    check_integrity(header, location)
    target = output_path(path, output_dir, suffix=suffix, in_place=options.in_place)
    if syntax.is_encapsulated:
        if not little:
            raise DicomPressorError(
                f"{uid_name(syntax)} is compressed: Explicit VR Big Endian holds only native "
                "pixels; decompress first (-u, or -l for Little Endian)"
            )
        mode = TranscodeMode("to_little_endian", None, LE_SUFFIX)
        read = (header, location)
        return transcode_file(path, mode, output_dir, options, _no_progress, None, read)
    if target != path and (earlier := _earlier_output(target, header)) is not None:
        return FileOutcome(path, DONE, f"{path.name}: left alone, {earlier.name} exists")
    ds = pydicom.dcmread(path)
    body = recode_dataset(ds, implicit=False, little=little)
    output = OutputFile(target, replace=options.in_place)
    with output as handle:
        handle.write(part10_bytes(ds, body, wanted))
    assert output.path is not None
    message = f"{path.name} -> {output.path.name}: {uid_name(syntax)} to {uid_name(wanted)}"
    return FileOutcome(path, DONE, message, (output.path,))


def to_little_endian(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Convert any native syntax to Explicit VR Little Endian; decompress compressed files.

    Values are re-encoded one by one (recode_dataset): numbers and OW, OF, OL, OD and OV
    values (16-bit Pixel Data among them) byte-swapped from big endian, OB (8-bit Pixel
    Data) and text left as they are; implicit VRs are made explicit from the dictionary.
    Compressed files are decompressed as -u does. A file already in Explicit VR Little
    Endian is left alone.

    Returns
    -------
    ActionResult
        ``<stem>_le.dcm`` per file (the input itself, atomically, with ``in_place``), with
        (0002,0010) Transfer Syntax UID 1.2.840.10008.1.2.1 and the dataset otherwise the
        same.
    """
    check_options(ACTIONS["to_little_endian"], options)
    return _each_file(
        inputs,
        progress,
        lambda path: _byte_order_file(path, output_dir, options, little=True),
        "convert to Explicit VR Little Endian",
    )


def to_big_endian(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Convert any native syntax to Explicit VR Big Endian (retired: a warning says so).

    As to_little_endian, the other way; compressed files are refused in words (the big
    endian syntax holds native pixels only).

    Returns
    -------
    ActionResult
        ``<stem>_be.dcm`` per file (the input itself, atomically, with ``in_place``), with
        (0002,0010) Transfer Syntax UID 1.2.840.10008.1.2.2.
    """
    check_options(ACTIONS["to_big_endian"], options)
    result = ActionResult()
    result.warn(
        "Explicit VR Big Endian is retired (PS3.5 A.3, since 2004): many readers no "
        "longer take it; -l converts back"
    )
    return _each_file(
        inputs,
        progress,
        lambda path: _byte_order_file(path, output_dir, options, little=False),
        "convert to Explicit VR Big Endian",
        result,
    )


# ---- DICOMDIR in the parent folder ----


def _check_replaceable(target: Path, root: Path) -> None:
    """Refuse to replace a DICOMDIR that lists files outside root (another folder's)."""
    if not target.exists():
        return
    load_toolkit()
    try:
        records = pydicom.dcmread(target).get("DirectoryRecordSequence", [])
        ids = [_as_list(r.get("ReferencedFileID")) for r in records if "ReferencedFileID" in r]
    except Exception as exc:  # not a DICOMDIR we can read: never replace it blind
        raise DicomPressorError(
            f"{target} exists and is no DICOMDIR that can be read ({type(exc).__name__}): "
            "not replaced"
        ) from exc
    outside = sorted({"/".join(str(p) for p in i) for i in ids if i and str(i[0]) != root.name})
    if outside:
        raise DicomPressorError(
            f"{target} lists files outside {root.name}/ ({outside[0]}"
            + (f" and {len(outside) - 1} more" if len(outside) > 1 else "")
            + "): not replaced; remove it first, or use -d for a DICOMDIR in the folder"
        )


def dicomdir_parent(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Make a DICOMDIR in the parent folder of the given folder, for every file under it.

    This is the CD layout: ``<parent>/DICOMDIR`` references ``<FOLDER>/<...>/<FILE>``.

    Parameters
    ----------
    inputs
        Every DICOM file under one folder (a whole-tree action).
    output_dir
        None: when the folder's name and every path below it are conformant File IDs
        (up to 8 components of up to 8 characters A-Z 0-9 _), the DICOMDIR is written in
        the parent folder and references the files where they are (a DICOMDIR there that
        lists other files is not replaced); otherwise a conformant copy is made beside
        the folder in ``<folder>_DICOMDIR/`` (DICOMDIR plus PT000000/ST000000/...), as -d
        makes it. Given: that copy is made in ``output_dir/<folder>_DICOMDIR/``.
    options
        ``tree_root``: the folder given (None: the folder holding every input).

    Returns
    -------
    ActionResult
        The DICOMDIR (a Media Storage Directory instance with PATIENT, STUDY, SERIES and
        IMAGE records) and, for a copy, the copied files. Inputs are never changed.
    """
    check_options(ACTIONS["dicomdir_parent"], options)
    if not inputs:
        raise DicomPressorError("no DICOM files to put in a DICOMDIR")
    common = Path(os.path.commonpath([str(p.parent) for p in inputs]))
    root = Path(options.tree_root) if options.tree_root is not None else common
    if common != root and root not in common.parents:
        raise DicomPressorError(f"the files are not under {root}")
    top = root.parent
    result = ActionResult()
    found = directory_entries(inputs, top, result, progress)
    texts = (
        "",
        f"{top}",
        f" under {root.name}/",
        f"{root.name}/ and the names below it must be conformant File IDs "
        "(<= 8 characters A-Z 0-9 _) to be referenced in place",
    )
    return _write_dicomdir(
        result,
        found,
        root,
        output_dir,
        top / "DICOMDIR",
        texts,
        lambda target: _check_replaceable(target, root),
    )


# ---- conversions: images and videos to DICOM ----


def _each_new_instance(
    inputs: Sequence[Path],
    params: str | None,
    progress: ProgressFn,
    convert: Callable[[Path, NewSeries, int], FileOutcome],
    doing: str,
) -> ActionResult:
    """Convert each input in name order into one new series (new_series(params)), passing
    convert its Instance Number: its place in that order, counted from 1."""
    series = new_series(params)
    order = sorted(inputs, key=natural_key)
    numbers: dict[Path, int] = {}
    for number, path in enumerate(order, 1):
        numbers.setdefault(path, number)  # the same file twice: its first place
    return _each_file(order, progress, lambda path: convert(path, series, numbers[path]), doing)


def _image_file(
    path: Path, series: NewSeries, number: int, output_dir: Path | None
) -> FileOutcome:
    """Make one single-frame Secondary Capture of an image (see image_to_dicom)."""
    pixels = read_image(path)
    ds = new_instance(
        SECONDARY_CAPTURE,
        series,
        number=number,
        modality="OT",
        conversion="WSD",
        created_s=path.stat().st_mtime,
    )
    ds.ImageType = ["DERIVED", "SECONDARY"]
    rows, columns = pixels.array.shape[:2]
    set_pixel_description(ds, rows, columns, colour=pixels.colour, bits=pixels.bits)
    finish_new_instance(ds, series)
    target = output_path(path.with_suffix(""), output_dir)
    output = OutputFile(target, replace=False)
    with output as handle:
        write_header(handle, ds, ExplicitVRLittleEndian)
        write_native_frames(
            handle, [pixels.frame_bytes()], len(pixels.frame_bytes()), 1, pixels.bits
        )
    assert output.path is not None
    message = f"{path.name} -> {output.path.name}: {pixels.kind}, {pixels.size}"
    return FileOutcome(path, DONE, message, (output.path,), named(path, pixels.notes))


def image_to_dicom(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Make a Secondary Capture Image (PS3.3 A.8.1) of each image: ``<stem>.dcm``.

    A single image is a single-frame instance, so the SC Image IOD (A.8.1), which every
    archive and viewer takes, rather than a one-frame multi-frame SC (A.8.2-A.8.5, the
    classes -W uses). Grey images stay MONOCHROME2 at 8 or 16 bits, colour stays RGB (see
    read_image). The images of one call (one folder) form one study with one series:
    (0020,000D) Study and (0020,000E) Series Instance UID are shared, (0020,0013)
    Instance Number counts in name order; (0008,0064) Conversion Type is WSD, Modality OT.

    Parameters
    ----------
    inputs
        PNG, JPEG, BMP, TIFF or JPEG 2000 files.
    output_dir
        Folder for the DICOM files; None writes each beside its image. An existing file of
        that name is kept and the new one gets ``_1``, ``_2``.
    options
        ``params``: --params text whose lines set patient, study and series values
        (anything but the pixel description and the SOP Class and Instance UIDs).
    """
    check_options(ACTIONS["image_to_dicom"], options)
    return _each_new_instance(
        inputs,
        options.params,
        progress,
        lambda path, series, number: _image_file(path, series, number, output_dir),
        "convert the image",
    )


def _read_pixels(path: Path, read: Callable[[Path], ImagePixels]) -> FileOutcome:
    """Read an image's pixels with read; data: the ImagePixels."""
    return FileOutcome(path, data=read(path))


def _frame_check(path: Path, first: tuple[Path, ImagePixels]) -> ImagePixels:
    """Read an image that is to be a frame; refuse it by name when it does not match the first."""
    pixels = read_image(path)
    name, model = first[0].name, first[1]
    if pixels.array.shape[:2] != model.array.shape[:2]:
        raise DicomPressorError(
            f"{pixels.size} pixels, the first image ({name}) has {model.size}: the frames of "
            "one file must have one size (images are not resized)"
        )
    if pixels.kind != model.kind:
        raise DicomPressorError(
            f"{pixels.kind} pixels, the first image ({name}) is {model.kind}: the frames of "
            "one file must be alike"
        )
    return pixels


def images_to_multiframe(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Make one multi-frame Secondary Capture of a folder's images: ``multiframe.dcm``.

    The class fits the pixels (PS3.3 A.8.3-A.8.5): Multi-frame Grayscale Byte SC for
    8-bit grey, Grayscale Word SC for 16-bit grey, True Color SC for RGB. Frames are the
    images in name order, numbers compared as numbers (img2 before img10), (0018,2001)
    Page Number Vector counting them and (0028,0009) Frame Increment Pointer naming it.
    An image of another size or kind than the first is refused by name (not resized)
    and the others make the file. The folder's file is one study with one series.

    Parameters
    ----------
    inputs
        The images of one folder (a per-folder action).
    output_dir
        Folder for the file; None writes it in the images' folder (``multiframe_1.dcm``
        when the name is taken).
    options
        ``params`` as for image_to_dicom.
    """
    check_options(ACTIONS["images_to_multiframe"], options)
    series = new_series(options.params)
    result = ActionResult()
    frames: list[Path] = []
    first: tuple[Path, ImagePixels] | None = None
    order = sorted(inputs, key=natural_key)
    for index, path in enumerate(order, 1):  # pass 1: check every image, keep none
        check = read_image if first is None else functools.partial(_frame_check, first=first)
        outcome = guarded(_read_pixels, path, check, doing="read the image")
        if outcome.status == DONE:
            first = first or (path, outcome.data)
            frames.append(path)
            outcome = FileOutcome(path, DONE, warnings=named(path, outcome.data.notes))
        result.record(outcome)
        progress(index, 2 * len(order))
    if first is None:
        return result
    model = first[1]
    sop_class = multiframe_sc_class(colour=model.colour, bits=model.bits)
    ds = new_instance(sop_class, series, number=1, modality="OT", conversion="WSD",
                      created_s=first[0].stat().st_mtime)  # fmt: skip
    rows, columns = model.array.shape[:2]
    set_pixel_description(ds, rows, columns, colour=model.colour, bits=model.bits)
    add_multiframe_sc(ds, len(frames), pointer="PageNumberVector")
    finish_new_instance(ds, series)
    folder = order[0].parent
    output = OutputFile(output_folder(folder / MULTIFRAME_NAME, output_dir) / MULTIFRAME_NAME,
                        replace=False)  # fmt: skip
    frame_bytes = len(model.frame_bytes())

    def pixels() -> Iterator[bytes]:  # pass 2: one image in memory at a time
        for index, path in enumerate(frames, 1):
            yield _frame_check(path, first).frame_bytes()
            progress(len(order) + index, 2 * len(order))

    with output as handle:
        write_header(handle, ds, ExplicitVRLittleEndian)
        write_native_frames(handle, pixels(), frame_bytes, len(frames), model.bits)
    assert output.path is not None
    result.outputs.append(output.path)
    result.info(
        f"{len(frames)} images ({model.kind}, {model.size}) -> {output.path.name}: "
        f"{uid_name(sop_class)}"
    )
    result.info("Done.")
    return result


def video_has_audio(exe: str, path: Path) -> bool:
    """Tell whether ffmpeg lists an audio stream in a video file."""
    proc = subprocess.run(
        [exe, "-hide_banner", "-nostdin", "-i", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    return any(
        " Audio: " in line and line.lstrip().startswith("Stream ")
        for line in proc.stderr.decode("utf-8", "replace").splitlines()
    )


def _remux_mp4(exe: str, source: Path, target: Path) -> str | None:
    """Copy the first video stream of source into an MP4 at target, without re-encoding.

    Metadata (titles, places, the encoder) and other streams are left out; the moov box
    goes first. Returns None, or why the stream cannot go into MP4 (ffmpeg's words).
    """
    argv = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
            "-map", "0:v:0", "-c:v", "copy", "-an", "-sn", "-dn", "-map_metadata", "-1",
            "-movflags", "+faststart", "-f", "mp4", str(target)]  # fmt: skip
    try:
        run_ffmpeg(argv, doing="copy the video stream")
    except DicomPressorError as exc:
        return exc.message
    return None


def _video_dataset(
    sop_class: str,
    series: NewSeries,
    number: int,
    modality: str,
    created_s: float,
    *,
    rows: int,
    columns: int,
    frames: int,
    frame_time_ms: float,
) -> Dataset:
    """Start a video instance: the common modules, Cine (C.7.6.5) and Multi-frame (C.7.6.6)."""
    ds = new_instance(
        sop_class,
        series,
        number=number,
        modality=modality,
        conversion="DV",
        created_s=created_s,
        secondary_capture=sop_class == MF_TRUE_COLOR_SC,
    )
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = ds_text(frame_time_ms)
    ds.CineRate = max(1, round(1000.0 / frame_time_ms))
    ds.RecommendedDisplayFrameRate = ds.CineRate
    ds.Rows, ds.Columns = rows, columns
    return ds


def _copied_video(
    path: Path,
    stream: Path,
    syntax: str,
    sps: H264Parameters,
    track: VideoTrack,
    target: Path,
    series: NewSeries,
    number: int,
    options: Options,
) -> FileOutcome:
    """Write a Video Photographic (or Endoscopic) instance holding the MP4 stream as is."""
    size = stream.stat().st_size
    if size > MAX_FRAGMENT_BYTES:
        raise DicomPressorError(
            f"the video stream has {size} bytes; one fragment holds at most "
            f"{MAX_FRAGMENT_BYTES} (PS3.5 8.2.7): split the video"
        )
    modality = options.modality
    ds = _video_dataset(
        VIDEO_SOP_CLASS[modality],
        series,
        number,
        modality,
        path.stat().st_mtime,
        rows=sps.height,
        columns=sps.width,
        frames=track.frames,
        frame_time_ms=track.frame_time_ms,
    )
    # VL Image (C.8.12.1) and Image Pixel as PS3.5 8.2.7 wants them for MPEG-4
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = ds_text(sps.width * sps.height * 3 * track.frames / size)
    ds.LossyImageCompressionMethod = H264_METHOD
    ds.AcquisitionContextSequence = DicomSequence([])  # Acquisition Context (C.7.6.14)
    # VL Image: Anatomic Region Sequence is Type 1C for a patient; the anatomy is unknown
    # here, so it is the root of SNOMED CT's body structures (--params cannot set codes)
    ds.AnatomicRegionSequence = DicomSequence([code_item(*BODY_STRUCTURE)])
    finish_new_instance(ds, series)
    output = OutputFile(target, replace=False)
    with output as handle:
        write_header(handle, ds, UID(syntax))
        handle.write(element_header(0x7FE00010, b"OB", 0xFFFFFFFF))
        handle.write(item_header(0))  # the Basic Offset Table is empty for MPEG (PS3.5 A.4)
        handle.write(item_header(size + size % 2))
        copy_span(handle, FileSpan(stream, 0, size))
        if size % 2:
            handle.write(b"\0")
        handle.write(item_header(0, 0xFFFEE0DD))
    assert output.path is not None
    rate = "" if track.constant_rate else " (variable: Frame Time is the mean)"
    message = (
        f"{path.name} -> {output.path.name}: {sps.name} copied as {uid_name(UID(syntax))}, "
        f"{track.frames} frames of {sps.width} x {sps.height}, "
        f"{1000 / track.frame_time_ms:.4g} fps{rate}"
    )
    return FileOutcome(path, DONE, message, (output.path,))


#: NumberOfFrames written before the frames of a decoded video are counted, then replaced.
_FRAMES_PLACEHOLDER = "2147483647"


def _decoded_video(
    path: Path, target: Path, series: NewSeries, number: int, options: Options
) -> FileOutcome:
    """Decode a video into a Multi-frame True Color Secondary Capture (PS3.3 A.8.5).

    Frames stream from ffmpeg (square pixels: a stated sample aspect ratio is applied)
    straight into the file; Number of Frames and the Pixel Data length are filled in
    once the frames are counted.
    """
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(
        str(path),
        pix_fmt="rgb24",
        output_params=["-vf", "scale=trunc(iw*sar+0.5):ih,setsar=1", "-fps_mode", "passthrough"],
    )
    try:
        meta = next(frames)
    except (StopIteration, RuntimeError, OSError, IndexError) as exc:
        raise DicomPressorError(
            f"ffmpeg cannot read the video ({one_line(str(exc), limit=200)})"
        ) from exc
    notes = []
    try:
        columns, rows = (int(v) for v in meta["size"])
        fps = float(meta.get("fps") or 0)
        if fps <= 0:
            fps = DEFAULT_FPS
            notes.append(f"the video states no frame rate: {DEFAULT_FPS:g} fps assumed")
        ds = _video_dataset(
            MF_TRUE_COLOR_SC,
            series,
            number,
            options.modality,
            path.stat().st_mtime,
            rows=rows,
            columns=columns,
            frames=int(_FRAMES_PLACEHOLDER),
            frame_time_ms=1000.0 / fps,
        )
        set_pixel_description(ds, rows, columns, colour=True, bits=8)
        ds.ImageType = ["DERIVED", "SECONDARY"]  # SC Multi-frame Image (C.8.6.3)
        finish_new_instance(ds, series)
        size = rows * columns * 3
        output = OutputFile(target, replace=False)
        with output as handle:
            head = io.BytesIO()
            write_header(head, ds, ExplicitVRLittleEndian)
            header = head.getvalue()
            field = b"\x28\x00\x08\x00IS" + struct.pack("<H", len(_FRAMES_PLACEHOLDER))
            frames_at = header.index(field) + len(field)
            handle.write(header)
            length_at = handle.tell() + 8
            handle.write(element_header(0x7FE00010, b"OB", 0))
            count = 0
            for frame in frames:
                if (count + 1) * size > MAX_FRAGMENT_BYTES:
                    raise DicomPressorError(
                        f"more than {count} frames of {columns} x {rows}: native Pixel Data "
                        "holds at most 4 GiB; split the video"
                    )
                handle.write(frame)
                count += 1
            if count == 0:
                raise DicomPressorError("the video has no frames")
            total = count * size
            if total % 2:
                handle.write(b"\0")
            handle.seek(frames_at)
            handle.write(f"{count:<{len(_FRAMES_PLACEHOLDER)}}".encode("ascii"))
            handle.seek(length_at)
            handle.write(struct.pack("<L", total + total % 2))
            handle.seek(0, os.SEEK_END)
    finally:
        frames.close()
    assert output.path is not None
    message = (
        f"{path.name} -> {output.path.name}: {meta.get('codec', 'video')} decoded into "
        f"{uid_name(UID(MF_TRUE_COLOR_SC))}, {count} frames of {columns} x {rows}, {fps:.4g} fps"
    )
    return FileOutcome(path, DONE, message, (output.path,), tuple(notes))


def _copyable_stream(
    exe: str, path: Path, stream: Path
) -> tuple[str | None, H264Parameters | None, VideoTrack | None, str]:
    """Copy a video's stream into an MP4 at stream and judge it (see mpeg4_syntax).

    Returns (the MPEG-4 syntax that takes it or None, its H.264 parameters when it is
    H.264, its track, why it is not copied).
    """
    why = _remux_mp4(exe, path, stream)
    if why is not None:
        return None, None, None, why
    try:
        track = mp4_video_track(stream)
        if track.codec not in ("avc1", "avc3"):
            return None, None, track, f"{track.codec} video, not H.264"
        if track.frames < 1 or track.frame_time_ms <= 0:
            return None, None, track, "H.264 without frame timing"
        sps = h264_parameters(track.config)
    except DicomPressorError as exc:
        return None, None, None, exc.message
    syntax, why = mpeg4_syntax(sps)
    return syntax, sps, track, why


def _video_file(
    path: Path, series: NewSeries, number: int, output_dir: Path | None, options: Options
) -> FileOutcome:
    """Convert one video (see video_to_dicom)."""
    exe = video_ffmpeg()
    target = output_path(path.with_suffix(""), output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    notes = ["its audio is left out (no DICOM image keeps sound)"]
    if not video_has_audio(exe, path):
        notes = []
    stream = temp_path(target.with_suffix(".mp4"))
    try:
        syntax, sps, track, why = _copyable_stream(exe, path, stream)
        if syntax is not None:
            assert sps is not None and track is not None
            outcome = _copied_video(
                path, stream, syntax, sps, track, target, series, number, options
            )
        else:
            if sps is not None:  # H.264 outside the syntaxes' limits: say so
                notes.append(f"{why}: decoded into Multi-frame True Color Secondary Capture")
            outcome = _decoded_video(path, target, series, number, options)
            if sps is None:
                shown = one_line(why, limit=120)
                outcome = dataclasses.replace(outcome, message=f"{outcome.message} ({shown})")
        return dataclasses.replace(outcome, warnings=named(path, (*notes, *outcome.warnings)))
    finally:
        with contextlib.suppress(OSError):
            stream.unlink()


def video_to_dicom(
    inputs: Sequence[Path],
    output_dir: Path | None,
    options: Options,
    *,
    progress: ProgressFn = _no_progress,
) -> ActionResult:
    """Convert videos (MP4, MOV, AVI, MKV, WMV) to DICOM: ``<stem>.dcm`` each.

    An H.264 stream that an MPEG-4 AVC/H.264 transfer syntax takes (High profile up to
    level 4.2, 4:2:0 8-bit, square pixels: mpeg4_syntax) is copied without re-encoding,
    in an MP4 container as PS3.5 8.2.7 wants (the container of the input is replaced by
    MP4, its metadata and audio left out), into Video Photographic Image Storage, or
    Video Endoscopic with ``modality`` ES (PS3.3 A.32.7, A.32.5): one fragment, an empty
    Basic Offset Table, YBR_PARTIAL_420, (0008,2111)-(0028,2114) Lossy Image Compression
    "01", ISO_14496_10. Any other video is decoded (ffmpeg) into Multi-frame True Color
    Secondary Capture (PS3.3 A.8.5); another H.264 stream gets a warning saying why.
    Both have (0018,1063) Frame Time, (0018,0040) Cine Rate and (0028,0009) Frame
    Increment Pointer to Frame Time; the videos of one call form one study with one
    series.

    Parameters
    ----------
    inputs
        Video files.
    output_dir
        Folder for the DICOM files; None writes each beside its video (``_1`` when the
        name is taken).
    options
        ``modality`` (XC or ES), ``params`` as for image_to_dicom.
    """
    check_options(ACTIONS["video_to_dicom"], options)
    video_ffmpeg()
    return _each_new_instance(
        inputs,
        options.params,
        progress,
        lambda path, series, number: _video_file(path, series, number, output_dir, options),
        "convert the video",
    )


# ---- the registry ----

ActionFn = Callable[..., ActionResult]


#: What an action takes (ActionSpec.takes). FILES: each file on its own. FOLDER: the
#: files of one folder together (merge's slices, a DICOMDIR's files). TREE: every file
#: under the given path together (one report for a whole tree).
FILES, FOLDER, TREE = "files", "folder", "tree"


#: What an action's result holds (ActionSpec.result). WROTE: the files it wrote. RECORDS:
#: a report, and a record per file in data["files"]. COUNTS: a report, and data of counts.
WROTE, RECORDS, COUNTS = "wrote", "records", "counts"


#: An action's rule over its option values: a message when they do not go together.
Rule = Callable[[Any, Label], "str | None"]


@dataclasses.dataclass(frozen=True)
class VariantFlag:
    """Another command-line flag of an action: it runs the action with options set.

    ``sets`` holds (option name, value) pairs, options of the action that the API gives
    as they are (``-i png`` is ``-I png`` with annotate true; the API's export_png with
    ``"annotate": true``). It takes a value as the action's flag does (``metavar``).
    """

    flag: str
    summary: str
    sets: tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """One action: its API name, CLI flags, function, what it takes and gives, its rule.

    ``flag`` runs it writing new files; ``replace_flag`` (-X, -Z, -U, -A) replaces each
    input atomically; each of ``variants`` runs it with some options set (-i, -e). A flag
    spelt ``--info`` takes an optional path instead of -f/-F;
    with ``metavar`` the flag takes a value that sets ``flag_value``: "params" (the flag
    names a params file whose text the action gets, as the API's ``params``) or an
    option (``-I png`` sets image_format). ``params`` says the action takes a params
    text, ``parse_params`` is the parser that checks it (every line, before anything
    runs: the CLI on reading the file, the API on the request), ``params_help`` and
    ``params_example`` describe its lines (the web page, OpenAPI).
    ``copy_to_output_dir``: the outputs are written beside the inputs and copied to
    --output-dir (merge); otherwise they are written there. ``data`` is the JSON schema
    of each property of the result's data. ``inputs`` says which files of a folder it
    reads (DICOM_INPUTS, IMAGE_INPUTS, VIDEO_INPUTS). The options it takes are the
    OPTIONS entries that name it.
    """

    name: str
    flag: str
    summary: str
    function: ActionFn
    takes: str = FILES
    result: str = WROTE
    replace_flag: str | None = None
    metavar: str | None = None
    flag_value: str | None = None
    params: bool = False
    parse_params: Callable[[str], Any] | None = None
    params_help: str = ""
    params_example: str = ""
    copy_to_output_dir: bool = False
    rule: Rule | None = None
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    inputs: str = DICOM_INPUTS
    variants: tuple[VariantFlag, ...] = ()
    light_start: Callable[[Any], bool] | None = None

    @property
    def options(self) -> tuple[OptionSpec, ...]:
        """The options this action takes, in the order OPTIONS declares them."""
        return tuple(o for o in OPTIONS.values() if self.name in o.actions)

    @property
    def writes_files(self) -> bool:
        """Tell whether the action writes files (not only a report)."""
        return self.result == WROTE


def _text_dump(options: Any) -> bool:
    """A text header dump starts light: plain files are dumped from their bytes."""
    return bool(options.format == "text")


def _always(options: Any) -> bool:
    """The action starts light whatever its options (a DICOMDIR of plain files)."""
    return True


def _export_rule(options: Any, label: Label) -> str | None:
    """16-bit output: formats that hold 16 bits, and no annotation (modality values)."""
    if options.png_bits != 16:
        return None
    bits = label(OPTIONS["png_bits"])
    chosen = IMAGE_FORMATS[options.image_format]
    if 16 not in chosen.bits:
        wide = [k for k, f in IMAGE_FORMATS.items() if 16 in f.bits]
        return (
            f"{bits} 16 needs {', '.join(wide[:-1])} or {wide[-1]} output: "
            f"{chosen.name} holds 8 bits"
        )
    if options.annotate:
        return (
            f"{bits} 16 gives modality values, not a display image: annotations are drawn "
            "on 8-bit images only"
        )
    return None


def _anonymize_rule(options: Any, label: Label) -> str | None:
    """Without the profile, only the params change anything: its options make no sense."""
    if options.profile != "none":
        return None
    profile = label(OPTIONS["profile"])
    for name in [*(f.name for f in dataclasses.fields(ProfileChoice)), "deid_key", "uid_map"]:
        if getattr(options, name, None) not in (None, False):
            return f"{label(OPTIONS[name])} is an option of the profile, not of {profile} none"
    params = parse_anonymize_params(options.params or "")
    if not params.replacements and not params.rectangles:
        return f"{profile} none with no params would change nothing"
    return None


def _modify_rule(options: Any, label: Label) -> str | None:
    """-m needs at least one line (the lines are checked up front)."""
    try:
        edits = parse_modify_params(options.params or "")
    except DicomPressorError as exc:
        return exc.message
    return None if edits else "modify params hold no line: nothing would change"


def _new_instance_rule(options: Any, label: Label) -> str | None:
    """--params sets patient, study and series values, not the pixels (checked up front)."""
    try:
        parse_new_instance_params(options.params or "")
    except DicomPressorError as exc:
        return exc.message
    return None


_COUNT = {"type": "integer", "minimum": 0}


#: How the params of anonymize, modify and the new instances are written (page, OpenAPI).
_TAG_LINES_HELP = (
    "(GGGG,EEEE)=VALUE, Keyword=VALUE or GGGG EEEE VR VALUE sets an element (inserted "
    "when absent); (GGGG,EEEE)=, Keyword= or GGGG EEEE alone empties one the file has"
)


_ANONYMIZE_HELP = (
    f"Applied after the profile, one per line ('#' comments): {_TAG_LINES_HELP}; "
    "r|ri|rv LEFT TOP RIGHT BOTTOM blacks out a box of every frame (r every image, ri "
    "single-frame, rv multi-frame; right and bottom exclusive)"
)


_MODIFY_HELP = (
    "One per line ('#' comments): i GGGG EEEE VR VALUE inserts or replaces; m GGGG EEEE "
    "[VR] VALUE changes an element the file has; r GGGG EEEE removes; (GGGG,EEEE)=VALUE "
    "or Keyword=VALUE sets (the dictionary's VR). A private element needs its creator "
    "(gggg,00xx) in the file or on an earlier line"
)


_NEW_INSTANCE_HELP = f"Patient and study values, one per line: {_TAG_LINES_HELP}"


#: The params of the actions that make new instances (-w, -W, -v), spread into each spec.
_NEW_INSTANCE_PARAMS: dict[str, Any] = {
    "params": True,
    "parse_params": parse_new_instance_params,
    "params_help": _NEW_INSTANCE_HELP,
    "params_example": "PatientName=DOE^JANE\n(0010,0020)=PID7\n0008 1030 LO Wound photos",
    "rule": _new_instance_rule,
}


_COUNTS = {"type": "object", "additionalProperties": _COUNT}


#: The JSON schema of one MergeWarning (merge's data["warnings"], the API's warnings).
MERGE_WARNING_SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {
            "type": "string",
            "enum": [GAP, UNEVEN_SPACING, DUPLICATE_POSITIONS, RESCALE_DIFFERS],
        },
        "series": {"type": "string", "description": "Series Instance UID of the sources"},
        "output": {"type": "string", "description": "the merged file"},
        "slices": {"type": "array", "items": {"type": "string"}},
        "message": {"type": "string"},
    },
    "required": ["kind", "series", "output", "slices", "message"],
}


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec(
            "merge",
            "-j",
            "Merge single-frame DICOM slices into one multi-frame file per series",
            merge,
            takes=FOLDER,
            copy_to_output_dir=True,
            data={"warnings": {"type": "array", "items": MERGE_WARNING_SCHEMA}},
        ),
        ActionSpec("split", "-s", "Split a multi-frame DICOM into individual frames", split),
        ActionSpec(
            "compress_lossless",
            "-x",
            "Apply lossless compression (JPEG 2000 unless --codec says otherwise)",
            compress_lossless,
            replace_flag="-X",
        ),
        ActionSpec(
            "compress_lossy",
            "-z",
            "Apply JPEG 2000 lossy compression (--ratio R or --psnr DB)",
            compress_lossy,
            replace_flag="-Z",
        ),
        ActionSpec(
            "decompress",
            "-u",
            "Remove compression (Explicit VR Little Endian)",
            decompress,
            replace_flag="-U",
        ),
        ActionSpec(
            "anonymize",
            "-a",
            "Anonymize (PS3.15 Basic Profile, then the params file's replacements and rectangles)",
            anonymize,
            replace_flag="-A",
            metavar="PARAMS",
            flag_value="params",
            params=True,
            parse_params=parse_anonymize_params,
            params_help=_ANONYMIZE_HELP,
            params_example="(0010,0010)=ANONYMOUS^PATIENT\n0010 0020 LO ANON001\n"
            "0008 1030\nr 0 0 200 40",
            rule=_anonymize_rule,
            data={"uids_replaced": _COUNT},
        ),
        ActionSpec(
            "modify",
            "-m",
            "Modify tags as the params file says (insert, modify, remove): <stem>_mod.dcm",
            modify,
            replace_flag="-M",
            metavar="PARAMS",
            flag_value="params",
            params=True,
            parse_params=parse_modify_params,
            params_help=_MODIFY_HELP,
            params_example="m 0008 0080 Some Hospital\ni 0008 1030 LO Follow-up\n"
            "r 0010 1000\n(0020,0011)=7",
            rule=_modify_rule,
        ),
        ActionSpec(
            "export_png",
            "-I",
            "Export each frame as an image: -I png, jpg, bmp, tiff or jp2, windowed as a "
            "viewer shows it",
            export_png,
            metavar="FORMAT",
            flag_value="image_format",
            rule=_export_rule,
            variants=(
                VariantFlag(
                    "-i",
                    "As -I, with PatientName | PatientID | StudyDate drawn at the top left "
                    "of every image",
                    (("annotate", True),),
                ),
            ),
        ),
        ActionSpec(
            "export_video",
            "-E",
            "Export a multi-frame file (or a folder's series) as MP4 video",
            export_video,
            variants=(
                VariantFlag(
                    "-e",
                    "As -E, with PatientName | PatientID drawn at the top left of every frame",
                    (("annotate", True),),
                ),
            ),
        ),
        ActionSpec(
            "headers",
            "-t",
            "Dump headers as <stem>.txt (or --format json)",
            headers,
            light_start=_text_dump,
        ),
        ActionSpec(
            "dicomdir",
            "-d",
            "Create a DICOMDIR for a folder",
            dicomdir,
            takes=FOLDER,
            light_start=_always,
        ),
        ActionSpec(
            "dicomdir_parent",
            "-D",
            "Create a DICOMDIR in the parent folder of the given folder, for every file under it",
            dicomdir_parent,
            takes=TREE,
            light_start=_always,
        ),
        ActionSpec(
            "image_to_dicom",
            "-w",
            "Convert images (PNG, JPEG, BMP, TIFF, JPEG 2000) to Secondary Capture, one "
            "<stem>.dcm each",
            image_to_dicom,
            **_NEW_INSTANCE_PARAMS,
            inputs=IMAGE_INPUTS,
        ),
        ActionSpec(
            "images_to_multiframe",
            "-W",
            "Convert a folder's images to one multi-frame Secondary Capture, multiframe.dcm",
            images_to_multiframe,
            takes=FOLDER,
            **_NEW_INSTANCE_PARAMS,
            inputs=IMAGE_INPUTS,
        ),
        ActionSpec(
            "video_to_dicom",
            "-v",
            "Convert videos to DICOM: H.264 copied as Video Photographic (or Endoscopic), "
            "others decoded into Multi-frame True Color SC",
            video_to_dicom,
            **_NEW_INSTANCE_PARAMS,
            inputs=VIDEO_INPUTS,
        ),
        ActionSpec(
            "to_part10",
            "-p",
            "Make a Part 10 file <stem>_dcm3.dcm of an ACR-NEMA 2.0 or bare dataset",
            to_part10,
            replace_flag="-P",
        ),
        ActionSpec(
            "to_bare_dataset",
            "-n",
            "Write the dataset alone (no preamble, no File Meta), Implicit VR Little Endian: "
            "<stem>_nema2.dcm",
            to_bare_dataset,
            replace_flag="-N",
        ),
        ActionSpec(
            "to_little_endian",
            "-l",
            "Convert to Explicit VR Little Endian, <stem>_le.dcm (compressed: decompressed)",
            to_little_endian,
            replace_flag="-L",
        ),
        ActionSpec(
            "to_big_endian",
            "-b",
            "Convert to Explicit VR Big Endian (retired), <stem>_be.dcm",
            to_big_endian,
            replace_flag="-B",
        ),
        ActionSpec(
            "info",
            "--info",
            "Show detailed DICOM file information",
            info,
            result=RECORDS,
            data={"files": {"type": "array", "items": {"type": "object"}}},
        ),
        ActionSpec(
            "summary",
            "--summary",
            "Show folder summary statistics",
            summary,
            takes=TREE,
            result=COUNTS,
            data={
                **dict.fromkeys(("files", "frames", "total_bytes"), _COUNT),
                **dict.fromkeys(("patients", "studies", "series"), _COUNT),
                **dict.fromkeys(
                    ("per_patient", "per_study", "per_series", "per_modality"), _COUNTS
                ),
                "per_transfer_syntax": _COUNTS,
                "unreadable": {"type": "array", "items": {"type": "object"}},
            },
        ),
    )
}


def _offered(option: OptionSpec, label: Label) -> bool:
    """Say whether label's interface lets its user name the option: a flag (cli_label) or
    a process request's options key (api_label)."""
    return option.cli if label is cli_label else option.api


def unknown_option(spec: ActionSpec, shown: str, label: Label) -> str:
    """Say that an option is not one of the action's, and which it takes."""
    taken = ", ".join(label(o) for o in spec.options if _offered(o, label))
    return f"unknown option {shown} for {spec.name}: it takes {taken or 'none'}"


def action_option(
    spec: ActionSpec, name: str, label: Label, shown: str | None = None
) -> OptionSpec:
    """Return the option called name if spec takes it from label's interface.

    Else raise UsageError naming it shown (default: its flag on the command line, the
    name quoted elsewhere). The command line takes every option of the action: its
    action flags also set options that have no flag (-i: annotate).
    """
    option = OPTIONS.get(name)
    cli = label is cli_label
    if option is None or option not in spec.options or not (cli or option.api):
        if shown is None:
            shown = option.flag if option is not None and cli else repr(name)
        raise UsageError(unknown_option(spec, shown, label))
    return option


def check_options(spec: ActionSpec, options: Any, label: Label = cli_label) -> None:
    """Check the option values an action gets: bounds, choices, conflicts, its rule.

    The CLI and the API check what they are given with it before anything runs, each
    naming options its own way; every action checks its options with it again, for
    callers that use the functions directly. Raises UsageError.
    """
    given = []
    for option in spec.options:
        value = getattr(options, option.name, None)
        check_value(option, value, label)
        if value is not None and value is not False and value != option.default:
            given.append(option.name)
    check_conflicts(given, label)
    problem = spec.rule(options, label) if spec.rule is not None else None
    if problem is not None:
        raise UsageError(problem)


def action_options(spec: ActionSpec, given: Mapping[str, Any], label: Label, **common: Any) -> Any:
    """Build and check the Options of a run from the action options a caller gave.

    given holds converted values (parse_option) by option name; an option the action
    does not take is refused (UsageError). common holds the COMMON and internal fields.
    """
    for name in given:
        action_option(spec, name, label)
    options = Options(**given, **common)
    check_options(spec, options, label)
    return options


# ==== 7. Batch ====


def list_inputs(folder: Path, kind: str = DICOM_INPUTS) -> list[Path]:
    """Return the inputs of a kind (ActionSpec.inputs) directly in a folder, sorted by name."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DicomPressorError(f"cannot list {folder}: {exc.strerror}") from exc
    return [p for p in entries if is_input(p, kind)]


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What a pass needs to know of a folder, valid while its modification time stands.

    A folder's time changes when an entry in it is added, removed or renamed (a done
    marker is written by a rename), not when a file's content changes.
    """

    mtime_ns: int
    dirs: tuple[str, ...]
    candidates: bool
    done: frozenset[str]


def scan_folder(folder: Path, mtime_ns: int, kind: str = DICOM_INPUTS) -> FolderScan:
    """List a folder: its subfolders (not hidden, links not followed), whether it holds
    inputs of a kind (is_input), and the actions its done marker names."""
    dirs, candidates = [], False
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith("."):
                    dirs.append(entry.name)
            elif not candidates and is_input(Path(entry.path), kind):
                candidates = True
    return FolderScan(mtime_ns, tuple(sorted(dirs)), candidates, marker_actions(folder))


class ScanState:
    """The ``--scan-state-file`` cache: each folder's FolderScan, kept between passes.

    A folder whose modification time is unchanged is not listed again (no listing, no
    file opened, no marker read): a pass over a large, settled tree costs one stat per
    folder. Every folder is still looked at, since a change deep in a tree leaves its
    parents' times alone. The file is JSON in the original DicomPressor's version 1
    layout (``root``, ``folders`` by absolute path with ``mtime_ns``, ``empty`` and
    ``done``), with ``dirs`` and ``actions`` added; entries without them (an original's
    file) are listed again once. A file for another root, or unreadable, is started
    afresh with a warning; it is written atomically after each pass.
    """

    def __init__(self, path: Path, root: Path, kind: str = DICOM_INPUTS) -> None:
        self.path = path
        self.root = os.path.abspath(root)
        self.kind = kind
        self.folders: dict[str, FolderScan] = {}
        self.listed = 0
        data = read_json_file(path) if path.exists() else None
        if path.exists() and (data is None or data.get("version") != 1):
            LOG.warning("%s: not a scan state file (version 1 JSON); starting afresh", path)
        elif data is not None and data.get("root") not in (None, "", self.root):
            LOG.warning("%s is for %s, not %s; starting afresh", path, data["root"], self.root)
        elif data is not None and data.get("inputs", DICOM_INPUTS) != kind:
            LOG.warning("%s lists folders of %s; starting afresh", path, data.get("inputs"))
        elif data is not None:
            self._load(data.get("folders"))

    def _load(self, folders: Any) -> None:
        """Take up the entries that carry everything a FolderScan needs."""
        for key, entry in (folders if isinstance(folders, dict) else {}).items():
            try:
                self.folders[key] = FolderScan(
                    int(entry["mtime_ns"]),
                    tuple(str(d) for d in entry["dirs"]),
                    not entry.get("empty", False),
                    frozenset(str(a) for a in entry["actions"]),
                )
            except (KeyError, TypeError, ValueError):
                continue  # an original's entry, or a damaged one: listed again

    def scan(self, folder: Path) -> FolderScan:
        """Return a folder's scan: the cached one while its time stands, else a new one.

        The time is taken before the listing, so a folder that changes during it is
        listed again by the next pass.
        """
        key = os.path.abspath(folder)  # a string operation: no system call per folder
        mtime_ns = folder.stat().st_mtime_ns
        cached = self.folders.get(key)
        if cached is not None and cached.mtime_ns == mtime_ns:
            return cached
        self.listed += 1
        self.folders[key] = scan = scan_folder(folder, mtime_ns, self.kind)
        return scan

    def done(self, folder: Path, action: str) -> bool:
        """Tell whether a folder scanned in this pass holds a done marker for action."""
        scan = self.folders.get(os.path.abspath(folder))
        return marker_done(folder, action, scan.done if scan is not None else None)

    def save(self) -> None:
        """Write the cache atomically; a failure is a warning (the next pass lists again)."""
        folders = {
            key: {
                "mtime_ns": scan.mtime_ns,
                "empty": not scan.candidates,
                "done": bool(scan.done),
                "dirs": list(scan.dirs),
                "actions": sorted(scan.done),
            }
            for key, scan in sorted(self.folders.items())
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {"version": 1, "root": self.root, "inputs": self.kind, "folders": folders}
            write_json_file(self.path, data)
        except OSError as exc:
            LOG.warning("cannot save the scan state %s: %s", self.path, exc.strerror or exc)


def job_folders(
    root: Path,
    *,
    recursive: bool,
    kind: str = DICOM_INPUTS,
    state: ScanState | None = None,
    exclude: Path | None = None,
) -> list[Path]:
    """Return the folders that hold inputs of a kind directly (the jobs), sorted.

    With a scan state (made for the same kind), folders unchanged since the last pass
    are not listed again. exclude (the --output-dir) and what lies under it are passed
    over when it is a folder inside root: outputs are never a job, nor the input of one.
    """
    if not recursive:
        return [root]
    skip = exclude.resolve() if exclude is not None else None
    found = []
    if state is None:
        for current, dirs, files in os.walk(root):
            folder = Path(current)
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".")
                and not (skip is not None and d == skip.name and (folder / d).resolve() == skip)
            )
            if any(is_input(folder / f, kind) for f in files):
                found.append(folder)
        return sorted(found)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            scan = state.scan(folder)
        except OSError:  # removed while the pass runs
            continue
        if scan.candidates:
            found.append(folder)
        stack.extend(
            folder / name
            for name in scan.dirs
            if not (skip is not None and name == skip.name and (folder / name).resolve() == skip)
        )
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """How jobs are run: markers, locks (DESIGN.md §4)."""

    skip_if_done: bool = False
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S


@dataclasses.dataclass
class JobOutcome:
    """What one job (folder or file) gave: for the result line and the exit code."""

    folder: Path
    inputs: int
    result: ActionResult | None
    error: str | None = None
    skipped: str | None = None

    @property
    def status(self) -> str:
        """OK, PARTIAL, FAILED or SKIPPED."""
        if self.skipped is not None:
            return "SKIPPED"
        if self.error is not None or self.result is None:
            return "FAILED"
        if self.result.failures:
            return "PARTIAL" if self.result.outputs or self.result.inputs_used else "FAILED"
        return "OK"


def job_failure(exc: BaseException) -> str:
    """Describe an exception that failed a whole job (an action's own bug says so)."""
    message = failure_message(exc, "")
    expected = isinstance(exc, (DicomPressorError, OSError))
    return message if expected else f"internal error: {message}"


def run_job(
    spec: ActionSpec,
    folder: Path,
    inputs: list[Path],
    options: Options,
    progress: ProgressFn,
    journal: Journal | None = None,
) -> JobOutcome:
    """Run an action on one job's inputs; copy results to --output-dir as the action says.

    Expected failures and unexpected ones alike become one line in the outcome; the
    traceback of an unexpected one goes to the debug log only.
    """
    copy_after = spec.copy_to_output_dir and options.keep_beside
    write_to = None if copy_after else options.output_dir
    if spec.takes == TREE:
        options = dataclasses.replace(options, tree_root=folder)
    try:
        result = spec.function(inputs, write_to, options, progress=progress)
    except BaseException as exc:  # an action bug must not take the batch down
        return JobOutcome(folder, len(inputs), None, job_failure(exc))
    if copy_after and options.output_dir is not None:
        for output in list(result.outputs):
            try:
                copy = copy_unique(
                    output, options.output_dir, on_ready=journal.note_copy if journal else None
                )
            except OSError as exc:
                result.fail(output, f"cannot copy to {options.output_dir}: {exc.strerror}")
            else:
                result.info(f"Copied {output.name} to {copy}")
    return JobOutcome(folder, len(inputs), result)


# ---- markers, locks and the journal ----


def read_json_file(path: Path) -> dict[str, Any] | None:
    """Read a small JSON object, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_file(path: Path, value: dict[str, Any]) -> None:
    """Write a small JSON object atomically."""
    with atomic_output(path) as handle:
        handle.write(json.dumps(value, indent=2, sort_keys=True).encode("utf-8") + b"\n")


#: marker_actions() of a marker that names no action (unreadable, or written by a
#: version that did not say): done for every action, so nothing runs twice on a guess.
EVERY_ACTION = "*"


def marker_actions(folder: Path) -> frozenset[str]:
    """Return the actions the folder's done marker says finished there (empty: no marker).

    Our markers name the action and keep earlier ones under ``earlier``; the original
    DicomPressor's (``processed_at``, ``dicompressor_version``) name "merge".
    """
    marker = folder / DONE_MARKER
    if not marker.exists():
        return frozenset()
    data = read_json_file(marker)
    if data is None or data.get("action") is None:
        return frozenset({EVERY_ACTION})
    earlier = data.get("earlier", [])
    return frozenset(
        str(e.get("action"))
        for e in [data, *(earlier if isinstance(earlier, list) else [])]
        if isinstance(e, dict)
    )


def marker_done(folder: Path, action: str, actions: frozenset[str] | None = None) -> bool:
    """Tell whether the folder's done marker (or its cached actions) says action finished.

    A marker of another action (``-j`` done, now ``-x``) does not skip the folder.
    """
    done = marker_actions(folder) if actions is None else actions
    return action in done or EVERY_ACTION in done


def sync_to_disk(paths: Iterable[Path]) -> None:
    """Flush files and their folders to disk (outputs written without sync, see OutputFile)."""
    folders = set()
    for path in paths:
        with contextlib.suppress(OSError), path.open("rb") as handle:
            os.fsync(handle.fileno())
            folders.add(path.parent)
    for folder in folders:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_marker(folder: Path, spec: ActionSpec, outcome: JobOutcome) -> None:
    """Write ``.dicompressor_done`` after a job succeeded (the last thing a job does).

    Markers of other actions done there before are kept under ``earlier``.
    """
    outputs = [str(p) for p in outcome.result.outputs] if outcome.result else []
    sync_to_disk([Path(p) for p in outputs])
    earlier: list[dict[str, Any]] = []
    previous = read_json_file(folder / DONE_MARKER)
    if previous and previous.get("action") != spec.name:
        earlier = [*previous.pop("earlier", []), previous]
    write_json_file(
        folder / DONE_MARKER,
        {
            "version": __version__,
            "action": spec.name,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "inputs": outcome.inputs,
            "outputs": outputs,
            **({"earlier": earlier} if earlier else {}),
        },
    )


def lock_holder(data: dict[str, Any] | None) -> str:
    """Describe who holds a lock."""
    if not data:
        return "an unreadable lock"
    return f"{data.get('host', '?')} pid {data.get('pid', '?')} since {data.get('started', '?')}"


def lock_is_stale(data: dict[str, Any] | None, age_s: float, timeout_s: float) -> bool:
    """Tell whether a lock can be taken over: its process died, or it is too old."""
    if age_s > timeout_s:
        return True
    if data is None:  # still being written, or its writer died at once
        return age_s > LOCK_WRITE_GRACE_S
    if data.get("host") == socket.gethostname():
        with contextlib.suppress(TypeError, ValueError):
            return not pid_alive(int(data.get("pid", -1)))
    return False


def _create_whole(target: Path, content: bytes) -> bool:
    """Create target with its whole content at once; False when it exists already.

    The content is written to a temp file that a hard link then names, so target never
    exists empty or half written, even when the process is killed in between (a lock
    left empty would hold its folder for LOCK_WRITE_GRACE_S). Where hard links are not
    supported, target is created with O_EXCL and written after.
    """

    def write_synced(fd: int) -> None:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())

    tmp = temp_path(target)
    exclusive = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        write_synced(os.open(tmp, exclusive, 0o644))
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (FAT, some network shares)
            pass
        try:
            fd = os.open(target, exclusive, 0o644)
        except FileExistsError:
            return False
        write_synced(fd)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def acquire_lock(folder: Path, timeout_s: float) -> tuple[Path | None, str]:
    """Create the folder's lock file, whole or not at all (_create_whole); take over a stale one.

    Returns (lock, "") when this process holds the lock, else (None, who holds it).
    Taking over renames the stale lock aside first and checks that it was the one judged
    stale, so two runners never both take the same folder.
    """
    lock = folder / LOCK_FILE
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    for _ in range(3):
        if _create_whole(lock, json.dumps(mine).encode("utf-8")):
            return lock, ""
        try:
            seen = lock.read_bytes()
            age_s = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            continue
        data = read_json_file(lock) if seen else None
        if not lock_is_stale(data, age_s, timeout_s):
            return None, lock_holder(data)
        grabbed = temp_path(lock)
        try:
            os.rename(lock, grabbed)
        except FileNotFoundError:
            continue
        if grabbed.read_bytes() != seen:  # a fresh lock slipped in: give it back
            with contextlib.suppress(OSError):
                os.link(grabbed, lock)
            grabbed.unlink()
            return None, lock_holder(read_json_file(lock))
        grabbed.unlink()
        LOG.warning("%s: took over a stale lock (%s)", folder, lock_holder(data))
    return None, "a lock that keeps changing"


def release_lock(lock: Path) -> None:
    """Remove a lock this process holds."""
    data = read_json_file(lock)
    if data and data.get("pid") == os.getpid() and data.get("host") == socket.gethostname():
        with contextlib.suppress(OSError):
            lock.unlink()


def written_by_us(path: Path) -> bool:
    """Tell whether a DICOM file (or a folder of them) was written by DicomPressor."""
    load_toolkit()
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    if not files:
        return path.is_dir()
    for file in files:
        try:
            meta = pydicom.filereader.read_file_meta_info(file)
        except Exception:  # not DICOM, unreadable: not ours
            return False
        if str(meta.get("ImplementationClassUID", "")) != IMPLEMENTATION_UID:
            return False
    return True


class Journal:
    """The record a job keeps in its folder while it runs (see recover_folder).

    It holds the folder's entries when the job started and every copy made in
    ``--output-dir`` (its directory, device and inode, noted before the copy gets its
    name), so that a run killed at any moment can be undone exactly.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL_FILE
        self.data: dict[str, Any] = {"pid": os.getpid(), "entries": [], "copies": []}

    def start(self) -> None:
        """Record the folder's entries as the job starts."""
        self.data["entries"] = sorted(p.name for p in self.path.parent.iterdir())
        write_json_file(self.path, self.data)

    def note_copy(self, tmp: Path) -> None:
        """Record a finished temp copy before it is published under its final name."""
        info = tmp.stat()
        self.data["copies"].append(
            {"dir": str(tmp.parent), "device": info.st_dev, "inode": info.st_ino}
        )
        write_json_file(self.path, self.data)

    def finish(self) -> None:
        """The job ended (well or badly, but not killed): forget the record."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _undo_copies(copies: Sequence[dict[str, Any]], timeout_s: float) -> list[Path]:
    """Remove the --output-dir copies a killed job made (found by device and inode)."""
    removed: list[Path] = []
    for folder in sorted({str(c.get("dir")) for c in copies}):
        wanted = {(c.get("device"), c.get("inode")) for c in copies if str(c.get("dir")) == folder}
        directory = Path(folder)
        removed.extend(clean_stale_temp(directory, max_age_s=timeout_s))
        with contextlib.suppress(OSError):
            for entry in list(directory.iterdir()):
                with contextlib.suppress(OSError):
                    info = entry.lstat()
                    if (info.st_dev, info.st_ino) in wanted and entry.is_file():
                        entry.unlink()
                        removed.append(entry)
    return removed


def recover_folder(folder: Path, timeout_s: float) -> list[Path]:
    """Undo what a killed run left in a job folder; return what was removed.

    A job writes a journal (the folder's entries when it started) and removes it when it
    ends. A journal found at the start means the last run died: the DICOM files and
    ``_frames`` folders it added (recognised by DicomPressor's Implementation Class UID)
    are removed, so the job runs again from scratch and its outputs exist once. Temp
    files of dead processes go too.
    """
    removed = clean_stale_temp(folder, max_age_s=timeout_s)
    journal = folder / JOURNAL_FILE
    before = read_json_file(journal)
    if before is None:
        return removed
    marker = read_json_file(folder / DONE_MARKER)
    if marker and journal.stat().st_mtime <= (folder / DONE_MARKER).stat().st_mtime:
        journal.unlink()  # the job finished (its marker is newer): nothing to undo
        return removed
    removed.extend(_undo_copies(before.get("copies", []), timeout_s))
    known = set(before.get("entries", []))
    for entry in sorted(folder.iterdir()):
        if entry.name in known or entry.name.startswith("."):
            continue
        if written_by_us(entry):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
            removed.append(entry)
    journal.unlink()
    return removed


# ---- running jobs ----


def run_folder_job(
    action: str,
    folder: str | Path,
    options: Options,
    batch: BatchOptions,
    files: Sequence[str | Path] | None = None,
    progress: ProgressFn = _no_progress,
) -> JobOutcome:
    """Run one job: a folder in, its outputs and marker out; safe to run again.

    The one job function behind the serial loop, ``--jobs N`` and ``--watch``. It takes
    the folder's lock, skips a folder already done (``--skip-if-done``), recovers from
    a killed earlier run, runs the action and writes the marker on success.
    """
    spec = ACTIONS[action]
    folder = Path(folder)
    nothing = f"no {INPUT_NOUNS[spec.inputs]} in folder"
    if not spec.writes_files:  # info: nothing to lock, mark or recover
        inputs = (
            [Path(f) for f in files] if files is not None else list_inputs(folder, spec.inputs)
        )
        if not inputs:
            return JobOutcome(folder, 0, None, nothing)
        return run_job(spec, folder, inputs, options, progress)
    if batch.skip_if_done and marker_done(folder, action):
        return JobOutcome(folder, 0, None, skipped="already processed")
    lock, holder = acquire_lock(folder, batch.lock_timeout_s)
    if lock is None:
        return JobOutcome(folder, 0, None, skipped=f"locked by {holder}")
    try:
        if batch.skip_if_done and marker_done(folder, action):
            return JobOutcome(folder, 0, None, skipped="already processed")
        removed = recover_folder(folder, batch.lock_timeout_s)
        if options.output_dir is not None:  # temps of dead runs only: safe beside others
            removed += clean_stale_temp(options.output_dir, max_age_s=batch.lock_timeout_s)
        for path in removed:
            LOG.warning("%s: removed %s left by an interrupted run", folder, path.name)
        inputs = (
            [Path(f) for f in files] if files is not None else list_inputs(folder, spec.inputs)
        )
        if not inputs:
            return JobOutcome(folder, 0, None, nothing)
        journal = Journal(folder)
        journal.start()
        outcome = run_job(spec, folder, inputs, options, progress, journal)
        if batch.skip_if_done and outcome.status == "OK":
            write_marker(folder, spec, outcome)
        journal.finish()
        return outcome
    finally:
        release_lock(lock)


def _ignore_interrupts() -> None:
    """Worker initializer: Ctrl+C goes to the parent, which stops after the current jobs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_malloc()


def run_jobs(
    action: str,
    jobs: Sequence[tuple[Path, list[Path] | None]],
    options: Options,
    batch: BatchOptions,
    *,
    workers: int,
    on_outcome: Callable[[JobOutcome], None],
    stop: StopFlag,
    progress: Callable[[Path], ProgressFn] = lambda folder: _no_progress,
    executor: Any = None,
) -> list[JobOutcome]:
    """Run jobs one by one, or in worker processes (``--jobs N``) or a given executor.

    Each job runs run_folder_job; results are reported as they complete. After ``stop``
    is set no new job starts.
    """
    outcomes: list[JobOutcome] = []
    outer, inner_workers = share_workers(workers, len(jobs), cluster=executor is not None)
    inner = dataclasses.replace(options, jobs=inner_workers)
    if executor is None and outer == 1:
        for folder, files in jobs:
            if stop.is_set():
                break
            outcome = run_folder_job(action, folder, inner, batch, files, progress(folder))
            outcomes.append(outcome)
            on_outcome(outcome)
        return outcomes
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    own = executor is None
    job_function = run_folder_job
    if not own:  # remote workers import the module by name, not the __main__ script
        import dicompressor

        job_function = dicompressor.run_folder_job
    pool = executor or ProcessPoolExecutor(max_workers=outer, initializer=_ignore_interrupts)
    try:
        queue = list(jobs)
        running: set[Any] = set()
        submitted: dict[Any, Path] = {}
        limit = outer
        while queue or running:
            while queue and len(running) < limit and not stop.is_set():
                folder, files = queue.pop(0)
                future = pool.submit(job_function, action, folder, inner, batch, files)
                submitted[future] = folder
                running.add(future)
            if not running:
                break
            done, running = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                folder = submitted.pop(future)
                try:
                    outcome = future.result()
                except BaseException as exc:  # a worker died, or the cluster gave up
                    message = failure_message(exc, "run the job: worker failed")
                    outcome = JobOutcome(Path(folder), 0, None, message)
                outcomes.append(outcome)
                on_outcome(outcome)
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


# ---- beyond one machine: shards and Dask ----


def in_shard(folder: Path, root: Path, index: int, count: int) -> bool:
    """Tell whether a job folder belongs to shard index of count.

    The shard of a folder is a hash of its path relative to the root, so it does not
    depend on the machine, the mount point or which other folders exist: N runs with
    I = 0..N-1 cover every folder exactly once.
    """
    try:
        relative = folder.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        relative = folder.as_posix()
    digest = hashlib.sha256(relative.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count == index


def worker_identity() -> dict[str, str]:
    """Return this process's DicomPressor version and script hash (for Dask workers)."""
    source = Path(__file__).read_bytes()
    return {"version": __version__, "sha256": hashlib.sha256(source).hexdigest()}


def dask_executor(address: str) -> tuple[Any, Any]:
    """Connect to a Dask scheduler; return (client, executor) after checking the workers.

    Every worker must run the same DicomPressor (version and script bytes) as this
    driver, and see the same storage paths; a mismatch is an error, not a silent run.
    """
    try:
        from distributed import Client
    except ImportError as exc:
        raise DicomPressorError(
            "--dask needs the Dask distributed package: pip install distributed"
        ) from exc
    import dicompressor as module  # by name, so workers can import it (not __main__)

    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise DicomPressorError(f"cannot reach the Dask scheduler {address}: {exc}") from exc
    mine = module.worker_identity()
    try:
        theirs = client.run(module.worker_identity)
    except Exception as exc:  # workers that cannot import dicompressor, among others
        client.close()
        raise DicomPressorError(
            f"Dask workers at {address} cannot run dicompressor ({type(exc).__name__}: "
            f"{one_line(str(exc), limit=200)}); put the same dicompressor.py on their "
            "PYTHONPATH"
        ) from exc
    if not theirs:
        client.close()
        raise DicomPressorError(f"the Dask scheduler {address} has no workers")
    different = sorted(worker for worker, ident in theirs.items() if ident != mine)
    if different:
        client.close()
        seen = sorted({f"{theirs[w]['version']} ({theirs[w]['sha256'][:12]})" for w in different})
        raise DicomPressorError(
            f"{len(different)} Dask worker(s) run another DicomPressor than this one "
            f"({mine['version']}, sha256 {mine['sha256'][:12]}): {', '.join(different[:5])} "
            f"run {', '.join(seen)}"
        )
    LOG.info("Dask: %d worker(s) at %s run DicomPressor %s", len(theirs), address, __version__)
    return client, client.get_executor()


# ---- watch ----


def folder_state(folder: Path, kind: str = DICOM_INPUTS) -> tuple[tuple[str, int, int], ...]:
    """Return (name, size, last change) of the folder's inputs of a kind: its signature.

    The last change is the later of mtime and ctime: a copy that keeps the source's
    mtime (``cp -p``, ``rsync -a``) still sets the ctime to when it was written.
    """
    state = []
    for path in list_inputs(folder, kind):
        with contextlib.suppress(OSError):
            info = path.stat()
            state.append((path.name, info.st_size, max(info.st_mtime_ns, info.st_ctime_ns)))
    return tuple(state)


@dataclasses.dataclass
class WatchState:
    """What a watch remembers between passes: folders that failed (with their files'
    signature then), folders waiting to settle, and the scan state (--scan-state-file)."""

    failed: dict[Path, tuple[tuple[str, int, int], ...]] = dataclasses.field(default_factory=dict)
    waiting: set[Path] = dataclasses.field(default_factory=set)
    scan: ScanState | None = None


def ready_folders(
    action: str,
    root: Path,
    *,
    recursive: bool,
    settle_s: float,
    memory: WatchState,
    clock: Callable[[], float] = time.time,
    shard: tuple[int, int] | None = None,
    exclude: Path | None = None,
) -> list[Path]:
    """Return the job folders a watch pass runs: not done, settled, changed since a failure.

    exclude: the --output-dir, never a job (job_folders).
    """
    ready = []
    kind = ACTIONS[action].inputs
    try:
        folders = (
            job_folders(root, recursive=recursive, kind=kind, state=memory.scan, exclude=exclude)
            if root.is_dir()
            else []
        )
    except OSError as exc:
        LOG.error("%s: %s", root, exc)
        folders = []
    for folder in folders:
        done = memory.scan.done(folder, action) if memory.scan else marker_done(folder, action)
        if done or (shard is not None and not in_shard(folder, root, *shard)):
            continue
        try:
            state = folder_state(folder, kind)
        except DicomPressorError:
            continue
        if not state or memory.failed.get(folder) == state:
            continue
        newest_s = max(changed for _, _, changed in state) / 1e9
        if clock() - newest_s < settle_s:
            if folder not in memory.waiting:
                LOG.info(
                    "%s: files still changing, waiting %gs for them to settle", folder, settle_s
                )
                memory.waiting.add(folder)
            continue
        memory.waiting.discard(folder)
        ready.append(folder)
    return ready


def watch(
    action: str,
    root: Path,
    *,
    recursive: bool,
    options: Options,
    batch: BatchOptions,
    interval_s: float,
    settle_s: float,
    workers: int,
    on_outcome: Callable[[JobOutcome], None],
    stop: StopFlag,
    clock: Callable[[], float] = time.time,
    shard: tuple[int, int] | None = None,
    scan_state: ScanState | None = None,
) -> None:
    """Process new or changed job folders under root every interval_s until stopped.

    Folders with a done marker are skipped; a folder with a file changed within
    settle_s waits for a later pass (it may still be being copied in); a folder that
    failed is tried again only when its files change. A scan state is saved after
    every pass.
    """
    memory = WatchState(scan=scan_state)
    while not stop.is_set():
        started = clock()
        ready = ready_folders(
            action,
            root,
            recursive=recursive,
            settle_s=settle_s,
            memory=memory,
            clock=clock,
            shard=shard,
            exclude=options.output_dir,
        )

        def report(outcome: JobOutcome) -> None:
            if outcome.status in ("FAILED", "PARTIAL"):
                with contextlib.suppress(DicomPressorError):
                    memory.failed[outcome.folder] = folder_state(
                        outcome.folder, ACTIONS[action].inputs
                    )
            else:
                memory.failed.pop(outcome.folder, None)
            on_outcome(outcome)

        jobs = [(folder, None) for folder in ready]
        run_jobs(action, jobs, options, batch, workers=workers, on_outcome=report, stop=stop)
        if scan_state is not None:
            scan_state.save()
        stop.wait(max(0.0, interval_s - (clock() - started)))


def exit_code(outcomes: list[JobOutcome]) -> int:
    """Return 0 when all jobs succeeded, 1 when none did, 3 when some part failed."""
    if not outcomes:
        return EXIT_FAILED
    statuses = [o.status for o in outcomes if o.status != "SKIPPED"]
    if all(s == "OK" for s in statuses):
        return EXIT_OK
    if all(s == "FAILED" for s in statuses):
        return EXIT_FAILED
    return EXIT_PARTIAL


# ==== 8. HTTP API ====

API_KEYS_ENV = "DICOMPRESSOR_API_KEYS"


API_KEY_HEADER = "X-API-Key"
#: The query parameter that may carry the key instead of the header.
API_KEY_PARAM = "api_key"


SESSION_FILE = "session.json"


#: Largest JSON body of a process request.
MAX_JSON_BYTES = 1024 * 1024


#: A body this small that a request did not need is read and dropped so the connection
#: stays usable; a larger one closes the connection instead.
DRAIN_LIMIT_BYTES = 64 * 1024


UPLOAD_CHUNK_BYTES = 256 * 1024


#: The quick start's download name; it stands for the session's one merged file.
MERGED_ALIAS = "merged_multiframe.dcm"


UPLOAD_FIELD = "files"


#: The server's secret for view tokens, kept in the data folder with mode 0600 so that
#: links survive a restart; deleting it revokes every token (a new one is made at start).
VIEW_SECRET_FILE = ".view-secret"


#: The query parameter of a view token (a link to one file of one session).
VIEW_TOKEN_PARAM = "token"


#: Hex digits of a view token: 128 bits of HMAC-SHA256.
VIEW_TOKEN_HEX = 32


MAX_UPLOAD_NAME_CHARS = 120


#: Windows device names, forbidden as a file stem whatever the extension.
WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789¹²³"}
)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings of ``--serve``: where to listen, keys, limits and the data directory."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: Sessions live in <data_dir>/<uuid>/ (input/, output/, session.json).
    data_dir: Path = dataclasses.field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "dicompressor-sessions"
    )
    #: Keys from --api-key; DICOMPRESSOR_API_KEYS and api_keys_file add to them.
    api_keys: tuple[str, ...] = ()
    api_keys_file: Path | None = None
    rate_limit_per_min: int = DEFAULT_RATE_LIMIT_PER_MIN
    session_rate_limit_per_min: int = DEFAULT_SESSION_RATE_LIMIT_PER_MIN
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    max_files: int = DEFAULT_MAX_FILES
    process_timeout_s: float = DEFAULT_PROCESS_TIMEOUT_S
    session_ttl_s: float = DEFAULT_SESSION_TTL_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    #: Worker processes an action may use inside its child process.
    jobs: int = 1
    #: VolView: the viewer's base URL, this server's external base (behind a proxy;
    #: None: taken from the request's Host), and the CORS origin of /api/view.
    volview_url: str = DEFAULT_VOLVIEW_URL
    public_url: str | None = None
    cors_origin: str = DEFAULT_CORS_ORIGIN
    #: Wall clock (session creation and expiry, stored in session.json) and the
    #: monotonic clock of the rate buckets; injectable for tests.
    clock: Callable[[], float] = dataclasses.field(default=time.time, compare=False)
    monotonic: Callable[[], float] = dataclasses.field(default=time.monotonic, compare=False)


class HTTPError(DicomPressorError):
    """A request that fails with an HTTP status; the dispatcher answers ``{"error": ...}``."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, status)
        self.headers = dict(headers or {})


# ---- keys ----


def is_loopback(host: str) -> bool:
    """Tell whether a bind address only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_key(key: str, where: str) -> str:
    """Return a configured key if it is usable; say where the bad one came from."""
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise UsageError(f"API key from {where} must be printable ASCII without spaces")
    return key


def resolve_api_keys(config: ServerConfig, environ: Mapping[str, str]) -> list[str]:
    """Collect the keys of --api-key, DICOMPRESSOR_API_KEYS and the keys file (no dups).

    The keys file holds one key a line; blank lines and ``#`` comments are skipped.
    """
    keys = [_check_key(k.strip(), "--api-key") for k in config.api_keys if k.strip()]
    for part in environ.get(API_KEYS_ENV, "").split(","):
        if part.strip():
            keys.append(_check_key(part.strip(), API_KEYS_ENV))
    if config.api_keys_file is not None:
        try:
            text = config.api_keys_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(
                f"cannot read API keys file {config.api_keys_file}: {reason}"
            ) from exc
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(_check_key(line, f"{config.api_keys_file} line {number}"))
    return list(dict.fromkeys(keys))


# ---- view tokens ----


def load_view_secret(data_dir: Path) -> bytes:
    """Return the view-token secret kept in the data folder; make it (mode 0600) if absent.

    A file that is not 64 hex digits is replaced (every earlier token stops working); one
    that others may read is narrowed to 0600.
    """
    path = data_dir / VIEW_SECRET_FILE
    for _ in range(3):  # another server may be making it at this moment
        try:
            secret = path.read_bytes().strip()
        except FileNotFoundError:
            secret = None
        if secret is not None:
            if re.fullmatch(rb"[0-9a-f]{64}", secret):
                if path.stat().st_mode & 0o077:
                    os.chmod(path, 0o600)
                return secret
            LOG.warning("%s holds no usable secret: a new one is made (old links stop)", path)
            path.unlink()
        secret = secrets.token_hex(32).encode("ascii")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            time.sleep(0.05)
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret + b"\n")
        return secret
    raise DicomPressorError(f"cannot make the view-token secret {path}")


def view_token(secret: bytes, session_id: str, name: str) -> str:
    """Return the token that opens one file of one session, for as long as the session lives.

    HMAC-SHA256 of the session id and the file's listed name under the server's secret:
    it opens no other file, and it dies with its session (ids are never reused).
    """
    message = f"dicompressor view\n{session_id}\n{name}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:VIEW_TOKEN_HEX]


# ---- names ----


def safe_upload_name(filename: str | None, *, default: str = "upload.dcm") -> str:
    """Reduce a client's file name to a safe base name for the session's input folder.

    Directories (``/`` and ``\\``), ``..``, control and shell-hostile characters and
    leading dots go; a Windows device name (CON, NUL, COM1...) gets a ``_`` prefix.
    """
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^\w.+()-]+", "_", base)
    base = re.sub(r"_+", "_", base).strip(" .-")
    if not base.strip("._"):
        return default
    if base.split(".", 1)[0].upper() in WINDOWS_RESERVED:
        base = f"_{base}"
    if len(base) > MAX_UPLOAD_NAME_CHARS:
        stem, dot, suffix = base.rpartition(".")
        if dot and 0 < len(suffix) <= 16:
            base = f"{stem[: MAX_UPLOAD_NAME_CHARS - len(suffix) - 1]}.{suffix}"
        else:
            base = base[:MAX_UPLOAD_NAME_CHARS]
    return base


def canonical_session_id(text: str) -> str | None:
    """Return text as a lower-case UUID if it is one, else None."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    return str(value) if str(value) == text.lower() else None


def listed_files(folder: Path) -> dict[str, Path]:
    """Return {relative POSIX name: path} of the visible regular files under folder.

    Hidden entries (temp files, markers) and symbolic links are left out; a request's
    file name is only ever looked up in this listing, never joined to a path.
    """
    found: dict[str, Path] = {}
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(current)
        for name in sorted(files):
            path = base / name
            if name.startswith(".") or path.is_symlink() or not path.is_file():
                continue
            found[path.relative_to(folder).as_posix()] = path
    return found


def _entries(
    files: dict[str, Path], links: Callable[[str], dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Return the spec's ``[{"name", "size"}]`` list of a listing (with its links)."""
    out = []
    for name, path in files.items():
        with contextlib.suppress(OSError):
            entry: dict[str, Any] = {"name": name, "size": path.stat().st_size}
            if links is not None:
                entry.update(links(name))
            out.append(entry)
    return out


def file_links(
    volview_url: str, public_url: str, session_id: str, name: str, token: str
) -> dict[str, str]:
    """Return a session file's ``view_url`` (VolView's ``?urls=`` form) and ``download_url``.

    Both carry the file's view token, never an API key: VolView sends no custom headers,
    and a third-party site logs the URLs it is given. The view URL is URL-encoded whole
    into VolView's ``urls`` parameter.
    """
    path = f"{quote(session_id, safe='')}/{quote(name, safe='/')}"
    query = f"?{VIEW_TOKEN_PARAM}={token}"
    base = public_url.rstrip("/")
    view = f"{base}/api/view/{path}{query}"
    return {
        "view_url": f"{volview_url.rstrip('/')}/?urls={quote(view, safe='')}",
        "download_url": f"{base}/api/download/{path}{query}",
    }


def unkeyed_file_urls(values: Sequence[str]) -> list[str]:
    """Return the URLs of VolView ``urls`` values that name a file of this API (a view or
    download path) but carry neither a view token nor an API key."""
    found = []
    for value in values:
        for url in value.strip().strip("[]").split(","):
            parts = urlsplit(url.strip())
            if not re.search(r"/api/(view|download)/", parts.path):
                continue
            query = parse_qs(parts.query)
            if VIEW_TOKEN_PARAM not in query and API_KEY_PARAM not in query:
                found.append(url.strip())
    return found


# ---- sessions and rate limits ----


@dataclasses.dataclass
class Session:
    """One session: a folder with input/, output/ and session.json, alive until expires."""

    id: str
    folder: Path
    created: float
    expires: float
    file_count: int = 0
    busy: bool = False

    @property
    def input_dir(self) -> Path:
        """Where uploads go."""
        return self.folder / "input"

    @property
    def output_dir(self) -> Path:
        """Where results go."""
        return self.folder / "output"


class RateLimiter:
    """Token buckets per client: ``per_min`` requests a minute, bursts up to per_min."""

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, now: float) -> float:
        """Take one token for client; return 0, or the seconds until one is free."""
        if self.per_min <= 0:
            return 0.0
        rate = self.per_min / 60.0
        tokens, last = self._buckets.get(client, (float(self.per_min), now))
        tokens = min(float(self.per_min), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / rate

    def prune(self, now: float) -> None:
        """Forget clients whose bucket has filled up again."""
        for client, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.per_min / 60.0 >= self.per_min:
                del self._buckets[client]


class ServerState:
    """Everything the request threads share, behind one lock: sessions, keys, buckets."""

    def __init__(self, config: ServerConfig, keys: Sequence[str]) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._keys = [k.encode("ascii") for k in keys]
        self._sessions: dict[str, Session] = {}
        self._api_rate = RateLimiter(config.rate_limit_per_min)
        self._session_rate = RateLimiter(config.session_rate_limit_per_min)
        self._view_secret = b""

    # -- keys and limits

    def key_ok(self, candidate: str | None) -> bool:
        """Compare a presented key with every configured one in constant time."""
        if not candidate:
            return False
        try:
            presented = candidate.encode("ascii")
        except UnicodeEncodeError:
            return False
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(presented, key)
        return ok

    def view_token(self, session: Session, name: str) -> str:
        """Return the token of a link to one file of a session."""
        return view_token(self._view_secret, session.id, name)

    def token_ok(self, session_text: str, name: str, token: str | None) -> bool:
        """Tell whether token opens the file name of that session (constant time)."""
        sid = canonical_session_id(session_text)
        if sid is None or not token or not self._view_secret:
            return False
        try:
            presented = token.encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(presented, view_token(self._view_secret, sid, name).encode())

    def throttle(self, client: str, *, session_create: bool = False) -> None:
        """Count one request of client; raise 429 with Retry-After past the limit.

        The message names the limit and the server flag that sets it.
        """
        limiter = self._session_rate if session_create else self._api_rate
        with self._lock:
            wait_s = limiter.take(client, self.config.monotonic())
        if wait_s > 0:
            what = "session creations" if session_create else "API requests"
            flag = OPTIONS["session_rate_limit" if session_create else "rate_limit"].flag
            raise HTTPError(
                429,
                f"rate limit exceeded: at most {limiter.per_min} {what} per minute per "
                f"client (the server's {flag}; 0 means unlimited); retry in "
                f"{math.ceil(wait_s)} s",
                headers={"Retry-After": str(math.ceil(wait_s))},
            )

    # -- sessions

    def load(self) -> None:
        """Take up the view-token secret and the sessions left on disk; drop expired ones."""
        root = self.config.data_dir
        root.mkdir(parents=True, exist_ok=True)
        self._view_secret = load_view_secret(root)
        for folder in sorted(root.iterdir()):
            sid = canonical_session_id(folder.name)
            if sid is None or sid != folder.name or not folder.is_dir():
                continue
            info = _read_session_file(folder / SESSION_FILE)
            if info is None:
                continue
            clean_stale_temp(folder / "input", max_age_s=0)
            clean_stale_temp(folder / "output", max_age_s=0)
            session = Session(sid, folder, info[0], info[1])
            session.file_count = len(listed_files(session.input_dir))
            self._sessions[sid] = session
        self.sweep()

    def create(self) -> Session:
        """Make a new session on disk; 503 when the server holds max_sessions already."""
        now = self.config.clock()
        with self._lock:
            if len(self._sessions) >= self.config.max_sessions:
                raise HTTPError(
                    503,
                    f"server busy: {len(self._sessions)} sessions open (limit "
                    f"{self.config.max_sessions}); delete one or retry later",
                )
            sid = str(uuid.uuid4())
            session = Session(
                sid, self.config.data_dir / sid, now, now + self.config.session_ttl_s
            )
            self._sessions[sid] = session
        try:
            session.input_dir.mkdir(parents=True)
            session.output_dir.mkdir()
            record = {"session_id": sid, "created": session.created, "expires": session.expires}
            with atomic_output(session.folder / SESSION_FILE) as handle:
                handle.write(json.dumps(record).encode("utf-8"))
        except OSError as exc:
            with self._lock:
                self._sessions.pop(sid, None)
            shutil.rmtree(session.folder, ignore_errors=True)
            raise HTTPError(500, f"cannot create a session folder: {exc.strerror}") from exc
        return session

    def get(self, text: str) -> Session:
        """Return a live session; 404 for an unknown or expired id."""
        sid = canonical_session_id(text)
        with self._lock:
            session = self._sessions.get(sid) if sid else None
            if session is not None and self._expired(session):
                session = None
        if session is None:
            raise HTTPError(
                404,
                f"no session {one_line(text, limit=80)!r}: unknown or expired (sessions "
                f"last {self.config.session_ttl_s:g} s); create one with POST /api/session",
            )
        return session

    def delete(self, session: Session) -> None:
        """Remove a session and its files; 409 while it is processing."""
        with self._lock:
            if session.busy:
                raise HTTPError(409, f"session {session.id} is processing; retry when it is done")
            self._sessions.pop(session.id, None)
        shutil.rmtree(session.folder, ignore_errors=True)

    def _expired(self, session: Session) -> bool:
        """Tell whether a session is past its time (a busy one lives until it is done)."""
        return not session.busy and self.config.clock() >= session.expires

    def sweep(self) -> list[str]:
        """Delete the expired sessions; return their ids."""
        with self._lock:
            gone = [s for s in self._sessions.values() if self._expired(s)]
            for session in gone:
                del self._sessions[session.id]
            now = self.config.monotonic()
            self._api_rate.prune(now)
            self._session_rate.prune(now)
        for session in gone:
            shutil.rmtree(session.folder, ignore_errors=True)
            LOG.info("Session %s expired and was deleted", session.id)
        return [s.id for s in gone]

    def count(self) -> int:
        """Return the number of live sessions."""
        with self._lock:
            return len(self._sessions)

    def reserve_files(
        self, session: Session, count: int, *, mine: int = 0, more_may_follow: bool = False
    ) -> None:
        """Count count more input files in a session; 413 past max_files.

        mine: the slots this upload has taken already. The message counts the files the
        session's input folder really holds, apart from those still arriving.
        """
        with self._lock:
            if session.file_count + count <= self.config.max_files:
                session.file_count += count
                return
            arriving = session.file_count
        held = len(listed_files(session.input_dir))
        others = max(0, arriving - mine - held)
        adding = f"{mine + count}{' or more' if more_may_follow else ''}"
        elsewhere = f" ({others} more are arriving in other uploads)" if others else ""
        raise HTTPError(
            413,
            f"too many files: session {session.id} holds {held} file(s){elsewhere} and "
            f"this upload adds {adding}, past the limit of {self.config.max_files} per "
            "session",
        )

    def release_files(self, session: Session, count: int) -> None:
        """Give back reserved file slots of an upload that failed."""
        with self._lock:
            session.file_count = max(0, session.file_count - count)

    @contextlib.contextmanager
    def processing(self, session: Session) -> Iterator[None]:
        """Mark a session busy for one process call; 409 if another one runs."""
        with self._lock:
            if session.busy:
                raise HTTPError(
                    409,
                    f"session {session.id} is already processing; wait for that call to end",
                )
            session.busy = True
        try:
            yield
        finally:
            with self._lock:
                session.busy = False


def _read_session_file(path: Path) -> tuple[float, float] | None:
    """Return (created, expires) from a session.json, or None if it is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return float(data["created"]), float(data["expires"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---- process requests ----


def process_request(
    payload: Any, output_dir: Path, *, jobs: int = 1
) -> tuple[ActionSpec, Options]:
    """Check a process request body and build the action's Options; 400 on any fault.

    The body is ``{"action": NAME, "params": TEXT, "options": {...}}``: params only for
    an action that takes them (checked line by line here by the action's parse_params,
    before anything runs), options keyed by the option names of the action (OPTIONS),
    checked as the command line checks them.
    """
    if not isinstance(payload, dict):
        raise HTTPError(400, 'the request body must be a JSON object like {"action": "merge"}')
    action = payload.get("action")
    if action is None:
        raise HTTPError(
            400, f'no action given: send {{"action": NAME}} with one of {", ".join(ACTIONS)}'
        )
    if not isinstance(action, str) or action not in ACTIONS:
        shown = json.dumps(action)
        raise HTTPError(400, f"unknown action {shown}: use one of {', '.join(ACTIONS)}")
    spec = ACTIONS[action]
    params = payload.get("params")
    if params is not None and not isinstance(params, str):
        raise HTTPError(400, "params must be a string: the lines of a params file")
    if params and not spec.params:
        takers = ", ".join(name for name, other in ACTIONS.items() if other.params)
        raise HTTPError(400, f"params is only for {takers}, not {action}")
    if params and spec.parse_params is not None:
        try:
            spec.parse_params(params)
        except DicomPressorError as exc:
            raise HTTPError(400, f"bad params: {exc.message}") from exc
    raw = payload.get("options") or {}
    if not isinstance(raw, dict):
        raise HTTPError(400, "options must be a JSON object of option names and values")
    try:
        given = {}
        for key, value in raw.items():
            name = str(key).replace("-", "_")
            option = action_option(spec, name, api_label, repr(key))
            given[name] = parse_option(option, value, api_label)
        options = action_options(
            spec,
            given,
            api_label,
            output_dir=output_dir,
            keep_beside=False,
            jobs=jobs,
            params=params if spec.params else None,
            uid_secret=secrets.token_hex(16),
        )
    except DicomPressorError as exc:
        raise HTTPError(400, exc.message) from exc
    return spec, options


def _process_child(
    action: str, folder: str, inputs: list[str], options: Options, conn: Any
) -> None:
    """Run one action in the child process and send its JobOutcome back through conn."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpgid(0, 0)  # so a timeout also kills what the action started (ffmpeg)
    tune_malloc()
    warnings.filterwarnings("ignore", module="pydicom")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    LOG.handlers[:] = [logging.NullHandler()]  # the log goes back to the server in the outcome
    LOG.propagate = False
    paths = [Path(p) for p in inputs]
    try:
        outcome = run_job(ACTIONS[action], Path(folder), paths, options, _no_progress)
    except BaseException as exc:  # the parent must hear back whatever happened
        outcome = JobOutcome(Path(folder), len(paths), None, job_failure(exc))
    conn.send(outcome)
    conn.close()


def _mp_context() -> Any:
    """Return the multiprocessing context of the child processes (no fork of threads)."""
    import multiprocessing  # only the server needs it here: a CLI run starts without it

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def _tree(folder: Path) -> set[str]:
    """Return the relative names of every entry under folder, hidden ones included."""
    return {
        str(Path(current, name).relative_to(folder))
        for current, dirs, files in os.walk(folder)
        for name in (*dirs, *files)
    }


def remove_new_entries(folder: Path, before: set[str]) -> list[str]:
    """Remove what appeared under folder since before was taken; return the names."""
    added = sorted(_tree(folder) - before, key=lambda n: n.count(os.sep), reverse=True)
    for name in added:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return added


def _kill(process: Any) -> None:
    """Kill a child process and its process group, and reap it."""
    with contextlib.suppress(OSError, AttributeError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        process.kill()
    process.join(10)


def run_isolated(
    spec: ActionSpec, folder: Path, inputs: list[Path], options: Options, timeout_s: float
) -> JobOutcome:
    """Run an action in a child process; past timeout_s kill it, remove its outputs, 504."""
    assert options.output_dir is not None
    ctx = _mp_context()
    before = _tree(options.output_dir)
    receiver, sender = ctx.Pipe(duplex=False)
    args = (spec.name, str(folder), [str(p) for p in inputs], options, sender)
    child = ctx.Process(target=_process_child, args=args, name=f"dicompressor-{spec.name}")
    try:
        child.start()
        sender.close()
        if not receiver.poll(timeout_s):
            _kill(child)
            removed = remove_new_entries(options.output_dir, before)
            raise HTTPError(
                504,
                f"processing timed out: {spec.name} ran past the {timeout_s:g} s limit, was "
                f"stopped and its {len(removed)} partial output(s) removed",
            )
        try:
            outcome: JobOutcome = receiver.recv()
        except EOFError:
            child.join(10)
            remove_new_entries(options.output_dir, before)
            raise HTTPError(
                500, f"{spec.name} stopped unexpectedly (exit code {child.exitcode})"
            ) from None
        child.join(30)
        return outcome
    finally:
        receiver.close()
        if child.is_alive():
            _kill(child)


# ---- request bodies ----


class BodyReader:
    """Read a request body (Content-Length or chunked) and stop at the byte limit (413)."""

    def __init__(
        self, rfile: BinaryIO, *, length: int | None, chunked: bool, limit_bytes: int
    ) -> None:
        self.rfile = rfile
        self.length = length
        self.chunked = chunked
        self.limit_bytes = limit_bytes
        self.received = 0
        self.done = length == 0 or (length is None and not chunked)
        self._chunk_left = 0

    def _count(self, data: bytes) -> bytes:
        """Count data against the limit."""
        self.received += len(data)
        if self.received > self.limit_bytes:
            raise HTTPError(
                413,
                f"request body too large: more than {self.limit_bytes / 1048576:g} MB "
                f"(limit {self.limit_bytes} bytes per request)",
            )
        return data

    def read(self, size: int) -> bytes:
        """Return up to size bytes of the body, b"" at its end."""
        if self.done:
            return b""
        if not self.chunked:
            assert self.length is not None
            data = self.rfile.read(min(size, self.length - self.received))
            if not data:
                raise HTTPError(
                    400,
                    f"request body truncated: got {self.received} of {self.length} bytes",
                )
            self._count(data)
            self.done = self.received >= self.length
            return data
        if self._chunk_left == 0:
            line = self.rfile.readline(1024)
            try:
                self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPError(400, "malformed chunked request body") from None
            if self._chunk_left == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields
                self.done = True
                return b""
        data = self.rfile.read(min(size, self._chunk_left))
        if not data:
            raise HTTPError(400, f"request body truncated after {self.received} bytes")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self.rfile.readline(16)  # the CRLF after the chunk
        return self._count(data)

    def read_all(self) -> bytes:
        """Return the whole (small) body."""
        parts = []
        while chunk := self.read(UPLOAD_CHUNK_BYTES):
            parts.append(chunk)
        return b"".join(parts)

    def drain(self) -> None:
        """Read and drop what is left of the body."""
        while self.read(UPLOAD_CHUNK_BYTES):
            pass


# ---- zip archives ----


#: Compression methods a zip entry may use: those every zip tool writes. bzip2 and LZMA
#: are refused because their decompressors cannot bound the memory one read takes.
ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})


def is_zip_name(name: str) -> bool:
    """Tell whether an uploaded file is a zip archive to unpack (by its ``.zip`` ending)."""
    return name.lower().endswith(".zip")


def archive_member_name(member: str) -> str | None:
    """Return the input name of a zip entry, or None to pass it over.

    Folders become part of the name (``a/b/x.dcm`` -> ``a_b_x.dcm``), so nested files
    keep distinct names and nothing lands outside the session's input folder; ``.`` and
    ``..`` are dropped. Hidden entries and macOS's ``__MACOSX`` folder are passed over.
    """
    parts = [p for p in member.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return safe_upload_name("_".join(parts))


@dataclasses.dataclass
class ArchivePlan:
    """An uploaded zip, checked: the entries to unpack and the names they get."""

    path: Path
    name: str
    members: list[tuple[zipfile.ZipInfo, str]]

    @property
    def unpacked_bytes(self) -> int:
        """What its entries take once unpacked (their declared sizes, which bound them)."""
        return sum(info.file_size for info, _ in self.members)


def _broken(name: str, reason: str) -> HTTPError:
    """Return the 400 of an archive that cannot be unpacked, naming it."""
    return HTTPError(400, f"broken zip archive {name!r}: {one_line(reason, limit=200)}")


def plan_archive(path: Path, name: str) -> ArchivePlan:
    """Read a zip's directory and choose what to unpack; 400 naming a broken archive.

    Nothing is written here. Directories and symbolic links are passed over; an
    encrypted entry, or one compressed other than stored or deflate, is refused.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise _broken(name, str(exc) or type(exc).__name__) from None
    members = []
    for info in infos:
        if info.is_dir() or (info.external_attr >> 16) & 0o170000 == 0o120000:
            continue
        if info.flag_bits & 0x1:
            raise HTTPError(
                400,
                f"zip archive {name!r}: entry {info.filename!r} is encrypted; "
                "upload an unencrypted zip",
            )
        if info.compress_type not in ZIP_METHODS:
            raise HTTPError(
                400,
                f"zip archive {name!r}: entry {info.filename!r} uses compression "
                f"method {info.compress_type}; zip it again with deflate (the usual one)",
            )
        target = archive_member_name(info.filename)
        if target is not None:
            members.append((info, target))
    if not members:
        raise HTTPError(400, f"zip archive {name!r} holds no files to process")
    return ArchivePlan(path, name, members)


def unpack_archive(plan: ArchivePlan, folder: Path, staged: list[tuple[Path, str]]) -> None:
    """Unpack the planned entries to hidden temp files in folder, appending them to staged.

    zipfile stops every entry at its declared size and checks its CRC, so what is
    written never exceeds ``plan.unpacked_bytes``; a damaged entry is a 400.
    """
    try:
        with zipfile.ZipFile(plan.path) as archive:
            for info, target in plan.members:
                tmp = temp_path(folder / target)
                staged.append((tmp, target))
                with archive.open(info) as source, tmp.open("xb") as handle:
                    shutil.copyfileobj(source, handle, UPLOAD_CHUNK_BYTES)
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as exc:
        raise _broken(plan.name, str(exc) or type(exc).__name__) from None


# ---- the OpenAPI description and the action list ----


def _error_responses(*codes: int) -> dict[str, Any]:
    """Return OpenAPI responses for error codes, each the spec's ``{"error": ...}``."""
    meaning = {
        400: "Bad request: invalid JSON, unknown action, no files, bad params or a broken "
        "zip archive",
        401: "Invalid or missing API key (or view token)",
        404: "Unknown session or file",
        409: "The session is busy with another process call",
        413: "Upload too large (zip archives count unpacked), or too many files in the session",
        416: "Range not satisfiable (see Content-Range: bytes */size)",
        429: "Rate limit exceeded (see Retry-After)",
        431: "A header line longer than 65536 bytes, or more than 100 header fields",
        503: "Maximum number of sessions reached",
        504: "Processing exceeded the time limit",
    }
    out: dict[str, Any] = {}
    for code in codes:
        response: dict[str, Any] = {
            "description": meaning[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if code == 429:
            response["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
            }
        if code == 416:
            response["headers"] = {
                "Content-Range": {"schema": {"type": "string"}, "description": "bytes */SIZE"}
            }
        out[str(code)] = response
    return out


def _json_response(description: str, schema: str | None) -> dict[str, Any]:
    """Return a response with a JSON body of a component schema (None: any object)."""
    body = {"$ref": f"#/components/schemas/{schema}"} if schema else {"type": "object"}
    return {"description": description, "content": {"application/json": {"schema": body}}}


def option_schema(option: OptionSpec) -> dict[str, Any]:
    """Return the JSON schema of an option's value in a process request's ``options``."""
    schema: dict[str, Any]
    if option.kind == "flag":
        schema = {"type": "boolean"}
    elif option.kind == "choice":
        schema = {"type": "string", "enum": list(option.choices)}
    elif option.kind in ("number", "integer"):
        schema = {"type": option.kind}
        if option.choices:
            schema["enum"] = list(option.choices)
        for key, bound in (
            ("minimum", option.minimum),
            ("exclusiveMinimum", option.above),
            ("maximum", option.maximum),
        ):
            if bound is not None:
                schema[key] = bound
    elif option.kind == "window":
        schema = {
            "oneOf": [
                {"type": "string", "description": '"CENTRE,WIDTH", e.g. "40,400"'},
                {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
            ]
        }
    else:
        schema = {"type": "string"}
    schema["description"] = option.help + option.other_spellings  # enum: the choices only
    if option.default is not None:
        schema["default"] = option.default
    return schema


def api_option_schemas(spec: ActionSpec) -> dict[str, dict[str, Any]]:
    """Return the schema of each option a process request for spec may give, by name."""
    return {o.name: option_schema(o) for o in spec.options if o.api}


def action_request_schema(spec: ActionSpec) -> dict[str, Any]:
    """Return the schema of a process request for one action: its options and params."""
    properties: dict[str, Any] = {
        "action": {"const": spec.name},
        "options": {
            "type": "object",
            "properties": api_option_schemas(spec),
            "additionalProperties": False,
        },
    }
    if spec.params:
        properties["params"] = {
            "type": "string",
            "description": spec.params_help,
            "examples": [spec.params_example],
        }
    return {
        "type": "object",
        "description": spec.summary,
        "properties": properties,
        "required": ["action"],
    }


@functools.cache
def action_listing() -> dict[str, Any]:
    """Return ``GET /api/actions``: every action with its flag, summary and options.

    Made once from the registries: every call returns the same object, not to be changed.
    """
    actions = []
    for spec in ACTIONS.values():
        options = [
            {"name": name, "kind": OPTIONS[name].kind, **schema}
            for name, schema in api_option_schemas(spec).items()
        ]
        actions.append(
            {
                "name": spec.name,
                "flag": spec.flag,
                "summary": spec.summary,
                "params": spec.params,
                "params_help": spec.params_help,
                "params_example": spec.params_example,
                "options": options,
            }
        )
    return {"actions": actions}


#: OpenAPI responses of the non-JSON answers.
_HTML_PAGE = {
    "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_FILE_CONTENT = {"application/octet-stream": _BINARY, "application/dicom": _BINARY}
_VALIDATORS = {
    "ETag": {"schema": {"type": "string"}, "description": "changes when the file does"},
    "Last-Modified": {"schema": {"type": "string"}, "description": "an HTTP date"},
}
_A_FILE = {
    "200": {
        "description": "The file (Accept-Ranges: bytes)",
        "headers": _VALIDATORS,
        "content": _FILE_CONTENT,
    },
    "206": {
        "description": "The part a Range header asked for (one range of bytes)",
        "headers": {
            "Content-Range": {"schema": {"type": "string"}, "description": "bytes A-B/SIZE"},
            **_VALIDATORS,
        },
        "content": _FILE_CONTENT,
    },
    "304": {"description": "Not modified (If-None-Match or If-Modified-Since)"},
}
#: Errors every request can meet, whatever its path.
_ANY_REQUEST_ERRORS = (431,)
#: Errors answered before a request is routed (so no operation owns them); OpenAPI lists
#: them under components/responses, and the info says so.
_UNROUTED_ERRORS = {
    "MalformedRequest": (400, "a malformed request line"),
    "RequestLineTooLong": (414, "a request line longer than 65536 bytes"),
    "HeaderFieldsTooLarge": (
        431,
        "a header line longer than 65536 bytes or more than 100 header fields",
    ),
    "MethodNotImplemented": (501, "a method this API implements on no path (PUT, PATCH...)"),
    "HTTPVersionNotSupported": (505, "an HTTP version other than 1.x"),
}
_MULTIPART_FILES = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
                "required": ["files"],
            }
        }
    },
}
_PROCESS_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProcessRequest"}}},
}
#: Errors of every request that needs a key (Route.auth).
_AUTH_ERRORS = (401, 429)
#: Errors of every request on a session's path, beyond _AUTH_ERRORS.
_SESSION_ERRORS = (404,)
#: OpenAPI's description of the path parameters.
PATH_PARAMETERS = {
    "session_id": "Session UUID from POST /api/session",
    "name": "A file name from output_files or GET /api/files (merged_multiframe.dcm stands "
    "for the session's one merged file)",
}


@dataclasses.dataclass(frozen=True)
class Route:
    """One endpoint: how it is matched, which handler answers it, what OpenAPI says of it.

    ``path`` is OpenAPI's form (``/api/view/{session_id}/{name}``); a trailing slash also
    matches without it. ``ok`` holds the OpenAPI responses of success, ``errors`` the
    error statuses it answers (auth adds 401 and 429), ``body`` its request body; ``auth``
    says it needs a key, ``token`` that a view token for its one file (``?token=``) does
    too, ``cors`` that its answers, errors included, carry the CORS headers (a viewer on
    another site can then show why it failed).
    """

    method: str
    path: str
    handler: str
    summary: str
    ok: Mapping[str, Any]
    errors: tuple[int, ...] = ()
    body: Mapping[str, Any] | None = None
    auth: bool = True
    query: tuple[str, ...] = ()
    token: bool = False
    cors: bool = False

    @functools.cached_property
    def pattern(self) -> re.Pattern[str]:
        """The regular expression that matches a request path (groups: the parameters)."""
        parts = re.split(r"(\{session_id\}|\{name\})", self.path)
        groups = {"{session_id}": "([^/]+)", "{name}": "(.+)"}
        text = "".join(groups.get(part, re.escape(part)) for part in parts)
        if self.path.endswith("/") and len(self.path) > 1:
            text += "?"
        return re.compile(text)

    @property
    def operation_id(self) -> str:
        """OpenAPI's operationId: the handler's name in camelCase."""
        first, *rest = self.handler.split("_")
        return first + "".join(word.title() for word in rest)

    def operation(self) -> dict[str, Any]:
        """Return this route's OpenAPI operation object."""
        names = re.findall(r"\{(\w+)\}", self.path)
        parameters = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"},
             "description": PATH_PARAMETERS[n]}
            for n in names
        ]  # fmt: skip
        parameters += [
            {"name": n, "in": "query", "schema": {"type": "string"}} for n in self.query
        ]
        operation: dict[str, Any] = {"summary": self.summary, "operationId": self.operation_id}
        if self.auth:
            operation["security"] = [{"ApiKeyHeader": []}, {"ApiKeyQuery": []}]
            if self.token:
                operation["security"].append({"ViewToken": []})
        if parameters:
            operation["parameters"] = parameters
        if self.body is not None:
            operation["requestBody"] = self.body
        errors = sorted({*self.errors, *_ANY_REQUEST_ERRORS, *(_AUTH_ERRORS if self.auth else ())})
        operation["responses"] = {**self.ok, **_error_responses(*errors)}
        return operation


ROUTES = (
    Route("GET", "/", "index_page", "The web page", _HTML_PAGE, auth=False),
    Route("GET", "/volview/", "volview_redirect",
          "Redirect to the configured VolView, keeping the query (a page saying to use the "
          "file's view_url when the link to this server carries neither token nor key)",
          {"302": {"description": "Redirect to VolView"},
           "400": {"description": "The link cannot work: a page in plain words",
                   "content": {"text/html": {"schema": {"type": "string"}}}}},
          auth=False, query=("urls",)),
    Route("GET", "/api/openapi.json", "openapi", "This description",
          {"200": _json_response("OpenAPI 3.1 document", None)}, auth=False),
    Route("GET", "/api/health", "health", "Health check (no key needed)",
          {"200": _json_response("The server is up", "Health")}, auth=False),
    Route("GET", "/api/actions", "actions",
          "The actions with their options (the web page's form)",
          {"200": _json_response("Every action", "ActionList")}, auth=False),
    Route("POST", "/api/session", "create_session", "Create a session",
          {"200": _json_response("The new session", "Session")}, (503,)),
    Route("DELETE", "/api/session/{session_id}", "delete_session",
          "Delete a session and its files",
          {"200": _json_response("Deleted", "Deleted")}, (*_SESSION_ERRORS, 409)),
    Route("POST", "/api/upload/{session_id}", "upload",
          "Upload DICOM files (multipart field files, several per request)",
          {"200": _json_response("Files stored", "UploadResult")},
          (400, *_SESSION_ERRORS, 413), _MULTIPART_FILES),
    Route("GET", "/api/files/{session_id}", "list_files", "List input and output files",
          {"200": _json_response("The session's files", "FileList")}, _SESSION_ERRORS),
    Route("POST", "/api/process/{session_id}", "process",
          "Run an action on the uploaded files",
          {"200": _json_response("The action ran", "ProcessResult")},
          (400, *_SESSION_ERRORS, 409, 504), _PROCESS_BODY),
    Route("GET", "/api/download/{session_id}/{name}", "download",
          "Download a file (attachment, application/octet-stream; Range, If-None-Match)",
          _A_FILE, (*_SESSION_ERRORS, 416), token=True),
    Route("GET", "/api/view/{session_id}/{name}", "view",
          "Serve a file inline as application/dicom (for VolView; CORS; Range, "
          "If-None-Match)", _A_FILE, (*_SESSION_ERRORS, 416), token=True, cors=True),
    Route("OPTIONS", "/api/view/{session_id}/{name}", "view_preflight", "CORS preflight",
          {"204": {"description": "CORS headers"}}, auth=False, cors=True),
)  # fmt: skip


def _object(properties: Mapping[str, Any], *required: str) -> dict[str, Any]:
    """Return the schema of a JSON object with these properties (all given ones required)."""
    return {"type": "object", "properties": dict(properties), "required": list(required)}


def _list_of(schema: str) -> dict[str, Any]:
    """Return the schema of an array of a component schema."""
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{schema}"}}


@functools.cache
def api_schemas() -> dict[str, Any]:
    """Return the component schemas of the API's JSON bodies (per action: its request).

    Made once from the registries: every call returns the same object, not to be changed.
    """
    names = list(ACTIONS)
    per_action = {f"Process_{name}": action_request_schema(s) for name, s in ACTIONS.items()}
    text, count = {"type": "string"}, {"type": "integer", "minimum": 0}
    action_entry = _object(
        {"name": {"type": "string", "enum": names}, "flag": text, "summary": text,
         "params": {"type": "boolean"}, "params_help": text, "params_example": text,
         "options": {"type": "array", "items": {"type": "object"}}},
        "name", "flag", "summary", "params", "params_help", "params_example", "options",
    )  # fmt: skip
    process_request = _object(
        {"action": {"type": "string", "enum": names},
         "params": {"type": "string", "description": "the params text of an action that "
                    "takes one (Process_<action>)"},
         "options": {"type": "object", "description": "the action's options (Process_<action>)"}},
        "action",
    )  # fmt: skip
    process_request["oneOf"] = [{"$ref": f"#/components/schemas/{n}"} for n in per_action]
    process_request["discriminator"] = {
        "propertyName": "action",
        "mapping": {name: f"#/components/schemas/Process_{name}" for name in names},
    }
    return {
        "Error": _object({"error": text}, "error"),
        "Health": _object(
            {
                "status": text,
                "version": text,
                "session_ttl_s": {"type": "number"},
                "max_upload_bytes": count,
                "max_files": count,
                "rate_limit_per_min": {**count, "description": "0: unlimited"},
                "session_rate_limit_per_min": {**count, "description": "0: unlimited"},
            },
            "status",
            "version",
        ),  # fmt: skip
        "Session": _object({"session_id": {"type": "string", "format": "uuid"}}, "session_id"),
        "Deleted": _object({"deleted": text}, "deleted"),
        "UploadResult": _object(
            {"uploaded": count, "files": {"type": "array", "items": text}}, "uploaded", "files"
        ),
        "FileEntry": _object(
            {
                "name": text,
                "size": count,
                "view_url": {
                    "type": "string",
                    "description": "Opens it in VolView (the link carries a view token "
                    "for this one file, valid while the session lives)",
                },
                "download_url": {
                    "type": "string",
                    "description": "Downloads it without a key (the same view token)",
                },
            },
            "name",
            "size",
        ),  # fmt: skip
        "FileList": _object(
            {"input": _list_of("FileEntry"), "output": _list_of("FileEntry")}, "input", "output"
        ),
        "ProcessRequest": process_request,
        **per_action,
        "ActionList": _object({"actions": {"type": "array", "items": action_entry}}, "actions"),
        "ProcessResult": _object(
            {
                "success": {"type": "boolean"},
                "action": text,
                "log": text,
                "output_files": _list_of("FileEntry"),
                "warnings": {
                    "type": "array",
                    "items": MERGE_WARNING_SCHEMA,
                    "description": "What readers will get wrong in an output (merge); "
                    "output names the file as output_files does",
                },
            },
            "success",
            "action",
            "log",
            "output_files",
            "warnings",
        ),  # fmt: skip
    }


def openapi_document(server_url: str) -> dict[str, Any]:
    """Return the OpenAPI 3.1 description of every endpoint the server answers (ROUTES)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = route.operation()
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    *first, last = (f"{code} for {what}" for code, what in _UNROUTED_ERRORS.values())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DicomPressor API",
            "version": __version__,
            "description": "Upload, process (merge, split, compress, anonymize, export...) "
            "and download DICOM files. Every /api/ endpoint but health, actions and this "
            f"document needs an API key, in the {API_KEY_HEADER} header or the "
            f"{API_KEY_PARAM} query parameter; download and view also open with the view "
            "token of a file's view_url or download_url. Every error is JSON "
            '{"error": ...}, also those answered before a request reaches an endpoint '
            f"(components/responses): {', '.join(first)}, and {last}. A method the API has, "
            "on a path without it, is 405 with Allow.",
        },
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
                "ApiKeyQuery": {"type": "apiKey", "in": "query", "name": API_KEY_PARAM},
                "ViewToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": VIEW_TOKEN_PARAM,
                    "description": "Opens one file of one session until the session "
                    "expires; given in view_url and download_url",
                },
            },
            "responses": {
                name: {"description": f"{code}: {what}", "content": error_body}
                for name, (code, what) in _UNROUTED_ERRORS.items()
            },
            "schemas": api_schemas(),
        },
    }


# ---- the web page ----

#: The page served at ``/``: plain HTML, CSS and JavaScript, no build step, no external
#: assets. It uses the public API only: the key goes in the X-API-Key header, links for
#: downloads and VolView are the files' download_url and view_url (a view token, never
#: the key). Uploads go in batches under the limits GET /api/health reports, and a 429
#: is waited out (Retry-After) before the same request goes again.
WEB_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>DicomPressor</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
  header { background: #1d3557; color: #fff; padding: 14px 24px; }
  header h1 { margin: 0; font-size: 20px; }
  main { max-width: 920px; margin: 0 auto; padding: 16px 24px 48px; }
  section { background: #fff; border-radius: 8px; padding: 14px 18px; margin: 14px 0;
            box-shadow: 0 1px 3px rgba(0,0,0,.12); }
  h2 { font-size: 16px; margin: 0 0 10px; }
  label { display: inline-block; margin: 4px 12px 4px 0; }
  input[type=text], input[type=password], input[type=number], select, textarea {
    font: inherit; padding: 5px 7px; border: 1px solid #b8bfcc; border-radius: 5px; }
  textarea { width: 100%; box-sizing: border-box; min-height: 90px; font-family: monospace; }
  button { font: inherit; padding: 6px 14px; border: 0; border-radius: 5px;
           background: #2a6fdb; color: #fff; cursor: pointer; }
  button:disabled { background: #9aa5b8; cursor: default; }
  #drop { border: 2px dashed #9aa5b8; border-radius: 8px; padding: 18px; text-align: center;
          color: #4a5568; margin: 8px 0; }
  #drop.over { border-color: #2a6fdb; background: #eef4ff; }
  progress { width: 100%; height: 14px; }
  pre#log { background: #10151f; color: #d7e0ef; padding: 10px; border-radius: 6px;
            max-height: 260px; overflow: auto; white-space: pre-wrap; margin: 0; }
  table { border-collapse: collapse; width: 100%; }
  td, th { text-align: left; padding: 4px 6px; border-bottom: 1px solid #e3e6ec; }
  .error { color: #b42318; font-weight: 600; }
  .muted { color: #6b7280; }
  .hidden { display: none; }
</style>
</head>
<body>
<header><h1>DicomPressor</h1></header>
<main>
<section>
  <h2>1. API key</h2>
  <label>Key <input id="key" type="password" size="40" autocomplete="off"></label>
  <button id="save-key" type="button">Remember</button>
  <span id="key-state" class="muted"></span>
</section>
<section>
  <h2>2. Files</h2>
  <div id="drop">Drop DICOM files, .zip archives or a folder here, or choose
    <label>files <input id="files" type="file" multiple></label>
    <label>a folder <input id="folder" type="file" webkitdirectory multiple></label></div>
  <progress id="progress" value="0" max="1"></progress>
  <div id="upload-state" class="muted">No session yet.</div>
  <div id="wait-state" class="muted"></div>
  <div><span id="expiry" class="muted"></span>
    <button id="new-session" type="button">New session</button></div>
</section>
<section>
  <h2>3. Action</h2>
  <label>Action <select id="action"></select></label>
  <span id="action-summary" class="muted"></span>
  <div id="opts"></div>
  <div id="params-box" class="hidden">
    <div id="params-help" class="muted"></div>
    <textarea id="params"></textarea>
  </div>
  <p><button id="run" type="button">Run</button> <span id="run-state" class="muted"></span></p>
</section>
<section>
  <h2>4. Log</h2>
  <pre id="log"></pre>
</section>
<section>
  <h2>5. Results</h2>
  <table><thead><tr><th>File</th><th>Size</th><th></th><th></th></tr></thead>
  <tbody id="results"></tbody></table>
</section>
</main>
<script>
"use strict";
let ACTIONS = {};  // GET /api/actions: the registry, so the form never lags the server
const BATCH = 50;          // files per upload request at most (the docs' fast batch)
const PART_BYTES = 1024;   // room for each file's multipart header
const MAX_WAITS = 30;      // 429s one request waits out before it gives up
const $ = (id) => document.getElementById(id);
let session = null, sessionTtl = null, created = 0, held = 0, clock = null;
let limits = {};  // session_ttl_s and the limits: GET /api/health, read before a session

function say(text, cls) {
  const line = document.createElement("div");
  if (cls) line.className = cls;
  line.textContent = text;
  $("log").appendChild(line);
  $("log").scrollTop = $("log").scrollHeight;
}
function key() { return $("key").value.trim(); }
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
async function waitOut(seconds, why) {
  say("[WAIT] " + why.replace(/[.]?$/, ".") + " Waiting " + seconds +
      " s (Retry-After), then going on.");
  for (let left = seconds; left > 0; left--) {
    $("wait-state").textContent = "Rate limit reached: going on in " + left + " s.";
    await sleep(1000);
  }
  $("wait-state").textContent = "";
}
async function api(method, path, body, isJson) {
  const headers = {"X-API-Key": key()};
  if (isJson) headers["Content-Type"] = "application/json";
  for (let waits = 0; ; waits++) {
    let response;
    try {
      response = await fetch(path, {method, headers, body});
    } catch (e) {
      throw new Error("The server cannot be reached (" + e.message + ").");
    }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    const why = data && data.error ? data.error : response.statusText;
    if (response.status === 429 && waits < MAX_WAITS) {
      const seconds = Math.max(1, parseInt(response.headers.get("Retry-After"), 10) || 1);
      await waitOut(seconds, why);
      continue;
    }
    if (!response.ok) {
      const plain = {401: "The API key was refused. Check the key above.",
                     413: "The upload is too large.", 429: "Too many requests.",
                     503: "The server is busy (too many sessions).",
                     504: "Processing took too long and was stopped."}[response.status];
      throw new Error((plain ? plain + " " : "") + why);
    }
    return data;
  }
}
function showClock() {
  if (!session) { $("expiry").textContent = "No session yet."; return; }
  const left = Math.round((created + sessionTtl * 1000 - Date.now()) / 1000);
  if (left <= 0) {
    $("expiry").textContent = "Session " + session + " has expired; the next upload " +
      "starts a new one.";
    session = null; held = 0;
    return;
  }
  const mm = Math.floor(left / 60), ss = String(left % 60).padStart(2, "0");
  const at = new Date(created + sessionTtl * 1000).toLocaleTimeString();
  $("expiry").textContent = "Session " + session + " expires in " + mm + ":" + ss +
    " (at " + at + ").";
}
async function readLimits() {
  const health = await api("GET", "/api/health");
  if (health && health.session_ttl_s) sessionTtl = health.session_ttl_s;
  if (health && health.max_upload_bytes) limits = health;
}
async function ensureSession() {
  if (session) return session;
  await readLimits();
  session = (await api("POST", "/api/session")).session_id;
  created = Date.now(); held = 0;
  if (!clock) clock = setInterval(showClock, 1000);
  showClock();
  return session;
}
async function newSession() {
  $("new-session").disabled = true;
  try {
    if (session) {
      try { await api("DELETE", "/api/session/" + session); } catch (e) { /* gone already */ }
      say("[INFO] Session " + session + " deleted.");
    }
    session = null;
    $("results").textContent = ""; $("progress").value = 0;
    $("upload-state").textContent = "No files yet.";
    await ensureSession();
    say("[INFO] New session " + session + ".");
  } catch (e) { say(e.message, "error"); }
  finally { $("new-session").disabled = false; }
}
function batches(files) {
  // Cut the files into requests under the server's limits: BATCH files, max_upload_bytes.
  const room = limits.max_upload_bytes - PART_BYTES;
  const out = [];
  let batch = [], bytes = 0;
  for (const f of files) {
    if (f.size + PART_BYTES > room) {
      throw new Error(f.name + " is " + (f.size / 1048576).toFixed(1) + " MB: more than the " +
        "server takes in one request (" + (limits.max_upload_bytes / 1048576).toFixed(0) +
        " MB).");
    }
    if (batch.length && (batch.length >= BATCH || bytes + f.size + PART_BYTES > room)) {
      out.push(batch); batch = []; bytes = 0;
    }
    batch.push(f); bytes += f.size + PART_BYTES;
  }
  if (batch.length) out.push(batch);
  return out;
}
async function upload(files) {
  if (!files.length) return;
  try {
    await ensureSession();
    const plain = files.filter((f) => !f.name.toLowerCase().endsWith(".zip")).length;
    if (held + plain > limits.max_files) {
      throw new Error("This session holds " + held + " file(s) and takes at most " +
        limits.max_files + "; " + plain + " more do not fit. Start a new session or " +
        "choose fewer files.");
    }
    const parts = batches(files);
    $("progress").max = files.length; $("progress").value = 0;
    let sent = 0, done = 0;
    for (const batch of parts) {
      const form = new FormData();
      for (const f of batch) form.append("files", f, f.name);
      const result = await api("POST", "/api/upload/" + session, form, false);
      done += result.uploaded; held += result.uploaded; sent += batch.length;
      $("progress").value = sent;
      $("upload-state").textContent = "Uploaded " + done + " file(s) from " + sent + " of " +
        files.length + " chosen (" + parts.length + " request(s)).";
    }
    say("[INFO] Uploaded " + done + " file(s).");
  } catch (e) { say(e.message, "error"); $("upload-state").textContent = e.message; }
}
async function walk(entry, out) {
  if (entry.isFile) {
    await new Promise((ok) => entry.file((f) => { out.push(f); ok(); }, ok));
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok) => reader.readEntries(ok, () => ok([])));
      if (!batch.length) break;
      for (const child of batch) await walk(child, out);
    }
  }
}
async function loadActions() {
  let data;
  try {
    const response = await fetch("/api/actions");
    data = await response.json();
  } catch (e) { say("Cannot load the actions (" + e.message + ").", "error"); return; }
  for (const action of data.actions) {
    ACTIONS[action.name] = action;
    const o = document.createElement("option");
    o.value = o.textContent = action.name; o.title = action.summary;
    $("action").appendChild(o);
  }
  fillOptions();
}
function optionInput(option) {
  let input;
  if (option.enum) {
    input = document.createElement("select");
    for (const v of option.enum) {
      const o = document.createElement("option");
      o.value = o.textContent = String(v);
      if (v === option.default) o.selected = true;
      input.appendChild(o);
    }
  } else if (option.kind === "flag") {
    input = document.createElement("input"); input.type = "checkbox";
    input.checked = option.default === true;
  } else {
    input = document.createElement("input");
    const numeric = option.kind === "number" || option.kind === "integer";
    input.type = numeric ? "number" : "text";
    if (numeric) input.step = option.kind === "integer" ? "1" : "any";
    if (option.minimum !== undefined) input.min = option.minimum;
    if (option.exclusiveMinimum !== undefined) input.min = option.exclusiveMinimum;
    if (option.maximum !== undefined) input.max = option.maximum;
    input.placeholder = option.kind === "window" ? "C,W" :
      (option.default !== undefined ? String(option.default) : "");
    input.size = 8;
  }
  input.dataset.option = option.name; input.dataset.kind = option.kind;
  return input;
}
function fillOptions() {
  const action = ACTIONS[$("action").value];
  if (!action) return;
  $("params-box").classList.toggle("hidden", !action.params);
  $("params-help").textContent = action.params_help;
  $("params").placeholder = action.params_example;
  $("action-summary").textContent = action.summary;
  const box = $("opts"); box.textContent = "";
  for (const option of action.options) {
    const label = document.createElement("label");
    label.textContent = option.name + " "; label.title = option.description || "";
    label.appendChild(optionInput(option)); box.appendChild(label);
  }
}
function chosenOptions() {
  const options = {};
  for (const input of $("opts").querySelectorAll("[data-option]")) {
    const name = input.dataset.option, kind = input.dataset.kind;
    if (kind === "flag") { if (input.checked) options[name] = true; continue; }
    const value = input.value.trim();
    if (value === "") continue;
    options[name] = (kind === "number" || kind === "integer") ? Number(value) : value;
  }
  return options;
}
function link(text, href) {
  const a = document.createElement("a");
  a.textContent = text; a.href = href; a.rel = "noopener"; return a;
}
async function run() {
  $("run").disabled = true; $("run-state").textContent = "Running...";
  try {
    if (!session) throw new Error("Upload files first.");
    const body = {action: $("action").value, options: chosenOptions()};
    if (ACTIONS[body.action].params) body.params = $("params").value;
    const result = await api("POST", "/api/process/" + session, JSON.stringify(body), true);
    for (const line of (result.log || "").split("\\n")) {
      if (line) say(line, line.startsWith("[ERROR]") ? "error" : "");
    }
    const rows = $("results"); rows.textContent = "";
    for (const f of result.output_files) {
      const tr = document.createElement("tr");
      const cells = [document.createTextNode(f.name),
                     document.createTextNode((f.size / 1048576).toFixed(2) + " MB"),
                     link("Download", f.download_url),
                     f.view_url ? link("View in VolView", f.view_url)
                                : document.createTextNode("")];
      cells[2].className = "download"; cells[2].setAttribute("download", f.name);
      for (const c of cells) {
        const td = document.createElement("td"); td.appendChild(c); tr.appendChild(td);
      }
      rows.appendChild(tr);
    }
    $("run-state").textContent = result.success ? "Done." : "Finished with errors (see the log).";
  } catch (e) { say(e.message, "error"); $("run-state").textContent = e.message; }
  finally { $("run").disabled = false; }
}
$("action").addEventListener("change", fillOptions); loadActions();
$("key").value = localStorage.getItem("dicompressor-key") || "";
$("key-state").textContent = $("key").value ? "(remembered)" : "";
$("save-key").addEventListener("click", () => {
  localStorage.setItem("dicompressor-key", key()); $("key-state").textContent = "(remembered)";
});
function chosen(e) {  // take the files, then clear the input so a choice can be repeated
  const files = Array.from(e.target.files);
  e.target.value = "";
  upload(files);
}
$("files").addEventListener("change", chosen);
$("folder").addEventListener("change", chosen);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault(); drop.classList.remove("over");
  const files = [];
  for (const item of Array.from(e.dataTransfer.items)) {
    const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
    if (entry) await walk(entry, files); else if (item.getAsFile()) files.push(item.getAsFile());
  }
  upload(files);
});
$("run").addEventListener("click", run);
$("new-session").addEventListener("click", newSession);
showClock();
</script>
</body>
</html>
"""


#: The page of a ``/volview/?urls=`` link whose file URL has neither token nor key
#: (``{url}``: that URL, HTML-escaped).
VOLVIEW_NO_TOKEN_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>This viewer link cannot open the file</title></head>
<body style="font: 16px/1.5 system-ui, sans-serif; max-width: 44em; margin: 3em auto">
<h1>This viewer link cannot open the file</h1>
<p>The link asks VolView to load <code>{url}</code>. That address carries neither a view
token nor an API key, so DicomPressor would refuse it, and VolView would only say that
loading failed.</p>
<p>Use the file's <b>view_url</b> instead. DicomPressor gives one for every result file: in
the answer of <code>POST /api/process/&lt;session&gt;</code>, in
<code>GET /api/files/&lt;session&gt;</code>, and as "View in VolView" on this server's web
page. That link holds a token that opens this one file until its session expires; it never
holds your API key.</p>
</body>
</html>
"""


# ---- byte ranges and validators ----


def file_validators(stat: os.stat_result) -> tuple[str, str]:
    """Return a file's ETag and Last-Modified; both change when the file is replaced."""
    etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}-{stat.st_ino:x}"'
    return etag, email.utils.formatdate(stat.st_mtime, usegmt=True)


def http_date(text: str) -> float | None:
    """Return the POSIX time of an HTTP date, or None if it is not one."""
    try:
        return email.utils.parsedate_to_datetime(text.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def etag_listed(header: str, etag: str) -> bool:
    """Tell whether an If-None-Match header names etag (weak comparison) or is ``*``."""
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def not_modified(headers: Mapping[str, str], etag: str, mtime: float) -> bool:
    """Tell whether a GET may be answered 304: If-None-Match, else If-Modified-Since."""
    none_match = headers.get("If-None-Match")
    if none_match is not None:
        return etag_listed(none_match, etag)
    since = http_date(headers.get("If-Modified-Since") or "")
    return since is not None and int(mtime) <= since


def range_applies(headers: Mapping[str, str], etag: str, mtime: float) -> bool:
    """Tell whether to honour a Range header: If-Range, when sent, must still match."""
    if_range = (headers.get("If-Range") or "").strip()
    if not if_range:
        return True
    if if_range.startswith(('"', "W/")):
        return if_range == etag  # a strong comparison: a weak tag never matches
    when = http_date(if_range)
    return when is not None and int(when) == int(mtime)


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """Return the first and last byte a Range header asks for; None: send the whole file.

    One range of bytes is honoured (``bytes=0-99``, ``bytes=100-``, ``bytes=-100``);
    another unit or a list of ranges is ignored (RFC 9110 lets a server send it all);
    a malformed or unsatisfiable bytes range is 416 with ``Content-Range: bytes */size``.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = re.fullmatch(r"\s*(\d*)\s*-\s*(\d*)\s*", spec)
    first = last = -1
    if match and match[1]:
        first = int(match[1])
        last = min(int(match[2]), size - 1) if match[2] else size - 1
    elif match and match[2] and int(match[2]) > 0:
        first, last = max(0, size - int(match[2])), size - 1
    if 0 <= first <= last:
        return first, last
    raise HTTPError(
        416,
        f"range {one_line(header, limit=80)!r} cannot be served: the file has {size} "
        "bytes (ask for bytes=FIRST-LAST within them, or no Range for all of it)",
        headers={"Content-Range": f"bytes */{size}"},
    )


# ---- routing and the handler ----


def match_route(method: str, path: str) -> tuple[Route, tuple[str, ...]]:
    """Find the route of a request; 404 for an unknown path, 405 for a wrong method."""
    lookup = "GET" if method == "HEAD" else method
    allowed = []
    for route in ROUTES:
        match = route.pattern.fullmatch(path)
        if match is None:
            continue
        if route.method == lookup:
            return route, tuple(unquote(g) for g in match.groups())
        allowed.append(route.method)
    if allowed:
        raise HTTPError(
            405,
            f"{method} is not allowed on {path}: use {', '.join(allowed)}",
            headers={"Allow": ", ".join(allowed)},
        )
    raise HTTPError(404, f"no such endpoint: {method} {one_line(path, limit=200)}")


class ApiHandler(BaseHTTPRequestHandler):
    """The thin request handler: dispatch, auth, bodies in and out; the work is elsewhere."""

    server: ApiServer
    protocol_version = "HTTP/1.1"
    server_version = f"DicomPressor/{__version__}"

    def setup(self) -> None:
        """Give the connection the server's per-request socket timeout, and no Nagle delay.

        Answers go out in one write each (``_start``); TCP_NODELAY also sends the tail of a
        file or a lone small write at once instead of waiting for the client's delayed ACK
        (about 40 ms on every request after the first on a kept-alive connection).
        """
        self.timeout = self.server.state.config.request_timeout_s
        with contextlib.suppress(OSError, AttributeError):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def handle_one_request(self) -> None:
        """Read and answer one request; a client must send its whole header in time.

        The socket timeout bounds each read; a client trickling one byte at a time would
        pass it forever, so a timer cuts the connection when the request line and
        headers have not arrived within the request timeout.
        """
        self._method, self._url_path, self._route = "-", "-", None
        self._body, self._expect_100, self._headers_read = None, False, False
        deadline = threading.Timer(self.timeout or 30.0, self._cut_slow_client)
        deadline.daemon = True
        self._deadline = deadline
        deadline.start()
        try:
            super().handle_one_request()
        finally:
            deadline.cancel()

    def _cut_slow_client(self) -> None:
        """Close a connection whose request header did not arrive in time."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def parse_request(self) -> bool:
        """Parse the header; once it is in, the header deadline no longer applies."""
        ok = super().parse_request()
        self._headers_read = ok
        self._deadline.cancel()
        return ok

    # -- plumbing

    @property
    def state(self) -> ServerState:
        """The shared server state."""
        return self.server.state

    def handle_expect_100(self) -> bool:
        """Hold back ``100 Continue`` until the body is wanted (so a 413 comes first)."""
        self._expect_100 = True
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        """Answer GET."""
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        """Answer HEAD (downloads and views without the body)."""
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        """Answer POST."""
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        """Answer DELETE."""
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:  # noqa: N802
        """Answer the CORS preflight of /api/view."""
        self._dispatch("OPTIONS")

    def send_error(
        self, code: int, message: str | None = None, explain: str | None = None
    ) -> None:
        """Answer what http.server refuses itself (before routing) with the JSON error.

        That is a malformed request line (400), a request line over 64 KiB (414), a header
        line over 64 KiB or more than 100 header fields (431), a method no route has (501)
        and an HTTP version other than 1.x (505). The connection is closed after it.
        """
        self.log_error("code %d, message %s", code, message)
        line = one_line(getattr(self, "requestline", ""), limit=120)
        method = one_line(self.command or "-", limit=40)
        methods = ", ".join(dict.fromkeys([*(r.method for r in ROUTES), "HEAD"]))
        words = {
            400: f"malformed request line {line!r}: send METHOD /path HTTP/1.1",
            414: "request line too long: more than 65536 bytes",
            431: f"request header too large: {explain or message} (at most 65536 bytes a "
            "line and 100 header fields)",
            501: f"method {method} is not implemented: this API answers {methods}",
            505: f"HTTP version not supported in {line!r}: use HTTP/1.1",
        }
        text = words.get(code) or f"{code} {self.responses.get(code, ('error',))[0]}: {message}"
        if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            self.request_version = "HTTP/1.0"  # so that the status line and headers go out
        self._method = method
        self._url_path = urlsplit(self.path).path if self.command else "-"
        self.close_connection = True
        self._send_error(code, text)

    def _dispatch(self, method: str) -> None:
        """Route one request and turn every failure into the spec's JSON error."""
        self._method = method
        url = urlsplit(self.path)
        self._url_path = url.path
        try:
            route, args = match_route(method, url.path)
            self._route = route
            if route.auth:
                self._authorize(route, args, url.query)
            getattr(self, f"route_{route.handler}")(*args)
        except HTTPError as exc:
            self._send_error(exc.status, exc.message, exc.headers)
        except DicomPressorError as exc:
            self._send_error(exc.status, exc.message)
        except (ConnectionError, TimeoutError) as exc:
            self.close_connection = True
            LOG.info("%s %s: connection lost (%s)", method, self._url_path, type(exc).__name__)
        except Exception:
            LOG.error("internal error on %s %s", method, self._url_path, exc_info=True)
            self._send_error(500, "internal error")
        finally:
            self._expect_100 = False

    def _authorize(self, route: Route, args: tuple[str, ...], query_text: str) -> None:
        """Count the request against the rate limit; 401 without a key (or a view token)."""
        self.state.throttle(self.client_address[0])
        query = parse_qs(query_text, errors="replace")
        key = self.headers.get(API_KEY_HEADER) or (query.get(API_KEY_PARAM) or [None])[0]
        if self.state.key_ok(key):
            return
        token = (query.get(VIEW_TOKEN_PARAM) or [None])[0]
        if route.token and token is not None:
            if self.state.token_ok(args[0], args[1], token):
                return
            raise HTTPError(
                401,
                f"invalid view token: it opens only the file it was made for "
                f"({one_line(args[1], limit=120)!r} is not it, or the server's secret "
                "changed); take the file's view_url or download_url from "
                f"GET /api/files/{one_line(args[0], limit=40)}",
            )
        also = ", or open the file's view_url (it carries a token)" if route.token else ""
        raise HTTPError(
            401,
            f"invalid or missing API key: send it in the {API_KEY_HEADER} header or as "
            f"?{API_KEY_PARAM}={also}",
        )

    def _framing(self) -> tuple[bool, str]:
        """Return how the request body is framed: chunked, and Content-Length as sent."""
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        return chunked, self.headers.get("Content-Length", "0")

    def _body_reader(self, limit_bytes: int) -> BodyReader:
        """Open the request body: 413 from Content-Length before reading any of it."""
        chunked, length_text = self._framing()
        length = None
        if not chunked:
            try:
                length = int(length_text)
                if length < 0:
                    raise ValueError
            except ValueError:
                raise HTTPError(400, "bad Content-Length header") from None
            if length > limit_bytes:
                raise HTTPError(
                    413,
                    f"request body too large: {length} bytes (limit {limit_bytes} bytes, "
                    f"{limit_bytes / 1048576:g} MB per request)",
                )
        if self._expect_100:
            self.send_response_only(100)
            self.end_headers()
            self._expect_100 = False
        self._body = BodyReader(
            self.rfile, length=length, chunked=chunked, limit_bytes=limit_bytes
        )
        return self._body

    def _settle_body(self) -> None:
        """Before answering, drop a small unread body or mark the connection for closing."""
        if not self._headers_read:  # http.server refused the request line or headers
            self.close_connection = True
            return
        if self._body is not None:  # a route read (part of) it: never drain an upload
            if not self._body.done:
                self.close_connection = True
            return
        chunked, length = self._framing()
        length = length.strip() or "0"
        if not chunked and length == "0":
            return
        if chunked or self._expect_100 or not length.isdigit() or int(length) > DRAIN_LIMIT_BYTES:
            self.close_connection = True
            return
        body = BodyReader(
            self.rfile, length=int(length), chunked=False, limit_bytes=DRAIN_LIMIT_BYTES
        )
        try:
            body.drain()
        except (HTTPError, OSError):
            self.close_connection = True

    def _start(self, status: int, headers: Mapping[str, str], body: bytes = b"") -> None:
        """Send the status line, the headers and a small body in one write.

        One write per answer: a header write followed by a body write would leave the
        body waiting on the client's delayed ACK under Nagle's algorithm. The body is
        left out for HEAD and 304.
        """
        self._settle_body()
        self.send_response(status)
        route = self._route
        if route is not None and route.cors:
            headers = {**self._cors_headers(), **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        buffer = getattr(self, "_headers_buffer", None)
        if buffer is None:  # an HTTP/0.9 request: no status line, no headers
            buffer = self._headers_buffer = []
        else:
            buffer.append(b"\r\n")
        if body and self._method != "HEAD" and status != 304:
            buffer.append(body)
        self.flush_headers()

    def _cors_headers(self) -> dict[str, str]:
        """The CORS headers of a route that a viewer on another site reads (errors too)."""
        return {
            "Access-Control-Allow-Origin": self.state.config.cors_origin,
            "Access-Control-Expose-Headers": "Content-Disposition, Content-Length, "
            "Content-Range, Accept-Ranges, ETag, Last-Modified, Retry-After",
        }

    def _send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send a JSON answer."""
        body = json.dumps(payload).encode("utf-8")
        self._start(
            status,
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                "Cache-Control": "no-store",
                **(headers or {}),
            },
            body,
        )

    def _send_error(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send the spec's ``{"error": ...}``."""
        try:
            self._send_json(status, {"error": message}, headers)
        except OSError:
            self.close_connection = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log one line per request: client, method, path without the query (no keys)."""
        LOG.info(
            "%s %s %s %s",
            self.client_address[0],
            self._method,
            self._url_path,
            code,
        )

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Send http.server's own messages to the debug log (never the raw request)."""
        LOG.debug("http: %s", one_line(format % args, limit=200).split("?", 1)[0])

    # -- endpoints

    def route_health(self) -> None:
        """``GET /api/health``: the server is up (no key needed), its session TTL and limits.

        The web page keeps its upload batches under these limits.
        """
        config = self.state.config
        self._send_json(
            200,
            {
                "status": "ok",
                "version": __version__,
                "session_ttl_s": config.session_ttl_s,
                "max_upload_bytes": config.max_upload_bytes,
                "max_files": config.max_files,
                "rate_limit_per_min": config.rate_limit_per_min,
                "session_rate_limit_per_min": config.session_rate_limit_per_min,
            },
        )

    def route_actions(self) -> None:
        """``GET /api/actions``: the actions and their options, from the registry."""
        self._send_json(200, action_listing())

    def _send_html(
        self, status: int, text: str, csp: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send an HTML page under a Content-Security-Policy."""
        body = text.encode("utf-8")
        self._start(
            status,
            {
                "Content-Type": "text/html; charset=utf-8",
                "Content-Length": str(len(body)),
                "Cache-Control": "no-store",
                "Content-Security-Policy": csp,
                **(headers or {}),
            },
            body,
        )

    def route_index_page(self) -> None:
        """``GET /``: the web page (plain HTML, CSS and JavaScript; no external assets)."""
        self._send_html(
            200,
            WEB_PAGE,
            "default-src 'self'; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            {"X-Content-Type-Options": "nosniff"},
        )

    def route_openapi(self) -> None:
        """``GET /api/openapi.json``: the OpenAPI 3.1 description of this API."""
        self._send_json(200, openapi_document(self._public_url()))

    def route_volview_redirect(self) -> None:
        """``GET /volview/?urls=...``: send the browser on to the configured VolView.

        A link in the spec's form whose inner URL is a file of this API with neither a
        view token nor a key could only end in VolView's bare 401: such a link gets a
        page saying to use the file's view_url instead.
        """
        query = urlsplit(self.path).query
        unkeyed = unkeyed_file_urls(parse_qs(query).get("urls", []))
        if unkeyed:
            self._send_html(
                400,
                VOLVIEW_NO_TOKEN_PAGE.format(url=html.escape(unkeyed[0])),
                "default-src 'none'; style-src 'unsafe-inline'",
            )
            return
        target = self.state.config.volview_url.rstrip("/") + "/" + (f"?{query}" if query else "")
        self._start(302, {"Location": target, "Content-Length": "0"})

    def route_view_preflight(self, sid: str, name: str) -> None:
        """``OPTIONS /api/view/...``: the CORS preflight VolView's browser sends."""
        self._start(
            204,
            {
                "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                "Access-Control-Allow-Headers": f"Authorization, {API_KEY_HEADER}, Range, "
                "If-None-Match, If-Modified-Since, If-Range",
                "Access-Control-Max-Age": "600",
                "Content-Length": "0",
            },
        )

    def _public_url(self) -> str:
        """This server's base URL as clients see it (--public-url, else the Host header)."""
        if self.state.config.public_url:
            return self.state.config.public_url.rstrip("/")
        host = self.headers.get("Host", "")
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]{1,255}", host):
            host = f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        return f"http://{host}"

    def _links(self, session: Session) -> Callable[[str], dict[str, str]]:
        """Return a function giving a session file's view_url and download_url (a token)."""
        base, volview = self._public_url(), self.state.config.volview_url
        return lambda name: file_links(
            volview, base, session.id, name, self.state.view_token(session, name)
        )

    def route_create_session(self) -> None:
        """``POST /api/session``: ``{"session_id": UUID}``."""
        self.state.throttle(self.client_address[0], session_create=True)
        session = self.state.create()
        LOG.info("Session %s created", session.id)
        self._send_json(200, {"session_id": session.id})

    def route_delete_session(self, sid: str) -> None:
        """``DELETE /api/session/{id}``: remove the session and its files."""
        session = self.state.get(sid)
        self.state.delete(session)
        self._send_json(200, {"deleted": session.id})

    def route_list_files(self, sid: str) -> None:
        """``GET /api/files/{id}``: the spec's input and output lists."""
        session = self.state.get(sid)
        self._send_json(
            200,
            {
                "input": _entries(listed_files(session.input_dir)),
                "output": _entries(listed_files(session.output_dir), self._links(session)),
            },
        )

    def route_upload(self, sid: str) -> None:
        """``POST /api/upload/{id}``: stream the ``files`` parts of a form into input/."""
        session = self.state.get(sid)
        content_type, type_options = multipart.parse_options_header(
            self.headers.get("Content-Type", "")
        )
        boundary = type_options.get("boundary")
        if content_type != "multipart/form-data" or not boundary:
            raise HTTPError(
                400, f"upload files as multipart/form-data in the field {UPLOAD_FIELD!r}"
            )
        reader = self._body_reader(self.state.config.max_upload_bytes)
        names = receive_upload(self.state, session, reader, boundary)
        self._send_json(200, {"uploaded": len(names), "files": names})

    def route_process(self, sid: str) -> None:
        """``POST /api/process/{id}``: run an action in a child process on the inputs."""
        session = self.state.get(sid)
        raw = self._body_reader(MAX_JSON_BYTES).read_all()
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HTTPError(
                400,
                f"request body is not valid JSON ({one_line(str(exc), limit=120)}): send "
                '{"action": "merge"}',
            ) from None
        spec, options = process_request(payload, session.output_dir, jobs=self.state.config.jobs)
        with self.state.processing(session):
            inputs = list_inputs(session.input_dir, spec.inputs)
            if not inputs:
                raise HTTPError(
                    400,
                    f"no files to process in session {session.id}: upload "
                    f"{INPUT_NOUNS[spec.inputs]} first (POST /api/upload/{session.id})",
                )
            LOG.info("Session %s: %s on %d files", session.id, spec.name, len(inputs))
            outcome = run_isolated(
                spec, session.input_dir, inputs, options, self.state.config.process_timeout_s
            )
        answer = process_response(spec, session, outcome, self._links(session))
        self._send_json(200, answer)

    def route_download(self, sid: str, name: str) -> None:
        """``GET /api/download/{id}/{name}``: the file as an attachment."""
        self._send_file(self.state.get(sid), name, inline=False)

    def route_view(self, sid: str, name: str) -> None:
        """``GET /api/view/{id}/{name}``: the file inline as application/dicom (VolView)."""
        self._send_file(self.state.get(sid), name, inline=True)

    def _send_file(self, session: Session, name: str, *, inline: bool) -> None:
        """Send a session file found by name in output/ (then input/).

        Honours one byte range (206; 416 when it cannot be served) unless If-Range no
        longer matches, and answers 304 to If-None-Match (or If-Modified-Since) naming
        the file as it is. ETag and Last-Modified change when the file is replaced.
        """
        path = find_session_file(session, name)
        try:
            handle = path.open("rb")
        except OSError:
            raise HTTPError(404, f"no file {name!r} in session {session.id}") from None
        with handle:
            stat = os.fstat(handle.fileno())
            size = stat.st_size
            etag, modified = file_validators(stat)
            headers = {"ETag": etag, "Last-Modified": modified, "Cache-Control": "no-store"}
            if not_modified(self.headers, etag, stat.st_mtime):
                self._start(304, headers)
                return
            first, last = 0, size - 1
            status = 200
            asked = self.headers.get("Range")
            if asked and range_applies(self.headers, etag, stat.st_mtime):
                span = byte_range(asked, size)
                if span is not None:
                    (first, last), status = span, 206
                    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            headers["Accept-Ranges"] = "bytes"
            headers["Content-Length"] = str(last - first + 1)
            disposition = content_disposition(path.name)
            if inline:
                guessed = mimetypes.guess_type(path.name)[0]
                headers["Content-Type"] = (
                    guessed
                    if guessed and not guessed.startswith("application/")
                    else "application/dicom"
                )
                headers["Content-Disposition"] = f"inline; {disposition}"
            else:
                headers["Content-Type"] = "application/octet-stream"
                headers["Content-Disposition"] = f"attachment; {disposition}"
            self._start(status, headers)
            if self._method == "HEAD" or last < first:
                return
            try:
                self.connection.sendfile(handle, first, last - first + 1)
            except (AttributeError, NotImplementedError):  # pragma: no cover
                handle.seek(first)
                left = last - first + 1
                while left > 0 and (chunk := handle.read(min(left, UPLOAD_CHUNK_BYTES))):
                    self.wfile.write(chunk)
                    left -= len(chunk)


# ---- uploads, downloads, answers ----


def content_disposition(name: str) -> str:
    """Return the ``filename=...; filename*=UTF-8''...`` parameters for a file name."""
    fallback = re.sub(r"[^A-Za-z0-9._()+-]", "_", name) or "file"
    return f"filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def receive_upload(
    state: ServerState, session: Session, reader: BodyReader, boundary: str
) -> list[str]:
    """Stream a multipart body's ``files`` parts to temp files; publish all or nothing.

    A ``.zip`` part is unpacked (``plan_archive``): its entries count against max_files
    and their unpacked size, with the other files', against the upload limit before any
    entry is written. Returns the names the files got in input/ (``_1``, ``_2``... for a
    taken name), in the order of the parts. A truncated or oversized body, a broken
    archive, or a part past max_files removes every file of the upload.
    """
    parts: list[tuple[Path, str, bool]] = []  # (temp file, name, is a zip), in order
    staged: list[tuple[Path, str]] = []
    reserved = 0
    handle: BinaryIO | None = None
    try:
        parser = multipart.PushMultipartParser(boundary, max_header_count=16)
        for event in parser.parse_blocking(reader.read, UPLOAD_CHUNK_BYTES):
            if isinstance(event, multipart.MultipartSegment):
                if event.name == UPLOAD_FIELD and event.filename:
                    name = safe_upload_name(event.filename)
                    archive = is_zip_name(name)
                    if not archive:
                        state.reserve_files(session, 1, mine=reserved, more_may_follow=True)
                        reserved += 1
                    tmp = temp_path(session.input_dir / name)
                    handle = tmp.open("xb")
                    parts.append((tmp, name, archive))
            elif event is None:
                if handle is not None:
                    handle.close()
                    handle = None
            elif handle is not None:
                handle.write(event)
        reader.drain()
        if not parts:
            raise HTTPError(
                400, f"no files in the upload: send them in the multipart field {UPLOAD_FIELD!r}"
            )
        plans = {tmp: plan_archive(tmp, name) for tmp, name, archive in parts if archive}
        if plans:
            plain = sum(tmp.stat().st_size for tmp, _, archive in parts if not archive)
            unpacked = sum(plan.unpacked_bytes for plan in plans.values())
            limit = state.config.max_upload_bytes
            if plain + unpacked > limit:
                sizes = ", ".join(f"{p.name} {p.unpacked_bytes}" for p in plans.values())
                raise HTTPError(
                    413,
                    f"upload too large once unpacked: {plain + unpacked} bytes (zip archives: "
                    f"{sizes}), more than the limit of {limit} bytes "
                    f"({limit / 1048576:g} MB per request)",
                )
            entries = sum(len(plan.members) for plan in plans.values())
            state.reserve_files(session, entries, mine=reserved)
            reserved += entries
        for tmp, name, archive in parts:
            if archive:
                unpack_archive(plans[tmp], session.input_dir, staged)
            else:
                staged.append((tmp, name))
        published = [publish_new(tmp, session.input_dir / name).name for tmp, name in staged]
        staged.clear()
        reserved = 0
        return published
    except multipart.MultipartError as exc:
        raise HTTPError(400, f"malformed multipart upload: {one_line(str(exc))}") from None
    finally:
        if handle is not None:
            handle.close()
        leftovers = {tmp for tmp, _ in staged} | {tmp for tmp, _, _ in parts}
        for tmp in leftovers:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if reserved:
            state.release_files(session, reserved)


def find_session_file(session: Session, name: str) -> Path:
    """Find a file of the session by its listed name (output/ first, then input/).

    ``merged_multiframe.dcm`` (the quick start's name) stands for the one merged
    output when there is exactly one; 404 otherwise, naming what there is.
    """
    outputs = listed_files(session.output_dir)
    if name in outputs:
        return outputs[name]
    inputs = listed_files(session.input_dir)
    if name in inputs:
        return inputs[name]
    if name == MERGED_ALIAS:
        merged = sorted(n for n in outputs if "/" not in n and n.endswith("_multiframe.dcm"))
        merged += sorted(
            n for n in outputs if "/" not in n and re.search(r"_multiframe_\d+\.dcm$", n)
        )
        if len(merged) == 1:
            return outputs[merged[0]]
        if merged:
            raise HTTPError(
                404,
                f"{MERGED_ALIAS} is ambiguous in session {session.id}: it holds "
                f"{len(merged)} merged files ({', '.join(merged)}); download one by name",
            )
    raise HTTPError(
        404,
        f"no file {one_line(name, limit=200)!r} in session {session.id}: see "
        f"GET /api/files/{session.id}",
    )


def process_response(
    spec: ActionSpec,
    session: Session,
    outcome: JobOutcome,
    links: Callable[[str], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Build the spec's process answer: success, action, log, output_files, and the
    warnings an action gives per output (merge's MergeWarning, output by its name).

    The log names files relative to the session (``input/a.dcm``, ``output/b.dcm``),
    never by the server's own paths.
    """
    result = outcome.result
    log = (result.log + result.report) if result else []
    if outcome.error:
        log.append(f"[ERROR] {outcome.error}")
    for folder in dict.fromkeys((str(session.folder), str(session.folder.resolve()))):
        log = [line.replace(folder + os.sep, "").replace(folder, ".") for line in log]
    listing = listed_files(session.output_dir)
    by_path = {path.resolve(): name for name, path in listing.items()}
    names: list[str] = []
    for output in result.outputs if result else []:
        produced = output.resolve()
        if produced in by_path:
            names.append(by_path[produced])
        elif produced.is_dir():  # a folder of results (split, DICOMDIR copies)
            names.extend(n for p, n in by_path.items() if produced in p.parents)
    files = {n: listing[n] for n in dict.fromkeys(names)}
    warnings_ = [
        {**w, "output": by_path.get(Path(w["output"]).resolve(), Path(w["output"]).name)}
        for w in (result.data.get("warnings", []) if result else [])
    ]
    return {
        "success": outcome.status in ("OK", "PARTIAL"),
        "action": spec.name,
        "log": "\n".join(log),
        "output_files": _entries(files, links) if spec.writes_files else [],
        "warnings": warnings_,
    }


# ---- the server ----


class ApiServer(ThreadingHTTPServer):
    """The threading HTTP server with the shared state and the session sweeper."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, config: ServerConfig, keys: Sequence[str]) -> None:
        self.state = ServerState(config, keys)
        self.state.load()
        super().__init__((config.host, config.port), ApiHandler)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="dicompressor-sweeper", daemon=True
        )
        self._sweeper.start()

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}"

    def _sweep_loop(self) -> None:
        """Delete expired sessions every sweep interval until the server closes."""
        while not self._stop.wait(self.state.config.sweep_interval_s):
            try:
                self.state.sweep()
            except Exception:  # the sweeper must outlive one bad folder
                LOG.error("session sweep failed", exc_info=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log an error that escaped a request in one line, not socketserver's traceback.

        A client that hangs up mid-request (reset, broken pipe) is routine for a server:
        it is logged at debug level only.
        """
        exc = sys.exc_info()[1]
        host = client_address[0] if client_address else "?"
        if isinstance(exc, (ConnectionError, TimeoutError)):
            LOG.debug("client %s went away: %s", host, one_line(str(exc) or type(exc).__name__))
            return
        LOG.error("request from %s failed: %s", host, one_line(f"{type(exc).__name__}: {exc}"))
        LOG.debug("traceback", exc_info=True)

    def close(self) -> None:
        """Stop serving (when serve_forever runs in another thread) and release the port."""
        self._stop.set()
        self.shutdown()
        self.server_close()


def make_server(config: ServerConfig, keys: Sequence[str]) -> ApiServer:
    """Create the data folder, take up its sessions and bind; serve_forever() serves."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ctx = _mp_context()
    if ctx.get_start_method() == "forkserver" and __name__ != "__main__":
        ctx.set_forkserver_preload(["__main__", __name__])
    return ApiServer(config, keys)


def run_server(
    config: ServerConfig,
    *,
    environ: Mapping[str, str] | None = None,
    on_ready: Callable[[ApiServer], None] | None = None,
) -> int:
    """Serve the API until Ctrl+C or SIGTERM; return the exit code.

    With no key configured one is generated and printed once; a non-loopback host
    without a configured key is refused (exit 2).
    """
    try:
        keys = resolve_api_keys(config, os.environ if environ is None else environ)
    except UsageError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    generated = None
    if not keys:
        if not is_loopback(config.host):
            print(
                f"error: refusing to serve on {config.host} without an API key: give "
                f"--api-key KEY, --api-keys-file FILE or {API_KEYS_ENV}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        generated = secrets.token_urlsafe(24)
        keys = [generated]
    try:
        server = make_server(config, keys)
    except OSError as exc:
        where = f"{config.host}:{config.port}"
        print(f"error: cannot serve on {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Serving the DicomPressor API on {server.url} (sessions in {config.data_dir})")
    if generated is not None:
        print(f"API key (generated, shown only now): {generated}")
    sys.stdout.flush()
    if on_ready is not None:
        on_ready(server)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        LOG.info("Stopping the server")
    finally:
        server._stop.set()
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


# ==== 9. CLI ====

# ---- the parser, from the registries ----


class _ActionWithValue(argparse.Action):
    """An action flag that takes a value (``-a PARAMS``) or sets options (a VariantFlag,
    ``-e``): stores the action, the value, the (option, value) pairs it sets and the flag
    as given (messages name it)."""

    def __init__(self, *args: Any, sets: tuple[tuple[str, Any], ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sets = sets

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        namespace.action = self.const
        namespace.action_value = values if self.nargs != 0 else None
        namespace.action_sets = self.sets
        namespace.action_flag = option_string


def _add_option(container: Any, option: OptionSpec) -> None:
    """Add one OPTIONS entry to the parser; its value is converted later (parse_option)."""
    flags = [f for f in (option.short, option.flag if option.long else None) if f]
    if option.kind == "flag":
        container.add_argument(
            *flags, dest=option.name, action="store_const", const=True, help=option.help
        )
        return
    metavar = option.metavar
    if metavar is None and option.choices:
        metavar = "{" + ",".join(str(c) for c in option.choices) + "}"
    container.add_argument(
        *flags,
        dest=option.name,
        action="append" if option.kind == "keys" else "store",
        metavar=metavar or option.name.upper(),
        help=option.help,
    )


def _add_action_flags(container: Any) -> None:
    """Add the flag (and in-place twin) of every ACTIONS entry."""
    for spec in ACTIONS.values():
        if spec.flag.startswith("--"):  # --info [FILE], --summary [DIR]
            metavar = "FILE" if spec.takes == FILES else "DIR"
            container.add_argument(
                spec.flag, dest=spec.name, nargs="?", const=True, metavar=metavar,
                help=spec.summary,
            )  # fmt: skip
            continue
        flags = [(spec.flag, spec.name, spec.summary, ())]
        if spec.replace_flag:
            replace_help = f"as {spec.flag}, replacing each input atomically"
            flags.append((spec.replace_flag, f"{spec.name}{REPLACE_SUFFIX}", replace_help, ()))
        flags += [(v.flag, spec.name, v.summary, v.sets) for v in spec.variants]
        for flag, const, help_text, sets in flags:
            container.add_argument(
                flag,
                dest=None if spec.metavar else "action",  # -a PARAMS: argparse's own dest
                action=_ActionWithValue,
                nargs=None if spec.metavar else 0,
                const=const,
                metavar=spec.metavar,
                help=help_text,
                sets=sets,
            )


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser from the ACTIONS and OPTIONS registries."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Merge, split, compress, anonymize and export DICOM files.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage error, 3 partly failed.",
    )
    groups: dict[str, Any] = {"actions": parser.add_argument_group("actions (one of)")}
    groups.update((key, parser.add_argument_group(title)) for key, title in OPTION_GROUPS.items())
    exclusive: dict[str, Any] = {"action": groups["actions"].add_mutually_exclusive_group()}
    _add_action_flags(exclusive["action"])
    for option in OPTIONS.values():
        if not option.cli:
            continue
        container = groups["actions" if option.exclusive == "action" else option.group]
        if option.exclusive is not None:
            if option.exclusive not in exclusive:
                exclusive[option.exclusive] = container.add_mutually_exclusive_group()
            container = exclusive[option.exclusive]
        _add_option(container, option)
    parser.set_defaults(action=None, action_value=None, action_sets=(), action_flag=None)
    return parser


def cli_values(args: argparse.Namespace) -> list[str]:
    """Convert and check every option given on the command line, in place in args.

    Options not given get their default (the command line's, where it has one). Returns
    the names of the options given. Raises UsageError.
    """
    given = []
    for option in OPTIONS.values():
        if not option.cli:
            continue
        raw = getattr(args, option.name)
        if raw is None:
            default = option.cli_default if option.cli_default is not None else option.default
            setattr(args, option.name, default)
            continue
        setattr(args, option.name, parse_option(option, raw))
        given.append(option.name)
    check_conflicts(given)
    return given


def _option_value_text(option: OptionSpec) -> str:
    """Describe an option's value for the README table: kind and bounds."""
    if option.kind == "flag":
        return ""
    if option.choices:
        return " \\| ".join(f"`{c}`" for c in option.choices)
    bounds = []
    if option.minimum is not None:
        bounds.append(f">= {option.minimum:g}")
    if option.above is not None:
        bounds.append(f"> {option.above:g}")
    if option.maximum is not None:
        bounds.append(f"<= {option.maximum:g}")
    return " ".join([option.kind, *bounds])


def _cell(text: str) -> str:
    """Escape the column separators in a README table cell."""
    return text.replace("|", "\\|")


def flag_table() -> str:
    """Return the README's tables of actions and options, made from the registries."""
    lines = [
        "| flag | in place | API action | what it does | its options |",
        "|---|---|---|---|---|",
    ]
    for spec in ACTIONS.values():
        value = f" {spec.metavar}" if spec.metavar else ""
        replace = f"`{spec.replace_flag}`" if spec.replace_flag else ""
        taken = ", ".join(f"`{o.flag}`" for o in spec.options if o.cli)
        lines.append(
            f"| `{spec.flag}{value}` | {replace} | `{spec.name}` | {_cell(spec.summary)} "
            f"| {taken} |"
        )
        for variant in spec.variants:
            sets = ", ".join(f"`{name}: {json.dumps(v)}`" for name, v in variant.sets)
            flag, what = f"`{variant.flag}{value}`", _cell(variant.summary)
            lines.append(f"| {flag} |  | `{spec.name}` with {sets} | {what} | {taken} |")
    lines += [
        "",
        "| option | value | default | API (`options`) | what it does |",
        "|---|---|---|---|---|",
    ]
    for option in OPTIONS.values():
        if not option.cli or option.scope == COMMAND:
            continue
        flag = f"`{option.flag} {option.metavar}`" if option.metavar else f"`{option.flag}`"
        default = option.default if option.cli_default is None else None  # machine's own
        shown = (
            ""
            if default in (None, False)
            else f"`{default:g}`"
            if isinstance(default, float)
            else f"`{default}`"
        )
        api = f"`{option.name}`" if option.scope == ACTION and option.api else ""
        lines.append(
            f"| {flag} | {_option_value_text(option)} | {shown} | {api} | {_cell(option.help)} |"
        )
    return "\n".join(lines) + "\n"


# ---- running the command line ----


def configure_logging(args: argparse.Namespace) -> None:
    """Send log lines to stderr (and --log-file), at the level the flags ask for."""
    LOG.handlers.clear()
    LOG.propagate = False
    if not args.verbose:  # pydicom's warnings about odd input are noise in a batch log
        warnings.filterwarnings("ignore", module="pydicom")
        logging.getLogger("pydicom").setLevel(logging.ERROR)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    LOG.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(_LevelFormatter(timestamps=args.watch is not None))
    console.addFilter(lambda record: not getattr(record, "job_line", False))
    LOG.addHandler(console)
    if args.log_file is not None:
        from logging.handlers import RotatingFileHandler

        args.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(
            args.log_file,
            maxBytes=LOG_FILE_MAX_BYTES,
            backupCount=LOG_FILE_BACKUPS,
            encoding="utf-8",
        )
        handler.setLevel(logging.DEBUG if args.verbose else logging.INFO)
        handler.setFormatter(_LevelFormatter(timestamps=True))
        LOG.addHandler(handler)


def _resolve_request(args: argparse.Namespace) -> tuple[str, Path, bool]:
    """Work out the action, the path and recursion from the flags; raise UsageError."""
    action = args.action.removesuffix(REPLACE_SUFFIX) if args.action else None
    path: Path | None = args.f if args.f is not None else args.F
    recursive = args.F is None
    for spec in ACTIONS.values():
        if not spec.flag.startswith("--"):  # --info [FILE], --summary [DIR]: _add_action_flags
            continue
        value = getattr(args, spec.name)
        if value is None:
            continue
        action = spec.name
        if value is not True:
            if path is not None:
                raise UsageError(f"{spec.flag} takes a path or -f/-F, not both")
            path = Path(value)
    if action is None:
        flags = ", ".join(spec.flag for spec in ACTIONS.values())
        raise UsageError(f"no action given: choose one of {flags} (see -h)")
    if path is None:
        raise UsageError(f"{ACTIONS[action].flag} needs a path: -f PATH or -F PATH")
    return action, path, recursive


def _plan_jobs(
    spec: ActionSpec,
    path: Path,
    recursive: bool,
    state: ScanState | None = None,
    output_dir: Path | None = None,
) -> list[tuple[Path, list[Path] | None]]:
    """Turn the path into jobs: (folder, files) pairs; files None means "list it then".

    An output_dir inside the tree is no job (job_folders).
    """
    if path.is_file():
        return [(path.parent, [path])]
    if not path.is_dir():
        raise DicomPressorError(f"{path}: no such file or folder", status=404)
    kind = spec.inputs
    if spec.takes == TREE:
        files = []
        for folder in job_folders(
            path, recursive=recursive, kind=kind, state=state, exclude=output_dir
        ):
            files.extend(list_inputs(folder, kind))
        return [(path, files)]
    folders = job_folders(path, recursive=recursive, kind=kind, state=state, exclude=output_dir)
    return [(folder, None) for folder in folders]


@contextlib.contextmanager
def _stop_on_signals(stop: StopFlag) -> Iterator[None]:
    """Make Ctrl+C and SIGTERM stop after the current job; a second Ctrl+C stops at once.

    The previous handlers come back afterwards (main may run inside another program).
    """

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        LOG.warning("Stopping after the current job (signal %d)...", signum)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _job_line(outcome: JobOutcome) -> str:
    """Return the spec's one-line result of a job."""
    if outcome.status == "SKIPPED":
        if outcome.skipped == "already processed":
            return f"SKIPPED (already processed) {outcome.folder}"
        return f"SKIPPED ({outcome.skipped}) {outcome.folder}"
    if outcome.status == "FAILED":
        reason = outcome.error
        if reason is None and outcome.result is not None and outcome.result.failures:
            failed = outcome.result.failures
            reason = f"{failed[0][0].name}: {failed[0][1]}"
            if len(failed) > 1:
                reason += f" (and {len(failed) - 1} more)"
        return f"[FAILED] {outcome.folder}: {reason}"
    assert outcome.result is not None
    outputs = ", ".join(str(p) for p in outcome.result.outputs[:5])
    if len(outcome.result.outputs) > 5:
        outputs += f", ... ({len(outcome.result.outputs)} files)"
    line = f"[OK] {outcome.folder} ({outcome.inputs} files) -> {outputs or 'no new files'}"
    if outcome.status == "PARTIAL":
        line = line.replace("[OK]", "[PARTIAL]", 1)
        line += f" ({len(outcome.result.failures)} file(s) failed)"
    return line


def _outcome_json(outcome: JobOutcome) -> dict[str, Any]:
    """Return a job outcome as a JSON-ready dict with sorted, stable keys."""
    result = outcome.result
    return {
        "folder": str(outcome.folder),
        "status": outcome.status,
        "inputs": outcome.inputs,
        "outputs": [str(p) for p in result.outputs] if result else [],
        "failures": [{"file": str(p), "error": m} for p, m in result.failures] if result else [],
        "error": outcome.error,
        "data": result.data if result else {},
    }


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """Print the usage and a one-line error; return the usage exit code."""
    parser.print_usage(sys.stderr)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def server_config(args: argparse.Namespace) -> ServerConfig:
    """Build the ``--serve`` settings from the SERVER options (converted by cli_values)."""
    values = {}
    for option in OPTIONS.values():
        value = getattr(args, option.name) if option.scope == SERVER else None
        if value is not None:
            values[option.field or option.name] = (
                value * option.factor if option.factor != 1 else value  # paths, texts
            )
    return ServerConfig(jobs=args.jobs, **values)


def read_params_file(path: Path, parse: Callable[[str], Any] | None = None) -> str:
    """Read a params file and check it with parse; raise DicomPressorError naming it.

    Without parse, the action's rule checks the text (--params of -w, -W, -v).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DicomPressorError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DicomPressorError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if parse is None:
        return text
    try:
        parse(text)  # every line checked before any file is touched
    except DicomPressorError as exc:
        raise DicomPressorError(f"{path}: {exc.message}") from exc
    return text


def cli_options(spec: ActionSpec, args: argparse.Namespace, given: Sequence[str]) -> Options:
    """Build the Options of a command-line run of spec; UsageError for a misplaced option.

    A params file that cannot be read or parsed raises DicomPressorError naming it.
    """
    for name in given:
        option = OPTIONS[name]
        if option.scope == ACTION:
            action_option(spec, name, cli_label)
        if option.scope == SERVER:
            raise UsageError(f"{option.flag} is a setting of --serve")
    values = {o.name: getattr(args, o.name) for o in spec.options if o.name in given}
    params = None
    if args.params_file is not None and (not spec.params or spec.flag_value == "params"):
        takers = ", ".join(s.flag for s in ACTIONS.values() if s.params and not s.flag_value)
        raise UsageError(f"{OPTIONS['params_file'].flag} is for {takers}, not {spec.flag}")
    if args.params_file is not None:
        params = read_params_file(args.params_file)
    if spec.flag_value == "params":
        params = read_params_file(Path(args.action_value), spec.parse_params)
    elif spec.flag_value is not None:
        option = OPTIONS[spec.flag_value]
        flag = args.action_flag or spec.flag  # -i names -i
        values[option.name] = parse_option(option, args.action_value, lambda _: flag)
    values.update(args.action_sets)  # a VariantFlag's options (-i, -e: annotate)
    return action_options(
        spec,
        values,
        cli_label,
        output_dir=args.output_dir,
        in_place=bool(args.action and args.action.endswith(REPLACE_SUFFIX)),
        jobs=args.jobs,
        params=params,
        uid_secret=secrets.token_hex(16),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # as the original DicomPressor: no arguments, the help
        parser.print_help()
        return EXIT_OK
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on -h
        return int(exc.code or 0)
    try:
        given = cli_values(args)
    except UsageError as exc:
        return _usage_error(parser, exc.message)
    if args.version:
        print(f"{PROG} {__version__}")
        return EXIT_OK
    configure_logging(args)
    if args.serve or args.make_sample is not None or args.dask:
        load_toolkit()
    if args.serve:
        return run_server(server_config(args))
    if COMMAND_LINE:
        tune_malloc()
    if args.make_sample is not None:
        paths = write_sample_series(args.make_sample)
        print(f"Wrote {len(paths)} sample slices to {args.make_sample}")
        return EXIT_OK
    try:
        action, path, recursive = _resolve_request(args)
        spec = ACTIONS[action]
        if spec.light_start is None:
            load_toolkit()
        options = cli_options(spec, args, given)
        if spec.light_start is not None and not spec.light_start(options):
            load_toolkit()  # a light start loads it only for a file it hands to pydicom
    except UsageError as exc:
        return _usage_error(parser, exc.message)
    except DicomPressorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    batch = BatchOptions(
        skip_if_done=args.skip_if_done or args.watch is not None,
        lock_timeout_s=args.lock_timeout,
    )
    stop = StopFlag()
    with _stop_on_signals(stop):
        return _run(args, spec, action, path, recursive, options, batch, stop)


def json_payload(spec: ActionSpec, outcomes: list[JobOutcome]) -> Any:
    """Return what ``--json`` prints, by the kind of result the action gives.

    RECORDS: the one record (or every record with the failures); COUNTS: the counts;
    WROTE: each job's outcome.
    """
    if spec.result == RECORDS:
        records = [r for o in outcomes if o.result for r in o.result.data.get("files", [])]
        failures = [f for o in outcomes for f in _outcome_json(o)["failures"]]
        if len(records) == 1 and not failures:
            return records[0]
        return {"files": records, "failures": failures}
    if spec.result == COUNTS:
        return outcomes[0].result.data if outcomes[0].result else _outcome_json(outcomes[0])
    return {"action": spec.name, "jobs": [_outcome_json(o) for o in outcomes]}


def _reporter(args: argparse.Namespace, spec: ActionSpec) -> Callable[[JobOutcome], None]:
    """Return how a job's outcome is shown: its result line, or its report (none: --json)."""

    def report(outcome: JobOutcome) -> None:
        if args.json:
            return
        if spec.writes_files or outcome.status == "SKIPPED":
            line = _job_line(outcome)
            print(line, flush=True)
            LOG.info(line, extra={"job_line": True})
            return
        if outcome.result is not None:
            print("\n".join(outcome.result.report), flush=True)
        if outcome.status != "OK":
            print(_job_line(outcome), file=sys.stderr, flush=True)

    return report


def _run(
    args: argparse.Namespace,
    spec: ActionSpec,
    action: str,
    path: Path,
    recursive: bool,
    options: Options,
    batch: BatchOptions,
    stop: StopFlag,
) -> int:
    """Run the jobs (or the watch loop) the command line asks for; return the exit code."""
    show_progress = not args.quiet and not args.json
    report = _reporter(args, spec)
    state = ScanState(args.scan_state_file, path, spec.inputs) if args.scan_state_file else None
    if args.watch is not None:
        if not path.is_dir():
            print(f"error: {path}: not a folder to watch", file=sys.stderr)
            return EXIT_FAILED
        LOG.info("Watching %s every %gs (%s); Ctrl+C stops", path, args.watch, spec.name)
        watch(
            action,
            path,
            recursive=recursive,
            options=options,
            batch=batch,
            interval_s=args.watch,
            settle_s=args.settle,
            workers=args.jobs,
            on_outcome=report,
            stop=stop,
            shard=args.shard,
            scan_state=state,
        )
        LOG.info("Stopped.")
        return EXIT_OK
    try:
        jobs = _plan_jobs(spec, path, recursive, state, options.output_dir)
    except DicomPressorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    if not jobs:
        print(f"error: {path}: no {INPUT_NOUNS[spec.inputs]} found", file=sys.stderr)
        return EXIT_FAILED
    if spec.takes == TREE:  # one report over the whole tree: no locks, no marker
        folder, inputs = jobs[0]
        progress = Progress(f"{spec.name} {folder.name}", enabled=show_progress)
        outcomes = [run_job(spec, folder, inputs, options, progress)]
        report(outcomes[0])
    else:
        if args.shard is not None and path.is_dir():
            index, count = args.shard
            jobs = [(f, files) for f, files in jobs if in_shard(f, path, index, count)]
            LOG.info("Shard %d/%d: %d job folder(s)", index, count, len(jobs))
        client = executor = None
        if args.dask:
            try:
                client, executor = dask_executor(args.dask)
            except DicomPressorError as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return EXIT_FAILED
        skipped = []
        if state is not None and batch.skip_if_done:  # done by the cache, no marker read
            skipped = [
                JobOutcome(f, 0, None, skipped="already processed")
                for f, _ in jobs
                if state.done(f, action)
            ]
            known = {o.folder for o in skipped}
            jobs = [(f, files) for f, files in jobs if f not in known]
            for outcome in skipped:
                report(outcome)
        if not jobs and not skipped:  # an empty shard is a finished one
            return EXIT_OK
        try:
            outcomes = skipped + run_jobs(
                action,
                jobs,
                options,
                batch,
                workers=args.jobs,
                on_outcome=report,
                stop=stop,
                progress=lambda f: Progress(f"{spec.name} {f.name}", enabled=show_progress),
                executor=executor,
            )
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            if state is not None:
                state.save()
        if stop.is_set() and len(outcomes) < len(jobs) + len(skipped):
            left = len(jobs) + len(skipped) - len(outcomes)
            LOG.warning("Stopped: %d folder(s) not processed", left)
            return EXIT_PARTIAL
    if args.json:
        print(json.dumps(json_payload(spec, outcomes), indent=2, sort_keys=True, default=str))
    return exit_code(outcomes)


def run_main(argv: list[str] | None = None) -> int:
    """Run main(); a closed standard output (``dicompressor ... | head``) ends it quietly.

    The exception unwinds the job under way like an interrupt (its temp files are
    removed, the journal undoes its outputs), and the exit code is 1.
    """
    try:
        return main(argv)
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # no second error when Python flushes at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        LOG.warning("standard output closed: stopped")
        return EXIT_FAILED


def main_entry() -> None:
    """Console-script entry point (``dicompressor``)."""
    sys.exit(run_main())


if __name__ == "__main__":
    sys.exit(run_main())
