"""HTTP API (``--serve``): the spec's examples, errors, limits, uploads, over real HTTP."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
import synth
from conftest import RELAXED, ROOT, Running, need_tool, part_head, pydicom_file, server_process

import dicompressor as srv

SPEC_API = "https://dicompressor.sitnov.work"


#: The spec's "Full Examples / cURL" script as published; only API and KEY are replaced.
DOCS_CURL_EXAMPLE = """\
#!/bin/bash
# DicomPressor API — Full merge example
# Replace YOUR_KEY with your actual API key
API="https://dicompressor.sitnov.work"
KEY="YOUR_KEY"
# Step 1: Create session
echo "Creating session..."
SESSION=$(curl -s -X POST -H "X-API-Key: $KEY" $API/api/session | jq -r .session_id)
echo "Session: $SESSION"
# Step 2: Upload all .dcm files from a folder
echo "Uploading files..."
for f in ./dicoms/*.dcm; do
  curl -s -X POST \\
    -H "X-API-Key: $KEY" \\
    -F "files=@$f" \\
    $API/api/upload/$SESSION > /dev/null
done
echo "Upload complete"
# Step 3: Merge
echo "Merging..."
RESULT=$(curl -s -X POST \\
  -H "X-API-Key: $KEY" \\
  -H "Content-Type: application/json" \\
  -d '{"action":"merge"}' \\
  $API/api/process/$SESSION)
echo "Success: $(echo $RESULT | jq .success)"
# Step 4: Download each output file
echo $RESULT | jq -r '.output_files[].name' | while read fname; do
  echo "Downloading $fname..."
  curl -s -H "X-API-Key: $KEY" \\
    -o "$fname" \\
    $API/api/download/$SESSION/$fname
done
echo "Done!"
"""


@pytest.fixture
def api(start_server: Callable[..., Running]) -> Running:
    """A server with relaxed rate limits."""
    return start_server(**RELAXED)


@pytest.fixture
def dicoms(tmp_path: Path) -> list[Path]:
    """Eight CT slices in tmp_path/dicoms."""
    return sorted(synth.make_series(tmp_path / "dicoms", n=8))


def raw_request(
    url: str, method: str, path: str, headers: dict[str, Any], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Send a request with http.client (raw header bytes allowed); return status, headers, body."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    if body:
        conn.send(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def files_under(folder: Path) -> list[Path]:
    """Every file under folder, hidden ones included."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ---- the spec's examples ----


class TestSpecExamples:
    def test_curl_quick_start(self, api: Running, tmp_path: Path) -> None:
        need_tool("curl")
        work = tmp_path / "qs"
        work.mkdir()
        series = sorted(synth.make_series(tmp_path / "qs_src", n=2))
        for i, path in enumerate(series):
            shutil.copyfile(path, work / f"{i:04d}.dcm")

        def sh(command: str) -> str:
            command = command.replace(SPEC_API, api.url).replace("YOUR_KEY", api.key)
            proc = subprocess.run(
                command, shell=True, cwd=work, capture_output=True, text=True, timeout=60
            )
            assert proc.returncode == 0, proc.stderr
            return proc.stdout

        # 1. Create a session (jq may be missing: the JSON is parsed here)
        out = sh(
            'curl -s -X POST -H "X-API-Key: YOUR_KEY" https://dicompressor.sitnov.work/api/session'
        )
        session = json.loads(out)["session_id"]
        # 2. Upload DICOM files
        out = sh(
            'curl -X POST -H "X-API-Key: YOUR_KEY" -F "files=@0000.dcm" -F "files=@0001.dcm" '
            f"https://dicompressor.sitnov.work/api/upload/{session}"
        )
        assert json.loads(out) == {"uploaded": 2, "files": ["0000.dcm", "0001.dcm"]}
        # 3. Process (merge)
        out = sh(
            'curl -s -X POST -H "X-API-Key: YOUR_KEY" -H "Content-Type: application/json" '
            f'-d \'{{"action":"merge"}}\' https://dicompressor.sitnov.work/api/process/{session}'
        )
        result = json.loads(out)
        assert set(result) == {"success", "action", "log", "output_files", "warnings"}
        assert result["warnings"] == []  # issue 17: what readers get wrong, per output
        assert result["success"] is True and result["action"] == "merge"
        assert result["log"].startswith("[INFO] Processing 2 files")
        assert result["log"].endswith("[INFO] Done.")
        [output] = result["output_files"]
        assert output["name"] == "DOE_JANE_series3_multiframe.dcm"
        # 4. Download result under the quick start's name
        sh(
            'curl -H "X-API-Key: YOUR_KEY" -o merged.dcm '
            f"https://dicompressor.sitnov.work/api/download/{session}/merged_multiframe.dcm"
        )
        ds = pydicom.dcmread(work / "merged.dcm")
        assert int(ds.NumberOfFrames) == 2
        assert (work / "merged.dcm").stat().st_size == output["size"]

    def test_curl_full_example(self, api: Running, tmp_path: Path) -> None:
        need_tool("curl")
        need_tool("jq")
        work = tmp_path / "full"
        synth.make_series(work / "dicoms", n=6)
        script = DOCS_CURL_EXAMPLE
        script = script.replace(SPEC_API, api.url).replace("YOUR_KEY", api.key)
        proc = subprocess.run(
            ["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert "Success: true" in proc.stdout
        ds = pydicom.dcmread(work / "DOE_JANE_series3_multiframe.dcm")
        assert int(ds.NumberOfFrames) == 6

    def test_python_example(self, api: Running, tmp_path: Path) -> None:
        work = tmp_path / "py"
        synth.make_series(work / "dicoms", n=25)  # two upload batches of 20
        # The spec's "Full Examples / Python" as written; only API and KEY substituted.
        code = textwrap.dedent(
            """\
            import requests
            import os
            from pathlib import Path

            API = "https://dicompressor.sitnov.work"
            KEY = "YOUR_KEY"
            HEADERS = {"X-API-Key": KEY}

            # 1. Create session
            session_id = requests.post(f"{API}/api/session", headers=HEADERS).json()["session_id"]
            print(f"Session: {session_id}")

            # 2. Upload files (batch of 20)
            dcm_folder = Path("./dicoms")
            files = sorted(dcm_folder.glob("*.dcm"))
            for i in range(0, len(files), 20):
                batch = files[i:i+20]
                form_files = [("files", (f.name, open(f, "rb"))) for f in batch]
                r = requests.post(f"{API}/api/upload/{session_id}", headers=HEADERS, files=form_files)
                print(f"  Uploaded {r.json()['uploaded']} files")

            # 3. Process
            result = requests.post(
                f"{API}/api/process/{session_id}",
                headers={**HEADERS, "Content-Type": "application/json"},
                json={"action": "merge"}
            ).json()
            print(f"Success: {result['success']}")
            print(f"Output files: {len(result['output_files'])}")

            # 4. Download results
            for f in result["output_files"]:
                r = requests.get(
                    f"{API}/api/download/{session_id}/{f['name']}",
                    headers=HEADERS
                )
                Path(f["name"]).write_bytes(r.content)
                print(f"  Downloaded {f['name']} ({f['size'] / 1048576:.1f} MB)")
            """  # noqa: E501 (the spec's code as written)
        )
        code = code.replace(SPEC_API, api.url).replace("YOUR_KEY", api.key)
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[1:3] == ["  Uploaded 20 files", "  Uploaded 5 files"]
        assert "Success: True" in lines and "Output files: 1" in lines
        ds = pydicom.dcmread(work / "DOE_JANE_series3_multiframe.dcm")
        assert int(ds.NumberOfFrames) == 25

    def test_anonymize_example(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        assert api.upload(sid, dicoms).status_code == 200
        params = (
            "(0010,0010)=ANONYMOUS^PATIENT\n(0010,0020)=ANON001\n(0010,0030)=19000101\n"
            "(0010,0040)=O\n(0008,0090)=DR ANONYMOUS"
        )
        result = api.process(sid, {"action": "anonymize", "params": params}).json()
        assert result["success"] is True
        assert len(result["output_files"]) == len(dicoms)
        name = result["output_files"][0]["name"]
        r = requests.get(f"{api.url}/api/download/{sid}/{name}", headers=api.headers, timeout=30)
        ds = pydicom.dcmread(__import__("io").BytesIO(r.content))
        assert str(ds.PatientName) == "ANONYMOUS^PATIENT" and ds.PatientID == "ANON001"


# ---- endpoints and response shapes ----


class TestEndpoints:
    def test_files_download_view_delete(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        r = api.upload(sid, dicoms[:3])
        assert r.json() == {"uploaded": 3, "files": [p.name for p in dicoms[:3]]}
        api.upload(sid, dicoms[3:])
        listing = requests.get(f"{api.url}/api/files/{sid}", headers=api.headers).json()
        assert listing == {
            "input": [{"name": p.name, "size": p.stat().st_size} for p in dicoms],
            "output": [],
        }
        result = api.process(sid, {"action": "merge"}).json()
        name = result["output_files"][0]["name"]
        r = requests.get(f"{api.url}/api/download/{sid}/{name}", headers=api.headers)
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["Content-Disposition"].startswith("attachment;")
        v = requests.get(f"{api.url}/api/view/{sid}/{name}?api_key={api.key}")
        assert v.status_code == 200 and v.content == r.content
        assert v.headers["Content-Type"] == "application/dicom"
        assert "attachment" not in v.headers.get("Content-Disposition", "")
        assert v.headers["Access-Control-Allow-Origin"] == "*"
        listing = requests.get(f"{api.url}/api/files/{sid}", headers=api.headers).json()
        assert [{k: e[k] for k in ("name", "size")} for e in listing["output"]] == [
            {"name": name, "size": len(r.content)}
        ]
        assert set(listing["output"][0]) == {"name", "size", "view_url", "download_url"}
        d = requests.delete(f"{api.url}/api/session/{sid}", headers=api.headers)
        assert d.status_code == 200 and not (api.data_dir / sid).exists()
        gone = requests.get(f"{api.url}/api/files/{sid}", headers=api.headers)
        assert gone.status_code == 404

    def test_merge_warnings_per_output(self, api: Running, tmp_path: Path) -> None:
        paths = synth.make_series(tmp_path / "gap", n=6, skip=(2,), shuffle_names=False)
        sid = api.session()
        assert api.upload(sid, paths).status_code == 200
        result = api.process(sid, {"action": "merge"}).json()
        [output] = result["output_files"]
        [warning] = result["warnings"]
        assert warning["kind"] == "gap" and warning["output"] == output["name"]
        assert warning["series"] == pydicom.dcmread(paths[0]).SeriesInstanceUID
        assert warning["slices"] == ["IMG0001.dcm", "IMG0002.dcm"]
        assert f"[WARNING] {warning['message']}" in result["log"].splitlines()
        assert str(api.data_dir) not in json.dumps(result)  # names, not server paths
        split = api.process(sid, {"action": "merge", "options": {"split_at_gaps": True}})
        assert split.status_code == 200, split.text
        assert split.json()["warnings"] == []
        assert len(split.json()["output_files"]) == 2
        schema = requests.get(f"{api.url}/api/openapi.json").json()["components"]["schemas"]
        assert "warnings" in schema["ProcessResult"]["required"]
        kinds = schema["ProcessResult"]["properties"]["warnings"]["items"]["properties"]["kind"]
        assert warning["kind"] in kinds["enum"]

    def test_health_needs_no_key(self, api: Running) -> None:
        r = requests.get(f"{api.url}/api/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"

    def test_info_and_summary_put_text_in_log(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        api.upload(sid, dicoms[:1])
        for action in ("info", "summary"):
            result = api.process(sid, {"action": action}).json()
            assert result["success"] is True and result["output_files"] == []
            assert "DOE^JANE" in result["log"]
        listing = requests.get(f"{api.url}/api/files/{sid}", headers=api.headers).json()
        assert listing["output"] == []

    def test_options_reach_the_action(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        api.upload(sid, dicoms[:2])
        result = api.process(sid, {"action": "headers", "options": {"format": "json"}}).json()
        assert result["success"] and all(
            f["name"].endswith(".json") for f in result["output_files"]
        )
        result = api.process(
            sid, {"action": "export_png", "options": {"image_format": "jpg", "window": "40,400"}}
        ).json()
        assert result["success"] and all(
            f["name"].endswith(".jpg") for f in result["output_files"]
        )

    def test_image_formats_and_annotation(self, api: Running, tmp_path: Path) -> None:
        """-I's spellings and -i/-e's annotation, as the API's options."""
        from PIL import Image

        paths = synth.make_series(tmp_path / "s", n=3, rows=64, cols=64)
        images = {}
        for name, options in (
            ("plain", {"image_format": "Tif"}),
            ("annotated", {"image_format": "TIFF", "annotate": True}),
        ):
            sid = api.session()
            api.upload(sid, paths)
            result = api.process(sid, {"action": "export_png", "options": options}).json()
            assert result["success"], result
            assert sorted(f["name"] for f in result["output_files"]) == sorted(
                p.stem + ".tiff" for p in paths
            )
            r = requests.get(
                f"{api.url}/api/download/{sid}/{paths[0].stem}.tiff", headers=api.headers
            )
            with Image.open(io.BytesIO(r.content)) as image:
                images[name] = np.asarray(image)
        differs = np.nonzero(images["plain"] != images["annotated"])
        assert differs[0].size and differs[0].max() < 24  # the text box at the top only
        result = api.process(sid, {"action": "export_video", "options": {"annotate": True}})
        assert result.json()["success"], result.text
        assert [f["name"] for f in result.json()["output_files"]] == ["DOE_JANE_series3.mp4"]
        r = api.process(sid, {"action": "export_png", "options": {"image_format": "gif"}})
        assert r.status_code == 400
        assert r.json()["error"] == (
            "unknown image format 'gif': options.image_format takes one of png, jpg, bmp, "
            "tiff, jp2 (also jpeg, tif, jpeg2000; upper or lower case)"
        )

    def test_merged_alias_ambiguous(self, api: Running, tmp_path: Path) -> None:
        a = synth.make_series(tmp_path / "a", n=3, series_number=1)
        b = synth.make_series(tmp_path / "b", n=3, series_number=2, prefix="B")
        sid = api.session()
        api.upload(sid, a + b)
        result = api.process(sid, {"action": "merge"}).json()
        names = sorted(f["name"] for f in result["output_files"])
        assert names == ["DOE_JANE_series1_multiframe.dcm", "DOE_JANE_series2_multiframe.dcm"]
        r = requests.get(
            f"{api.url}/api/download/{sid}/merged_multiframe.dcm", headers=api.headers
        )
        assert r.status_code == 404
        assert all(n in r.json()["error"] for n in names)


# ---- errors ----


class TestErrors:
    def test_400(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        url = f"{api.url}/api/process/{sid}"
        bad_json = requests.post(url, headers=api.headers, data=b"{not json")
        assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
        empty = api.process(sid, {"action": "merge"})
        assert empty.status_code == 400 and "no files to process" in empty.json()["error"]
        api.upload(sid, dicoms[:1])
        unknown = api.process(sid, {"action": "explode"})
        assert unknown.status_code == 400
        assert unknown.json()["error"].startswith('unknown action "explode": use one of merge,')
        params = api.process(sid, {"action": "anonymize", "params": "(0010,0010)=A\nnonsense"})
        assert params.status_code == 400 and params.json()["error"].startswith("bad params:")
        for options, text in (
            ({"ratio": 5}, "unknown option 'ratio' for merge"),
            ({"bogus": 1}, "unknown option 'bogus'"),
        ):
            r = api.process(sid, {"action": "merge", "options": options})
            assert r.status_code == 400 and text in r.json()["error"]
        bad_value = api.process(sid, {"action": "compress_lossy", "options": {"ratio": 0.5}})
        assert bad_value.json() == {"error": "options.ratio must be 1 or more, not 0.5"}
        no_files = requests.post(
            f"{api.url}/api/upload/{sid}",
            headers=api.headers,
            files=[("other", ("x.dcm", b"data"))],
        )
        assert no_files.status_code == 400 and "no files in the upload" in no_files.json()["error"]
        assert list((api.data_dir / sid / "output").iterdir()) == []

    def test_401(self, api: Running) -> None:
        assert requests.post(f"{api.url}/api/session").status_code == 401
        wrong = requests.post(f"{api.url}/api/session", headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        status, _, body = raw_request(
            api.url, "POST", "/api/session", {"X-API-Key": "ключ".encode()}
        )
        assert status == 401 and "error" in json.loads(body)
        status, _, _ = raw_request(api.url, "POST", "/api/session?api_key=%D0%BA%D0%BB", {})
        assert status == 401
        assert requests.post(f"{api.url}/api/session?api_key={api.key}").status_code == 200

    def test_404(self, api: Running) -> None:
        for path in (
            "/api/files/not-a-uuid",
            "/api/files/" + "0" * 8 + "-0000-4000-8000-" + "0" * 12,
        ):
            r = requests.get(api.url + path, headers=api.headers)
            assert r.status_code == 404 and r.json()["error"].startswith("no session")
        sid = api.session()
        r = requests.get(f"{api.url}/api/download/{sid}/missing.dcm", headers=api.headers)
        assert r.status_code == 404 and "missing.dcm" in r.json()["error"]
        assert requests.get(f"{api.url}/api/nothing", headers=api.headers).status_code == 404

    def test_413_from_content_length(self, start_server: Callable[..., Running]) -> None:
        api = start_server(max_upload_bytes=1024 * 1024, **RELAXED)
        sid = api.session()
        headers = {
            "X-API-Key": api.key,
            "Content-Type": "multipart/form-data; boundary=xyz",
            "Content-Length": str(600 * 1024 * 1024),
            "Expect": "100-continue",
        }
        status, _, body = raw_request(api.url, "POST", f"/api/upload/{sid}", headers)
        assert status == 413 and "too large" in json.loads(body)["error"]

    def test_413_while_streaming(self, start_server: Callable[..., Running]) -> None:
        api = start_server(max_upload_bytes=1024 * 1024, **RELAXED)
        sid = api.session()

        def body() -> Iterator[bytes]:
            yield part_head("a.dcm")
            for _ in range(40):
                yield b"\0" * 65536
            yield b"\r\n--xyz--\r\n"

        headers = {**api.headers, "Content-Type": "multipart/form-data; boundary=xyz"}
        try:
            r = requests.post(f"{api.url}/api/upload/{sid}", headers=headers, data=body())
            assert r.status_code == 413
        except requests.ConnectionError:
            pass  # the server may close before the client finishes sending
        assert files_under(api.data_dir / sid / "input") == []

    def test_413_too_many_files(
        self, start_server: Callable[..., Running], dicoms: list[Path]
    ) -> None:
        api = start_server(max_files=5, **RELAXED)
        sid = api.session()
        assert api.upload(sid, dicoms[:4]).status_code == 200
        r = api.upload(sid, dicoms[4:])
        assert r.status_code == 413
        assert r.json() == {
            "error": f"too many files: session {sid} holds 4 file(s) and this upload adds 2 "
            "or more, past the limit of 5 per session"
        }
        assert len(files_under(api.data_dir / sid / "input")) == 4

    def test_429_with_retry_after(self, start_server: Callable[..., Running]) -> None:
        now = [1000.0]
        api = start_server(
            rate_limit_per_min=30, session_rate_limit_per_min=5, monotonic=lambda: now[0]
        )
        codes = [
            requests.post(f"{api.url}/api/session", headers=api.headers).status_code
            for _ in range(6)
        ]
        assert codes == [200] * 5 + [429]
        r = requests.post(f"{api.url}/api/session", headers=api.headers)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) == 12
        now[0] += 12
        assert requests.post(f"{api.url}/api/session", headers=api.headers).status_code == 200
        for _ in range(30):
            requests.get(f"{api.url}/api/health")
        statuses = [
            requests.get(f"{api.url}/api/files/x", headers=api.headers).status_code
            for _ in range(30)
        ]
        assert statuses.count(429) >= 1 and set(statuses) <= {404, 429}

    def test_503_max_sessions(self, start_server: Callable[..., Running]) -> None:
        api = start_server(max_sessions=2, **RELAXED)
        api.session(), api.session()
        r = requests.post(f"{api.url}/api/session", headers=api.headers)
        assert r.status_code == 503 and "server busy" in r.json()["error"]

    def test_504_timeout(self, start_server: Callable[..., Running], dicoms: list[Path]) -> None:
        api = start_server(process_timeout_s=0.001, **RELAXED)
        sid = api.session()
        api.upload(sid, dicoms)
        r = api.process(sid, {"action": "merge"})
        assert r.status_code == 504 and "timed out" in r.json()["error"]
        assert files_under(api.data_dir / sid / "output") == []

    def test_409_busy(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        api.upload(sid, dicoms)
        with api.state.processing(api.state.get(sid)):
            r = api.process(sid, {"action": "merge"})
        assert r.status_code == 409
        assert api.process(sid, {"action": "merge"}).status_code == 200


# ---- uploads ----


HOSTILE = [
    "../../etc/passwd",
    "..\\..\\windows\\system32\\config",
    "/abs/path.dcm",
    "C:\\Users\\x\\a.dcm",
    "..",
    ".",
    "...",
    "",
    " ",
    "CON",
    "nul.dcm",
    "Com1.txt",
    "LPT9",
    "aux.",
    ".hidden",
    ".dicompressor_done",
    "a\x00b.dcm",
    "line\nbreak.dcm",
    "tab\tname",
    "esc\x1b[31m.dcm",
    "del\x7f.dcm",
    "%2e%2e%2fescape",
    "..%2f..%2fx",
    "a/b/c/../../d.dcm",
    "名前.dcm",
    "emoji😀.dcm",
    "x" * 300 + ".dcm",
    "trailing. . .",
    "semi;colon.dcm",
    'quote".dcm',
    "star*?.dcm",
    "pipe|<>.dcm",
    "~/.ssh/authorized_keys",
    "\\\\server\\share\\f.dcm",
    "session.json",
    "../session.json",
    "input/../output/x",
]


class TestClientsThatHangUp:
    """A client gone mid-request costs the server a debug line, not a traceback."""

    def test_reset_mid_request_prints_no_traceback(self, api: Running, capfd) -> None:
        import struct

        host, port = api.server.server_address[:2]
        for _ in range(3):
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(b"GET /api/hea")  # no end of line: the handler is reading
                time.sleep(0.05)
                # SO_LINGER 0: close sends a reset instead of a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.3)  # the handler threads see the resets
        r = requests.get(f"{api.url}/api/health", timeout=10)
        assert r.status_code == 200
        err = capfd.readouterr().err
        assert "Traceback" not in err and "Exception occurred" not in err, err


class TestServerStderr:
    """Job processes keep pydicom's warnings and their own log out of the server's stderr."""

    def test_odd_files_leave_stderr_clean(self, api: Running, tmp_path: Path, capfd) -> None:
        names = ["SC_rgb_jpeg.dcm", "badVR.dcm", "CT_small.dcm", "MR_truncated.dcm"]
        paths = [Path(shutil.copy(pydicom_file(name), tmp_path / name)) for name in names]
        sid = api.session()
        assert api.upload(sid, paths).status_code == 200
        capfd.readouterr()
        for action in ("anonymize", "headers", "export_png"):
            r = api.process(sid, {"action": action})
            assert r.status_code == 200, r.text
            assert "MR_truncated.dcm: truncated" in r.json()["log"]  # told to the client
        err = capfd.readouterr().err
        assert "UserWarning" not in err and "warn_and_log" not in err, err
        assert "truncated" not in err, err


class TestUploads:
    def test_hostile_names_stay_inside(self, api: Running, tmp_path: Path) -> None:
        names = [*HOSTILE, *(f"{h}{i}" for i, h in enumerate(HOSTILE)), *HOSTILE[:30]]
        assert len(names) >= 100
        sid = api.session()
        folder = api.data_dir / sid
        files = [("files", (name, f"payload {i}".encode())) for i, name in enumerate(names)]
        contents = [data for _, (name, data) in files if name]
        # requests would mangle some names; build the body by hand (names as UTF-8, quoted)
        boundary = "b0undary"
        parts = []
        for _, (name, data) in files:
            quoted = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "%0A")
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="{quoted}"\r\n\r\n'.encode()
                + data
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        r = requests.post(
            f"{api.url}/api/upload/{sid}",
            headers={**api.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            data=body,
        )
        assert r.status_code == 200, r.text
        stored = r.json()["files"]
        # a part with an empty filename is a browser's empty file input: skipped
        assert r.json()["uploaded"] == len([n for n in names if n]) == len(set(stored))
        outside = [
            p
            for p in api.data_dir.rglob("*")
            if p.is_file()
            and p.resolve().parent != (folder / "input").resolve()
            and p.name not in ("session.json", srv.VIEW_SECRET_FILE)
        ]
        assert outside == []
        assert sorted(p.name for p in (folder / "input").iterdir()) == sorted(stored)
        for name in stored:
            assert "/" not in name and "\\" not in name and not name.startswith(".")
            assert all(ord(c) >= 32 and c != "\x7f" for c in name)
            assert name.split(".")[0].upper() not in srv.WINDOWS_RESERVED
        escapes = 0
        for i, name in enumerate(stored):
            for route in ("download", "view"):
                r = requests.get(
                    f"{api.url}/api/{route}/{sid}/{requests.utils.quote(name, safe='')}",
                    headers=api.headers,
                )
                assert r.status_code == 200, (name, r.text)
                escapes += r.content != contents[i]
        for name in names:  # the raw hostile names never reach a file outside
            quoted = requests.utils.quote(name, safe="")
            r = requests.get(f"{api.url}/api/download/{sid}/{quoted}", headers=api.headers)
            if r.status_code == 200:
                assert r.content.startswith(b"payload ")
            else:
                assert r.status_code in (404, 400)
        assert escapes == 0

    def test_same_name_kept_apart(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        assert api.upload(sid, dicoms[:1]).json()["files"] == [dicoms[0].name]
        again = api.upload(sid, [dicoms[0], dicoms[0]]).json()["files"]
        stem = dicoms[0].stem
        assert again == [f"{stem}_1.dcm", f"{stem}_2.dcm"]

    def test_truncated_upload_leaves_nothing(self, api: Running) -> None:
        sid = api.session()
        host, port = api.url.removeprefix("http://").split(":")
        part = part_head("a.dcm") + b"A" * 5000 + b"\r\n" + part_head("b.dcm") + b"B" * 5000
        head = (
            f"POST /api/upload/{sid} HTTP/1.1\r\nHost: x\r\nX-API-Key: {api.key}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
        ).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(head + part)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(65536)
        time.sleep(0.2)
        assert files_under(api.data_dir / sid / "input") == []

    def test_chunked_upload(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        data = dicoms[0].read_bytes()

        def body() -> Iterator[bytes]:
            yield part_head("c.dcm")
            yield data
            yield b"\r\n--xyz--\r\n"

        headers = {**api.headers, "Content-Type": "multipart/form-data; boundary=xyz"}
        r = requests.post(f"{api.url}/api/upload/{sid}", headers=headers, data=body())
        assert r.json() == {"uploaded": 1, "files": ["c.dcm"]}
        assert (api.data_dir / sid / "input" / "c.dcm").read_bytes() == data

    def test_safe_upload_name(self) -> None:
        assert srv.safe_upload_name("../../etc/passwd") == "passwd"
        assert srv.safe_upload_name("C:\\dir\\IM 01.dcm") == "IM_01.dcm"
        assert srv.safe_upload_name("..") == "upload.dcm"
        assert srv.safe_upload_name("CON.dcm") == "_CON.dcm"
        assert srv.safe_upload_name("a\x00b") == "a_b"


# ---- sessions, keys, server ----


class TestSessions:
    def test_ttl_sweep_and_restart(
        self, start_server: Callable[..., Running], tmp_path: Path
    ) -> None:
        now = [1_000_000.0]
        api = start_server(session_ttl_s=100, clock=lambda: now[0], **RELAXED)
        sid = api.session()
        record = json.loads((api.data_dir / sid / "session.json").read_text())
        assert record["expires"] - record["created"] == 100
        api.server.close()
        again = start_server(session_ttl_s=100, clock=lambda: now[0], **RELAXED)
        assert (
            requests.get(f"{again.url}/api/files/{sid}", headers=again.headers).status_code == 200
        )
        now[0] += 101
        assert (
            requests.get(f"{again.url}/api/files/{sid}", headers=again.headers).status_code == 404
        )
        assert again.state.sweep() == [sid]
        assert not (again.data_dir / sid).exists()

    def test_keys_from_env_and_file(self, tmp_path: Path) -> None:
        keys_file = tmp_path / "keys"
        keys_file.write_text("# comment\nfile-key\n\nshared\n")
        config = srv.ServerConfig(api_keys=("cli-key", "shared"), api_keys_file=keys_file)
        keys = srv.resolve_api_keys(config, {"DICOMPRESSOR_API_KEYS": "env1, env2,"})
        assert keys == ["cli-key", "shared", "env1", "env2", "file-key"]

    def test_non_loopback_without_key_refused(self, tmp_path: Path, capsys: Any) -> None:
        config = srv.ServerConfig(host="0.0.0.0", port=0, data_dir=tmp_path / "d")
        assert srv.run_server(config, environ={}) == 2
        assert "refusing to serve on 0.0.0.0 without an API key" in capsys.readouterr().err


class TestScale:
    def test_generated_key_printed_once(self, tmp_path: Path) -> None:
        proc, url, key = server_process(tmp_path / "d")
        try:
            assert (
                requests.post(f"{url}/api/session", headers={"X-API-Key": key}).status_code == 200
            )
        finally:
            proc.terminate()
            proc.wait(10)

    def test_50_concurrent_clients(
        self, start_server: Callable[..., Running], tmp_path: Path
    ) -> None:
        api = start_server(max_sessions=100, **RELAXED)
        folders = [
            sorted(synth.make_series(tmp_path / f"c{i}", n=3, seed=i + 1)) for i in range(50)
        ]

        def client(paths: list[Path]) -> tuple[int, int]:
            with requests.Session() as http:
                http.headers.update(api.headers)
                sid = http.post(f"{api.url}/api/session").json()["session_id"]
                files = [("files", (p.name, p.read_bytes())) for p in paths]
                up = http.post(f"{api.url}/api/upload/{sid}", files=files)
                assert up.json()["uploaded"] == 3
                result = http.post(f"{api.url}/api/process/{sid}", json={"action": "merge"}).json()
                assert result["success"], result
                [out] = result["output_files"]
                r = http.get(f"{api.url}/api/download/{sid}/{out['name']}")
                ds = pydicom.dcmread(__import__("io").BytesIO(r.content))
                return int(ds.NumberOfFrames), len(r.content) - out["size"]

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            results = list(pool.map(client, folders))
        assert results == [(3, 0)] * 50

    def test_400_mb_upload_memory(self, tmp_path: Path) -> None:
        proc, url, key = server_process(tmp_path / "d")
        try:

            def rss_kb(field: str) -> int:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith(field):
                        return int(line.split()[1])
                raise AssertionError(field)

            headers = {"X-API-Key": key}
            sid = requests.post(f"{url}/api/session", headers=headers).json()["session_id"]
            idle_kb = rss_kb("VmRSS")
            chunk = os.urandom(1 << 20)

            def body() -> Iterator[bytes]:
                yield part_head("big.dcm")
                for _ in range(400):
                    yield chunk
                yield b"\r\n--xyz--\r\n"

            r = requests.post(
                f"{url}/api/upload/{sid}",
                headers={**headers, "Content-Type": "multipart/form-data; boundary=xyz"},
                data=body(),
                timeout=300,
            )
            assert r.json() == {"uploaded": 1, "files": ["big.dcm"]}
            peak_kb = rss_kb("VmHWM")
            assert (tmp_path / "d" / sid / "input" / "big.dcm").stat().st_size == 400 << 20
            assert (peak_kb - idle_kb) / 1024 < 100, (idle_kb, peak_kb)
        finally:
            proc.terminate()
            proc.wait(10)


# ---- issue 18: the API as its documentation's users run it ----


def raw_exchange(url: str, data: bytes) -> bytes:
    """Send raw bytes to the server and return everything it answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split a raw HTTP answer into status, headers (lower-case names) and body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


class TestKeepAlive:
    """Answers leave in one write on sockets without Nagle's delay (issue 18, item 1)."""

    def test_one_write_per_answer_without_nagle(self, api: Running) -> None:
        seen: list[tuple[int, int]] = []  # (TCP_NODELAY, writes) per request

        class Observed(srv.ApiHandler):
            def handle_one_request(self) -> None:
                writes = [0]
                write = self.wfile.write

                def counted(data: bytes) -> int:
                    writes[0] += 1
                    return write(data)

                self.wfile.write = counted  # type: ignore[method-assign]
                super().handle_one_request()
                if self.raw_requestline:
                    nodelay = self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    seen.append((nodelay, writes[0]))

        api.server.RequestHandlerClass = Observed
        sid = api.session()
        with requests.Session() as http:
            http.headers.update(api.headers)
            for _ in range(3):
                assert http.get(f"{api.url}/api/health").status_code == 200
            assert http.get(f"{api.url}/api/files/{sid}").json()["input"] == []
            assert http.get(f"{api.url}/api/nothing").status_code == 404
            assert http.get(f"{api.url}/").status_code == 200
        # The server thread records an answer after its write, so the client may see
        # the last answer before it is counted: wait for the count, briefly.
        deadline = time.monotonic() + 5
        while len(seen) < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(seen) == 7
        assert all(nodelay != 0 for nodelay, _ in seen), seen
        assert [writes for _, writes in seen] == [1] * 7

    def test_many_requests_on_one_connection(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        with requests.Session() as http:
            http.headers.update(api.headers)
            for path in dicoms:
                with path.open("rb") as handle:
                    r = http.post(f"{api.url}/api/upload/{sid}", files=[("files", handle)])
                assert r.json()["files"] == [path.name]
        assert sorted(p.name for p in (api.data_dir / sid / "input").iterdir()) == sorted(
            p.name for p in dicoms
        )


class TestEveryErrorIsJson:
    """What http.server refuses by itself is answered with ``{"error": ...}`` (item 2)."""

    def test_unknown_methods_are_501_json(self, api: Running) -> None:
        sid = api.session()
        for method, path in (("PUT", "/api/health"), ("PATCH", f"/api/session/{sid}"),
                             ("TRACE", "/"), ("PROPFIND", "/api/nothing")):  # fmt: skip
            r = requests.request(method, api.url + path, headers=api.headers, data=b"x" * 10)
            assert r.status_code == 501, (method, r.text)
            assert r.headers["Content-Type"] == "application/json"
            assert r.headers["Connection"] == "close"
            assert r.json() == {
                "error": f"method {method} is not implemented: this API answers GET, POST, "
                "DELETE, OPTIONS, HEAD"
            }
        # a method the API has, on a path without it, stays 405 with Allow
        r = requests.get(f"{api.url}/api/session", headers=api.headers)
        assert r.status_code == 405 and r.headers["Allow"] == "POST"
        assert r.json()["error"] == "GET is not allowed on /api/session: use POST"

    @pytest.mark.parametrize(
        ("request_line", "status", "error"),
        [
            (b"GARBAGE", 400, "malformed request line 'GARBAGE': send METHOD /path HTTP/1.1"),
            (b"GET / HTTP/1.1 extra", 400,
             "malformed request line 'GET / HTTP/1.1 extra': send METHOD /path HTTP/1.1"),
            (b"GET / HTTP/x.y", 400,
             "malformed request line 'GET / HTTP/x.y': send METHOD /path HTTP/1.1"),
            (b"POST /api/session", 400,
             "malformed request line 'POST /api/session': send METHOD /path HTTP/1.1"),
            (b"GET /api/health HTTP/2.0", 505,
             "HTTP version not supported in 'GET /api/health HTTP/2.0': use HTTP/1.1"),
            (b"GET /" + b"a" * 70000 + b" HTTP/1.1", 414,
             "request line too long: more than 65536 bytes"),
        ],
    )  # fmt: skip
    def test_bad_request_lines(
        self, api: Running, request_line: bytes, status: int, error: str
    ) -> None:
        answer = raw_exchange(api.url, request_line + b"\r\nHost: x\r\n\r\n")
        code, headers, body = split_answer(answer)
        assert (code, headers["content-type"], headers["connection"]) == (
            status,
            "application/json",
            "close",
        )
        assert json.loads(body) == {"error": error}
        assert int(headers["content-length"]) == len(body)

    def test_oversized_headers_are_431_json(self, api: Running) -> None:
        long_line = b"GET /api/health HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n"
        code, headers, body = split_answer(raw_exchange(api.url, long_line))
        assert (code, headers["content-type"]) == (431, "application/json")
        assert json.loads(body) == {
            "error": "request header too large: got more than 65536 bytes when reading "
            "header line (at most 65536 bytes a line and 100 header fields)"
        }
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        code, _, body = split_answer(
            raw_exchange(api.url, b"GET /api/health HTTP/1.1\r\n" + many + b"\r\n")
        )
        assert code == 431
        assert json.loads(body)["error"].startswith("request header too large: got more than 100")

    def test_openapi_lists_them(self, api: Running) -> None:
        document = requests.get(f"{api.url}/api/openapi.json", timeout=10).json()
        unrouted = document["components"]["responses"]
        assert {name: text["description"][:3] for name, text in unrouted.items()} == {
            "MalformedRequest": "400",
            "RequestLineTooLong": "414",
            "HeaderFieldsTooLarge": "431",
            "MethodNotImplemented": "501",
            "HTTPVersionNotSupported": "505",
        }
        error = {"$ref": "#/components/schemas/Error"}
        for response in unrouted.values():
            assert response["content"]["application/json"]["schema"] == error
        for item in document["paths"].values():
            for operation in item.values():
                assert "431" in operation["responses"]
        assert "501" in document["info"]["description"]
        download = document["paths"]["/api/download/{session_id}/{name}"]["get"]
        assert {"200", "206", "304", "416"} <= set(download["responses"])


class TestRangesAndValidators:
    """Range, ETag, Last-Modified and If-None-Match on download and view (item 4)."""

    @pytest.fixture
    def blob(self, api: Running, tmp_path: Path) -> tuple[str, str, bytes]:
        """A session holding a 3 MB file; return (session, name, its bytes)."""
        data = os.urandom(3 * 1024 * 1024 + 17)
        path = tmp_path / "big.dcm"
        path.write_bytes(data)
        sid = api.session()
        assert api.upload(sid, [path]).json()["files"] == ["big.dcm"]
        return sid, "big.dcm", data

    @pytest.mark.parametrize("route", ["download", "view"])
    def test_ranges(self, api: Running, blob: tuple[str, str, bytes], route: str) -> None:
        sid, name, data = blob
        url = f"{api.url}/api/{route}/{sid}/{name}"
        size = len(data)
        whole = requests.get(url, headers=api.headers)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["Accept-Ranges"] == "bytes"
        for asked, first, last in (
            ("bytes=0-99", 0, 99),
            ("bytes=100-", 100, size - 1),
            ("bytes=-1000", size - 1000, size - 1),
            ("bytes=5-", 5, size - 1),
            (f"bytes={size - 10}-{size + 500}", size - 10, size - 1),
        ):
            r = requests.get(url, headers={**api.headers, "Range": asked})
            assert r.status_code == 206, asked
            assert r.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
            assert r.content == data[first : last + 1]
            assert int(r.headers["Content-Length"]) == last - first + 1
        for asked in (f"bytes={size}-", "bytes=10-5", "bytes=-0", "bytes=abc", "bytes="):
            r = requests.get(url, headers={**api.headers, "Range": asked})
            assert r.status_code == 416, asked
            assert r.headers["Content-Range"] == f"bytes */{size}"
            assert r.json()["error"].startswith(f"range {asked!r} cannot be served: the file")
        for ignored in ("bytes=0-1,5-6", "items=0-5"):  # a list, another unit: all of it
            r = requests.get(url, headers={**api.headers, "Range": ignored})
            assert r.status_code == 200 and r.content == data
        head = requests.head(url, headers={**api.headers, "Range": "bytes=10-19"})
        assert head.status_code == 206 and head.headers["Content-Length"] == "10"
        assert head.content == b""

    def test_validators(self, api: Running, blob: tuple[str, str, bytes]) -> None:
        sid, name, data = blob
        url = f"{api.url}/api/download/{sid}/{name}"
        first = requests.get(url, headers=api.headers)
        etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
        stat = (api.data_dir / sid / "input" / name).stat()
        assert modified == srv.email.utils.formatdate(stat.st_mtime, usegmt=True)
        for conditional in (
            {"If-None-Match": etag},
            {"If-None-Match": f'"other", W/{etag}'},
            {"If-None-Match": "*"},
            {"If-Modified-Since": modified},
        ):
            r = requests.get(url, headers={**api.headers, **conditional})
            assert r.status_code == 304, conditional
            assert r.content == b"" and r.headers["ETag"] == etag
        changed = requests.get(url, headers={**api.headers, "If-None-Match": '"other"'})
        assert changed.status_code == 200 and changed.content == data
        older = "Mon, 01 Jan 2001 00:00:00 GMT"
        assert requests.get(url, headers={**api.headers, "If-Modified-Since": older}).ok
        # If-Range: the range only while the file is the one the client has part of
        ranged = {**api.headers, "Range": "bytes=0-9"}
        assert requests.get(url, headers={**ranged, "If-Range": etag}).status_code == 206
        assert requests.get(url, headers={**ranged, "If-Range": modified}).status_code == 206
        stale = requests.get(url, headers={**ranged, "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == data
        # a file replaced under the same name gets another ETag
        (api.data_dir / sid / "input" / name).write_bytes(data[::-1])
        again = requests.get(url, headers={**api.headers, "If-None-Match": etag})
        assert again.status_code == 200 and again.content == data[::-1]
        assert again.headers["ETag"] != etag

    def test_curl_resumes_a_broken_download(
        self, api: Running, blob: tuple[str, str, bytes], tmp_path: Path
    ) -> None:
        curl = need_tool("curl")
        sid, name, data = blob
        url = f"{api.url}/api/download/{sid}/{name}"
        target = tmp_path / "resumed.dcm"
        cut = len(data) * 9 // 10
        # a transfer that breaks off at 90%: the client stops reading and hangs up
        with requests.get(url, headers=api.headers, stream=True) as r, target.open("wb") as out:
            got = 0
            for chunk in r.iter_content(65536):
                out.write(chunk[: cut - got])
                got += len(chunk)
                if got >= cut:
                    break
        assert target.stat().st_size == cut
        proc = subprocess.run(
            [curl, "-s", "-C", "-", "-o", str(target), "-w", "%{http_code}", "-H",
             f"X-API-Key: {api.key}", url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (proc.returncode, proc.stdout) == (0, "206"), proc.stderr
        assert target.read_bytes() == data


class TestRateLimitMessages:
    """A 429 names the limit and the flag that sets it (item 5)."""

    def test_429_names_limit_and_flag(self, start_server: Callable[..., Running]) -> None:
        now = [1000.0]
        api = start_server(
            rate_limit_per_min=3, session_rate_limit_per_min=1, monotonic=lambda: now[0]
        )
        assert requests.post(f"{api.url}/api/session", headers=api.headers).ok
        r = requests.post(f"{api.url}/api/session", headers=api.headers)
        assert r.status_code == 429 and r.headers["Retry-After"] == "60"
        assert r.json() == {
            "error": "rate limit exceeded: at most 1 session creations per minute per client "
            "(the server's --session-rate-limit; 0 means unlimited); retry in 60 s"
        }
        assert requests.get(f"{api.url}/api/files/x", headers=api.headers).status_code == 404
        r = requests.get(f"{api.url}/api/files/x", headers=api.headers)  # the 4th this minute
        assert r.status_code == 429 and r.headers["Retry-After"] == "20"
        assert r.json() == {
            "error": "rate limit exceeded: at most 3 API requests per minute per client "
            "(the server's --rate-limit; 0 means unlimited); retry in 20 s"
        }

    def test_health_reports_the_limits(self, start_server: Callable[..., Running]) -> None:
        api = start_server(
            max_upload_bytes=7 << 20, max_files=9, rate_limit_per_min=0,
            session_rate_limit_per_min=4, session_ttl_s=120,
        )  # fmt: skip
        assert requests.get(f"{api.url}/api/health").json() == {
            "status": "ok",
            "version": srv.__version__,
            "session_ttl_s": 120,
            "max_upload_bytes": 7 << 20,
            "max_files": 9,
            "rate_limit_per_min": 0,
            "session_rate_limit_per_min": 4,
        }

    def test_help_says_zero_is_unlimited(self) -> None:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "dicompressor.py"), "--help"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        text = " ".join(proc.stdout.split())
        assert "--rate-limit N API requests per minute per IP (30; 0: unlimited)" in text
        assert (
            "--session-rate-limit N sessions created per minute per IP (5; 0: unlimited)" in text
        )


def readme_server_command() -> str:
    """Return the README's command that runs the docs' cURL script unchanged on a local server."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## REST API and web page", 1)[1].split("\n## ", 1)[0]
    commands = [
        line
        for line in section.splitlines()
        if line.startswith("python3 dicompressor.py") and "--rate-limit 0" in line
    ]
    assert len(commands) == 1, commands
    return commands[0].strip()


class TestDocsCurlLoop:
    """The docs' "Full Examples" cURL script, one file per request, against the limits."""

    SCRIPT = DOCS_CURL_EXAMPLE

    def run_script(self, url: str, key: str, work: Path) -> str:
        script = self.SCRIPT.replace(SPEC_API, url).replace("YOUR_KEY", key)
        proc = subprocess.run(
            ["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def test_readme_command_lets_the_script_run(
        self, start_server: Callable[..., Running], tmp_path: Path
    ) -> None:
        need_tool("curl")
        need_tool("jq")
        synth.make_series(tmp_path / "dicoms", n=40)  # more than 30 requests a minute
        # the documented defaults (30 a minute; the clock stands still here): the session
        # and 29 uploads pass, the rest and the merge get 429, hidden by the script
        default = start_server(data_dir=tmp_path / "d1", monotonic=lambda: 1000.0)
        out = self.run_script(default.url, default.key, tmp_path)
        assert "Success: null" in out
        sid = out.split("Session: ", 1)[1].split()[0]
        assert len(list((tmp_path / "d1" / sid / "input").iterdir())) == 29
        # the README's command, as written but for a free port and a data folder
        command = readme_server_command()
        assert command.startswith("python3 dicompressor.py --serve ") and "YOUR_KEY" in command
        argv = command.split()[2:]
        argv[argv.index("--port") + 1] = "0"
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "dicompressor.py"), *argv,
             "--data-dir", str(tmp_path / "d2")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split(" on ", 1)[1].split(" ", 1)[0]
            out = self.run_script(url, "YOUR_KEY", tmp_path)
            assert "Success: true" in out
            sid = out.split("Session: ", 1)[1].split()[0]
            assert len(list((tmp_path / "d2" / sid / "input").iterdir())) == 40
            merged = list((tmp_path / "d2" / sid / "output").glob("*_multiframe.dcm"))
            assert [int(pydicom.dcmread(m).NumberOfFrames) for m in merged] == [40]
        finally:
            proc.terminate()
            proc.wait(10)


def make_zip(path: Path, entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    """Write a zip archive of entries {name in the archive: content}; return its path."""
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def patch_central_directory(path: Path, offset: int, fmt: str, value: int) -> None:
    """Overwrite a field of the first central directory record (and the local header's
    field at the same place for the flags and sizes), as a broken or hostile tool would."""
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    struct.pack_into(fmt, data, central + offset, value)
    local_offset = {8: 6, 24: 22}.get(offset)  # flags; uncompressed size
    if local_offset is not None:
        struct.pack_into(fmt, data, data.index(b"PK\x03\x04") + local_offset, value)
    path.write_bytes(bytes(data))


class TestZipUploads:
    """A .zip among the files is unpacked into the session's input, safely (item 6)."""

    def test_nested_names_and_a_merge(self, api: Running, tmp_path: Path) -> None:
        series = sorted(synth.make_series(tmp_path / "s", n=4))
        entries = {
            f"study/series 1/{p.name}" if i % 2 else f"study/{p.name}": p.read_bytes()
            for i, p in enumerate(series)
        }
        entries |= {
            "a/b/x.bin": b"ab",
            "a/x.bin": b"a",
            "x.bin": b"top",
            "a_b/x.bin": b"same flat name",
            "study/": b"",  # a folder entry
            "__MACOSX/study/._IMG0000.dcm": b"resource fork",
            "study/.DS_Store": b"finder",
        }
        archive = make_zip(tmp_path / "Study.ZIP", entries)
        sid = api.session()
        r = api.upload(sid, [series[0], archive])
        assert r.status_code == 200, r.text
        flat = [
            f"study_series_1_{p.name}" if i % 2 else f"study_{p.name}"
            for i, p in enumerate(series)
        ]
        assert r.json() == {
            "uploaded": 9,
            "files": [series[0].name, *flat, "a_b_x.bin", "a_x.bin", "x.bin", "a_b_x_1.bin"],
        }
        folder = api.data_dir / sid / "input"
        assert files_under(folder) == sorted(folder / n for n in r.json()["files"])
        assert (folder / "a_b_x.bin").read_bytes() == b"ab"
        assert (folder / "a_b_x_1.bin").read_bytes() == b"same flat name"
        for path, name in zip(series, flat, strict=True):
            assert (folder / name).read_bytes() == path.read_bytes()
        result = api.process(sid, {"action": "merge"}).json()
        assert result["success"], result["log"]
        [merged] = result["output_files"]
        r = requests.get(merged["download_url"], timeout=30)
        assert int(pydicom.dcmread(io.BytesIO(r.content)).NumberOfFrames) == 4

    def test_no_path_escapes(self, api: Running, tmp_path: Path) -> None:
        hostile = {
            "../../evil.dcm": b"1",
            "/abs/evil.dcm": b"2",
            "..\\..\\win.dcm": b"3",
            "a/../../b.dcm": b"4",
            "./../c.dcm": b"5",
            "CON": b"6",
            "sub/../../../../../../tmp/x.dcm": b"7",
        }
        archive = make_zip(tmp_path / "slip.zip", hostile)
        sid = api.session()
        r = api.upload(sid, [archive])
        assert r.status_code == 200, r.text
        assert r.json()["files"] == [
            "evil.dcm", "abs_evil.dcm", "win.dcm", "a_b.dcm", "c.dcm", "_CON", "sub_tmp_x.dcm",
        ]  # fmt: skip
        outside = [
            p
            for p in api.data_dir.rglob("*")
            if p.is_file() and p.parent != api.data_dir / sid / "input"
        ]
        assert sorted(p.name for p in outside) == sorted(["session.json", srv.VIEW_SECRET_FILE])
        assert not (tmp_path / "evil.dcm").exists()

    def test_unpacked_size_counts_before_writing(
        self, start_server: Callable[..., Running], tmp_path: Path
    ) -> None:
        api = start_server(max_upload_bytes=1 << 20, **RELAXED)
        sid = api.session()
        plain = tmp_path / "plain.dcm"
        plain.write_bytes(b"p" * 300_000)
        zeros = b"\0" * 400_000
        archive = make_zip(tmp_path / "two.zip", {"a.dcm": zeros, "b.dcm": zeros})
        assert archive.stat().st_size < 10_000  # well under the limit as sent
        r = api.upload(sid, [plain, archive])
        assert r.status_code == 413
        assert r.json() == {
            "error": "upload too large once unpacked: 1100000 bytes (zip archives: two.zip "
            "800000), more than the limit of 1048576 bytes (1 MB per request)"
        }
        assert files_under(api.data_dir / sid / "input") == []
        assert api.upload(sid, [archive]).json()["files"] == ["a.dcm", "b.dcm"]

    def test_zip_bomb_is_413(self, start_server: Callable[..., Running], tmp_path: Path) -> None:
        api = start_server(max_upload_bytes=8 << 20, **RELAXED)
        bomb = tmp_path / "bomb.zip"
        with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            with archive.open("zeros.dcm", "w", force_zip64=True) as entry:
                for _ in range(64):
                    entry.write(b"\0" * (1 << 20))  # 64 MB of zeros
            for i in range(20):  # the same again under other names
                archive.writestr(f"copy{i}.dcm", b"\0" * (1 << 20))
        assert bomb.stat().st_size < 1 << 20
        sid = api.session()
        r = api.upload(sid, [bomb])
        assert r.status_code == 413
        assert r.json()["error"].startswith(
            f"upload too large once unpacked: {(64 + 20) << 20} bytes (zip archives: "
        )
        assert files_under(api.data_dir / sid / "input") == []
        assert api.state.get(sid).file_count == 0

    def test_lying_sizes_are_a_broken_archive(self, api: Running, tmp_path: Path) -> None:
        liar = make_zip(tmp_path / "liar.zip", {"big.dcm": b"A" * 100_000})
        patch_central_directory(liar, 24, "<I", 10)  # says 10 bytes; unpacks to 100000
        sid = api.session()
        r = api.upload(sid, [liar])
        assert r.status_code == 400
        assert r.json()["error"].startswith("broken zip archive 'liar.zip': ")
        assert files_under(api.data_dir / sid / "input") == []

    def test_entries_count_against_max_files(
        self, start_server: Callable[..., Running], tmp_path: Path, dicoms: list[Path]
    ) -> None:
        api = start_server(max_files=5, **RELAXED)
        sid = api.session()
        assert api.upload(sid, dicoms[:2]).status_code == 200
        archive = make_zip(tmp_path / "four.zip", {f"{i}.dcm": b"x" for i in range(4)})
        r = api.upload(sid, [archive])
        assert r.status_code == 413
        assert r.json() == {
            "error": f"too many files: session {sid} holds 2 file(s) and this upload adds 4, "
            "past the limit of 5 per session"
        }
        assert len(files_under(api.data_dir / sid / "input")) == 2
        three = make_zip(tmp_path / "three.zip", {f"{i}.dcm": b"x" for i in range(3)})
        assert api.upload(sid, [three]).json()["uploaded"] == 3

    @pytest.mark.parametrize(
        ("case", "error"),
        [
            ("not a zip", "broken zip archive 'case.zip': File is not a zip file"),
            ("truncated", "broken zip archive 'case.zip': File is not a zip file"),
            ("empty", "zip archive 'case.zip' holds no files to process"),
            ("encrypted", "zip archive 'case.zip': entry 'a.dcm' is encrypted; upload an "
             "unencrypted zip"),
            ("bzip2", "zip archive 'case.zip': entry 'a.dcm' uses compression method 12; zip "
             "it again with deflate (the usual one)"),
        ],
    )  # fmt: skip
    def test_broken_archives_are_400(
        self, api: Running, tmp_path: Path, dicoms: list[Path], case: str, error: str
    ) -> None:
        path = tmp_path / "case.zip"
        if case == "not a zip":
            path.write_bytes(b"this is not a zip archive at all" * 10)
        elif case == "truncated":
            make_zip(path, {"a.dcm": os.urandom(50_000)})
            path.write_bytes(path.read_bytes()[:30_000])
        elif case == "empty":
            make_zip(path, {"folder/": b"", ".hidden": b"x"})
        elif case == "encrypted":
            make_zip(path, {"a.dcm": b"secret"}, zipfile.ZIP_STORED)
            patch_central_directory(path, 8, "<H", 1)
        else:
            make_zip(path, {"a.dcm": b"data" * 100}, zipfile.ZIP_BZIP2)
        sid = api.session()
        r = api.upload(sid, [dicoms[0], path])
        assert r.status_code == 400
        assert r.json() == {"error": error}
        assert files_under(api.data_dir / sid / "input") == []


class TestSmallThings:
    """info names files relative to the session; {} says the action is missing (item 8)."""

    def test_info_log_names_files_relative_to_the_session(
        self, api: Running, dicoms: list[Path]
    ) -> None:
        sid = api.session()
        api.upload(sid, dicoms[:2])
        log = api.process(sid, {"action": "info"}).json()["log"]
        assert str(api.data_dir) not in log and str(api.data_dir.resolve()) not in log
        files = [line.split(":", 1)[1].strip() for line in log.splitlines() if "File:" in line]
        assert files == [f"input/{p.name}" for p in sorted(dicoms[:2])]

    def test_empty_body_says_the_action_is_missing(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        api.upload(sid, dicoms[:1])
        for body in ({}, {"action": None}, {"options": {}}):
            r = api.process(sid, body)
            assert r.status_code == 400
            assert r.json()["error"] == (
                'no action given: send {"action": NAME} with one of ' + ", ".join(srv.ACTIONS)
            )
