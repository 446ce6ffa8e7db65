"""`recthinker serve`: the HTTP API over the tiny fixture with a scripted chat model (a test double).

Status codes and error messages of bad requests, the SSE event order of a streamed run, 503 + Retry-After
when every slot is busy, 504 past the time limit, 500 (as JSON) for our own bugs, and a schemathesis run
over the OpenAPI spec that must never see a 5xx.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from recthinker.agent.loop import AgentConfig  # noqa: E402
from recthinker.llm import ChatResult  # noqa: E402
from recthinker.serve.app import create_app  # noqa: E402
from recthinker.tools.build import load_resources  # noqa: E402

TOOL_TURN = (
    "<analyze>I know the recent history but not how the candidates relate to it.</analyze>"
    "<plan>Look at the last items of the history.</plan>"
    '<tool_call>{"name": "user_history", "arguments": {"k": 3}}</tool_call>'
)


class ScriptedServeModel:
    """Stateless scripted model (requests share it): a tool call on the first turn, then `[2] > [1] > [3]..`.

    `answer=False` never answers (an invalid run); `delay` sleeps before each turn; `gate`, when given,
    blocks each turn until it is set; `fail` raises (our own bug, as far as the server can tell).
    """

    name = "scripted-serve"

    def __init__(
        self,
        *,
        answer: bool = True,
        delay: float = 0.0,
        gate: threading.Event | None = None,
        fail: bool = False,
    ) -> None:
        self.answer, self.delay, self.gate, self.fail = answer, delay, gate, fail
        self.calls = 0

    def generate(self, messages, **options):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("scripted failure")
        turn = sum(m["role"] == "assistant" for m in messages)
        n = len(re.findall(r"^\[\d+\] ", messages[1]["content"], flags=re.M))
        if turn == 0:
            text = TOOL_TURN
        elif self.answer:
            order = [2, 1, *range(3, n + 1)]
            text = "<analyze>Enough.</analyze><plan>Rank.</plan><answer>" + " > ".join(
                f"[{k}]" for k in order
            )
            text += "</answer>"
        else:
            text = "I am not sure."
        return ChatResult(
            message={"role": "assistant", "content": text},
            prompt_tokens=10,
            completion_tokens=5,
            latency_s=0.0,
            finish_reason="stop",
        )


@pytest.fixture(scope="module")
def res(tiny_benchmark):
    return load_resources(tiny_benchmark, "dense/test")


def make_client(res, tiny_benchmark, model=None, **kw) -> TestClient:
    app = create_app(
        res,
        tiny_benchmark.items,
        model or ScriptedServeModel(),
        config=AgentConfig(max_steps=4, max_tool_calls=3),
        dataset="tiny",
        **kw,
    )
    return TestClient(app)


@pytest.fixture(scope="module")
def client(res, tiny_benchmark):
    with make_client(res, tiny_benchmark) as c:
        yield c


@pytest.fixture(scope="module")
def user(tiny_benchmark) -> str:
    return tiny_benchmark.episodes("dense/test")[0].user_id


CANDS = ["m01", "m04", "m07", "m10", "m13"]


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_health_and_openapi(client):
    h = client.get("/healthz").json()
    assert h == {
        "status": "ok",
        "ready": True,
        "reason": "",
        "dataset": "tiny",
        "model": "scripted-serve",
        "busy": 0,
        "max_concurrency": 4,
    }
    spec = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/recommend/stream", "/v1/sample-users", "/healthz"} <= set(spec["paths"])
    body = spec["components"]["schemas"]["RecommendRequest"]["properties"]
    assert body["candidates"]["anyOf"][0]["maxItems"] == 50 and body["history"]["anyOf"][0]["maxItems"] == 200


def test_recommend_known_user(client, user):
    r = client.post("/v1/recommend", json={"user_id": user, "candidates": CANDS, "max_steps": 3})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["valid"] and d["ranking"] == ["m04", "m01", "m07", "m10", "m13"]
    assert d["candidates"] == CANDS and not d["candidates_proposed"] and d["tool_calls"] == 1
    first = d["trajectory"][0]
    assert first["tool_calls"][0]["name"] == "user_history" and first["tool_calls"][0]["ok"]
    assert "I know the recent history" in first["analyze"]
    assert set(d["evidence"]) == {"m04", "m01", "m07"} and "als_rank" in d["evidence"]["m04"]
    assert d["items"]["m04"]["title"] == "Silent Voyage" and "Silent Voyage" in d["items"]["m04"]["line"]


def test_recommend_proposes_candidates(client, user):
    d = client.post("/v1/recommend", json={"user_id": user, "propose": 6}).json()
    assert d["candidates_proposed"] and len(d["candidates"]) == 6 and len(set(d["candidates"])) == 6
    assert sorted(d["ranking"]) == sorted(d["candidates"])


def test_recommend_explicit_history_new_user(client):
    r = client.post("/v1/recommend", json={"history": ["m00", "m03", "m06"], "candidates": CANDS})
    assert r.status_code == 200 and r.json()["user_id"] == "anonymous" and r.json()["valid"]


def test_invalid_model_output_is_reported_not_fallen_back(res, tiny_benchmark, user):
    with make_client(res, tiny_benchmark, ScriptedServeModel(answer=False)) as c:
        d = c.post("/v1/recommend", json={"user_id": user, "candidates": CANDS, "max_steps": 2}).json()
    assert d["valid"] is False and d["ranking"] == [] and "no valid answer within 2 turns" in d["note"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"user_id": "nobody", "candidates": CANDS}, 422, "unknown user_id 'nobody'"),
        ({"user_id": "u01", "candidates": ["m01", "zz9"]}, 422, "unknown item id(s) in candidates: ['zz9']"),
        ({"history": ["m01", "nope"], "candidates": CANDS}, 422, "unknown item id(s) in history: ['nope']"),
        ({"user_id": "u01", "candidates": [f"m{i:02d}" for i in range(51)]}, 422, "at most 50 items"),
        ({"history": ["m01"] * 201, "candidates": CANDS}, 422, "at most 200 items"),
        ({"user_id": "u01", "candidates": []}, 422, "candidates: List should have at least 2 items"),
        ({"user_id": "u01", "candidates": ["m01", "m02", "m01"]}, 422, "distinct; repeated: ['m01']"),
        ({"user_id": "u01", "candidates": CANDS, "propose": 5}, 422, "either `candidates` or `propose`"),
        ({"candidates": CANDS}, 422, "give `user_id`"),
        ({"user_id": "u01", "candidates": CANDS, "max_steps": 0}, 422, "max_steps: Input should be greater"),
        ({"user_id": "u01", "model": "/etc/passwd"}, 422, "model: Extra inputs are not permitted"),
        (
            {"user_id": "u01", "candidates": ["../../etc/passwd", "m01"]},
            422,
            "unknown item id(s) in candidates",
        ),
        ({"user_id": "u01", "candidates": ["m01\n", "m02"]}, 422, "malformed item id(s) ['m01\\n']"),
        ({"user_id": "http://evil.example/x"}, 422, "unknown user_id 'http://evil.example/x'"),
        ({"user_id": "u" * 201}, 422, "user_id: String should match pattern"),
        ({"user_id": "u01", "propose": 500}, 422, "propose: Input should be less than or equal to 50"),
        (
            {"user_id": "u01", "candidates": CANDS, "max_steps": True},
            422,
            "max_steps: Input should be a valid integer",
        ),
        (
            {"user_id": "u01", "candidates": CANDS, "max_steps": "3"},
            422,
            "max_steps: Input should be a valid integer",
        ),
    ],
)
def test_bad_requests_get_clear_errors(client, body, status, message):
    for path in ("/v1/recommend", "/v1/recommend/stream"):
        r = client.post(path, json=body)
        assert r.status_code == status, r.text
        assert message in r.json()["error"], r.json()


def test_malformed_json_is_400(client):
    r = client.post(
        "/v1/recommend", content=b'{"user_id": "u01",', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"] == "malformed JSON body"
    r = client.post("/v1/recommend", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_stream_event_order(client, user):
    with client.stream("POST", "/v1/recommend/stream", json={"user_id": user, "candidates": CANDS}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    kinds = [k for k, _ in events]
    assert kinds == ["start", "turn", "tool_call", "tool_result", "turn", "answer", "done"]
    start, turn0, call, result, _, answer, done = (d for _, d in events)
    assert [c["id"] for c in start["candidates"]] == CANDS and start["history_total"] > 0
    assert turn0["index"] == 0 and "Look at the last items" in turn0["plan"]
    assert call == {"turn": 0, "name": "user_history", "arguments": {"k": 3}}
    assert result["ok"] and result["observation"]
    assert answer["ranking"] == done["ranking"] == ["m04", "m01", "m07", "m10", "m13"]
    assert done["valid"] and done["tool_calls"] == 1


def test_saturation_gives_503_with_retry_after(res, tiny_benchmark, user):
    gate = threading.Event()
    with make_client(
        res, tiny_benchmark, ScriptedServeModel(gate=gate), max_concurrency=1, retry_after_s=7
    ) as c:
        first: dict = {}
        t = threading.Thread(
            target=lambda: first.update(
                r=c.post("/v1/recommend", json={"user_id": user, "candidates": CANDS})
            )
        )
        t.start()
        deadline = time.monotonic() + 10
        while c.get("/healthz").json()["busy"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        for path in ("/v1/recommend", "/v1/recommend/stream"):
            r = c.post(path, json={"user_id": user, "candidates": CANDS})
            assert r.status_code == 503 and r.headers["Retry-After"] == "7"
            assert "server busy" in r.json()["error"]
        gate.set()
        t.join(timeout=10)
        assert first["r"].status_code == 200 and first["r"].json()["valid"]
        assert c.get("/healthz").json()["busy"] == 0  # the slot came back
        assert c.post("/v1/recommend", json={"user_id": user, "candidates": CANDS}).status_code == 200


def test_timeout_gives_504_and_stops_the_agent(res, tiny_benchmark, user):
    model = ScriptedServeModel(delay=0.4)
    with make_client(res, tiny_benchmark, model, timeout_s=0.2) as c:
        t0 = time.monotonic()
        r = c.post("/v1/recommend", json={"user_id": user, "candidates": CANDS})
        assert r.status_code == 504 and r.json()["error"] == "request timed out after 0.2 s"
        assert time.monotonic() - t0 < 0.4 + 0.3  # answered at the deadline, not when the run ends
        with c.stream("POST", "/v1/recommend/stream", json={"user_id": user, "candidates": CANDS}) as s:
            events = sse_events(s.read().decode())
        assert [k for k, _ in events] == ["start", "error"] and events[-1][1]["status"] == 504
        time.sleep(0.6)
        assert c.get("/healthz").json()["busy"] == 0
    assert model.calls <= 3  # each cancelled run stopped after its first turn (of up to 4)


def test_a_run_queued_for_the_model_stops_at_its_timeout(res, tiny_benchmark, user):
    """Two runs, one model slot: the one waiting for the model leaves at its deadline without a model call."""
    gate = threading.Event()
    model = ScriptedServeModel(gate=gate)
    body = {"user_id": user, "candidates": CANDS}
    with make_client(res, tiny_benchmark, model, max_concurrency=2, timeout_s=0.5) as c:
        results: list = []
        threads = [
            threading.Thread(target=lambda: results.append(c.post("/v1/recommend", json=body))) for _ in "ab"
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=5)
        assert [r.status_code for r in results] == [504, 504]
        deadline = time.monotonic() + 2
        while c.get("/healthz").json()["busy"] > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/healthz").json()["busy"] == 1 and model.calls == 1  # only the run holding the model
        gate.set()


def test_our_bug_is_a_json_500(res, tiny_benchmark, user):
    with make_client(res, tiny_benchmark, ScriptedServeModel(fail=True)) as c:
        r = c.post("/v1/recommend", json={"user_id": user, "candidates": CANDS})
        assert r.status_code == 500 and r.json()["error"] == "internal error: RuntimeError"
        assert c.get("/healthz").json()["busy"] == 0


def test_sample_users_and_page(client):
    users = client.get("/v1/sample-users", params={"n": 3}).json()
    assert len(users) == 3 and all(u["n_items"] >= 5 and len(u["recent"]) == 3 for u in users)
    assert all(u["top_categories"] for u in users)
    assert client.get("/v1/sample-users", params={"n": 0}).status_code == 422
    page = client.get("/")
    assert page.status_code == 200 and "RecThinker" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/nope").json() == {"error": "Not Found", "details": []}


# ---- schemathesis over the OpenAPI spec: generated requests, never a 5xx ------------------------------

try:
    import schemathesis
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )
except ImportError:  # the API tests above still run
    schemathesis = None

if schemathesis is None:

    @pytest.mark.skip(reason="needs schemathesis")
    def test_openapi_fuzz_never_5xx():
        pass

else:

    @pytest.fixture(scope="module")
    def api_schema(res, tiny_benchmark):
        app = create_app(
            res,
            tiny_benchmark.items,
            ScriptedServeModel(),
            config=AgentConfig(max_steps=2, max_tool_calls=1),
            max_concurrency=64,
        )
        return schemathesis.openapi.from_asgi("/openapi.json", app)

    schema = schemathesis.pytest.from_fixture("api_schema")

    @schema.parametrize()
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def test_openapi_fuzz_never_5xx(case):
        """Generated and example requests for every operation: never a 5xx, responses match the spec."""
        response = case.call()
        assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )
