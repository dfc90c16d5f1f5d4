"""Modify (-m/-M): the params lines, what they do to files, in place, the CLI and the API."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import synth
from conftest import RELAXED, Running, dciodvfy_errors, run_main
from pydicom.dataset import Dataset

import dicompressor as dp
from dicompressor import MODIFY, REMOVE, SET, Replacement, parse_modify_params


def series(tmp_path: Path, n: int = 2, **kwargs: object) -> list[Path]:
    """Write a small generated CT series into tmp_path/s."""
    return synth.make_series(tmp_path / "s", n=n, rows=32, cols=32, **kwargs)


def digest(path: Path) -> str:
    """Return a file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def modify(paths: list[Path], text: str, **options: object) -> dp.ActionResult:
    """Run the modify action on paths with a params text."""
    return dp.modify(paths, None, dp.Options(params=text, jobs=1, **options))


class TestParse:
    """parse_modify_params: the forms, how the VR is told from the value, the errors."""

    def test_forms(self) -> None:
        text = (
            "# the original's README example\n"
            "m 0010 0010 PN ANONYMIZED\n"
            "r 0010 0020\n"
            "i 0011 0010 LO ACME\n"
            "i 0011 1030 FD 3.14159\n"
            "\n"
            "(0008,1030)=Follow-up\n"
            "SeriesDescription=Axial\n"
            "m 0008 0080 Some  Hospital\n"
        )
        assert parse_modify_params(text) == [
            Replacement(0x00100010, "PN", "ANONYMIZED", 2, MODIFY, "ANONYMIZED", True),
            Replacement(0x00100020, None, None, 3, REMOVE, "", False),
            Replacement(0x00110010, "LO", "ACME", 4, SET, "ACME", True),
            Replacement(0x00111030, "FD", 3.14159, 5, SET, "3.14159", True),
            Replacement(0x00081030, "LO", "Follow-up", 7, SET, "Follow-up", False),
            Replacement(0x0008103E, "LO", "Axial", 8, SET, "Axial", False),
            Replacement(0x00080080, "LO", "Some  Hospital", 9, MODIFY, "Some  Hospital", False),
        ]

    @pytest.mark.parametrize(
        ("line", "vr", "value"),
        [
            ("m 0010 0010 PN DOE^JOHN", "PN", "DOE^JOHN"),  # a VR the tag has: the VR
            ("m 0010 0010 pn DOE^JOHN", "PN", "DOE^JOHN"),  # in any case
            ("m 0008 0080 Some Hospital", "LO", "Some Hospital"),  # no VR: all value
            ("m 0008 0060 CS US", "CS", "US"),
            ("m 0010 1010 045Y", "AS", "045Y"),
            ("m 0010 0010", "PN", None),  # no value: emptied where present
            ("m 0009 1001 LO private text", "LO", "private text"),  # private: any VR
            ("m 0009 1001 private text", None, None),  # its own VR, file by file
        ],
    )
    def test_vr_or_value(self, line: str, vr: str | None, value: object) -> None:
        (edit,) = parse_modify_params(line)
        assert (edit.mode, edit.vr, edit.value) == (MODIFY, vr, value)

    @pytest.mark.parametrize(
        ("line", "vr", "value"),
        [
            ("i 0028 0030 DS 0.5\\0.25", "DS", "0.5\\0.25"),  # DS and IS kept as written
            ("i 0020 0013 IS 7", "IS", "7"),
            ("i 0018 1310 US 0\\256\\256\\0", "US", [0, 256, 256, 0]),
            ("i 0028 0106 SS -5", "SS", -5),
            ("i 0018 9219 SS 2", "SS", 2),
            ("i 0018 9087 FD 1000.5", "FD", 1000.5),
            ("i 0018 1320 FL 2.5", "FL", 2.5),
            ("i 0020 9057 UL 4", "UL", 4),
            ("i 0018 9306 FD 1.5", "FD", 1.5),
            ("i 0009 0010 LO ACME", "LO", "ACME"),
            ("i 0009 1001 SL -7\\8", "SL", [-7, 8]),
        ],
    )
    def test_numbers_converted_by_vr(self, line: str, vr: str, value: object) -> None:
        (edit,) = parse_modify_params(line)
        assert (edit.mode, edit.vr, edit.value) == (SET, vr, value)

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            (
                "m 0008 1030 SH Head CT",
                "(0008,1030) StudyDescription has VR LO, not SH: for a value that starts "
                "with 'SH', name the VR first (m 0008 1030 LO SH Head CT)",
            ),
            (
                "m 0008 0060 US",
                "(0008,0060) Modality has VR CS, not US: for a value that starts with 'US', "
                "name the VR first (m 0008 0060 CS US)",
            ),
            ("i 0008 0080 Some Hospital", "i needs the VR (i 0008 0080 VR VALUE): 'Some' is "
             "not a VR"),
            ("i 0008 0080", "i needs the VR (i 0008 0080 VR VALUE): the VR is missing"),
            ("i 0010 0010 DA 20200101", "(0010,0010) PatientName has VR PN, not DA"),
            ("i 0028 0030 DS abc", "(0028,0030) DS: Invalid value for VR DS: 'abc'"),
            ("i 0018 1310 US 1\\x", "(0018,1310) US: '1\\\\x' is not a US integer"),
            ("i 0018 9087 FD fast", "(0018,9087) FD: 'fast' is not a FD number"),
            ("i 0009 1002 OB 0102", "(0009,1002) OB: a OB value cannot be given as text "
             "(only an empty value)"),
            ("r 0010 0020 now", "r takes a tag alone (r 0010 0020), not 'now' too"),
            ("x 0010 0020 LO A", "unknown action 'x': i (insert), m (modify) or r (remove)"),
            (
                "r 10 10 20 20",
                "'r 10 10 20 20': -m's r removes a tag (r GGGG EEEE); rectangles "
                "(r LEFT TOP RIGHT BOTTOM) are anonymize's",
            ),
            (
                "0010 0010 PN DOE",
                "cannot read '0010 0010 PN DOE': expected i GGGG EEEE VR VALUE, m GGGG EEEE "
                "[VR] VALUE, r GGGG EEEE, (GGGG,EEEE)=VALUE or Keyword=VALUE",
            ),
            (
                "(0009,1001)=X",
                "(0009,1001) is not in the DICOM dictionary (a private tag?): give its VR as "
                "'i GGGG EEEE VR VALUE'",
            ),
            ("i 0009 0010 SH ACME", "(0009,0010) (private creator) has VR LO, not SH"),
            (
                "i 0009 0005 LO x",
                "(0009,0005) is no private tag: a private group holds creators "
                "(gggg,0010-00FF) and the elements of their blocks (gggg,1000-FFFF)",
            ),
            ("i 0003 1000 LO x", "(0003,1000) is in group 0003, where PS3.5 7.8.1 allows "
             "no element"),
            (
                "m 0002 0010 UI 1.2.840.10008.1.2",
                "(0002,0010) TransferSyntaxUID is File Meta Information (group 0002): it is "
                "made from the dataset when the file is written",
            ),
            ("r 0008 0000", "(0008,0000) is a group length, which the writer computes"),
            ("r FFFE E000", "(FFFE,E000) is an item or delimiter tag, not an element"),
            (
                "i 0028 0100 US 8",
                "(0028,0100) BitsAllocated describes the pixel data, which is kept as it is: "
                "not settable",
            ),
            (
                "r 0028 0008",
                "(0028,0008) NumberOfFrames describes the pixel data, which is kept as it "
                "is: not settable",
            ),
            (
                "r 7FE0 0010",
                "(7FE0,0010) PixelData is pixel data: params never change it (anonymize "
                "blacks out boxes of it with r, ri and rv lines)",
            ),
            ("r FFFC FFFC", "(FFFC,FFFC) comes after the pixel data (signatures, padding): "
             "not settable"),
        ],
    )  # fmt: skip
    def test_errors(self, line: str, message: str) -> None:
        with pytest.raises(dp.DicomPressorError) as info:
            parse_modify_params(f"# one line\n{line}")
        assert info.value.message == f"invalid modify params: line 2: {message}"

    def test_every_bad_line_at_once(self) -> None:
        text = (
            "i 0009 1001 LO before its creator\n"
            "m 0008 0080 Hospital\n"
            "i 0009 0010 LO ACME\n"
            "m 0008 0080 Other\n"
            "nonsense\n"
        )
        with pytest.raises(dp.DicomPressorError) as info:
            parse_modify_params(text)
        assert info.value.message == (
            "invalid modify params: line 1: (0009,1001) comes before line 3, which sets its "
            "private creator (0009,0010): set the creator first; line 4: (0008,0080) is "
            "already on line 2; line 5: cannot read 'nonsense': expected i GGGG EEEE VR "
            "VALUE, m GGGG EEEE [VR] VALUE, r GGGG EEEE, (GGGG,EEEE)=VALUE or Keyword=VALUE"
        )


