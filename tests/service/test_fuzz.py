"""Schemathesis fuzzes every operation of the OpenAPI schema against a live server: no 5xx, and
every 4xx says what is wrong. Cases valid by the schema and cases that break it, ~1,200 in all."""

from __future__ import annotations

import collections

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES_PER_MODE = 100  # per operation and mode; operations without parameters or with one free string give fewer
KEY = "fuzz-key"


def check_answer(response, label: str) -> None:
    status = response.status_code
    assert status < 500, f"{label}: {status} {response.text[:300]}"
    if status >= 400:
        body = response.json()
        detail = body.get("detail")
        assert isinstance(detail, str) and len(detail) >= 8, f"{label}: {status} without a useful detail: {body}"
        assert "internal error" not in detail, f"{label}: {body}"


def fuzz_operation(operation, mode, session, url: str, seen: collections.Counter, statuses: collections.Counter):
    label = f"{operation.label} {mode.value}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case) -> None:
        # Half the cases carry the key, so the fuzzer gets past the 401 into the handlers.
        headers = dict(case.headers or {})
        if seen[operation.label] % 2 == 0:
            headers["Authorization"] = f"Bearer {KEY}"
        response = case.call(base_url=url, session=session, headers=headers, timeout=30)
        seen[operation.label] += 1
        statuses[response.status_code] += 1
        check_answer(response, label)

    try:
        fuzz()
    except Unsatisfiable:
        pass  # an operation without parameters has no invalid form


def test_fuzzing_the_api_from_its_schema_finds_no_server_error(serve):
    server = serve(max_wait_ms=0.0, api_key=KEY)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    seen: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(result.ok(), mode, session, server.url, seen, statuses)
    total = sum(seen.values())
    assert total >= 1000, seen
    assert len(seen) == 11, seen  # every operation was reached
    assert statuses[200] > 0 and statuses[401] > 0 and statuses[422] > 0, statuses
    print(f"fuzz: {total} cases, statuses {dict(sorted(statuses.items()))}")
