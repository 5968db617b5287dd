"""Fuzzing the API from its own OpenAPI schema (schemathesis): whatever a client sends,
no 5xx; every answer matches the published schema; data the schema forbids is refused;
and authentication is declared exactly when it is enforced.

Left out: positive_data_acceptance. Some rules need the dataset and cannot be written in
a JSON schema (a cnn needs an image dataset, stratified folds need enough rows per
class): such schema-valid jobs get 422 by design (tests/api/test_jobs_api.py)."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (allow_header_conformance, content_type_conformance,
                                               ignored_auth, missing_required_header,
                                               negative_data_rejection, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance,
                                               unsupported_method)

from api.main import create_app
from services.auth import create_key

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection,
          missing_required_header, ignored_auth, unsupported_method, allow_header_conformance]


def fuzz(operation, mode: GenerationMode, cases: int, counter: list[int], headers: dict | None = None) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(max_examples=cases, deadline=None, suppress_health_check=list(HealthCheck),
                         database=None)
    def run(case):
        case.call_and_validate(checks=CHECKS, headers=headers)
        counter[0] += 1

    run()


def fuzz_app(app, cases: int, headers: dict | None = None) -> tuple[int, int]:
    """(operations, cases run), in positive and negative mode."""
    # Here no dispatcher runs and no MLflow store exists, so /readyz would answer 503 by
    # design (a 5xx, which no_server_error refuses): its checks are said to pass. Its
    # answers when they do not are tested in tests/api/test_readiness.py.
    app.state.readiness.checks = lambda: {"database": "ok", "ray": "ok", "mlflow": "ok"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    counter = [0]
    for operation in operations:
        fuzz(operation, GenerationMode.POSITIVE, cases, counter, headers)
        if has_constrained_inputs(operation):
            # As generated: a negative case may leave the key out on purpose.
            fuzz(operation, GenerationMode.NEGATIVE, cases, counter)
    return len(operations), counter[0]


def has_constrained_inputs(operation) -> bool:
    """Inputs a request can get wrong: a query, a header or a body (any string is a valid
    job id, and /healthz takes nothing)."""
    return any(len(part) for part in (operation.query, operation.headers, operation.body))


def test_any_request_gets_a_documented_answer_and_no_server_error(settings, sessions, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("fuzzed once, on the embedded default: the answers do not depend on the database")
    operations, cases = fuzz_app(create_app(settings, sessions), 60)
    assert operations == 18 and cases >= 700, cases  # up to 60 positive and 60 negative each


def test_with_authentication_on_every_job_route_enforces_what_it_declares(settings, sessions, database_url):
    """ignored_auth resends each successful request without the key and with a wrong one:
    both must be refused, as the schema (HTTP bearer, required) says."""
    if database_url.startswith("postgresql"):
        pytest.skip("fuzzed once, on the embedded default")
    with sessions() as session:
        key = create_key(session=session, owner="fuzzer")
    app = create_app(settings.model_copy(update={"auth_required": True}), sessions)
    assert app.openapi()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    operations, cases = fuzz_app(app, 25, headers={"Authorization": f"Bearer {key}"})
    assert operations == 18 and cases >= 300, cases  # up to 25 positive and 25 negative each