class TestModifyFiles:
    """The action on files: what each line does, and what stays."""

    def test_lines_applied_pixels_and_instance_kept(self, tmp_path: Path) -> None:
        paths = series(tmp_path)
        before = {p: digest(p) for p in paths}
        text = (
            "m 0008 0080 Some Hospital\n"  # present: changed
            "m 0010 1030 70.5\n"  # absent: m never inserts
            "i 0008 1030 LO Follow-up study\n"
            "r 0008 1090\n"
            "i 0028 0030 DS 0.5\\0.25\n"
            "(0020,0060)=\n"  # absent: inserted, empty (Laterality, Type 2C)
            "(0020,0011)=7\n"
            "i 0018 1310 US 0\\32\\32\\0\n"
        )
        result = modify(paths, text)
        assert not result.failures, result.log
        assert [p.name for p in result.outputs] == [p.stem + "_mod.dcm" for p in paths]
        assert {p: digest(p) for p in paths} == before  # inputs untouched
        for source, output in zip(paths, result.outputs, strict=True):
            src, out = pydicom.dcmread(source), pydicom.dcmread(output)
            assert out.InstitutionName == "Some Hospital"
            assert "PatientWeight" not in out
            assert out.StudyDescription == "Follow-up study"
            assert "ManufacturerModelName" not in out
            assert [float(v) for v in out.PixelSpacing] == [0.5, 0.25]
            assert out["Laterality"].is_empty
            assert out.SeriesNumber == 7
            assert list(out.AcquisitionMatrix) == [0, 32, 32, 0]
            assert out.SOPInstanceUID == src.SOPInstanceUID  # the same instance
            assert out.file_meta.MediaStorageSOPInstanceUID == src.SOPInstanceUID
            assert out.PixelData == src.PixelData
            unchanged = ("PatientName", "StudyInstanceUID", "SeriesInstanceUID", "Rows")
            assert all(out.get(k) == src.get(k) for k in unchanged)
            assert dciodvfy_errors(output) == []
        assert f"[INFO] Modified {paths[0].name} -> {paths[0].stem}_mod.dcm (7 of 8 lines " in (
            "\n".join(result.log)
        )

    def test_element_keeps_its_own_vr(self, tmp_path: Path) -> None:
        """A value without a VR goes in as the element's VR: SS here, where US is first."""
        path = series(tmp_path, n=1)[0]
        ds = pydicom.dcmread(path)
        assert ds.PixelRepresentation == 1
        ds.add_new(0x00280106, "SS", -20)  # Smallest Image Pixel Value, US or SS
        ds.save_as(path, enforce_file_format=True)
        result = modify([path], "(0028,0106)=-100\nm 0028 0107 5")
        assert not result.failures, result.log
        out = pydicom.dcmread(result.outputs[0])
        assert (out["SmallestImagePixelValue"].VR, out.SmallestImagePixelValue) == ("SS", -100)
        assert "LargestImagePixelValue" not in out

    def test_private_elements_and_their_creator(self, tmp_path: Path) -> None:
        paths = series(tmp_path)
        ds = pydicom.dcmread(paths[0])
        ds.private_block(0x0013, "OLD VENDOR", create=True).add_new(0x01, "LO", "secret")
        ds.private_block(0x0013, "OLD VENDOR 2", create=True).add_new(0x02, "LO", "kept")
        ds.save_as(paths[0], enforce_file_format=True)
        text = "i 0011 0010 LO ACME\ni 0011 1030 FD 3.14159\nr 0013 0010\nm 0013 1102 changed\n"
        result = modify(paths, text)
        assert not result.failures, result.log
        out = pydicom.dcmread(result.outputs[0])
        assert out.private_block(0x0011, "ACME")[0x30].value == 3.14159
        assert out[0x00111030].VR == "FD"
        assert 0x00130010 not in out and 0x00131001 not in out  # the creator and its block
        assert out[0x00130011].value == "OLD VENDOR 2"
        assert out[0x00131102].value == "changed"  # m: the element's own VR (LO)
        assert dciodvfy_errors(result.outputs[0]) == dciodvfy_errors(paths[0])

    def test_private_element_without_creator_fails_that_file(self, tmp_path: Path) -> None:
        paths = series(tmp_path)
        ds = pydicom.dcmread(paths[1])
        ds.private_block(0x0011, "ACME", create=True).add_new(0x01, "LO", "x")
        ds.save_as(paths[1], enforce_file_format=True)
        result = modify(paths, "i 0011 1030 FD 2.5")
        assert result.failures == [
            (
                paths[0],
                "line 1: (0011,1030) is an element of the private block of (0011,0010), "
                "which has no private creator in this file: set (0011,0010) (VR LO) on an "
                "earlier line",
            )
        ]
        assert [p.name for p in result.outputs] == [paths[1].stem + "_mod.dcm"]
        assert not (paths[0].parent / (paths[0].stem + "_mod.dcm")).exists()

    def test_character_sets(self, tmp_path: Path) -> None:
        path = series(tmp_path, n=1)[0]  # ISO_IR 100 (Latin-1)
        ds = pydicom.dcmread(path)
        ds.InstitutionName = "Clínica Sur"
        ds.save_as(path, enforce_file_format=True)
        latin = modify([path], "PatientName=Müller^Zoë")
        assert str(pydicom.dcmread(latin.outputs[0]).PatientName) == "Müller^Zoë"
        refused = modify([path], "PatientName=Łukasz")
        assert refused.failures == [
            (
                path,
                "line 1: (0010,0010) 'Łukasz' cannot be written in the file's character set "
                "ISO_IR 100: add the line (0008,0005)=ISO_IR 192 (UTF-8)",
            )
        ]
        utf8 = modify([path], "PatientName=Łukasz\n(0008,0005)=ISO_IR 192")
        out = pydicom.dcmread(utf8.outputs[0])
        assert (str(out.PatientName), out.InstitutionName) == ("Łukasz", "Clínica Sur")
        assert "Clínica Sur".encode() in utf8.outputs[0].read_bytes()  # re-encoded as UTF-8

    def test_compressed_pixels_copied_as_they_are(self, testdata, tmp_path: Path) -> None:
        path = testdata("MR_small_jp2klossless.dcm")
        result = modify([path], "PatientName=DOE^JOHN\n(0020,0060)=")
        out, src = pydicom.dcmread(result.outputs[0]), pydicom.dcmread(path)
        assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        assert out.PixelData == src.PixelData
        assert np.array_equal(out.pixel_array, src.pixel_array)
        assert str(out.PatientName) == "DOE^JOHN"
        assert len(dciodvfy_errors(result.outputs[0])) <= len(dciodvfy_errors(path))

    def test_no_params_is_a_usage_error(self, tmp_path: Path) -> None:
        with pytest.raises(dp.UsageError, match="^modify params hold no line: nothing would"):
            modify(series(tmp_path, n=1), "# only a comment\n")


