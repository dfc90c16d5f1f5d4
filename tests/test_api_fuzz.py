"""API fuzzing with schemathesis against the server's own ``/api/openapi.json``.

Every operation, every check; the test fails on any server error or response that does
not match the schema. Skips (with the reason) while the server has no OpenAPI document.
The number of generated requests is printed and written to
``test-artifacts/api-fuzz-summary.json``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import ROOT, need_module
from hypothesis import HealthCheck, given, settings

import dicompressor as srv

schemathesis = need_module("schemathesis", "schemathesis")

KEY = "fuzz-key-0123456789"
MAX_EXAMPLES = 100


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[srv.ApiServer]:
    """A server on 127.0.0.1 with limits raised so that 429/503 do not swamp the run."""
    config = srv.ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path_factory.mktemp("api-fuzz"),
        rate_limit_per_min=1_000_000,
        session_rate_limit_per_min=1_000_000,
        max_sessions=100_000,
        process_timeout_s=30,
    )
    server = srv.make_server(config, [KEY])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.close()


def test_openapi_schema_fuzz(server: srv.ApiServer) -> None:
    url = f"{server.url}/api/openapi.json"
    r = requests.get(url, headers={"X-API-Key": KEY}, timeout=30)
    if r.status_code == 404:
        pytest.skip("GET /api/openapi.json answers 404: the server has no OpenAPI document yet")
    assert r.status_code == 200, r.text
    document = r.json()
    schema = schemathesis.openapi.from_dict(document)
    requests_sent = 0
    failures: list[str] = []
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the OpenAPI document lists no operations"
    for operation in operations:
        strategy = operation.as_strategy()

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def check(case: Any) -> None:
            nonlocal requests_sent
            requests_sent += 1
            try:  # every check schemathesis has (its default configuration enables all)
                response = case.call_and_validate(base_url=server.url, headers={"X-API-Key": KEY})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                failures.append(f"{case.operation.label}: {type(exc).__name__}: {exc}"[:2000])

        check()
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    summary = {
        "schemathesis": schemathesis.SCHEMATHESIS_VERSION,
        "operations": len(operations),
        "requests": requests_sent,
        "failures": len(failures),
        "statuses": dict(sorted(statuses.items())),
    }
    (artifacts / "api-fuzz-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\napi fuzz: {json.dumps(summary)}")
    assert not failures, "\n".join(failures[:20])
    assert statuses.get(500, 0) == 0
    assert any(200 <= code < 300 for code in statuses), statuses  # the key was accepted
