"""The server's face: OpenAPI description, VolView links, CORS, the web page in a browser."""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pydicom
import pytest
import requests
import synth
from conftest import KEY, RELAXED, Running, need_tool

import dicompressor as srv

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Running]:
    """A server with relaxed limits and a custom VolView base."""
    config = srv.ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "data",
        volview_url="https://viewer.example/volview",
        cors_origin="https://viewer.example",
        **RELAXED,
    )
    server = srv.make_server(config, [KEY])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Running(server, KEY)
    server.close()


def secret_of(server: Running) -> bytes:
    """Return the view-token secret the server keeps in its data folder."""
    return (server.data_dir / srv.VIEW_SECRET_FILE).read_bytes().strip()


class TestOpenApi:
    """GET /api/openapi.json: a valid OpenAPI 3.1 document matching the routes."""

    def test_valid_openapi_31(self, web: Running) -> None:
        from openapi_spec_validator import validate

        r = requests.get(f"{web.url}/api/openapi.json", timeout=10)
        assert r.status_code == 200
        document = r.json()
        assert document["openapi"].startswith("3.1")
        validate(document)  # raises on an invalid document

    def test_both_ways_to_pass_the_key(self, web: Running) -> None:
        document = requests.get(f"{web.url}/api/openapi.json", timeout=10).json()
        schemes = document["components"]["securitySchemes"]
        assert {(s["in"], s["name"]) for s in schemes.values()} == {
            ("header", "X-API-Key"),
            ("query", "api_key"),
            ("query", "token"),  # a view token: download and view of one file only
        }
        view = document["paths"]["/api/view/{session_id}/{name}"]["get"]
        assert {"ViewToken": []} in view["security"]
        files = document["paths"]["/api/files/{session_id}"]["get"]
        assert {"ViewToken": []} not in files["security"]
        process = document["paths"]["/api/process/{session_id}"]["post"]
        assert set(process["responses"]) >= {"200", "400", "401", "404", "504"}
        schema = document["components"]["schemas"]["ProcessRequest"]
        assert set(schema["properties"]["action"]["enum"]) == set(srv.ACTIONS)

    def test_routes_and_paths_agree(self, web: Running) -> None:
        document = requests.get(f"{web.url}/api/openapi.json", timeout=10).json()
        documented = {
            (method.upper(), path)
            for path, item in document["paths"].items()
            for method in item
            if method in ("get", "post", "delete", "options", "put", "head")
        }
        served = set()
        for route in srv.ROUTES:
            path = route.pattern.pattern.replace("([^/]+)", "{session_id}")
            path = path.replace("(.+)", "{name}").replace("/?", "/").replace("\\", "")
            served.add((route.method, path))
        assert served == documented
        # every documented path is answered (no 404 "no such endpoint")
        for method, path in documented:
            url = web.url + path.replace("{session_id}", "x").replace("{name}", "y.dcm")
            r = requests.request(
                method, url, headers=web.headers, timeout=10, allow_redirects=False
            )
            assert "no such endpoint" not in r.text, (method, path, r.status_code)