class TestInPlace:
    """-M replaces each input atomically; a failure leaves it as it was."""

    def test_replaced_atomically(self, tmp_path: Path) -> None:
        paths = series(tmp_path)
        inodes = {p: p.stat().st_ino for p in paths}
        result = modify(paths, "m 0008 0080 Some Hospital", in_place=True)
        assert result.outputs == paths
        assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(p.name for p in paths)
        for path in paths:
            assert pydicom.dcmread(path).InstitutionName == "Some Hospital"
            assert path.stat().st_ino != inodes[path]  # a new file renamed over the input

    def test_failure_leaves_the_input(self, tmp_path: Path) -> None:
        path = series(tmp_path, n=1)[0]
        before = path.read_bytes()
        result = modify([path], "m 0008 0080 Łódź", in_place=True)
        assert result.failures and result.outputs == []
        assert path.read_bytes() == before
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


class TestCommandLine:
    """-m PARAMS and -M PARAMS on the command line."""

    def test_folder(self, tmp_path: Path) -> None:
        paths = series(tmp_path)
        params = tmp_path / "changes.txt"
        params.write_text("m 0008 0080 Some Hospital\n(0020,0060)=\n", encoding="utf-8")
        code, out, err = run_main("-m", params, "-f", paths[0].parent, "--jobs", "1")
        assert code == dp.EXIT_OK, err
        outputs = sorted(paths[0].parent.glob("*_mod.dcm"))
        assert [p.name for p in outputs] == sorted(p.stem + "_mod.dcm" for p in paths)
        assert out.startswith(f"[OK] {paths[0].parent} (2 files) -> ")
        for output in outputs:
            assert pydicom.dcmread(output).InstitutionName == "Some Hospital"
            assert dciodvfy_errors(output) == []

    def test_in_place(self, tmp_path: Path) -> None:
        path = series(tmp_path, n=1)[0]
        params = tmp_path / "changes.txt"
        params.write_text("r 0010 0030\n")
        code, _, err = run_main("-M", params, "-f", path)
        assert code == dp.EXIT_OK, err
        assert "PatientBirthDate" not in pydicom.dcmread(path)
        assert [p.name for p in path.parent.iterdir()] == [path.name]

    def test_bad_lines_reported_nothing_written(self, tmp_path: Path) -> None:
        paths = series(tmp_path)
        params = tmp_path / "changes.txt"
        params.write_text("m 0008 0080 Ok\ni 0008 0080 Some Hospital\n\n(0028,0010)=64\n")
        code, out, err = run_main("-m", params, "-f", paths[0].parent)
        assert code == dp.EXIT_FAILED
        assert err.splitlines()[-1] == (
            f"error: {params}: invalid modify params: line 2: i needs the VR (i 0008 0080 VR "
            "VALUE): 'Some' is not a VR; line 4: (0028,0010) Rows describes the pixel data, "
            "which is kept as it is: not settable"
        )
        assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(p.name for p in paths)

    def test_params_file_not_utf8(self, tmp_path: Path) -> None:
        params = tmp_path / "changes.txt"
        params.write_bytes("m 0008 0080 Clínica\n".encode("latin-1"))
        code, _, err = run_main("-m", params, "-f", series(tmp_path, n=1)[0])
        assert code == dp.EXIT_FAILED
        assert (
            err.splitlines()[-1] == f"error: {params}: not UTF-8 text (invalid continuation byte)"
        )

    def test_empty_params(self, tmp_path: Path) -> None:
        params = tmp_path / "changes.txt"
        params.write_text("\n# nothing\n")
        code, _, err = run_main("-m", params, "-f", series(tmp_path, n=1)[0])
        assert code == dp.EXIT_USAGE
        assert err.splitlines()[-1] == (
            "dicompressor: error: modify params hold no line: nothing would change"
        )


