"""The server's face: OpenAPI description, VolView links, CORS, the web page in a browser."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pydicom
import pytest
import requests
from test_server import KEY, RELAXED, Running, srv, synth

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
        }
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
        assert view == f"{web.url}/api/view/{sid}/{entry['name']}?api_key={KEY}"
        assert "%2Fapi%2Fview%2F" in entry["view_url"]  # the view URL is encoded whole
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


class TestPage:
    """GET / serves the page: self-contained, all twelve actions, API only."""

    def test_page(self, web: Running) -> None:
        r = requests.get(web.url + "/", timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/html")
        page = r.text
        assert "/api/actions" in page  # the form comes from the server's registry
        for action in srv.ACTIONS:  # no copy of the registry in the page
            assert f"{action}:" not in page and f'"{action}"' not in page, action
        assert "localStorage" in page and "webkitdirectory" in page and "dragover" in page
        assert "<script src" not in page and "<link " not in page  # no external assets
        for used in ("/api/session", "/api/upload/", "/api/process/", "/api/download/"):
            assert used in page


def _chromium() -> tuple[str, str] | None:
    """Return (browser, driver) paths when Chromium and ChromeDriver are installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chromium() is None, reason="chromium and chromium-driver not installed")
def test_browser_merge_and_download(web: Running, tmp_path: Path) -> None:
    """Open the page, enter the key, upload a series, merge, download the result."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser, driver_path = _chromium()  # type: ignore[misc]
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
    paths = synth.make_series(tmp_path / "series", n=6)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_window_size(1100, 1300)
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
    r = requests.get(href, timeout=30)  # the page's own link: key in ?api_key=
    assert r.status_code == 200
    merged = tmp_path / "merged.dcm"
    merged.write_bytes(r.content)
    ds = pydicom.dcmread(merged)
    assert int(ds.NumberOfFrames) == 6
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"  # Legacy Converted Enhanced CT
    assert (ARTIFACTS / "web-page-merge.png").stat().st_size > 1000


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
            names = [o["name"] for o in entry["options"]]
            assert names == [o.name for o in spec.options if o.api]
        ratio = next(o for o in listed["compress_lossy"]["options"] if o["name"] == "ratio")
        assert (ratio["type"], ratio["minimum"]) == ("number", 1)
        bits = next(o for o in listed["export_png"]["options"] if o["name"] == "png_bits")
        assert (bits["enum"], bits["default"]) == ([8, 16], 8)
