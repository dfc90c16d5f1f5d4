"""Faults: a full disk during an output write, a server killed and restarted, slow and
broken HTTP clients. Every loop is bounded in time and count; only 127.0.0.1 is used."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests
import synth
from conftest import RELAXED, SCRIPT, Running, part_head, run_main, server_process, sha256_tree

# ---- the disk fills up during an output write ----

#: Largest file the child may write: the markers, lock and journal fit, the outputs do not.
FSIZE_LIMIT = 1500


def _small_disk() -> None:
    """preexec_fn: a write past FSIZE_LIMIT fails with EFBIG instead of killing (SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def run_full_disk(*args: str | Path) -> tuple[int, str, str]:
    """Run the CLI as if the disk filled up after FSIZE_LIMIT bytes of any one file."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        preexec_fn=_small_disk,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def full_disk_job(tmp_path: Path) -> Callable[[str], Path]:
    """Return a factory for a job folder whose outputs are all larger than FSIZE_LIMIT."""

    def make(action: str) -> Path:
        folder = tmp_path / "job"
        synth.make_series(folder, n=4, rows=32, cols=32)
        if action == "split":
            code, out, err = run_main("-j", "-F", folder, "--quiet")
            assert code == 0, out + err
            for path in folder.glob("IMG*.dcm"):
                path.unlink()
        return folder

    return make


FULL_DISK_ACTIONS = {
    "merge": ["-j"],
    "split": ["-s"],
    "compress_lossless": ["-x", "--codec", "rle"],
    "decompress": ["-u"],
    "anonymize": ["-a", "{params}"],
    "export_png": ["-I", "png", "--png-bits", "16"],
}


OUTPUT_FILE_ON_A_FULL_DISK = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import dicompressor as d
folder = Path(sys.argv[2])
output = d.OutputFile(folder / "out.dcm", replace=False)
try:
    with output as handle:
        handle.write(b"x" * 4000)  # buffered: the flush at the end fails
except OSError as exc:
    print("failed:", exc.strerror)
print("closed:", handle.closed, "left:", sorted(p.name for p in folder.iterdir()))
"""


class TestDiskFull:
    def test_output_file_closes_its_temp_when_the_flush_fails(self, tmp_path: Path) -> None:
        """A handle left open would flush again when collected and print the error."""
        proc = subprocess.run(
            [sys.executable, "-c", OUTPUT_FILE_ON_A_FULL_DISK, str(SCRIPT.parent), tmp_path],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=_small_disk,
        )
        assert proc.stdout == "failed: File too large\nclosed: True left: []\n", proc.stderr
        assert proc.stderr == ""

    @pytest.mark.parametrize("action", list(FULL_DISK_ACTIONS))
    def test_efbig_gives_clean_failure(
        self, action: str, full_disk_job: Callable[[str], Path], tmp_path: Path
    ) -> None:
        folder = full_disk_job(action)
        if action == "decompress":  # something to decompress: an RLE copy of each slice
            code, out, err = run_main("-x", "-F", folder, "--codec", "rle", "--quiet")
            assert code == 0, out + err
            for path in folder.glob("IMG*.dcm"):
                if "_" not in path.stem:
                    path.unlink()
        params = tmp_path / "params.txt"
        params.write_text("PatientName=FULL^DISK\n", encoding="utf-8")
        args = [a.replace("{params}", str(params)) for a in FULL_DISK_ACTIONS[action]]
        before = sha256_tree(folder)
        code, out, err = run_full_disk("-f", folder, *args, "--skip-if-done", "--quiet")
        assert code == 1, (code, out, err)
        assert "Traceback" not in out + err
        [line] = [x for x in out.splitlines() if x.startswith("[")]
        assert line.startswith(f"[FAILED] {folder}: "), line
        assert "File too large" in line or "No space" in line, line
        after = sha256_tree(folder)
        assert after == before, sorted(set(after) - set(before))  # no output, no marker


# ---- a server killed with SIGKILL and restarted ----


def names_sizes(listing: dict[str, list[dict[str, object]]]) -> dict[str, list[object]]:
    """A files listing without its view URLs."""
    return {k: [(e["name"], e["size"]) for e in v] for k, v in listing.items()}


class TestKilledServer:
    def test_sigkill_restart_keeps_live_sessions(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        dicoms = sorted(synth.make_series(tmp_path / "in", n=3))
        procs: list[subprocess.Popen[str]] = []

        def start(ttl: float) -> tuple[str, dict[str, str]]:
            proc, url, key = server_process(data, f", session_ttl_s={ttl}")
            procs.append(proc)
            return url, {"X-API-Key": key}

        def kill() -> None:
            procs[-1].send_signal(signal.SIGKILL)
            procs[-1].wait(10)

        try:
            url, headers = start(1.5)
            short = requests.post(f"{url}/api/session", headers=headers, timeout=30).json()
            kill()
            url, headers = start(600)
            sid = requests.post(f"{url}/api/session", headers=headers, timeout=30).json()[
                "session_id"
            ]
            files = [("files", (p.name, p.read_bytes())) for p in dicoms]
            r = requests.post(f"{url}/api/upload/{sid}", headers=headers, files=files, timeout=60)
            assert r.json()["uploaded"] == 3
            r = requests.post(
                f"{url}/api/process/{sid}", headers=headers, json={"action": "merge"}, timeout=120
            )
            assert r.json()["success"], r.text
            listing = requests.get(f"{url}/api/files/{sid}", headers=headers, timeout=30).json()
            tree = sha256_tree(data / sid)
            kill()
            time.sleep(1.6)  # the short session has expired by now
            url, headers = start(600)
            r = requests.get(f"{url}/api/files/{sid}", headers=headers, timeout=30)
            assert r.status_code == 200
            assert names_sizes(r.json()) == names_sizes(listing)  # view_url carries the new key
            [out] = listing["output"]
            r = requests.get(f"{url}/api/download/{sid}/{out['name']}", headers=headers)
            assert r.status_code == 200 and len(r.content) == out["size"]
            assert pydicom.dcmread(__import__("io").BytesIO(r.content)).NumberOfFrames == 3
            assert dict(sha256_tree(data / sid).items()) == tree
            gone = requests.get(
                f"{url}/api/files/{short['session_id']}", headers=headers, timeout=30
            )
            assert gone.status_code == 404
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)


# ---- slow and broken clients ----

TRICKLERS = 100
#: The trickle threads stop after this long whatever happens.
TRICKLE_LIMIT_S = 20.0


def _host_port(api: Running) -> tuple[str, int]:
    host, port = api.url.removeprefix("http://").split(":")
    assert host == "127.0.0.1"
    return host, int(port)


@pytest.fixture
def tricklers(api: Running) -> Iterator[list[socket.socket]]:
    """TRICKLERS connections sending a request one byte a second (bounded)."""
    addr = _host_port(api)
    request = f"POST /api/session HTTP/1.1\r\nHost: x\r\nX-API-Key: {api.key}\r\n\r\n".encode()
    socks = []
    for _ in range(TRICKLERS):
        s = socket.create_connection(addr, timeout=5)
        socks.append(s)
    stop = threading.Event()

    def trickle() -> None:
        deadline = time.monotonic() + TRICKLE_LIMIT_S
        for i in range(len(request)):
            if stop.is_set() or time.monotonic() > deadline:
                return
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(request[i : i + 1])
            stop.wait(1.0)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    yield socks
    stop.set()
    thread.join(5)
    for s in socks:
        s.close()


def normal_client(api: Running, paths: list[Path]) -> float:
    """create -> upload -> process -> download; return the seconds it took."""
    start = time.monotonic()
    with requests.Session() as http:
        http.headers.update(api.headers)
        sid = http.post(f"{api.url}/api/session", timeout=5).json()["session_id"]
        files = [("files", (p.name, p.read_bytes())) for p in paths]
        assert http.post(f"{api.url}/api/upload/{sid}", files=files, timeout=5).ok
        result = http.post(f"{api.url}/api/process/{sid}", json={"action": "merge"}, timeout=5)
        [out] = result.json()["output_files"]
        r = http.get(f"{api.url}/api/download/{sid}/{out['name']}", timeout=5)
        assert len(r.content) == out["size"]
    return time.monotonic() - start


@pytest.fixture
def api(start_server: Callable[..., Running]) -> Running:
    return start_server(max_sessions=200, request_timeout_s=3, **RELAXED)


@pytest.fixture
def dicoms(tmp_path: Path) -> list[Path]:
    return sorted(synth.make_series(tmp_path / "dicoms", n=4))


def health(api: Running) -> bool:
    return requests.get(f"{api.url}/api/health", timeout=5).json()["status"] == "ok"


class TestSlowClients:
    def test_tricklers_do_not_block_a_normal_client(
        self, api: Running, tricklers: list[socket.socket], dicoms: list[Path]
    ) -> None:
        time.sleep(1.5)  # every trickler is connected and has sent something
        assert normal_client(api, dicoms) < 5.0

    def test_trickler_cut_off_by_request_deadline(self, api: Running) -> None:
        request = f"GET /api/files/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {api.key}\r\n".encode()
        start = time.monotonic()
        closed = False
        with socket.create_connection(_host_port(api), timeout=2) as s:
            for i in range(12):  # bounded: 12 bytes, one a second
                try:
                    s.send(request[i : i + 1])
                    s.settimeout(1.0)
                    if s.recv(4096) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                    break
                else:
                    closed = True
                    break
        assert closed and time.monotonic() - start < 3 + 4

    def test_disconnect_mid_upload(self, api: Running, dicoms: list[Path]) -> None:
        sid = api.session()
        assert api.upload(sid, dicoms[:1]).ok
        listing = requests.get(f"{api.url}/api/files/{sid}", headers=api.headers).json()
        head = (
            f"POST /api/upload/{sid} HTTP/1.1\r\nHost: x\r\nX-API-Key: {api.key}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 1000000\r\n\r\n"
        ).encode()
        with socket.create_connection(_host_port(api), timeout=5) as s:
            s.sendall(head + part_head("cut.dcm") + b"C" * 200_000)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # bounded wait for the server to notice
            now = requests.get(f"{api.url}/api/files/{sid}", headers=api.headers).json()
            hidden = [p for p in (api.data_dir / sid / "input").iterdir() if p.name != "x"]
            if now == listing and len(hidden) == 1:
                break
            time.sleep(0.1)
        assert health(api)
        assert requests.get(f"{api.url}/api/files/{sid}", headers=api.headers).json() == listing
        assert sorted(p.name for p in (api.data_dir / sid / "input").iterdir()) == [dicoms[0].name]
        assert api.upload(sid, dicoms[1:]).json()["uploaded"] == len(dicoms) - 1
        assert api.process(sid, {"action": "merge"}).json()["success"]

    def test_disconnect_mid_download(self, api: Running, tmp_path: Path) -> None:
        sid = api.session()
        big = tmp_path / "big.dcm"
        big.write_bytes(os.urandom(32 << 20))
        assert api.upload(sid, [big]).ok
        listing = requests.get(f"{api.url}/api/files/{sid}", headers=api.headers).json()
        for _ in range(3):
            with socket.create_connection(_host_port(api), timeout=5) as s:
                s.sendall(
                    f"GET /api/download/{sid}/big.dcm HTTP/1.1\r\nHost: x\r\n"
                    f"X-API-Key: {api.key}\r\n\r\n".encode()
                )
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        assert health(api)
        assert requests.get(f"{api.url}/api/files/{sid}", headers=api.headers).json() == listing
        r = requests.get(f"{api.url}/api/download/{sid}/big.dcm", headers=api.headers)
        assert r.content == big.read_bytes()