class TestVolView:
    """view_url links, CORS on /api/view, and the /volview/ redirect."""

    def test_view_url_in_process_and_files(self, web: Running, tmp_path: Path) -> None:
        paths = synth.make_series(tmp_path / "s", n=4)
        sid = web.session()
        assert web.upload(sid, paths).status_code == 200
        result = web.process(sid, {"action": "merge"}).json()
        entry = result["output_files"][0]
        link = urlsplit(entry["view_url"])
        assert f"{link.scheme}://{link.netloc}{link.path}" == "https://viewer.example/volview/"
        view = parse_qs(link.query)["urls"][0]
        token = srv.view_token(secret_of(web), sid, entry["name"])
        assert view == f"{web.url}/api/view/{sid}/{entry['name']}?token={token}"
        assert "%2Fapi%2Fview%2F" in entry["view_url"]  # the view URL is encoded whole
        assert KEY not in entry["view_url"] and "api_key" not in entry["view_url"]
        assert (
            entry["download_url"] == f"{web.url}/api/download/{sid}/{entry['name']}?token={token}"
        )
        # the link VolView would follow works without headers, inline, with CORS
        r = requests.get(view, timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/dicom"
        assert r.headers["Content-Disposition"].startswith("inline")
        assert r.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
        listing = requests.get(f"{web.url}/api/files/{sid}", headers=web.headers, timeout=10)
        assert listing.json()["output"][0]["view_url"] == entry["view_url"]

    def test_preflight(self, web: Running) -> None:
        r = requests.options(
            f"{web.url}/api/view/abc/x.dcm",
            headers={
                "Origin": "https://viewer.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-api-key",
            },
            timeout=10,
        )
        assert r.status_code == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
        allowed = r.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "x-api-key" in allowed
        assert "range" in allowed and "if-none-match" in allowed  # both honoured

    def test_volview_redirect_keeps_query(self, web: Running) -> None:
        r = requests.get(
            f"{web.url}/volview/?urls=https%3A%2F%2Fa%2Fb", timeout=10, allow_redirects=False
        )
        assert r.status_code == 302
        assert r.headers["Location"] == "https://viewer.example/volview/?urls=https%3A%2F%2Fa%2Fb"

    def test_public_url(self, tmp_path: Path) -> None:
        config = srv.ServerConfig(
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path / "d",
            public_url="https://dicom.example.org/",
            **RELAXED,
        )
        server = srv.make_server(config, [KEY])
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            api = Running(server, KEY)
            sid = api.session()
            api.upload(sid, synth.make_series(tmp_path / "s", n=3))
            entry = api.process(sid, {"action": "merge"}).json()["output_files"][0]
            view = unquote(entry["view_url"].split("?urls=", 1)[1])
            assert view.startswith(f"https://dicom.example.org/api/view/{sid}/")
            assert entry["view_url"].startswith(srv.DEFAULT_VOLVIEW_URL + "/?urls=")
        finally:
            server.close()


def merged_entry(server: Running, tmp_path: Path, n: int = 3) -> tuple[str, dict[str, Any]]:
    """Upload a series, merge it and return the session and its output entry."""
    sid = server.session()
    assert server.upload(sid, synth.make_series(tmp_path / f"s{sid[:8]}", n=n)).ok
    [entry] = server.process(sid, {"action": "merge"}).json()["output_files"]
    return sid, entry


def inner_url(view_url: str) -> str:
    """Return the file URL a VolView link carries."""
    return parse_qs(urlsplit(view_url).query)["urls"][0]


class TestViewTokens:
    """view_url and download_url carry a token for one file, never the key (item 3)."""

    def test_token_opens_that_file_only(self, web: Running, tmp_path: Path) -> None:
        sid, entry = merged_entry(web, tmp_path)
        other_sid, other = merged_entry(web, tmp_path, n=2)
        view, download = inner_url(entry["view_url"]), entry["download_url"]
        token = parse_qs(urlsplit(view).query)["token"][0]
        assert len(token) == srv.VIEW_TOKEN_HEX and KEY not in view
        first = requests.get(view, timeout=10)
        assert first.status_code == 200 and first.headers["Content-Type"] == "application/dicom"
        got = requests.get(download, timeout=10)
        assert got.status_code == 200 and got.content == first.content
        assert got.headers["Content-Disposition"].startswith("attachment;")
        altered = token[:-1] + ("1" if token[-1] == "0" else "0")  # one hex digit changed
        # the same token on another file, another session or another endpoint: 401
        inputs = requests.get(f"{web.url}/api/files/{sid}", headers=web.headers).json()["input"]
        refused = [
            f"{web.url}/api/view/{sid}/{inputs[0]['name']}?token={token}",
            f"{web.url}/api/view/{other_sid}/{other['name']}?token={token}",
            f"{web.url}/api/download/{other_sid}/{entry['name']}?token={token}",
            f"{web.url}/api/files/{sid}?token={token}",
            f"{web.url}/api/view/{sid}/{entry['name']}?token={altered}",
            f"{web.url}/api/view/{sid}/{entry['name']}?token=",
            f"{web.url}/api/view/{sid}/{entry['name']}",
        ]
        for url in refused:
            r = requests.get(url, timeout=10)
            assert r.status_code == 401, url
            assert "error" in r.json()
        r = requests.get(refused[0], timeout=10)
        assert r.json()["error"].startswith("invalid view token: it opens only the file it was")
        r = requests.get(refused[-1], timeout=10)
        assert r.json()["error"] == (
            "invalid or missing API key: send it in the X-API-Key header or as ?api_key=, or "
            "open the file's view_url (it carries a token)"
        )
        # a token lets nothing else happen: no upload, no process, no delete
        for method, path in (
            ("POST", f"/api/process/{sid}"),
            ("DELETE", f"/api/session/{sid}"),
            ("POST", f"/api/upload/{sid}"),
        ):
            r = requests.request(method, f"{web.url}{path}?token={token}", timeout=10)
            assert r.status_code == 401, path
        # the key still opens the view, as the spec's ?api_key= form
        keyed = f"{web.url}/api/view/{sid}/{entry['name']}?api_key={KEY}"
        assert requests.get(keyed, timeout=10).status_code == 200

    def test_errors_of_view_carry_cors(self, web: Running, tmp_path: Path) -> None:
        sid, entry = merged_entry(web, tmp_path)
        view = inner_url(entry["view_url"])
        origin = "https://viewer.example"
        for url, status in (
            (view.replace("token=", "token=0"), 401),
            (f"{web.url}/api/view/{sid}/{entry['name']}", 401),
            (f"{web.url}/api/view/{sid}/missing.dcm?api_key={KEY}", 404),
            (f"{web.url}/api/view/{'0' * 8}-0000-4000-8000-{'0' * 12}/x.dcm?api_key={KEY}", 404),
        ):
            r = requests.get(url, headers={"Origin": origin}, timeout=10)
            assert r.status_code == status, url
            assert r.headers["Access-Control-Allow-Origin"] == origin
            assert "Content-Range" in r.headers["Access-Control-Expose-Headers"]
            assert r.json()["error"]
        requests.delete(f"{web.url}/api/session/{sid}", headers=web.headers, timeout=10)
        gone = requests.get(view, headers={"Origin": origin}, timeout=10)
        assert gone.status_code == 404 and gone.json()["error"].startswith("no session")
        assert gone.headers["Access-Control-Allow-Origin"] == origin
        download = requests.get(f"{web.url}/api/download/{sid}/x.dcm", timeout=10)
        assert "Access-Control-Allow-Origin" not in download.headers  # not a viewer's URL

    def test_tokens_survive_a_restart(self, tmp_path: Path) -> None:
        config = srv.ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "d", **RELAXED)

        def start() -> Running:
            server = srv.make_server(config, [KEY])
            threading.Thread(target=server.serve_forever, daemon=True).start()
            return Running(server, KEY)

        first = start()
        try:
            sid, entry = merged_entry(first, tmp_path)
        finally:
            first.server.close()
        secret = tmp_path / "d" / srv.VIEW_SECRET_FILE
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        again = start()
        try:
            links = requests.get(f"{again.url}/api/files/{sid}", headers=again.headers).json()
            view = inner_url(entry["view_url"]).replace(first.url, again.url)
            assert inner_url(links["output"][0]["view_url"]) == view
            assert requests.get(view, timeout=10).status_code == 200
        finally:
            again.server.close()
        secret.unlink()  # a new secret: every earlier link stops working
        third = start()
        try:
            assert requests.get(view.replace(again.url, third.url), timeout=10).status_code == 401
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        finally:
            third.server.close()

    def test_volview_link_without_token_gets_a_page(self, web: Running, tmp_path: Path) -> None:
        sid, entry = merged_entry(web, tmp_path)
        bare = f"{web.url}/api/view/{sid}/{entry['name']}"
        for query in (f"urls={quote(bare, safe='')}", f"urls={bare}", f"urls=[{bare}]"):
            r = requests.get(f"{web.url}/volview/?{query}", timeout=10, allow_redirects=False)
            assert r.status_code == 400, query
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "view_url" in r.text and "neither a view" in r.text
            assert f"<code>{bare}</code>" in r.text
        hostile = f"{web.url}/api/view/{sid}/<script>x</script>.dcm"
        r = requests.get(f"{web.url}/volview/?urls={quote(hostile, safe='')}", timeout=10)
        assert "<script>" not in r.text and "&lt;script&gt;" in r.text
        # with a token or a key, or a file elsewhere: on to VolView
        for inner in (inner_url(entry["view_url"]), f"{bare}?api_key={KEY}", "https://a/b.dcm"):
            r = requests.get(
                f"{web.url}/volview/?urls={quote(inner, safe='')}",
                timeout=10,
                allow_redirects=False,
            )
            assert r.status_code == 302, inner
            assert r.headers["Location"].startswith("https://viewer.example/volview/?urls=")


