#!/usr/bin/env python3
"""Benchmark the HTTP API (``--serve``): latency on a kept-alive connection, four upload
modes, merge and download, next to Orthanc when it is installed.

Usage::

    python3 bench/api.py                   # 400 slices of 512x512 (about 210 MB), 1 run
    python3 bench/api.py --runs 3          # three runs, medians reported
    python3 bench/api.py --slices 100      # a quicker run

A synthetic CT series is generated (``merge.generate_series``, not timed). A DicomPressor
server runs in a subprocess on 127.0.0.1 (port 0, a fresh data folder, rate limits off).
Measured, each into a fresh session:

* latency: the median time of ``GET /api/health`` on one kept-alive connection (200
  requests after 20 to warm up), with ``http.client``;
* upload MB/s of the whole series in four modes, with ``requests`` as the documentation's
  examples use it: one file per request over one connection (``requests.Session``, the
  Python and PowerShell examples), one file per request on a new connection each (the
  cURL loop), 20 files per request (the Python example) and 50 per request (the fast
  Bash example);
* the merge of the 50-per-request session (``POST /api/process``) and its download.

When Orthanc is installed (Debian ``orthanc``: the ``Orthanc`` binary) it is started on
127.0.0.1 with a configuration written to the work folder (no authentication, no DICOM
port, no plugins), fresh for each mode, and measured the same way in the same run:
``GET /system`` for latency, ``POST /instances`` one file per request (its REST API's way)
over one connection and on new connections. Orthanc takes one DICOM file per request, so
the 20 and 50 modes have no Orthanc column. Targets (PASS/FAIL, exit 1 on a FAIL):

* our latency on a kept-alive connection <= 2 ms;
* one file per request over one connection >= 1.5x Orthanc's MB/s in that mode;
* 50 files per request >= 2x Orthanc's MB/s with one file per request over one
  connection (its fastest way).

With ``--runs N`` everything is measured N times and the medians are shown (each run's
numbers are in the JSON). Results go to ``bench/results/api-<timestamp>.json``. The
machine should be idle: other work on the CPUs lowers every number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import merge as mb  # noqa: E402

KEY = "bench"
LATENCY_TARGET_MS = 2.0
PER_FILE_TARGET = 1.5
BATCH_TARGET = 2.0
WARMUP_REQUESTS = 20
LATENCY_REQUESTS = 200
#: The upload modes: name, files per request, whether each request opens a new connection.
MODES = (
    ("1/request, one connection", 1, False),
    ("1/request, new connections", 1, True),
    ("20/request", 20, False),
    ("50/request", 50, False),
)


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``dicompressor.py --serve`` in a subprocess; return it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(mb.DEFAULT_SCRIPT), "--serve", "--port", "0", "--api-key", KEY,
         "--rate-limit", "0", "--session-rate-limit", "0", "--max-files", "100000",
         "--max-sessions", "1000", "--data-dir", str(data_dir)],
        cwd=mb.REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if " on " not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split(" on ", 1)[1].split(" ", 1)[0]


def latency_ms(url: str, path: str) -> float:
    """Return the median milliseconds of GET path on one kept-alive connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    times = []
    try:
        for i in range(WARMUP_REQUESTS + LATENCY_REQUESTS):
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise SystemExit(f"GET {url}{path}: {response.status}")
            if i >= WARMUP_REQUESTS:
                times.append(elapsed)
    finally:
        conn.close()
    return statistics.median(times) * 1000


def timed_upload(
    files: list[Path], per_request: int, new_connections: bool, send: Callable[..., None]
) -> float:
    """Send every file, per_request a request; return the MB/s."""
    total = sum(p.stat().st_size for p in files)
    with requests.Session() as http:
        started = time.perf_counter()
        for i in range(0, len(files), per_request):
            batch = files[i : i + per_request]
            if new_connections:
                with requests.Session() as fresh:
                    send(fresh, batch)
            else:
                send(http, batch)
        elapsed = time.perf_counter() - started
    return total / mb.MB / elapsed


def bench_dicompressor(files: list[Path], work: Path) -> dict[str, Any]:
    """Latency, the four upload modes, merge and download through our API."""
    proc, url = start_server(work / "data")
    headers = {"X-API-Key": KEY}
    result: dict[str, Any] = {"name": "dicompressor"}
    try:
        result["latency_ms"] = round(latency_ms(url, "/api/health"), 3)
        sid = ""
        for mode, per_request, new_connections in MODES:
            sid = requests.post(f"{url}/api/session", headers=headers).json()["session_id"]

            def send(http: requests.Session, batch: list[Path], sid: str = sid) -> None:
                form = [("files", (p.name, p.read_bytes())) for p in batch]
                r = http.post(f"{url}/api/upload/{sid}", headers=headers, files=form)
                if r.status_code != 200 or r.json()["uploaded"] != len(batch):
                    raise SystemExit(f"upload failed: {r.status_code} {r.text}")

            result[mode] = round(timed_upload(files, per_request, new_connections, send), 1)
        with requests.Session() as http:
            http.headers.update(headers)
            started = time.perf_counter()
            answer = http.post(f"{url}/api/process/{sid}", json={"action": "merge"}).json()
            merged = time.perf_counter()
            if not answer.get("success"):
                raise SystemExit(f"merge failed: {answer}")
            [output] = answer["output_files"]
            with http.get(f"{url}/api/download/{sid}/{output['name']}", stream=True) as r:
                size = sum(len(chunk) for chunk in r.iter_content(1 << 20))
            done = time.perf_counter()
        result["merge_s"] = round(merged - started, 3)
        result["download_mb_s"] = round(size / mb.MB / (done - merged), 1)
    finally:
        proc.terminate()
        proc.wait(10)
    return result


