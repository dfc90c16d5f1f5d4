"""Headers (-t): text dumps and the DICOM JSON Model (PS3.18 F.2) read back by pydicom."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from conftest import bundled_files, hash_files, light_run, merge_folder
from pydicom.dataset import Dataset

from dicompressor import DicomPressorError, Options, _show_raw, _show_value, headers

BULK = ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "WaveformData")


def without_bulk(ds: Dataset) -> Dataset:
    """Return ds without pixel and waveform data, at any depth."""
    for keyword in BULK:
        if keyword in ds:
            delattr(ds, keyword)
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                without_bulk(item)
    return ds


class TestText:
    """The text dump: one line per element, items indented, bulk data elided."""

    def test_dump_beside_input(self, make_series):
        paths = make_series("s", n=2)
        before = hash_files(paths)
        result = headers(paths, None, Options())
        assert not result.failures
        assert [p.name for p in result.outputs] == [p.stem + ".txt" for p in paths]
        text = result.outputs[0].read_text()
        assert "(0010,0010) PN PatientName: DOE^JANE" in text
        assert "(0002,0010) UI TransferSyntaxUID: 1.2.840.10008.1.2.1" in text
        assert "(7FE0,0010) OW PixelData: <bulk data elided: 1536 bytes>" in text
        assert hash_files(paths) == before

    def test_sequences_indented(self, testdata, tmp_path):
        path = testdata("rtplan.dcm")
        result = headers([path], tmp_path / "out", Options())
        text = result.outputs[0].read_text()
        assert "  (300A,00B0) SQ BeamSequence: " in text
        assert "\n    Item 1\n" in text
        assert "\n      (300A,00B2) SH TreatmentMachineName: " in text

    def test_bad_file_fails_alone(self, make_series, tmp_path):
        paths = make_series("s", n=1)
        bad = tmp_path / "bad.dcm"
        bad.write_bytes(b"nope")
        result = headers([bad, *paths], tmp_path / "out", Options())
        assert result.failures == [(bad, "not a DICOM file (no DICM prefix or File Meta)")]
        assert [p.name for p in result.outputs] == [paths[0].stem + ".txt"]

    @pytest.mark.parametrize("format_", ["text", "json"])
    @pytest.mark.parametrize("name", ["priv_SQ.dcm", "rtstruct.dcm"])
    def test_any_dataset_is_dumped(self, testdata, tmp_path, name, format_):
        # priv_SQ.dcm has neither SOP Class UID nor pixel data; rtstruct.dcm is a bare
        # dataset without preamble and File Meta (dcmdump dumps both as well)
        path = testdata(name)
        result = headers([path], tmp_path / "out", Options(format=format_))
        assert not result.failures, result.failures
        dumped = result.outputs[0].read_text()
        source = pydicom.dcmread(path, force=True)
        if format_ == "json":
            assert Dataset.from_json(dumped) == without_bulk(source)
        else:
            assert ("(none: a bare dataset" in dumped) == (name == "rtstruct.dcm")
            for elem in source:  # every top-level element has its line
                assert f"\n  {str(elem.tag).replace(', ', ',')} " in dumped, elem.tag

    def test_values_shown_from_bytes_match_pydicom(self, make_series):
        """Values shown straight from the bytes read equal pydicom's converted values."""
        import warnings

        from pydicom.dataelem import RawDataElement

        checked = 0
        for path in [*bundled_files(), *make_series("s", n=2)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    ds = pydicom.dcmread(path, defer_size=4096)
                except Exception:  # files pydicom cannot read at all
                    continue
                for tag in list(ds.keys()):
                    raw = ds._dict[tag]
                    if not isinstance(raw, RawDataElement):
                        continue
                    shown = _show_raw(raw)
                    if shown is None:
                        continue
                    try:
                        expected = _show_value(ds[tag])
                    except Exception:  # a value pydicom cannot convert
                        continue
                    assert shown == expected, (path.name, tag)
                    checked += 1
        assert checked > 1000

    def test_output_dir_never_overwrites(self, make_series, tmp_path):
        """Files of two folders with the same names: both dumps kept in --output-dir."""
        from conftest import run_cli

        root = tmp_path / "root"
        root.mkdir()
        for name in ("a", "b"):
            folder = make_series(name, n=1)[0].parent
            for path in folder.iterdir():
                path.rename(folder / "IM1.dcm")
            folder.rename(root / name)
        out = tmp_path / "dumps"
        code, _, err = run_cli("-t", "-f", root, "--output-dir", out)
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["IM1.txt", "IM1_1.txt"]
        sources = {p.read_text().split("\n")[0] for p in out.iterdir()}
        assert sources == {"# IM1.dcm"}
        dumped = {line for p in out.iterdir() for line in p.read_text().splitlines()}
        uids = {pydicom.dcmread(root / n / "IM1.dcm").SOPInstanceUID for n in ("a", "b")}
        assert all(any(uid in line for line in dumped) for uid in uids)

    def test_raw_dump_equals_pydicom_dump(self, make_series, tmp_path):
        """The dump parsed straight from the file equals the pydicom path, line for line."""
        import warnings

        from pydicom.sequence import Sequence

        from dicompressor import fast_header_text, header_text, read_header

        rich = make_series("rich", n=1)[0]
        ds = pydicom.dcmread(rich)
        block = ds.private_block(0x0009, "ACME 1.0", create=True)
        block.add_new(0x01, "LO", "SECRET")
        block.add_new(0x02, "UN", b"\x01\x02\x03\x04")
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "DCM", "X"
        outer = Dataset()
        outer.ConceptNameCodeSequence = Sequence([inner])
        outer.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        ds.ContentSequence = Sequence([outer, Dataset()])
        ds.PixelSpacing = [" 0.5", "0.5 "]
        ds.save_as(rich, enforce_file_format=True)
        fast = 0
        for path in [rich, *make_series("s", n=2), *bundled_files("*")]:
            text = fast_header_text(path)
            if text is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header, _ = read_header(path, check_values=False)
                assert text == header_text(path, header), path.name
            fast += 1
        text = fast_header_text(rich)
        assert text is not None
        assert "(0009,0010) LO PrivateCreator: ACME 1.0" in text
        assert "(0009,1002) UN [Private tag data]: <4 bytes: 01 02 03 04>" in text
        assert "ContentSequence: 2 item(s)" in text
        [ct_small] = bundled_files("CT_small.dcm")
        ge = fast_header_text(ct_small)  # GE private names, from the block
        assert ge is not None and "(0009,1001) LO [[Full fidelity]]: GE_GENESIS_FF" in ge
        assert fast >= 10


class TestJson:
    """--format json: the DICOM JSON Model without bulk data, read back equal."""

    @pytest.mark.parametrize(
        "name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "JPEG2000.dcm"]
    )
    def test_round_trip(self, testdata, tmp_path, name):
        path = testdata(name)
        result = headers([path], tmp_path / "out", Options(format="json"))
        assert not result.failures, result.log
        assert result.outputs[0].name == path.stem + ".json"
        back = Dataset.from_json(result.outputs[0].read_text())
        source = without_bulk(pydicom.dcmread(path))
        assert back == source

    def test_generated_series(self, make_series, tmp_path):
        paths = make_series("s", n=1)
        result = headers(paths, tmp_path / "out", Options(format="json"))
        back = Dataset.from_json(result.outputs[0].read_text())
        assert back == without_bulk(pydicom.dcmread(paths[0]))
        assert "7FE00010" not in result.outputs[0].read_text()

    @pytest.mark.filterwarnings("ignore:Invalid value for VR")
    def test_unreadable_value_is_left_out_with_a_warning(self, testdata, tmp_path):
        path = testdata("badVR.dcm")  # (0028,0008) Number of Frames is IS "1A"
        result = headers([path], tmp_path / "out", Options(format="json"))
        assert not result.failures
        data = result.outputs[0].read_text()
        assert "00280008" not in data and "00100010" in data
        [warning] = [line for line in result.log if "left out of the JSON" in line]
        assert "badVR.dcm" in warning and "(0028,0008)" in warning
        assert len(Dataset.from_json(data)) > 10

    def test_unknown_format(self, make_series):
        with pytest.raises(DicomPressorError, match="unknown header format 'xml'"):
            headers(make_series("s", n=1), None, Options(format="xml"))


def dumps(folder: Path) -> dict[str, str]:
    """Return the text of every dump in a folder, by name."""
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


class TestLightStart:
    """``python3 dicompressor.py -t`` dumps plain files without loading numpy and pydicom."""

    def test_keywords_match_pydicom(self):
        from pydicom._dicom_dict import DicomDictionary
        from pydicom.datadict import keyword_for_tag

        from dicompressor import keyword_of

        others = [0x60023000, 0x601E0010, 0x50100005, 0x7F110010, 0x00200000, 0x00090010,
                  0x00091001, 0x00290000, 0xFFFEE000, 0x12345678, 0x60013000]  # fmt: skip
        for tag in [*DicomDictionary, *others]:
            assert keyword_of(tag) == keyword_for_tag(tag), hex(tag)

    def test_private_names_match_pydicom(self):
        from pydicom._private_dict import private_dictionaries
        from pydicom.datadict import private_dictionary_description

        from dicompressor import private_name

        checked = 0
        for creator, table in private_dictionaries.items():
            for key in table:
                # a tag in the block the key describes, and the same element in block 0x42
                tag = int(key.replace("xx", "11"), 16)
                for probe in (tag, tag & 0xFFFF00FF | 0x4200):
                    try:
                        expected = private_dictionary_description(probe, creator)
                    except KeyError:
                        expected = None
                    assert private_name(probe, creator) == expected, (creator, key)
                    checked += 1
        assert private_name(0x00091001, "NOBODY'S CREATOR") is None
        assert checked > 10000

    def test_plain_files_need_no_toolkit(self, make_series, tmp_path):
        paths = make_series("s", n=3)
        code, with_pydicom, with_numpy = light_run(
            "-t", "-F", paths[0].parent, "--output-dir", tmp_path / "light", "--quiet"
        )
        assert (code, with_pydicom, with_numpy) == (0, False, False)
        result = headers(paths, tmp_path / "full", Options())  # in this process: loaded
        assert not result.failures
        assert dumps(tmp_path / "light") == dumps(tmp_path / "full")
        assert (
            "(0010,0010) PN PatientName: DOE^JANE"
            in dumps(tmp_path / "light")[paths[0].stem + ".txt"]
        )

    @pytest.mark.parametrize("jobs", ["1", "2"])
    def test_other_files_load_it_when_needed(self, make_series, testdata, tmp_path, jobs):
        """Compressed, implicit VR, big endian and bare files go to pydicom; junk fails."""
        folder = make_series("s", n=2)[0].parent
        for name in ("JPEG2000.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                     "rtstruct.dcm", "CT_small.dcm"):  # fmt: skip
            testdata(name).rename(folder / name)
        (folder / "junk.dcm").write_bytes(b"nope")
        light, full = tmp_path / "light", tmp_path / "full"
        code, with_pydicom, _ = light_run(
            "-t", "-F", folder, "--output-dir", light, "--jobs", jobs, "--quiet"
        )
        assert code == 3  # partly failed: junk.dcm
        assert with_pydicom  # 8 dumps are too little work for worker processes
        inputs = sorted(p for p in folder.iterdir() if p.name != "junk.dcm")
        result = headers(inputs, full, Options())
        assert not result.failures
        assert dumps(light) == dumps(full)
        assert len(dumps(light)) == 7
        assert "<bulk data elided: encapsulated, " in dumps(light)["JPEG2000.txt"]

    def test_recovery_of_a_killed_run(self, make_series, tmp_path):
        """A journal left by a killed run is undone before the dump, as in any action."""
        from dicompressor import JOURNAL_FILE

        paths = make_series("s", n=3)
        folder = paths[0].parent
        [merged] = merge_folder(folder)  # stands for the output of the killed run
        journal = {"pid": 1, "entries": sorted(p.name for p in paths), "copies": []}
        (folder / JOURNAL_FILE).write_text(json.dumps(journal))
        code, _, _ = light_run("-t", "-F", folder, "--output-dir", tmp_path / "out", "--quiet")
        assert code == 0
        assert not merged.exists() and not (folder / JOURNAL_FILE).exists()
        assert sorted(dumps(tmp_path / "out")) == sorted(p.stem + ".txt" for p in paths)