class TestPage:
    """GET / serves the page: self-contained, all twelve actions, API only."""

    def test_page(self, web: Running) -> None:
        r = requests.get(web.url + "/", timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/html")
        page = r.text
        assert "/api/actions" in page  # the form comes from the server's registry
        assert "download_url" in page and "view_url" in page and "api_key" not in page
        for action in srv.ACTIONS:  # no copy of the registry in the page
            assert f"{action}:" not in page and f'"{action}"' not in page, action
        assert "localStorage" in page and "webkitdirectory" in page and "dragover" in page
        assert "<script src" not in page and "<link " not in page  # no external assets
        for used in ("/api/session", "/api/upload/", "/api/process/", "/api/health"):
            assert used in page


@pytest.fixture
def chromium() -> tuple[str, str]:
    """The (browser, driver) paths of Chromium and ChromeDriver (see need_tool)."""
    return need_tool("chromium", "chromium-browser"), need_tool("chromedriver")


def chrome(tmp_path: Path, chromium: tuple[str, str]) -> Any:
    """Start headless Chromium through ChromeDriver (a fresh profile in tmp_path)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_window_size(1100, 1300)
    return driver


def test_browser_merge_and_download(
    web: Running, tmp_path: Path, chromium: tuple[str, str]
) -> None:
    """Open the page, enter the key, upload a series, merge, download the result."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    paths = synth.make_series(tmp_path / "series", n=6)
    driver = chrome(tmp_path, chromium)
    try:
        driver.get(web.url + "/")
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.ID, "save-key").click()
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
        wait = WebDriverWait(driver, 60)
        wait.until(ec.text_to_be_present_in_element((By.ID, "upload-state"), "Uploaded 6"))
        action = Select(driver.find_element(By.ID, "action"))
        wait.until(lambda d: len(action.options) == len(srv.ACTIONS))
        assert [o.get_attribute("value") for o in action.options] == list(srv.ACTIONS)
        action.select_by_value("compress_lossy")  # the form follows the registry
        ratio = driver.find_element(By.CSS_SELECTOR, "[data-option=ratio]")
        assert (ratio.get_attribute("type"), ratio.get_attribute("min")) == ("number", "1")
        action.select_by_value("anonymize")
        assert driver.find_element(By.ID, "params-box").is_displayed()
        for name in ("modify", "anonymize"):  # each action's own help and example
            action.select_by_value(name)
            spec = srv.ACTIONS[name]
            assert driver.find_element(By.ID, "params-help").text == spec.params_help
            placeholder = driver.find_element(By.ID, "params").get_attribute("placeholder")
            assert placeholder == spec.params_example
        profile = Select(driver.find_element(By.CSS_SELECTOR, "[data-option=profile]"))
        assert [o.text for o in profile.options] == ["basic", "none"]
        assert profile.first_selected_option.text == "basic"
        action.select_by_value("merge")  # its one option: --split-at-gaps (issue 17)
        shown = driver.find_elements(By.CSS_SELECTOR, "[data-option]")
        assert [e.get_attribute("data-option") for e in shown] == ["split_at_gaps"]
        assert shown[0].get_attribute("type") == "checkbox" and not shown[0].is_selected()
        driver.find_element(By.ID, "run").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results a.download")))
        link = driver.find_element(By.CSS_SELECTOR, "#results a.download")
        href = link.get_attribute("href")
        assert driver.find_element(By.ID, "expiry").text.startswith("Session ")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web-page-merge.png"))
        log = driver.find_element(By.ID, "log").text
    finally:
        driver.quit()
    assert "Merged 6 slices" in log
    assert KEY not in href and "?token=" in href
    r = requests.get(href, timeout=30)  # the page's own link: a view token, not the key
    assert r.status_code == 200
    merged = tmp_path / "merged.dcm"
    merged.write_bytes(r.content)
    ds = pydicom.dcmread(merged)
    assert int(ds.NumberOfFrames) == 6
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"  # Legacy Converted Enhanced CT
    assert (ARTIFACTS / "web-page-merge.png").stat().st_size > 1000


