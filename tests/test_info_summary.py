"""--info FILE and --summary DIR, as text and as --json."""

from __future__ import annotations

import json
import re

import pydicom
import pytest
from conftest import LEGACY_CT, floats, merge_one, run_cli, run_main, spatial_order
from pydicom.uid import RLELossless


def line_with(text: str, word: str) -> str:
    """Return the first ``label: value`` line whose label holds word (case-insensitive)."""
    for line in text.splitlines():
        label = line.split(":", 1)[0] if ":" in line else ""
        if word.lower() in label.lower():
            return line
    raise AssertionError(f"no line with {word!r} in:\n{text}")


@pytest.fixture
def merged_ct(ct_series):
    """A merged 8-frame CT and its sources in spatial order."""
    return merge_one(ct_series[0].parent), spatial_order(ct_series)


class TestInfo:
    """--info describes one file."""

    def test_text(self, merged_ct):
        path, originals = merged_ct
        ds = pydicom.dcmread(path)
        code, out, err = run_main("--info", path)
        assert code == 0, err
        assert "DOE^JANE" in line_with(out, "patient")
        assert "PID001" in out
        assert ds.StudyInstanceUID in out
        assert ds.SeriesInstanceUID in out
        assert "SYNTH STUDY" in out
        assert re.search(r"\bCT\b", line_with(out, "modality"))
        assert re.search(r"\b32\s*x\s*24\b", out)
        bits = line_with(out, "bits")
        assert "12" in bits and "16" in bits
        assert re.search(r"\b8\b", line_with(out, "frames"))
        syntax = line_with(out, "transfer syntax")
        assert "Explicit VR Little Endian" in syntax and "1.2.840.10008.1.2.1" in syntax
        assert "Legacy Converted Enhanced CT Image Storage" in out
        assert "MONOCHROME2" in line_with(out, "photometric")
        assert re.search(r"\bno\b", line_with(out, "compressed"), re.IGNORECASE)
        assert "position" in out.lower() and "orientation" in out.lower()

    def test_json(self, merged_ct):
        path, originals = merged_ct
        code, out, _ = run_main("--info", path, "--json")
        assert code == 0
        record = json.loads(out)
        first = originals[0]
        assert record["file"].endswith(path.name)
        assert record["patient"] == {"name": "DOE^JANE", "id": "PID001"}
        assert record["study"]["instance_uid"] == first.StudyInstanceUID
        assert record["study"]["date"] == "20240102"
        assert record["study"]["description"] == "SYNTH STUDY"
        assert record["series"]["number"] == "3"
        assert record["series"]["instance_uid"] == pydicom.dcmread(path).SeriesInstanceUID
        assert record["modality"] == "CT"
        assert (record["rows"], record["columns"]) == (32, 24)
        assert (record["bits_allocated"], record["bits_stored"]) == (16, 12)
        assert record["frames"] == len(originals)
        assert record["transfer_syntax"] == {
            "uid": "1.2.840.10008.1.2.1",
            "name": "Explicit VR Little Endian",
        }
        assert record["sop_class"] == {
            "uid": LEGACY_CT,
            "name": "Legacy Converted Enhanced CT Image Storage",
        }
        assert record["photometric_interpretation"] == "MONOCHROME2"
        assert record["compressed"] is False
        geometry = record["geometry"]
        assert geometry["orientation"] == pytest.approx(floats(first.ImageOrientationPatient))
        assert geometry["first_position"] == pytest.approx(floats(first.ImagePositionPatient))
        assert geometry["last_position"] == pytest.approx(
            floats(originals[-1].ImagePositionPatient)
        )
        assert geometry["pixel_spacing"] == pytest.approx(floats(first.PixelSpacing))
        assert geometry["slice_thickness"] == pytest.approx(float(first.SliceThickness))
        assert geometry["frame_of_reference_uid"] == first.FrameOfReferenceUID

    def test_json_of_a_compressed_single_frame(self, make_series):
        paths = make_series("rle", n=2, syntax=RLELossless)
        code, out, _ = run_main("--info", paths[0], "--json")
        assert code == 0
        record = json.loads(out)
        assert record["compressed"] is True
        assert record["frames"] == 1
        assert record["transfer_syntax"] == {"uid": RLELossless, "name": "RLE Lossless"}
        assert record["sop_class"]["uid"] == "1.2.840.10008.5.1.4.1.1.2"

    def test_text_says_compressed(self, make_series):
        paths = make_series("rle", n=2, syntax=RLELossless)
        code, out, _ = run_main("--info", paths[0])
        assert code == 0
        assert re.search(r"\byes\b", line_with(out, "compressed"), re.IGNORECASE)
        assert "RLE Lossless" in out and RLELossless in out

    def test_not_dicom(self, tmp_path):
        junk = tmp_path / "junk.dcm"
        junk.write_bytes(b"not a dicom file at all" * 20)
        code, out, err = run_cli("--info", junk)
        assert code == 1
        assert "junk.dcm" in out + err
        assert "Traceback" not in out + err


