"""The command line: flags, usage errors, exit codes, bad input, logs and progress."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pydicom
import pytest
from conftest import ROOT, dicompressor, hash_files, merge_one, run_cli, sha256_tree


@pytest.fixture
def series_folder(make_series):
    """A folder holding one 6-slice CT series."""
    return make_series("ct", n=6)[0].parent


@pytest.fixture
def bad_folder(make_series):
    """A folder with a good 6-slice series, a non-DICOM file and a truncated slice."""
    paths = make_series("bad", n=6)
    folder = paths[0].parent
    (folder / "notes.bin").write_bytes(b"this is not DICOM\n" * 40)
    data = paths[0].read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) - 400])
    return folder


class TestVersionAndHelp:
    """-c prints the version, -h the usage."""

    def test_version(self):
        code, out, err = run_cli("-c")
        assert code == 0
        assert dicompressor.__version__ in out

    def test_no_arguments_print_the_help(self):
        """As the original DicomPressor: run bare, it shows its help and exits 0."""
        code, out, err = run_cli()
        assert (code, err) == (0, "")
        assert out.startswith("usage: dicompressor ")
        assert "actions (one of):" in out

    def test_help_lists_the_flags(self):
        code, out, _ = run_cli("-h")
        assert code == 0
        for flag in (
            "-f",
            "-F",
            "-j",
            "-s",
            "--info",
            "--summary",
            "-c",
            "--verbose",
            "--quiet",
            "--json",
            "--output-dir",
            "--log-file",
        ):
            assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", out), flag


class TestUsageErrors:
    """Unknown or conflicting flags exit 2 with the usage, before touching any file."""

    @pytest.mark.parametrize(
        "args",
        [
            ["-j", "-s", "-f", "{folder}"],
            ["-j", "-f", "{folder}", "-F", "{folder}"],
            ["-j", "--bogus", "-f", "{folder}"],
            ["-j", "--verbose", "--quiet", "-f", "{folder}"],
            ["-j", "--info", "{folder}"],
            ["--info", "{folder}", "-f", "{folder}"],
            ["-f", "{folder}"],
            ["-j"],
            ["-s"],
        ],
        ids=[
            "merge-and-split",
            "f-and-F",
            "unknown-flag",
            "verbose-and-quiet",
            "merge-and-info",
            "info-path-and-f",
            "no-action",
            "merge-without-path",
            "split-without-path",
        ],
    )
    def test_exit_2(self, series_folder, args):
        before = sha256_tree(series_folder)
        code, out, err = run_cli(*(a.format(folder=series_folder) for a in args))
        assert code == 2
        assert "usage" in err.lower()
        assert "Traceback" not in out + err
        assert sha256_tree(series_folder) == before


class TestExitCodes:
    """0 ok, 1 failed, 3 partly failed; bad files named, never a traceback."""

    def test_ok(self, series_folder):
        code, out, err = run_cli("-j", "-f", series_folder)
        assert code == 0, err
        assert "DOE_JANE_series3_multiframe.dcm" in out
        assert "Traceback" not in out + err

    def test_bad_files_are_named_and_skipped(self, bad_folder):
        inputs = sorted(p for p in bad_folder.iterdir())
        before = hash_files(inputs)
        code, out, err = run_cli("-j", "-f", bad_folder)
        assert code == 3
        text = out + err
        assert "Traceback" not in text
        lines = text.splitlines()
        for name in ("notes.bin", "truncated.dcm"):
            assert any(name in line for line in lines), name
        (merged,) = bad_folder.glob("*_multiframe*.dcm")
        assert int(pydicom.dcmread(merged).NumberOfFrames) == 6
        assert hash_files(inputs) == before

    @pytest.mark.parametrize("cut", ["in a value", "in an element header"])
    @pytest.mark.parametrize(
        "args", [["-j"], ["-x", "--codec", "rle"], ["-t"], ["-I", "png"], ["--info"]]
    )
    def test_file_cut_inside_its_header_is_named_truncated(self, make_series, cut, args):
        paths = make_series("cut", n=3)
        data = paths[0].read_bytes()
        ds = pydicom.dcmread(paths[0])
        at = data.index(ds.SeriesInstanceUID.encode())  # a value in the header
        broken = paths[0].parent / "cut.dcm"
        broken.write_bytes(data[: at + 5] if cut == "in a value" else data[: at - 3])
        paths[0].unlink()
        if args == ["--info"]:
            code, out, err = run_cli("--info", broken)
            assert code == 1
        else:
            code, out, err = run_cli(*args, "-F", broken.parent)
            assert code == 3, out + err
        [line] = [x for x in (out + err).splitlines() if x.startswith("[ERROR]")]
        assert "cut.dcm: truncated: " in line, line
        assert "Traceback" not in out + err

    @pytest.mark.parametrize(
        "args", [["-j"], ["-s"], ["-x", "--codec", "rle"], ["-u"], ["-I", "png"]]
    )
    def test_reports_and_plans_are_passed_over(self, make_series, testdata, args):
        import shutil

        paths = make_series("mixed", n=3)
        folder = paths[0].parent
        if args == ["-s"]:
            merge_one(folder)  # something to split
        for name in ("rtplan.dcm", "test-SR.dcm"):
            shutil.copy(testdata(name), folder / name)
        code, out, err = run_cli(*args, "-F", folder, "--verbose")
        assert code == 0, out + err
        assert "Skipping rtplan.dcm: no pixel data (RT Plan Storage)" in err or (
            "rtplan.dcm: left alone, no pixel data (RT Plan Storage)" in err
        ), err
        assert "test-SR.dcm" in err and "[ERROR]" not in err

    @pytest.mark.parametrize("args", [["-j"], ["-x", "--codec", "rle"], ["-I", "png"]])
    def test_image_without_its_pixels_fails(self, make_series, args):
        paths = make_series("damaged", n=3)
        ds = pydicom.dcmread(paths[0])
        del ds.PixelData  # a CT image without its pixels is damaged, not passed over
        ds.save_as(paths[0])
        code, out, err = run_cli(*args, "-F", paths[0].parent)
        assert code == 3, out + err
        [line] = [x for x in err.splitlines() if x.startswith("[ERROR]")]
        assert f"{paths[0].name}: no (7FE0,0010) Pixel Data" in line

    @pytest.mark.parametrize(
        "args", [["-j"], ["-x", "--codec", "rle"], ["-a", "PARAMS"], ["--info"]]
    )
    def test_bare_dataset_is_named_as_such(self, make_series, testdata, tmp_path, args):
        """A dataset without preamble and File Meta is told apart from junk."""
        import shutil

        folder = make_series("s", n=2)[0].parent
        shutil.copy(testdata("rtstruct.dcm"), folder / "rtstruct.dcm")
        (folder / "junk.dcm").write_bytes(b"\x08\x00junk")
        if "PARAMS" in args:
            (tmp_path / "params.txt").write_text("(0010,0010)=ANON\n")
            args = [args[0], str(tmp_path / "params.txt")]
        code, out, err = run_cli(*args, "-F", folder, "--output-dir", tmp_path / "out")
        assert code == 3, out + err
        errors = sorted(x for x in err.splitlines() if x.startswith("[ERROR]"))
        assert errors == [
            f"[ERROR] {folder / 'junk.dcm'}: not a DICOM file (no DICM prefix or File Meta)",
            f"[ERROR] {folder / 'rtstruct.dcm'}: not a DICOM file: a bare dataset without "
            "preamble and File Meta (PS3.10 7.1); only -t dumps it, -p makes a Part 10 file "
            "of it",
        ]

    def test_only_bad_files_fail(self, tmp_path):
        folder = tmp_path / "junk"
        folder.mkdir()
        (folder / "a.dcm").write_bytes(b"\x00" * 300)
        (folder / "b.bin").write_bytes(b"hello")
        code, out, err = run_cli("-j", "-f", folder)
        assert code == 1
        assert "a.dcm" in out + err and "b.bin" in out + err
        assert "Traceback" not in out + err
        assert list(folder.glob("*_multiframe*")) == []

    @pytest.mark.parametrize("flag", ["-f", "-F"])
    def test_empty_folder(self, tmp_path, flag):
        folder = tmp_path / "empty"
        folder.mkdir()
        code, out, err = run_cli("-j", flag, folder)
        assert code == 1
        assert re.search(r"no (single-frame )?DICOM|nothing to merge", out + err, re.I)
        assert "Traceback" not in out + err

    def test_folder_with_only_a_multiframe_file(self, series_folder, tmp_path):
        merged = merge_one(series_folder)
        alone = tmp_path / "alone"
        alone.mkdir()
        merged.rename(alone / merged.name)
        code, out, err = run_cli("-j", "-f", alone)
        assert code == 1
        assert re.search(r"nothing to merge|no single-frame", out + err, re.I)
        assert "Traceback" not in out + err
        assert [p.name for p in alone.iterdir()] == [merged.name]

    def test_missing_path(self, tmp_path):
        code, out, err = run_cli("-j", "-f", tmp_path / "nowhere")
        assert code == 1
        assert "nowhere" in err
        assert "Traceback" not in out + err

    def test_partial_split(self, series_folder, tmp_path):
        merged = merge_one(series_folder)
        folder = tmp_path / "mf"
        folder.mkdir()
        merged.rename(folder / merged.name)
        (folder / "broken.dcm").write_bytes(b"DICM" * 50)
        code, out, err = run_cli("-s", "-F", folder)
        assert code == 3
        assert "broken.dcm" in out + err
        assert "Traceback" not in out + err
        assert len(list((folder / f"{merged.stem}_frames").glob("*.dcm"))) == 6


class TestPaths:
    """-f recurses, -F does not; PATH may be a file."""

    @pytest.fixture
    def nested(self, make_series, tmp_path):
        make_series("root", n=6, series_number=3, seed=1)
        make_series("root/sub", n=5, series_number=4, seed=2)
        return tmp_path / "root"

    def test_f_recurses(self, nested):
        code, _, err = run_cli("-j", "-f", nested)
        assert code == 0, err
        assert [p.name for p in nested.glob("*_multiframe*.dcm")] == [
            "DOE_JANE_series3_multiframe.dcm"
        ]
        assert [p.name for p in (nested / "sub").glob("*_multiframe*.dcm")] == [
            "DOE_JANE_series4_multiframe.dcm"
        ]

    def test_capital_f_does_not_recurse(self, nested):
        code, _, err = run_cli("-j", "-F", nested)
        assert code == 0, err
        assert len(list(nested.glob("*_multiframe*.dcm"))) == 1
        assert list((nested / "sub").glob("*_multiframe*.dcm")) == []

    @pytest.mark.parametrize("flag", ["-f", "-F"])
    def test_split_a_file(self, series_folder, flag):
        merged = merge_one(series_folder)
        code, _, err = run_cli("-s", flag, merged)
        assert code == 0, err
        assert len(list((series_folder / f"{merged.stem}_frames").glob("*.dcm"))) == 6

    def test_info_from_f(self, series_folder):
        merged = merge_one(series_folder)
        code, out, _ = run_cli("--info", "-f", merged, "--json")
        assert code == 0
        assert json.loads(out)["frames"] == 6


class TestOutputFlags:
    """--quiet, --verbose, --json, --log-file; no progress text into a pipe."""

    def test_quiet_has_no_info_lines(self, series_folder):
        code, out, err = run_cli("-j", "-f", series_folder, "--quiet")
        assert code == 0
        assert "[INFO]" not in err
        assert len(list(series_folder.glob("*_multiframe*.dcm"))) == 1

    def test_quiet_still_warns(self, make_series):
        folder = make_series("gap", n=8, skip=(3,))[0].parent
        code, _, err = run_cli("-j", "-f", folder, "--quiet")
        assert code == 0
        assert "[WARNING]" in err

    def test_verbose(self, series_folder):
        code, _, err = run_cli("-j", "-f", series_folder, "--verbose")
        assert code == 0
        assert "[INFO]" in err

    def test_json_merge_result(self, series_folder):
        code, out, _ = run_cli("-j", "-f", series_folder, "--json")
        assert code == 0
        payload = json.loads(out)
        assert "DOE_JANE_series3_multiframe.dcm" in json.dumps(payload)

    def test_log_file(self, series_folder, tmp_path):
        log = tmp_path / "logs" / "run.log"
        code, _, _ = run_cli("-j", "-f", series_folder, "--log-file", log, "--quiet")
        assert code == 0
        text = log.read_text()
        assert "[INFO]" in text
        assert "DOE_JANE_series3_multiframe.dcm" in text

    @pytest.mark.parametrize("action", ["-j", "-s", "--summary"])
    def test_no_progress_into_a_pipe(self, series_folder, action):
        target = series_folder
        if action == "-s":
            target = merge_one(series_folder)
        code, out, err = run_cli(action, "-f", target)
        assert code == 0
        assert "\r" not in err and "\r" not in out


def test_closed_stdout_ends_quietly(make_series, tmp_path):
    """``dicompressor ... | head``: no traceback, exit 1, no temp files left."""
    import os
    import subprocess
    import sys

    root = tmp_path / "root"
    root.mkdir()
    for index in range(4):
        make_series(f"s{index}", n=2)[0].parent.rename(root / f"f{index}")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    argv = [sys.executable, dicompressor.__file__, "-t", "-f", str(root), "--jobs", "1"]
    child = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    os.close(write_end)
    err = child.stderr.decode()
    assert "Traceback" not in err
    assert "standard output closed" in err
    assert child.returncode == 1
    assert not [p for p in root.rglob("*") if p.name.endswith(".part")]


FRAME_CHURN = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import dicompressor
if sys.argv[2] == "tuned":
    dicompressor.tune_malloc()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # big frames' buffers, written, freed, made again
    buffers = [b"x" * (24 << 20) for _ in range(2)]
    del buffers
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_tune_malloc_keeps_frame_buffers_on_the_heap(tmp_path):
    """Buffers freed and made again, frame after frame, cost no new pages once tuned."""

    def faults(mode: str) -> int:
        proc = subprocess.run(
            [sys.executable, "-c", FRAME_CHURN, str(ROOT), mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return int(proc.stdout.split()[-1])

    plain, tuned = faults("plain"), faults("tuned")
    assert plain > 100_000  # glibc gives the 48 MB back and faults it in again, 20 times
    assert tuned < plain / 5  # kept on the heap: the first round's pages only