def test_browser_waits_out_429_keeps_under_limits_new_session(
    tmp_path: Path, chromium: tuple[str, str]
) -> None:
    """The page: 429 waited out mid-upload, batches under the server's limits, the
    session's remaining time, "New session", and a zip upload (items 5, 6, 7)."""
    import re
    import zipfile

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    paths = sorted(synth.make_series(tmp_path / "series", n=6))
    largest = max(p.stat().st_size for p in paths)
    now = [5000.0]  # the rate buckets' clock: it moves only when this test says so
    config = srv.ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "data",
        rate_limit_per_min=60,
        session_rate_limit_per_min=100,
        max_upload_bytes=2 * largest + 3 * 1024 + 100,  # two files a request, not three
        max_files=8,
        monotonic=lambda: now[0],
    )
    server = srv.make_server(config, [KEY])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    web = Running(server, KEY)
    too_big = web.session()  # what the page must not send: all six in one request
    assert web.upload(too_big, paths).status_code == 413
    while requests.get(f"{web.url}/api/files/x", headers=web.headers).status_code != 429:
        pass  # the bucket is empty
    now[0] += 2  # two requests' worth: the session and the first batch
    driver = chrome(tmp_path, chromium)
    wait = WebDriverWait(driver, 60)
    text = lambda element: driver.find_element(By.ID, element).text  # noqa: E731
    try:
        driver.get(web.url + "/")
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
        wait.until(ec.text_to_be_present_in_element((By.ID, "log"), "[WAIT] rate limit"))
        assert "Uploaded 2 file(s) from 2 of 6 chosen (3 request(s))" in text("upload-state")
        assert "(the server's --rate-limit; 0 means unlimited)" in text("log")
        assert text("wait-state").startswith("Rate limit reached: going on in ")
        now[0] += 60  # the limit lets requests through again: the page goes on by itself
        wait.until(ec.text_to_be_present_in_element((By.ID, "upload-state"), "Uploaded 6"))
        assert text("upload-state") == "Uploaded 6 file(s) from 6 of 6 chosen (3 request(s))."
        assert text("wait-state") == ""
        first = re.fullmatch(
            r"Session ([0-9a-f-]{36}) expires in (\d+):(\d\d) \(at .+\)\.", text("expiry")
        )
        assert first is not None, text("expiry")
        assert 3500 <= int(first[2]) * 60 + int(first[3]) <= 3600
        sid = first[1]
        held = sorted(p.name for p in (tmp_path / "data" / sid / "input").iterdir())
        assert held == [p.name for p in paths]
        # six more do not fit in max_files=8: refused by the page, nothing sent
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
        wait.until(ec.text_to_be_present_in_element((By.ID, "upload-state"), "do not fit"))
        assert text("upload-state") == (
            "This session holds 6 file(s) and takes at most 8; 6 more do not fit. Start a new "
            "session or choose fewer files."
        )
        assert len(list((tmp_path / "data" / sid / "input").iterdir())) == 6
        # "New session": the old one is deleted on the server, a new one starts
        driver.find_element(By.ID, "new-session").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "log"), "New session"))
        assert not (tmp_path / "data" / sid).exists()
        second = re.fullmatch(r"Session ([0-9a-f-]{36}) expires in .+", text("expiry"))
        assert second is not None and second[1] != sid
        # a zip of two slices (what one request may hold), unpacked by the server, merged
        archive = tmp_path / "series.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
            for path in paths[:2]:
                handle.write(path, f"patient/ct/{path.name}")
        driver.find_element(By.ID, "files").send_keys(str(archive))
        wait.until(ec.text_to_be_present_in_element((By.ID, "upload-state"), "Uploaded 2"))
        assert text("upload-state") == "Uploaded 2 file(s) from 1 of 1 chosen (1 request(s))."
        inputs = sorted(p.name for p in (tmp_path / "data" / second[1] / "input").iterdir())
        assert inputs == [f"patient_ct_{p.name}" for p in paths[:2]]
        action = Select(driver.find_element(By.ID, "action"))
        wait.until(lambda d: len(action.options) == len(srv.ACTIONS))
        action.select_by_value("merge")
        driver.find_element(By.ID, "run").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results a.download")))
        href = driver.find_element(By.CSS_SELECTOR, "#results a.download").get_attribute("href")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web-page-limits.png"))
        r = requests.get(href, timeout=30)
    finally:
        driver.quit()
        server.close()
    assert r.status_code == 200 and KEY not in href
    merged = tmp_path / "merged.dcm"
    merged.write_bytes(r.content)
    assert int(pydicom.dcmread(merged).NumberOfFrames) == 2


