"""Fuzz the HTTP API against its own OpenAPI document (issue 5): no 5xx, no answer that breaks the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_api import ADMIN, FakeJobs, make_settings  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_app(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from granttag.api import create_app

    app = create_app(make_settings(model_root, tmp_path_factory.mktemp("fuzzdata")), jobs=FakeJobs())
    app.state.holder.get()  # load the model before fuzzing starts
    return app


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_api_schema_fuzzed_requests_conform(case: Any) -> None:
    # The model-activation endpoint would switch the session's model to fuzzed names; they are 404s anyway.
    case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"}, checks=CHECKS)