class TestSummary:
    """--summary counts a folder tree."""

    @pytest.fixture
    def tree(self, make_series, tmp_path):
        ct = make_series("root/a", n=6, seed=1)
        mr = make_series(
            "root/b/c", n=5, modality="MR", patient="ROE^RICHARD", seed=2, series_number=5
        )
        root = tmp_path / "root"
        (root / "a" / "junk.dcm").write_bytes(b"\x00" * 200)
        data = ct[0].read_bytes()
        (root / "b" / "truncated.dcm").write_bytes(data[: len(data) - 300])
        return root, ct, mr

    def test_json(self, tree):
        root, ct, mr = tree
        code, out, err = run_main("--summary", root, "--json")
        assert code == 0, err
        data = json.loads(out)
        readable = [*ct, *mr]
        assert data["files"] == len(readable)
        assert data["frames"] == len(readable)
        assert data["total_bytes"] == sum(p.stat().st_size for p in readable)
        assert (data["patients"], data["studies"], data["series"]) == (2, 2, 2)
        assert data["per_modality"] == {"CT": len(ct), "MR": len(mr)}
        assert data["per_transfer_syntax"] == {"Explicit VR Little Endian": len(readable)}
        assert sorted(data["per_patient"].values()) == [len(mr), len(ct)]
        assert any("DOE^JANE" in k for k in data["per_patient"])
        studies = {pydicom.dcmread(p).StudyInstanceUID: n for p, n in ((ct[0], 6), (mr[0], 5))}
        assert data["per_study"] == studies
        series = {pydicom.dcmread(p).SeriesInstanceUID: n for p, n in ((ct[0], 6), (mr[0], 5))}
        assert data["per_series"] == series
        unreadable = sorted(u["file"].rsplit("/", 1)[-1] for u in data["unreadable"])
        assert unreadable == ["junk.dcm", "truncated.dcm"]
        assert all(u["error"] for u in data["unreadable"])

    def test_text(self, tree):
        root, ct, mr = tree
        code, out, err = run_cli("--summary", root)
        assert code == 0, err
        assert re.search(r"\b11\b", line_with(out, "files"))
        assert re.search(r"\b2\b", line_with(out, "patients"))
        assert re.search(r"\b2\b", line_with(out, "unreadable"))
        assert "junk.dcm" in out and "truncated.dcm" in out
        assert re.search(r"\bCT\b\W*6\b", out)
        assert re.search(r"\bMR\b\W*5\b", out)
        assert "Traceback" not in out + err

    def test_path_from_f_flag(self, tree):
        root, ct, mr = tree
        code, out, _ = run_main("--summary", "-f", root, "--json")
        assert code == 0
        assert json.loads(out)["files"] == len(ct) + len(mr)

    def test_no_recursion_with_capital_f(self, tree):
        root, ct, _ = tree
        code, out, _ = run_main("--summary", "-F", root / "a", "--json")
        assert code == 0
        assert json.loads(out)["files"] == len(ct)