class TestActionList:
    """GET /api/actions: the registry the page builds its form from."""

    def test_every_action_and_option(self, web: Running) -> None:
        r = requests.get(f"{web.url}/api/actions", timeout=10)
        assert r.status_code == 200  # no key needed: it says nothing about any session
        listed = {a["name"]: a for a in r.json()["actions"]}
        assert list(listed) == list(srv.ACTIONS)
        for name, spec in srv.ACTIONS.items():
            entry = listed[name]
            assert (entry["flag"], entry["summary"], entry["params"]) == (
                spec.flag,
                spec.summary,
                spec.params,
            )
            assert (entry["params_help"], entry["params_example"]) == (
                spec.params_help,
                spec.params_example,
            )
            names = [o["name"] for o in entry["options"]]
            assert names == [o.name for o in spec.options if o.api]
        ratio = next(o for o in listed["compress_lossy"]["options"] if o["name"] == "ratio")
        assert (ratio["type"], ratio["minimum"]) == ("number", 1)
        bits = next(o for o in listed["export_png"]["options"] if o["name"] == "png_bits")
        assert (bits["enum"], bits["default"]) == ([8, 16], 8)
        for name in ("export_png", "export_video"):  # -i and -e: a checkbox on the page
            annotate = next(o for o in listed[name]["options"] if o["name"] == "annotate")
            assert (annotate["kind"], annotate["default"]) == ("flag", False)
        kinds = next(o for o in listed["export_png"]["options"] if o["name"] == "image_format")
        assert kinds["enum"] == ["png", "jpg", "bmp", "tiff", "jp2"]
