"""Damaged files: a header that does not parse to its end fails the file by name (the
element and the byte offset), header dumps of it are marked incomplete, and no action
writes DICOM from a file whose pixel data cannot be what its header says."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import synth
from conftest import RELAXED, Running, hash_files, run_cli, run_main

import dicompressor
from dicompressor import INCOMPLETE_MARK, Options, check_integrity, read_header, walk_file

# ---- damaged copies of a generated slice ----


def _element_at(data: bytes, header: bytes) -> int:
    """Return the offset of the one element header that starts with header."""
    assert data.count(header) == 1, header
    return data.index(header)


def cut_in_meta(data: bytes) -> tuple[bytes, str]:
    """Cut the file inside the value of (0002,0002) Media Storage SOP Class UID."""
    at = _element_at(data, b"\x02\x00\x02\x00UI")
    length = struct.unpack_from("<H", data, at + 6)[0]
    end = at + 8 + length // 2
    return data[:end], (
        f"truncated: (0002,0002) Media Storage SOP Class UID declares {length} bytes at "
        f"offset {at + 8}, the file ends at {end}"
    )


def cut_between_meta_elements(data: bytes) -> tuple[bytes, str]:
    """Cut the file right before (0002,0003): every element whole, the File Meta short."""
    at = _element_at(data, b"\x02\x00\x03\x00UI")
    declared = struct.unpack_from("<L", data, 140)[0]  # (0002,0000) after the preamble
    return data[:at], (
        f"truncated: (0002,0000) File Meta Information Group Length declares {declared} "
        f"bytes at offset 144, the file ends at {at}"
    )


def undefined_pixel_length(data: bytes) -> tuple[bytes, str]:
    """Give the native Pixel Data the length 0xFFFFFFFF (its header stays intact)."""
    at = _element_at(data, b"\xe0\x7f\x10\x00OW")
    out = data[: at + 8] + b"\xff\xff\xff\xff" + data[at + 12 :]
    found = struct.unpack_from("<HH", data, at + 12)
    return out, (
        f"(7FE0,0010) Pixel Data at offset {at + 12} has an undefined length, but its value "
        f"does not parse into items: ({found[0]:04X},{found[1]:04X}) at offset {at + 12} is "
        "no item (PS3.5 A.4)"
    )


def garbled_rows(data: bytes) -> tuple[bytes, str]:
    """XOR the 8 bytes of the (0028,0010) Rows element header with 0xFF."""
    at = _element_at(data, b"\x28\x00\x10\x00US")
    out = bytearray(data)
    for i in range(at, at + 8):
        out[i] ^= 0xFF
    length = struct.unpack_from("<L", out, at + 4)[0]
    return bytes(out), (
        f"damaged element header at offset {at}: (FFD7,FFEF) names no VR (bytes aa ac); "
        f"read as implicit VR, (FFD7,FFEF) declares {length} bytes at offset {at + 8}, the "
        f"file ends at {len(data)}"
    )


HEADER_DAMAGE: dict[str, Callable[[bytes], tuple[bytes, str]]] = {
    "cut in File Meta": cut_in_meta,
    "cut between File Meta elements": cut_between_meta_elements,
    "Pixel Data of undefined length": undefined_pixel_length,
    "garbled Rows header": garbled_rows,
}


def damaged_folder(root: Path, damage: str, *, n: int = 3) -> tuple[list[Path], Path, str]:
    """Write n slices into root, the last one damaged; return (good, damaged, message)."""
    paths = synth.make_series(root, n=n, rows=8, cols=6, shuffle_names=False)
    *good, bad = paths
    data, message = HEADER_DAMAGE[damage](bad.read_bytes())
    bad.write_bytes(data)
    return good, bad, message


def dataset_lines(text: str) -> list[str]:
    """Return the lines of a text dump from ``# Dataset`` on."""
    lines = text.splitlines()
    return lines[lines.index("# Dataset") :]


