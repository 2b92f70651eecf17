"""Property-based: requests generated from the published OpenAPI document (schemathesis), sent to the
running service with a valid key. No answer is a 5xx, and every answer matches the document (status
code, content type, body schema). Bounded: a fixed number of examples per operation, no shrinking."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from ai_pipeline.credits import grant
from ai_pipeline.service.keys import create_key
from ai_pipeline_tests.support.service import ApiProcess

EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def api_key(engine: Engine) -> str:
    with engine.begin() as conn:
        grant(conn, "user-1", 1000)  # some generated submissions are paid for and accepted
        return create_key(conn, "schemathesis").key


def test_no_answer_is_a_server_error_or_breaks_the_published_schema(api: ApiProcess, api_key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def answers_as_documented(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {api_key}"},
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
                timeout=30,
            )

        answers_as_documented()
