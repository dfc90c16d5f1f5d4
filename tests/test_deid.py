"""De-identification beyond the Basic profile: identifiers the table leaves out, SR
content, what stays undamaged, the Table E.1-1 options, the key and the UID map."""

from __future__ import annotations

import os
import shutil
import stat
import warnings
from pathlib import Path

import pydicom
import pytest
from conftest import bundled_files, dciodvfy_errors, merge_one, run_cli
from planted import plant_file, write_planted_set
from pydicom.dataset import Dataset

import dicompressor as dp

Planted = tuple[list[Path], list[str], list[str]]


@pytest.fixture(scope="module")
def planted_set(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    """The planted files (CT slices, an enhanced multi-frame file, an SR), written once."""
    return write_planted_set(tmp_path_factory.mktemp("planted"), merge_with=merge_one)


@pytest.fixture
def planted(planted_set: Planted, tmp_path: Path) -> Planted:
    """A private copy of the planted files (tests may change them)."""
    paths, values, uids = planted_set
    folder = tmp_path / "in"
    folder.mkdir()
    copies = []
    for path in paths:
        target = folder / (f"ct_{path.name}" if path.parent.name == "ct" else path.name)
        shutil.copyfile(path, target)
        copies.append(target)
    return copies, values, uids


def run(paths: list[Path], out: Path, **options: object) -> list[pydicom.Dataset]:
    """Anonymize paths into out with the options; return the outputs, read back."""
    result = dp.anonymize(paths, out, dp.Options(**options))
    assert not result.failures, result.log
    return [pydicom.dcmread(p) for p in result.outputs]


def left_in(path: Path, values: list[str]) -> list[str]:
    """Return the values whose bytes are still in the file."""
    data = path.read_bytes()
    return [v for v in values if v.encode() in data]


def by_name(outputs: list[pydicom.Dataset], stem: str) -> pydicom.Dataset:
    """Return the output whose file name starts with stem."""
    return next(o for o in outputs if Path(o.filename).name.startswith(stem))


def codes_of(ds: Dataset) -> list[str]:
    """Return the code values of De-identification Method Code Sequence."""
    return [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


def content_items(ds: Dataset) -> list[Dataset]:
    """Return every content item of an SR tree, depth first."""
    found = []
    for item in ds.get("ContentSequence", []):
        found.append(item)
        found += content_items(item)
    return found


def item_named(ds: Dataset, meaning: str) -> Dataset | None:
    """Return the content item whose concept name has this meaning, or None."""
    for item in content_items(ds):
        names = item.get("ConceptNameCodeSequence")
        if names and names[0].CodeMeaning == meaning:
            return item
    return None


class TestTables:
    """The PS3.15 tables the code is made from."""

    def test_counts_of_the_2026d_tables(self):
        assert len(dp.basic_profile()) == 653  # 657 rows, 4 of them rules
        # Rows of Table E.1-1 (2026d) with an action in each option column: 60 K;
        # 48 K + 11 C; 10 K; 14 K + 5 C; 169 rows marked K by Full Dates and C by
        # Modified Dates (the same rows); Clean Graphics marks 4 rows, 3 of which (curve
        # data 50xx,xxxx, overlay data 60xx,3000 and overlay comments 60xx,4000) are
        # rules; Clean Structured Content marks 4.
        counts = {
            column: sum(len(dp.table_tags(names)) for names in actions.values())
            for column, actions in dp.OPTION_TABLES.items()
        }
        assert counts == {
            "retain_uids": 60,
            "retain_device_identity": 59,
            "retain_institution_identity": 10,
            "retain_patient_characteristics": 19,
            "longitudinal": 169,
            "clean_graphics": 1,  # + the overlay and curve rules
            "clean_structured_content": 4,
        }
        # Table E.3.10-1 (2026d): 479 rows, one safe private element each
        assert sum(len(o) for o in dp.safe_private_table().values()) == 479
        # Table E.3.4-1 (2026d): 213 concept names, 60 D + 18 X/D + 135 X
        assert len(dp.structured_content_actions(dp.ProfileChoice())) == 213

    def test_beyond_the_table_really_is(self):
        basic = dp.basic_profile()
        for keyword in dp.BEYOND_TABLE_E11:
            tag = pydicom.datadict.tag_for_keyword(keyword)
            assert tag is not None and tag not in basic, keyword
        for keyword in dp.CONTEXT_TYPES:
            assert pydicom.datadict.tag_for_keyword(keyword) is not None, keyword

    def test_method_codes_in_code_order(self):
        every = dp.ProfileChoice(*[True] * 3, False, *[True] * 5)
        assert [c for c, _ in every.method_codes] == [
            "113100", "113103", "113104", "113105", "113106", "113108", "113109", "113110",
            "113111", "113112",
        ]  # fmt: skip
        shifted = dp.ProfileChoice(shift_dates=True)
        assert [c for c, _ in shifted.method_codes] == ["113100", "113104", "113107"]


class TestLeaks:
    """Planted identifiers: top level, nested, per-frame, SR, private, graphics."""

    def test_nothing_planted_is_left(self, planted, tmp_path):
        paths, values, uids = planted
        result = dp.anonymize(paths, tmp_path / "out", dp.Options())
        assert not result.failures, result.log
        assert len(result.outputs) == len(paths) == 5
        for output in result.outputs:
            assert left_in(output, values) == [], output.name
            assert left_in(output, uids) == [], output.name

    def test_issuer_and_order_sequences_go(self, planted, tmp_path):
        outputs = run(planted[0], tmp_path / "out")
        image, report = by_name(outputs, "ct_"), by_name(outputs, "report")
        for keyword in ("IssuerOfAccessionNumberSequence", "OtherPatientIDsSequence"):
            assert keyword not in image
        request = report.ReferencedRequestSequence[0]
        for keyword in ("IssuerOfAccessionNumberSequence", "OrderPlacerIdentifierSequence"):
            assert keyword not in request
        # Type 2 in the Referenced Request Sequence (C.17.2): emptied, not removed
        assert request.RequestedProcedureID == ""
        assert request.ReferencedStudySequence == []
        assert request.AccessionNumber == ""
        assert request.StudyInstanceUID == report.StudyInstanceUID

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_planted_into_pydicom_files(self, tmp_path):
        """Every bundled file that anonymizes, with identifiers planted at the top, in a
        nested sequence and in a private block: none is left."""
        done = 0
        for source in bundled_files():
            target = tmp_path / source.name
            values = plant_file(source, target, ("PixelData", "SOPInstanceUID"))
            if values is None:
                continue
            result = dp.anonymize([target], tmp_path / "out", dp.Options())
            if result.failures:
                continue
            done += 1
            assert left_in(result.outputs[0], values) == [], source.name
        assert done > 40


class TestStructuredContent:
    """SR content keeps its tree (Clean Structured Content, PS3.15 E.3.4)."""

    def test_codes_numbers_coordinates_and_references_stay(self, planted, tmp_path):
        report = next(p for p in planted[0] if p.name.endswith("report.dcm"))
        source = pydicom.dcmread(report)
        out = run([report], tmp_path / "out")[0]
        # Table E.3.4-1 removes the subject's birth date, age, sex and UID (X) ...
        for meaning in ("Subject Birth Date", "Subject Age", "Subject Sex", "Subject UID"):
            assert item_named(out, meaning) is None, meaning
        # ... and replaces names, IDs and text (D)
        assert item_named(out, "Subject Name").PersonName == "ANONYMIZED^ANONYMIZED"
        assert item_named(out, "Subject ID").TextValue == "ANONYMIZED"
        assert item_named(out, "Finding").TextValue == "ANONYMIZED"
        assert item_named(out, "Study Date").Date == "19000101"
        # numbers, units, coordinates and codes are kept exactly
        length = item_named(out, "Length").MeasuredValueSequence[0]
        assert length.NumericValue == "12.5"
        assert length.MeasurementUnitsCodeSequence[0].CodeValue == "mm"
        region = item_named(out, "Image Region")
        assert list(region.GraphicData) == [1.5, 2.5, 10.0, 2.5, 10.0, 8.25, 1.5, 8.25]
        assert region.GraphicType == "POLYLINE"
        assert item_named(out, "Observer Type").ConceptCodeSequence[0].CodeValue == "121006"
        # the by-reference relationship follows the polyline to its new position
        assert item_named(source, "Length").ContentSequence[0].ReferencedContentItemIdentifier == [
            1,
            11,
        ]
        index = list(out.ContentSequence).index(region) + 1
        reference = item_named(out, "Length").ContentSequence[0]
        assert list(reference.ReferencedContentItemIdentifier) == [1, index] == [1, 7]
        assert len(dciodvfy_errors(tmp_path / "out" / "report_anon.dcm")) == 0

    def test_a_reference_to_a_removed_item_goes_with_it(self, planted, tmp_path):
        report = next(p for p in planted[0] if p.name.endswith("report.dcm"))
        ds = pydicom.dcmread(report)
        pointer = Dataset()
        pointer.RelationshipType = "INFERRED FROM"
        pointer.ReferencedContentItemIdentifier = [1, 7]  # Subject Age, which goes
        ds.ContentSequence[11].ContentSequence.append(pointer)
        ds.save_as(report)
        out = run([report], tmp_path / "out")[0]
        references = [
            list(i.ReferencedContentItemIdentifier)
            for i in content_items(out)
            if "ReferencedContentItemIdentifier" in i
        ]
        assert references == [[1, 7]]  # only the one to the polyline, renumbered

    @pytest.mark.parametrize("name", ["test-SR.dcm", "reportsi.dcm"])
    def test_pydicom_reports(self, testdata, tmp_path, name):
        path = testdata(name)
        source = pydicom.dcmread(path)
        out = run([path], tmp_path / "out")[0]

        def values(ds: Dataset, keyword: str) -> list[object]:
            return [
                str(e.value)
                for item in ds.ContentSequence
                for e in item.iterall()
                if e.keyword == keyword
            ]

        for keyword in ("NumericValue", "GraphicData", "CodeValue", "RelationshipType"):
            assert values(out, keyword) == values(source, keyword), keyword
        text = [e.value for e in out.iterall() if e.keyword == "TextValue"]
        assert text and set(text) == {"ANONYMIZED"}
        before, after = dciodvfy_errors(path), dciodvfy_errors(Path(out.filename))
        assert len(after) <= len(before), after


class TestNoDamage:
    """What stays stays valid: no emptied sequences, no half overlays (dciodvfy)."""

    def test_overlay_group_goes_whole(self, planted, tmp_path):
        out = run(planted[0][:1], tmp_path / "out")[0]
        assert not [e for e in out if e.tag.group == 0x6000]

    def test_referenced_study_sequence_removed_not_emptied(self, planted, tmp_path):
        out = run(planted[0][:1], tmp_path / "out")[0]
        assert "ReferencedStudySequence" not in out  # Type 3 in General Study

    def test_planted_files_no_new_errors(self, planted, tmp_path):
        result = dp.anonymize(planted[0], tmp_path / "out", dp.Options())
        for source, output in zip(planted[0], result.outputs, strict=True):
            before, after = dciodvfy_errors(source), dciodvfy_errors(output)
            assert len(after) <= len(before), (output.name, after)

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_pydicom_files_no_new_errors(self, tmp_path):
        """dciodvfy errors after <= before for every bundled file that anonymizes (all
        of them, about 70: some 15 s)."""
        checked = 0
        for source in bundled_files():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = dp.anonymize([source], tmp_path / source.stem, dp.Options())
            if result.failures:
                continue
            checked += 1
            before, after = dciodvfy_errors(source), dciodvfy_errors(result.outputs[0])
            assert len(after) <= len(before), (source.name, before, after)
        assert checked > 60


class TestOptions:
    """Each Table E.1-1 option: its CID 7050 code and what it keeps or changes."""

    def test_keep_patient_characteristics(self, planted, tmp_path):
        outputs = run(planted[0], tmp_path / "out", keep_patient_characteristics=True)
        image, report = by_name(outputs, "ct_"), by_name(outputs, "report")
        assert "113108" in codes_of(image)
        assert (image.PatientAge, image.PatientSex) == ("071Y", "F")
        assert (float(image.PatientWeight), float(image.PatientSize)) == (61.5, 1.62)
        assert item_named(report, "Subject Age").MeasuredValueSequence[0].NumericValue == "71"
        assert item_named(report, "Subject Sex") is not None
        assert "PatientAge" not in run(planted[0][:1], tmp_path / "basic")[0]

    def test_keep_device_identity(self, planted, tmp_path):
        source = pydicom.dcmread(planted[0][0])
        image = run(planted[0][:1], tmp_path / "out", keep_device_identity=True)[0]
        assert "113109" in codes_of(image)
        assert image.DeviceSerialNumber == "SERIALNOX"
        assert image.StationName == "STATIONX"
        assert image.DeviceUID == source.DeviceUID
        assert image.SOPInstanceUID != source.SOPInstanceUID

    def test_keep_institution_identity(self, planted, tmp_path):
        image = run(planted[0][:1], tmp_path / "out", keep_institution_identity=True)[0]
        assert "113112" in codes_of(image)
        assert image.InstitutionName == "PLANTED HOSPITALX"
        assert image.InstitutionAddress == "HOSPITAL ROADX"
        assert image.InstitutionalDepartmentName == "DEPARTMENTX"
        assert image.OperatorsName == "ANONYMIZED^ANONYMIZED"

    def test_keep_safe_private(self, planted, tmp_path):
        image = run(planted[0][:1], tmp_path / "out", keep_safe_private=True)[0]
        assert "113111" in codes_of(image)
        block = image.private_block(0x0019, "GEMS_ACQU_01")
        assert float(block[0x23].value) == 37.5
        assert 0x99 not in block  # same creator, not in Table E.3.10-1
        with pytest.raises(KeyError):
            image.private_block(0x0009, "ACME CORP")
        private = [e.tag for e in image.iterall() if e.tag.is_private]
        assert sorted(private) == [0x00190010, block.get_tag(0x23)]

    def test_clean_graphics(self, planted, tmp_path):
        path = planted[0][0]
        ds = pydicom.dcmread(path)
        ds.add_new(0x60000040, "CS", "R")  # an ROI overlay
        ds.save_as(path)
        image = run([path], tmp_path / "out", clean_graphics=True)[0]
        assert "113103" in codes_of(image)
        annotation = image.GraphicAnnotationSequence[0]
        assert "TextObjectSequence" not in annotation
        graphic = annotation.GraphicObjectSequence[0]
        assert list(graphic.GraphicData) == [1.0, 1.0, 10.0, 12.0]
        assert image[0x60003000].value == ds[0x60003000].value  # the ROI stays
        assert 0x60000022 not in image and 0x60004000 not in image  # its text goes
        basic = run([path], tmp_path / "basic")[0]
        text = basic.GraphicAnnotationSequence[0].TextObjectSequence[0]
        assert text.UnformattedTextValue == "ANONYMIZED"
        assert list(basic.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData) == [
            1.0,
            1.0,
            10.0,
            12.0,
        ]
        assert 0x60003000 not in basic

    def test_shift_dates(self, planted, tmp_path):
        sources = [pydicom.dcmread(p) for p in planted[0]]
        outputs = run(planted[0], tmp_path / "out", shift_dates=True)
        shifts = set()
        for source, out in zip(sources, outputs, strict=True):
            assert "113107" in codes_of(out)
            assert out.LongitudinalTemporalInformationModified == "MODIFIED"
            assert out.PatientBirthDate == ""  # Z: not a longitudinal date
            for keyword in ("StudyDate", "ContentDate"):
                old, new = getattr(source, keyword), getattr(out, keyword)
                shifts.add((dp_date(new) - dp_date(old)).days)
            assert out.StudyTime == source.StudyTime  # a whole-day shift keeps times
        (days,) = shifts
        assert -dp.DATE_SHIFT_MAX_DAYS <= days < 0
        frames = by_name(outputs, "multiframe").PerFrameFunctionalGroupsSequence
        moved = frames[0].FrameContentSequence[0].FrameAcquisitionDateTime
        assert (dp_date(moved[:8]) - dp_date("20180809")).days == days
        assert moved[8:] == "101112"
        report = by_name(outputs, "report")
        assert (dp_date(item_named(report, "Study Date").Date) - dp_date("20170102")).days == days

    @pytest.mark.parametrize(
        ("vr", "value", "days", "moved"),
        [
            ("DA", "20190304", -3, "20190301"),
            ("DA", "20190301\\20200229", -1, "20190228\\20200228"),
            ("DA", "2019.03.04", 1, "20190305"),
            ("DT", "20190301000501.25+0100", -1, "20190228000501.25+0100"),
            ("DT", "201903", -40, "201901"),
            ("DT", "2019", -400, "2017"),
            ("DA", "2019", -1, None),
            ("DA", "yesterday", -1, None),
            ("DT", "00010101", -1, None),
        ],
    )
    def test_shift_date_values(self, vr, value, days, moved):
        assert dp.shift_date(vr, value, days) == moved

    def test_shift_in_a_dataset(self):
        ds = Dataset()
        ds.CalibrationDate = ["20200102", "20200103"]  # VM 1-n, unlisted in the option
        ds.StudyDate, ds.AcquisitionDateTime = "20200102", "20200102235959"
        ds.StudyTime, ds.PatientBirthDate = "235959", "19500101"
        choice = dp.ProfileChoice(shift_dates=True)
        actions = dp.profile_actions(choice)
        dp.deidentify_dataset(
            ds, actions, dp.UidMap("k"), replace_uids=True, choice=choice, shift_days=-2
        )
        # the Modified Dates column cleans (shifts) it although the Basic Profile removes it
        assert list(ds.CalibrationDate) == ["20191231", "20200101"]
        assert (ds.StudyDate, ds.AcquisitionDateTime) == ("20191231", "20191231235959")
        assert (ds.StudyTime, ds.PatientBirthDate or "") == ("235959", "")
        basic = Dataset()
        basic.CalibrationDate = "20200102"
        dp.deidentify_dataset(basic, dp.profile_actions(dp.ProfileChoice()), dp.UidMap("k"),
                              replace_uids=True)  # fmt: skip
        assert "CalibrationDate" not in basic

    def test_an_option_keeps_a_sequence_inside_a_dummy_one(self):
        ds = Dataset()
        person = Dataset()
        person.InstitutionName = "KEPTX"
        person.InstitutionCodeSequence = [Dataset()]
        person.InstitutionCodeSequence[0].CodeValue = "INST1"
        person.InstitutionCodeSequence[0].CodingSchemeDesignator = "99LOCAL"
        person.InstitutionCodeSequence[0].CodeMeaning = "Kept Institute"
        ds.OperatorIdentificationSequence = [person]  # D: its text gets dummy values
        choice = dp.ProfileChoice(keep_institution_identity=True)
        dp.deidentify_dataset(
            ds, dp.profile_actions(choice), dp.UidMap("k"), replace_uids=True, choice=choice
        )
        kept = ds.OperatorIdentificationSequence[0]
        assert kept.InstitutionName == "KEPTX"
        assert kept.InstitutionCodeSequence[0].CodeMeaning == "Kept Institute"

    def test_another_patient_another_shift(self, planted, tmp_path):
        first, second = planted[0][0], tmp_path / "other.dcm"
        ds = pydicom.dcmread(first)
        ds.PatientID = "SOMEONEELSEX"
        ds.save_as(second)
        key = tmp_path / "k.key"
        one, two = run([first, second], tmp_path / "out", shift_dates=True, deid_key=key)
        assert one.StudyDate != two.StudyDate  # (1 chance in 3652 to be equal: not here)
        assert dp.date_shift_days(dp.UidMap("a" * 64), "X") != 0

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"keep_dates": True, "shift_dates": True}, "give --keep-dates or --shift-dates"),
            ({"keep_uids": True, "uid_map": Path("m.csv")}, "give --keep-uids or --uid-map"),
            (
                {"profile": "none", "params": "PatientID=X", "shift_dates": True},
                "--shift-dates is an option of the profile, not of --profile none",
            ),
        ],
    )
    def test_conflicts(self, options, message, tmp_path):
        with pytest.raises(dp.UsageError, match=message):
            dp.anonymize([], tmp_path, dp.Options(**options))

    def test_key_and_map_are_not_api_options(self, tmp_path):
        for name in ("deid_key", "uid_map"):
            with pytest.raises(dp.HTTPError) as caught:
                dp.process_request({"action": "anonymize", "options": {name: "/tmp/x"}}, tmp_path)
            assert caught.value.status == 400
            assert caught.value.message.startswith(f"unknown option '{name}' for anonymize")