class TestWalk:
    """walk_file: where a file stops parsing, or None when it parses to its end."""

    @pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
    def test_damage_named_with_element_and_offset(self, tmp_path: Path, damage: str) -> None:
        _, bad, message = damaged_folder(tmp_path / "s", damage, n=1)
        assert walk_file(bad).problem == message

    def test_item_running_past_its_sequence(self, tmp_path: Path) -> None:
        [path] = synth.make_series(tmp_path / "s", n=1, rows=4, cols=4)
        ds = pydicom.dcmread(path)
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = "1.2.3"
        item.ReferencedSOPInstanceUID = "1.2.3.4"
        ds.ReferencedImageSequence = [item]
        ds.save_as(path)
        data = bytearray(path.read_bytes())
        at = _element_at(data, b"\x08\x00\x40\x11SQ")  # (0008,1140), defined length
        sequence_length = struct.unpack_from("<L", data, at + 8)[0]
        assert data[at + 12 : at + 16] == b"\xfe\xff\x00\xe0"
        struct.pack_into("<L", data, at + 16, sequence_length)  # 8 bytes too long
        path.write_bytes(bytes(data))
        assert walk_file(path).problem == (
            f"truncated: an item of (0008,1140) Referenced Image Sequence declares "
            f"{sequence_length} bytes at offset {at + 20}, its sequence ends at "
            f"{at + 12 + sequence_length}"
        )

    def test_damage_crosses_processes_whole(self, tmp_path: Path) -> None:
        import pickle

        _, bad, message = damaged_folder(tmp_path / "s", "garbled Rows header", n=1)
        with pytest.raises(dicompressor.HeaderDamage) as caught:
            read_header(bad)
        copy = pickle.loads(pickle.dumps(caught.value))
        assert (copy.message, copy.walk) == (message, caught.value.walk)

    def test_intact_files_parse_to_their_end(self, tmp_path: Path, testdata) -> None:
        for name in ("CT_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "image_dfl.dcm"):
            assert walk_file(testdata(name)).problem is None, name
        [slice_] = synth.make_series(tmp_path / "s", n=1)
        assert walk_file(slice_).problem is None


class TestHeaderDumps:
    """-t (text and JSON): the file fails, its partial dump says INCOMPLETE inside."""

    @pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
    def test_text_dump_in_a_folder(self, tmp_path: Path, damage: str) -> None:
        good, bad, message = damaged_folder(tmp_path / "s", damage)
        intact = bad.with_name("intact.dcm")
        synth_copy = synth.make_series(tmp_path / "ref", n=3, rows=8, cols=6, shuffle_names=False)
        shutil.copy(synth_copy[-1], intact)
        before = hash_files([*good, bad])
        code, out, err = run_cli("-t", "-F", bad.parent)
        assert code == 3, out + err
        errors = [line for line in err.splitlines() if line.startswith("[ERROR]")]
        assert errors == [
            f"[ERROR] {bad}: {message} (partial dump {bad.stem}.txt, marked {INCOMPLETE_MARK})"
        ]
        dump = bad.with_suffix(".txt").read_text()
        assert dump.endswith(f"\n# {INCOMPLETE_MARK}: {message}; nothing after it is shown\n")
        assert all(p.with_suffix(".txt").read_text().count(INCOMPLETE_MARK) == 0 for p in good)
        assert hash_files([*good, bad]) == before
        if damage == "Pixel Data of undefined length":  # the intact header, in full
            whole = dataset_lines(intact.with_suffix(".txt").read_text())
            partial = dataset_lines(dump)[:-1]
            assert len(partial) == len(whole) - 1  # all but (7FE0,0010) Pixel Data
            assert any(line.startswith("  (0010,0020) LO PatientID: PID001") for line in partial)

    @pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
    def test_json_dump_of_a_lone_file(self, tmp_path: Path, damage: str) -> None:
        _, bad, message = damaged_folder(tmp_path / "s", damage, n=1)
        code, out, err = run_cli("-t", "--format", "json", "-f", bad)
        assert code == 1, out + err
        assert f"[FAILED] {bad.parent}: {bad.name}: {message} (partial dump" in out
        dumped = json.loads(bad.with_suffix(".json").read_text())
        assert dumped[INCOMPLETE_MARK] == f"{message}; nothing after it is included"
        with pytest.raises(Exception):  # noqa: B017  (no DICOM JSON reader takes it whole)
            pydicom.Dataset.from_json(dumped)
        if "File Meta" not in damage:
            assert dumped["00100020"] == {"vr": "LO", "Value": ["PID001"]}

    def test_light_start_dump_of_intact_files_unchanged(self, tmp_path: Path) -> None:
        paths = synth.make_series(tmp_path / "s", n=2, rows=8, cols=6)
        code, out, err = run_cli("-t", "-F", paths[0].parent)
        assert code == 0, out + err
        for path in paths:
            assert INCOMPLETE_MARK not in path.with_suffix(".txt").read_text()


class TestInfo:
    """--info never describes a damaged file as good."""

    @pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
    def test_lone_file_fails(self, tmp_path: Path, damage: str) -> None:
        _, bad, message = damaged_folder(tmp_path / "s", damage, n=1)
        code, out, err = run_cli("--info", bad)
        assert code == 1, out + err
        assert f"[ERROR] {bad}: {message}" in err.splitlines()
        assert out.strip() == ""

    def test_folder_is_partly_failed(self, tmp_path: Path) -> None:
        good, bad, message = damaged_folder(tmp_path / "s", "garbled Rows header")
        code, out, err = run_main("--info", "-F", bad.parent, "--json")
        assert code == 3, out + err
        report = json.loads(out)
        assert [r["file"] for r in report["files"]] == [str(p) for p in good]
        assert report["failures"] == [{"file": str(bad), "error": message}]


class TestApi:
    """The API's headers and info actions run the same functions."""

    def test_headers_and_info(self, start_server, tmp_path: Path) -> None:
        api: Running = start_server(**RELAXED)
        good, bad, message = damaged_folder(tmp_path / "s", "garbled Rows header")
        sid = api.session()
        assert api.upload(sid, [*good, bad]).status_code == 200
        for action, options in (("headers", {}), ("headers", {"format": "json"}), ("info", {})):
            r = api.process(sid, {"action": action, "options": options})
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["success"] is True  # partly: the good files are done
            [line] = [x for x in answer["log"].splitlines() if x.startswith("[ERROR]")]
            assert line.startswith(f"[ERROR] {bad.name}: {message}"), line
            names = [f["name"] for f in answer["output_files"]]
            if action == "headers":
                suffix = ".json" if options else ".txt"
                assert names == [p.stem + suffix for p in good]


# ---- no action writes DICOM from a damaged file ----


def _set(path: Path, **values: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def _declare_j2k(path: Path) -> None:
    """Name JPEG 2000 Lossless as the transfer syntax of native pixel data."""
    data = path.read_bytes()
    old = b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"
    data = data.replace(old, b"\x02\x00\x10\x00UI\x16\x001.2.840.10008.1.2.4.90")
    at = data.index(b"\x02\x00\x00\x00UL\x04\x00")  # the File Meta's group length
    length = struct.unpack_from("<L", data, at + 8)[0]
    path.write_bytes(data[: at + 8] + struct.pack("<L", length + 2) + data[at + 12 :])


def _garble(path: Path) -> None:
    path.write_bytes(garbled_rows(path.read_bytes())[0])


PIXEL_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "Rows 65535": (
        lambda p: _set(p, Rows=65535),
        "(7FE0,0010) Pixel Data holds {size} bytes, expected 786420: Rows 65535 x "
        "Columns 6 x 1 sample(s) x 16 bits x 1 frame(s)",
    ),
    "Columns 0": (
        lambda p: _set(p, Columns=0),
        "(0028,0011) Columns value of 0 is invalid for (7FE0,0010) Pixel Data of {size} bytes",
    ),
    "JPEG 2000 over raw pixels": (
        _declare_j2k,
        "(7FE0,0010) Pixel Data is stored native ({size} bytes), but JPEG 2000 Image "
        "Compression (Lossless Only) stores it encapsulated, in items (PS3.5 A.4)",
    ),
    "garbled Rows header": (_garble, "damaged element header at offset "),
}


#: Actions that write DICOM, their flags, and the names of what a good input gives.
WRITERS: dict[str, list[str]] = {
    "anonymize": ["-a", "{params}"],
    "modify": ["-m", "{params}"],
    "to_big_endian": ["-b"],
    "compress_lossless": ["-x", "--codec", "rle"],
    "compress_lossy": ["-z"],
    "merge": ["-j"],
    "dicomdir": ["-d"],
}


class TestNoIncompleteOutput:
    """One integrity check, in every action that writes DICOM."""

    @pytest.mark.parametrize("damage", list(PIXEL_DAMAGE))
    @pytest.mark.parametrize("action", list(WRITERS))
    def test_damaged_input_fails_alone(self, tmp_path: Path, action: str, damage: str) -> None:
        folder = tmp_path / "s"
        rows = 32 if action == "compress_lossy" else 8  # JPEG 2000 takes 32 x 32 or more
        paths = synth.make_series(folder, n=4, rows=rows, cols=6 if rows == 8 else 32)
        paths.sort(key=lambda p: p.name)
        bad = paths[-1]
        damage_fn, message = PIXEL_DAMAGE[damage]
        if rows != 8 and damage == "Rows 65535":
            message = message.replace("786420", str(65535 * 32 * 2)).replace("6 x", "32 x")
        if damage == "Columns 0" and action.startswith("compress"):  # checked first there
            message = "bad Image Pixel description: Columns value of 0 is invalid"
        damage_fn(bad)
        size = pydicom.dcmread(bad, force=True).get("PixelData", b"")
        message = message.format(size=len(size))
        params = tmp_path / "params.txt"
        params.write_text("PatientName=ANON\n", encoding="utf-8")
        before = set(folder.iterdir())
        hashes = hash_files(paths)
        args = [a.replace("{params}", str(params)) for a in WRITERS[action]]
        code, out, err = run_main(*args, "-F", folder)
        assert code == 3, out + err
        errors = [x for x in err.splitlines() if x.startswith("[ERROR]")]
        assert len(errors) == 1 and errors[0].startswith(f"[ERROR] {bad}: "), err
        assert errors[0].startswith(f"[ERROR] {bad}: {message}"), errors[0]
        assert hash_files(paths) == hashes
        new = sorted(p.name for p in set(folder.iterdir()) - before)
        assert not any(name.startswith(bad.stem) for name in new), new
        if action == "merge":
            [merged] = new
            assert int(pydicom.dcmread(folder / merged).NumberOfFrames) == 3
        elif action == "dicomdir":  # names that are no File IDs: a conformant copy
            assert new == []
            records = pydicom.dcmread(tmp_path / "s_DICOMDIR" / "DICOMDIR").DirectoryRecordSequence
            images = [r for r in records if r.DirectoryRecordType == "IMAGE"]
            uids = {pydicom.dcmread(p).SOPInstanceUID for p in paths[:-1]}
            assert {r.ReferencedSOPInstanceUIDInFile for r in images} == uids
        else:
            assert len(new) == 3, new
            for name in new:
                assert pydicom.dcmread(folder / name).pixel_array.shape  # decodable

    @pytest.mark.parametrize("damage", ["Rows 65535", "garbled Rows header"])
    def test_split_and_decompress(self, tmp_path: Path, damage: str) -> None:
        folder = tmp_path / "m"
        for name in ("a", "b"):
            synth.make_series(folder / name, n=3, rows=8, cols=6)
            code, out, err = run_main("-j", "-F", folder / name, "--quiet")
            assert code == 0, out + err
            [merged] = (folder / name).glob("*_multiframe.dcm")
            merged.rename(folder / f"{name}.dcm")
            shutil.rmtree(folder / name)
        bad = folder / "b.dcm"
        if damage == "Rows 65535":
            _set(bad, Rows=65535)
        else:
            _garble(bad)
        code, out, err = run_main("-s", "-F", folder)
        assert code == 3, out + err
        assert sorted(p.name for p in folder.iterdir()) == ["a.dcm", "a_frames", "b.dcm"]
        assert f"[ERROR] {bad}: " in err
        # decompress: the same damage in an RLE file
        rle = tmp_path / "rle"
        paths = synth.make_series(rle, n=2, rows=8, cols=6, syntax=pydicom.uid.RLELossless)
        bad = sorted(paths)[-1]
        if damage == "Rows 65535":
            _set(bad, Rows=65535)  # encapsulated: the codec refuses it by name
        else:
            _garble(bad)
        code, out, err = run_main("-u", "-F", rle)
        assert code == 3, out + err
        assert f"[ERROR] {bad}: " in err
        assert not list(rle.glob(f"{bad.stem}_*"))


class TestCheckIntegrity:
    """check_integrity itself (the library callers' view)."""

    def test_whole_files_pass(self, tmp_path: Path, testdata) -> None:
        [slice_] = synth.make_series(tmp_path / "s", n=1, rows=5, cols=3, bits=8, signed=False)
        for path in (slice_, testdata("JPEG2000.dcm"), testdata("liver_1frame.dcm")):
            check_integrity(*read_header(path))

    def test_odd_length_padded_to_even_passes(self, tmp_path: Path) -> None:
        [path] = synth.make_series(tmp_path / "s", n=1, rows=5, cols=3, bits=8, signed=False)
        ds, location = read_header(path)
        assert location is not None and location.length == 16  # 15 bytes + 1 padding
        check_integrity(ds, location)

    def test_extra_bytes_fail(self, tmp_path: Path) -> None:
        [path] = synth.make_series(tmp_path / "s", n=1, rows=4, cols=4)
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData + b"\0" * 4
        ds.save_as(path)
        with pytest.raises(dicompressor.DicomPressorError) as caught:
            check_integrity(*read_header(path))
        assert caught.value.message == (
            "(7FE0,0010) Pixel Data holds 36 bytes, expected 32: Rows 4 x Columns 4 x "
            "1 sample(s) x 16 bits x 1 frame(s)"
        )

    @pytest.mark.filterwarnings("ignore:End of file reached")
    def test_anonymize_library_call(self, tmp_path: Path) -> None:
        good, bad, _ = damaged_folder(tmp_path / "s", "Pixel Data of undefined length")
        result = dicompressor.anonymize([*good, bad], None, Options(params="PatientName=X"))
        assert [p for p, _ in result.failures] == [bad]
        assert len(result.outputs) == 2
