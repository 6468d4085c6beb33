"""Schema-driven fuzzing: schemathesis reads /api/schema/ from a live gunicorn server and sends
every operation requests generated from its declared parameters and bodies, as an annotator
and as staff, on a campaign with content (so the calls reach the services, not only 404s).
Each response must not be a 5xx and must conform to the schema: a status it declares, the
media type and the body it declares for that status.

Bounded so CI stays fast and never flakes: a fixed seed (derandomize), MAX_EXAMPLES per
operation, no shrinking, no example database, and a time budget after which the remaining
operations are left out (the test still fails if too few ran).

No operation is excluded: each role gets its own server and database, so the creates
(campaigns, imports, skips, snapshots) cannot disturb another test. Path parameters are fixed
to the campaign and the annotator's lease; snapshot ids are generated (any id answers a
snapshot or a declared 404). The export snapshots asked for are queued, never built: no worker
runs here."""

import itertools
import time
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import UserFactory, text_campaign

MAX_EXAMPLES = 12
BUDGET_S = 25  # per role; the whole test stays under ~60 s on two cores
# Valid requests (reach the services) and requests that break the schema (must be refused
# with a declared 4xx, never a 5xx).
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _fuzz_operation(operation, mode, strategy, base: str, headers: dict, statuses: Counter):
    """Up to MAX_EXAMPLES generated requests to one operation; raises on the first failure."""
    label = (mode.value, operation.method.upper(), operation.path)

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=strategy)
    def run(case):
        response = case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=30)
        statuses[(*label, response.status_code)] += 1

    run()


def _fuzz(base: str, token: str, path_parameters: dict) -> tuple[list[str], Counter]:
    """Run every operation; return the failures (one line each) and the statuses answered per
    operation."""
    raw = httpx.get(f"{base}/api/schema/?format=json", timeout=30)
    assert raw.status_code == 200, raw.text[:300]
    schema = schemathesis.openapi.from_dict(raw.json())
    headers = {"Authorization": f"Token {token}"}
    failures: list[str] = []
    statuses: Counter = Counter()
    deadline = time.monotonic() + BUDGET_S
    operations = [result.ok() for result in schema.get_all_operations()]
    for mode, operation in itertools.product(MODES, operations):
        if time.monotonic() > deadline:
            break
        negatable = len(operation.body) or len(operation.query) or "snapshot_id" in operation.path
        if mode == GenerationMode.NEGATIVE and not negatable:
            continue  # nothing left to break once the path is fixed: hypothesis would give up
        params = {
            name: value
            for name, value in path_parameters.items()
            if f"{{{name}}}" in operation.path
        }
        strategy = operation.as_strategy(mode, path_parameters=params or None)
        try:
            _fuzz_operation(operation, mode, strategy, base, headers, statuses)
        # schemathesis's FailureGroup is a BaseExceptionGroup: catch it too.
        except (Exception, BaseExceptionGroup) as exc:  # keep going, report them all
            where = f"{mode.value}: {operation.method.upper()} {operation.path}"
            failures.append(f"{where}: {exc}"[:3000])
    return failures, statuses


@pytest.mark.timeout(300)
@pytest.mark.parametrize("role", ["annotator", "staff"])
def test_every_operation_answers_per_its_schema(role, gunicorn_server, tmp_path):
    annotator = UserFactory(username="fuzz-annotator")
    staff = UserFactory(username="fuzz-staff", is_staff=True, is_superuser=True)
    campaign = text_campaign(n_prompts=3, responses=3, k=2, members=[annotator], slug="fuzz")
    user = staff if role == "staff" else annotator
    token = Token.objects.create(user=user).key
    annotator_token = Token.objects.create(user=annotator).key if role == "staff" else token
    # A lease the annotator holds, so the judgment, skip and renew calls find it.
    lease = httpx.post(
        f"{gunicorn_server}/api/v1/campaigns/{campaign.slug}/next/",
        headers={"Authorization": f"Token {annotator_token}"},
        timeout=30,
    )
    assert lease.status_code == 200, lease.text
    # Not overridden: snapshot_id (any id gives a 404 or a snapshot, both declared).
    path_parameters = {"slug": campaign.slug, "assignment_id": lease.json()["assignment"]}

    started = time.monotonic()
    failures, statuses = _fuzz(gunicorn_server, token, path_parameters)
    elapsed = time.monotonic() - started
    ran = len({key[:3] for key in statuses})
    print(f"\n{role}: {ran} operations, {statuses.total()} requests, {elapsed:.1f} s")
    for key, count in sorted(statuses.items()):
        print(" ", *key, count)
    server_log = "\n".join(p.read_text()[-4000:] for p in tmp_path.glob("gunicorn-*.log"))
    assert not failures, "\n\n".join(failures) + "\n\nserver log:\n" + server_log
    # Positive mode runs first: every operation at least once, whatever the time budget cut.
    assert ran >= 19, f"only {ran} operations ran within {BUDGET_S} s"


@pytest.mark.django_db
def test_a_form_with_too_many_fields_gets_a_json_400(api, staff, settings):
    """Found by the fuzzer: Django refuses a form body of more than
    DATA_UPLOAD_MAX_NUMBER_FIELDS fields with its HTML 400, not the API's error shape."""
    token = Token.objects.create(user=staff).key
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    body = "&".join(f"k{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    r = api.post("/api/v1/campaigns/", data=body, content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400 and r["Content-Type"].startswith("application/json")
    assert r.json()["error"] == "invalid" and r.json()["field"] == "body"
