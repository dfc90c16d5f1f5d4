#!/usr/bin/env python3
"""Benchmark the HTTP API (``--serve``): upload a series in batches and merge it.

Usage::

    python3 bench/api.py                   # 400 slices of 512x512 (about 210 MB)
    python3 bench/api.py --slices 100      # a quicker run
    python3 bench/api.py --batch 50 --keep

A synthetic CT series is generated (``merge.generate_series``, not timed). A DicomPressor
server runs in a subprocess on 127.0.0.1 (port 0, a fresh data folder); the series is
uploaded in multipart batches of ``--batch`` files (streamed from disk), then merged with
``POST /api/process``, then the result is downloaded. Upload MB/s, merge and total time
are reported. When Orthanc is installed (Debian ``orthanc``: the ``Orthanc`` binary), the
same files are sent to it with ``POST /instances`` (one file per request, its REST API's
way) in the same run, and its upload MB/s is shown beside ours; target: ours >= Orthanc's.
Results go to ``bench/results/api-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import merge as mb  # noqa: E402

#: How the server is started; becomes ``dicompressor.py --serve ...`` once wired in main.
SERVER_CODE = (
    "import sys; from pathlib import Path; from dicompressor import *; "
    "sys.exit(run_server(ServerConfig(port=0, data_dir=Path(sys.argv[1]), api_keys=('bench',), "
    "rate_limit_per_min=0, session_rate_limit_per_min=0, max_files=100000)))"
)


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Start the DicomPressor API in a subprocess; return it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_CODE, str(data_dir)],
        cwd=mb.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if " on " not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split(" on ", 1)[1].split(" ", 1)[0]


def bench_dicompressor(files: list[Path], batch: int, work: Path) -> dict[str, Any]:
    """Upload in batches, merge and download through the API; return the timings."""
    proc, url = start_server(work / "data")
    headers = {"X-API-Key": "bench"}
    total_bytes = sum(p.stat().st_size for p in files)
    try:
        with requests.Session() as http:
            http.headers.update(headers)
            started = time.perf_counter()
            sid = http.post(f"{url}/api/session").json()["session_id"]
            for i in range(0, len(files), batch):
                handles = [p.open("rb") for p in files[i : i + batch]]
                try:
                    form = [("files", (h.name.rsplit("/", 1)[-1], h)) for h in handles]
                    r = http.post(f"{url}/api/upload/{sid}", files=form)
                    r.raise_for_status()
                finally:
                    for h in handles:
                        h.close()
            uploaded = time.perf_counter()
            result = http.post(f"{url}/api/process/{sid}", json={"action": "merge"}).json()
            merged = time.perf_counter()
            if not result.get("success"):
                raise SystemExit(f"merge failed: {result}")
            [output] = result["output_files"]
            with http.get(f"{url}/api/download/{sid}/{output['name']}", stream=True) as r:
                size = sum(len(chunk) for chunk in r.iter_content(1 << 20))
            done = time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(10)
    upload_s = uploaded - started
    return {
        "name": "dicompressor",
        "files": len(files),
        "bytes": total_bytes,
        "upload_s": round(upload_s, 3),
        "upload_mb_s": round(total_bytes / mb.MB / upload_s, 1),
        "merge_s": round(merged - uploaded, 3),
        "download_s": round(done - merged, 3),
        "total_s": round(done - started, 3),
        "output_bytes": size,
    }


def free_port() -> int:
    """Return a TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_orthanc(files: list[Path], work: Path) -> dict[str, Any] | None:
    """POST /instances every file to a fresh Orthanc; None when Orthanc is not installed."""
    binary = shutil.which("Orthanc")
    if binary is None:
        return None
    port = free_port()
    config = work / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(work / "orthanc-db"),
                "IndexDirectory": str(work / "orthanc-db"),
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
    try:
        for _ in range(100):
            try:
                requests.get(f"{url}/system", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                time.sleep(0.1)
        else:
            return {"name": "orthanc", "error": "did not start"}
        total_bytes = sum(p.stat().st_size for p in files)
        with requests.Session() as http:
            started = time.perf_counter()
            for path in files:
                http.post(f"{url}/instances", data=path.read_bytes()).raise_for_status()
            upload_s = time.perf_counter() - started
        return {
            "name": "orthanc",
            "files": len(files),
            "bytes": total_bytes,
            "upload_s": round(upload_s, 3),
            "upload_mb_s": round(total_bytes / mb.MB / upload_s, 1),
        }
    finally:
        proc.terminate()
        proc.wait(20)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=400, help="slices (default 400)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument("--batch", type=int, default=50, help="files per upload (default 50)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when upload throughput is at least Orthanc's."""
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        files = sorted(mb.generate_series(work / "series", args.slices, args.size))
        ours = bench_dicompressor(files, args.batch, work)
        theirs = bench_orthanc(files, work)
    finally:
        mb.remove_work(work, args.keep)
    size_mb = ours["bytes"] / mb.MB
    print(f"{args.slices} slices, {size_mb:.1f} MB, batches of {args.batch}")
    print(
        f"dicompressor: upload {ours['upload_s']:.2f} s ({ours['upload_mb_s']:.1f} MB/s), "
        f"merge {ours['merge_s']:.2f} s, download {ours['download_s']:.2f} s, "
        f"total {ours['total_s']:.2f} s"
    )
    ok = True
    if theirs is None:
        print("orthanc: not installed (apt-get install orthanc), comparison skipped")
    elif "error" in theirs:
        print(f"orthanc: {theirs['error']}")
    else:
        ok = ours["upload_mb_s"] >= theirs["upload_mb_s"]
        verdict = "PASS" if ok else "FAIL"
        print(
            f"orthanc:      upload {theirs['upload_s']:.2f} s ({theirs['upload_mb_s']:.1f} MB/s)"
            f"  -> {verdict} (target: dicompressor >= orthanc)"
        )
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
            **mb.git_state(),
        },
        "results": [r for r in (ours, theirs) if r is not None],
        "target_met": ok if theirs is not None and "error" not in theirs else None,
    }
    target.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {target.relative_to(mb.REPO)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
