"""Headers (-t): text dumps and the DICOM JSON Model (PS3.18 F.2) read back by pydicom."""

from __future__ import annotations

import pydicom
import pytest
from conftest import bundled_files, hash_files
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