class TestRegistryAndApi:
    """One ACTIONS entry: the API checks modify's params with modify's parser."""

    def test_registry_entry(self) -> None:
        spec = dp.ACTIONS["modify"]
        assert (spec.flag, spec.replace_flag, spec.metavar, spec.flag_value) == (
            "-m",
            "-M",
            "PARAMS",
            "params",
        )
        assert spec.params and spec.parse_params is dp.parse_modify_params
        assert dp.ACTIONS["anonymize"].parse_params is dp.parse_anonymize_params
        for other in dp.ACTIONS.values():
            assert other.params == (other.parse_params is not None), other.name
            assert bool(other.params_help) == other.params, other.name
            if other.parse_params is not None:
                other.parse_params(other.params_example)  # each example parses
        listed = {a["name"]: a for a in dp.action_listing()["actions"]}
        assert listed["modify"]["params_help"] == spec.params_help
        assert listed["modify"]["params_example"].startswith("m 0008 0080 Some Hospital")

    def test_request_checked_by_the_actions_parser(self, tmp_path: Path) -> None:
        spec, options = dp.process_request(
            {"action": "modify", "params": "m 0008 0080 Some Hospital"}, tmp_path
        )
        assert spec.name == "modify" and options.params == "m 0008 0080 Some Hospital"
        with pytest.raises(dp.HTTPError) as info:
            dp.process_request({"action": "modify", "params": "r 10 10 20 20"}, tmp_path)
        assert info.value.message.startswith("bad params: invalid modify params: line 1: ")
        with pytest.raises(dp.HTTPError) as info:  # an m line is not anonymize's
            dp.process_request({"action": "anonymize", "params": "m 0008 0080 X"}, tmp_path)
        assert info.value.message.startswith("bad params: invalid anonymize params: line 1: ")
        dp.process_request({"action": "anonymize", "params": "r 10 10 20 20"}, tmp_path)
        with pytest.raises(dp.HTTPError) as info:
            dp.process_request({"action": "modify", "params": ""}, tmp_path)
        assert info.value.message == "modify params hold no line: nothing would change"

    def test_over_http(self, start_server, tmp_path: Path) -> None:
        api: Running = start_server(**RELAXED)
        paths = series(tmp_path)
        sid = api.session()
        assert api.upload(sid, paths).status_code == 200
        body = {"action": "modify", "params": "m 0008 0080 Some Hospital\nr 0010 0030\n"}
        answer = api.process(sid, body)
        assert answer.status_code == 200, answer.text
        names = sorted(f["name"] for f in answer.json()["output_files"])
        assert names == sorted(p.stem + "_mod.dcm" for p in paths)
        url = f"{api.url}/api/download/{sid}/{names[0]}"
        r = requests.get(url, headers=api.headers, timeout=30)
        local = tmp_path / names[0]
        local.write_bytes(r.content)
        ds = pydicom.dcmread(local)
        assert ds.InstitutionName == "Some Hospital" and "PatientBirthDate" not in ds
        bad = api.process(sid, {"action": "modify", "params": "m 0008 0080 A\n(0028,0011)=8"})
        assert bad.status_code == 400
        assert bad.json()["error"] == (
            "bad params: invalid modify params: line 2: (0028,0011) Columns describes the "
            "pixel data, which is kept as it is: not settable"
        )


def test_dataset_written_is_readable_as_written(tmp_path: Path) -> None:
    """The dataset of a modified file reads back equal to the source but for the lines."""
    path = series(tmp_path, n=1)[0]
    result = modify([path], "m 0010 0010 PN DOE^JOHN")
    src, out = pydicom.dcmread(path), pydicom.dcmread(result.outputs[0])
    out.PatientName = src.PatientName
    assert Dataset(out) == Dataset(src)