def free_port() -> int:
    """Return a TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_orthanc(binary: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a fresh Orthanc storing into folder; return it and its base URL."""
    port = free_port()
    folder.mkdir(parents=True)
    config = folder / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(folder / "db"),
                "IndexDirectory": str(folder / "db"),
                "HttpPort": port,
                "DicomServerEnabled": False,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "Plugins": [],
            }
        )
    )
    proc = subprocess.Popen(
        [binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(f"{url}/system", timeout=1).raise_for_status()
            return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("Orthanc did not start")


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a server process and reap it."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def bench_orthanc(files: list[Path], work: Path) -> dict[str, Any] | None:
    """Latency and POST /instances one file per request; None when not installed."""
    binary = shutil.which("Orthanc")
    if binary is None:
        return None
    result: dict[str, Any] = {"name": "orthanc"}
    for index, (mode, per_request, new_connections) in enumerate(MODES):
        if per_request != 1:
            continue
        proc, url = start_orthanc(binary, work / f"orthanc-{index}")
        try:
            if "latency_ms" not in result:
                result["latency_ms"] = round(latency_ms(url, "/system"), 3)

            def send(http: requests.Session, batch: list[Path], url: str = url) -> None:
                for path in batch:
                    http.post(f"{url}/instances", data=path.read_bytes()).raise_for_status()

            result[mode] = round(timed_upload(files, per_request, new_connections, send), 1)
        finally:
            stop(proc)
    return result


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the median of every number over the runs."""
    out: dict[str, Any] = {"name": runs[0]["name"]}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            out[key] = round(statistics.median(r[key] for r in runs), 3)
    return out


def verdicts(ours: dict[str, Any], theirs: dict[str, Any] | None) -> list[tuple[str, bool]]:
    """Return the targets with whether each is met."""
    checks = [
        (
            f"latency {ours['latency_ms']:.2f} ms <= {LATENCY_TARGET_MS:g} ms",
            ours["latency_ms"] <= LATENCY_TARGET_MS,
        )
    ]
    if theirs is not None:
        one, fifty = MODES[0][0], MODES[3][0]
        anchor = theirs[one]
        checks.append(
            (
                f"{one}: {ours[one] / anchor:.2f}x Orthanc's >= {PER_FILE_TARGET:g}x",
                ours[one] >= PER_FILE_TARGET * anchor,
            )
        )
        checks.append(
            (
                f"{fifty}: {ours[fifty] / anchor:.2f}x Orthanc's one file per request over "
                f"one connection >= {BATCH_TARGET:g}x",
                ours[fifty] >= BATCH_TARGET * anchor,
            )
        )
    return checks


def table(ours: dict[str, Any], theirs: dict[str, Any] | None) -> list[str]:
    """Return the side-by-side table of the (median) numbers."""

    def cell(result: dict[str, Any] | None, key: str, unit: str) -> str:
        if result is None:
            return "not installed"
        value = result.get(key)
        return "n/a" if value is None else f"{value:g} {unit}"

    rows = [("request on a kept-alive connection", "latency_ms", "ms")]
    rows += [(f"upload, {mode}", mode, "MB/s") for mode, _, _ in MODES]
    lines = [
        f"| {'measure':<44} | {'dicompressor':>14} | {'orthanc':>14} |",
        f"|{'-' * 46}|{'-' * 16}|{'-' * 16}|",
    ]
    for label, key, unit in rows:
        lines.append(
            f"| {label:<44} | {cell(ours, key, unit):>14} | {cell(theirs, key, unit):>14} |"
        )
    lines.append(f"merge {ours['merge_s']:g} s, download {ours['download_mb_s']:g} MB/s")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=400, help="slices (default 400)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument("--runs", type=int, default=1, help="runs; medians shown (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every target is met."""
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    ours_runs: list[dict[str, Any]] = []
    theirs_runs: list[dict[str, Any]] = []
    try:
        files = sorted(mb.generate_series(work / "series", args.slices, args.size))
        total_mb = sum(p.stat().st_size for p in files) / mb.MB
        for run in range(args.runs):
            run_dir = work / f"run{run}"
            ours_runs.append(bench_dicompressor(files, run_dir))
            theirs = bench_orthanc(files, run_dir)
            if theirs is not None:
                theirs_runs.append(theirs)
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"run {run + 1}: dicompressor {ours_runs[-1]}")
            if theirs is not None:
                print(f"run {run + 1}: orthanc      {theirs}")
    finally:
        mb.remove_work(work, args.keep)
    ours = medians(ours_runs)
    theirs_median = medians(theirs_runs) if theirs_runs else None
    print(f"\n{args.slices} slices of {args.size}x{args.size}, {total_mb:.1f} MB; ", end="")
    print(f"medians of {args.runs} run(s)" if args.runs > 1 else "one run")
    for line in table(ours, theirs_median):
        print(line)
    if theirs_median is None:
        print("orthanc: not installed (apt-get install orthanc), comparison skipped")
    checks = verdicts(ours, theirs_median)
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    mb.RESULTS_DIR.mkdir(exist_ok=True)
    now = dt.datetime.now()
    target = mb.RESULTS_DIR / f"api-{now.strftime('%Y%m%d-%H%M%S')}.json"
    record = {
        "benchmark": "api",
        "timestamp": now.astimezone().isoformat(timespec="seconds"),
        "params": vars(args),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            **mb.git_state(),
        },
        "runs": {"dicompressor": ours_runs, "orthanc": theirs_runs},
        "medians": [r for r in (ours, theirs_median) if r is not None],
        "targets": [{"target": text, "met": ok} for text, ok in checks],
    }
    target.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {target.relative_to(mb.REPO)}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