def dp_date(text: str):
    """Return a DA value as a date."""
    import datetime

    return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))


class TestKeyAndUidMap:
    """--deid-key: the same answer across runs; --uid-map: the table for the custodian."""

    def test_two_cli_runs_with_one_key_agree(self, planted, tmp_path):
        key = tmp_path / "secret" / "deid.key"
        image = planted[0][0]
        outs = []
        for run_number in (1, 2):
            out = tmp_path / f"run{run_number}"
            code, _, err = run_cli(
                "-a", params(tmp_path), "-f", image, "--output-dir", out,
                "--deid-key", key, "--shift-dates", "--quiet",
            )  # fmt: skip
            assert code == 0, err
            outs.append(pydicom.dcmread(next(out.glob("*.dcm"))))
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert len(key.read_text().strip()) == 2 * dp.DEID_KEY_BYTES
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "StudyDate"):
            assert getattr(outs[0], keyword) == getattr(outs[1], keyword), keyword
        code, _, err = run_cli(
            "-a", params(tmp_path), "-f", image, "--output-dir", tmp_path / "nokey", "--quiet"
        )
        assert code == 0, err
        fresh = pydicom.dcmread(next((tmp_path / "nokey").glob("*.dcm")))
        assert fresh.SOPInstanceUID != outs[0].SOPInstanceUID

    def test_uid_map_lists_what_the_outputs_got(self, planted, tmp_path):
        key, table = tmp_path / "k.key", tmp_path / "custodian" / "uids.csv"
        table.parent.mkdir()
        paths = planted[0]
        result = dp.anonymize(paths, tmp_path / "out", dp.Options(deid_key=key, uid_map=table))
        lines = table.read_text().splitlines()
        assert lines[0] == "original_uid,new_uid,key_id"
        rows = dict(line.split(",")[:2] for line in lines[1:])
        ids = {line.split(",")[2] for line in lines[1:]}
        assert ids == {dp.key_id(dp.read_deid_key(key))}
        assert stat.S_IMODE(table.stat().st_mode) == 0o600
        for source, output in zip(paths, result.outputs, strict=True):
            old, new = pydicom.dcmread(source), pydicom.dcmread(output)
            for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
                assert rows[getattr(old, keyword)] == getattr(new, keyword), keyword
        assert set(planted[2]) <= set(rows)
        # a second run with the same key adds nothing; the map never goes to the outputs
        before = table.read_text()
        dp.anonymize(paths, tmp_path / "again", dp.Options(deid_key=key, uid_map=table))
        assert table.read_text() == before
        assert not list((tmp_path / "out").glob("*.csv"))

    def test_batch_jobs_add_to_one_map(self, planted, tmp_path):
        root = tmp_path / "jobs"
        for index, path in enumerate(planted[0][:2]):
            (root / f"job{index}").mkdir(parents=True)
            shutil.copyfile(path, root / f"job{index}" / "a.dcm")
        table = tmp_path / "map.csv"
        code, _, err = run_cli(
            "-a", params(tmp_path), "-f", root, "--output-dir", tmp_path / "out",
            "--uid-map", table, "--jobs", "2", "--quiet",
        )  # fmt: skip
        assert code == 0, err
        rows = table.read_text().splitlines()[1:]
        sources = {pydicom.dcmread(p).SOPInstanceUID for p in planted[0][:2]}
        assert sources <= {row.split(",")[0] for row in rows}
        assert len({row.split(",")[2] for row in rows}) == 1  # one run, one key

    def test_key_or_map_in_the_output_folder_is_refused(self, planted, tmp_path):
        out = tmp_path / "out"
        for name in ("deid_key", "uid_map"):
            options = dp.Options(**{name: out / "x"})
            with pytest.raises(dp.UsageError, match="keep the key and the UID map away"):
                dp.anonymize(planted[0][:1], out, options)
        assert not out.exists()

    def test_bad_key_file(self, planted, tmp_path):
        key = tmp_path / "short.key"
        key.write_text("abc\n")
        with pytest.raises(dp.DicomPressorError) as caught:
            dp.anonymize(planted[0][:1], tmp_path / "out", dp.Options(deid_key=key))
        assert caught.value.message == (
            f"{key}: not a de-identification key (expected at least 32 hex digits)"
        )

    def test_loose_key_permissions_warn(self, planted, tmp_path):
        key = tmp_path / "open.key"
        key.write_text("ab" * 32)
        os.chmod(key, 0o644)
        result = dp.anonymize(planted[0][:1], tmp_path / "out", dp.Options(deid_key=key))
        assert f"[WARNING] {key}: the key can be read by other users (chmod 600)" in result.log


def params(folder: Path) -> Path:
    """Write a params file with one harmless replacement; return its path."""
    path = folder / "params.txt"
    path.write_text("PatientIdentityRemoved=YES\n")
    return path
