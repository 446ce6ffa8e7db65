"""`recthinker serve`: the agent behind an HTTP API and a small web page that shows its investigation live.

    recthinker serve --dataset ml-1m --host 127.0.0.1 --port 8000      # then open http://127.0.0.1:8000/

    app = create_app(resources, bench.items, model)                     # tests: any ChatModel, e.g. a fake
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: `POST /v1/recommend` (JSON result), `POST /v1/recommend/stream` (the same run as Server-Sent
Events: `start`, then per turn `turn` / `tool_call` / `tool_result`, then `answer`, `done` or `error`),
`GET /v1/sample-users`, `GET /healthz`, the page at `/`, FastAPI's `/openapi.json`, and `/docs` / `/redoc`
whose Swagger UI and ReDoc scripts come from the `fastapi-offline` package (no CDN: they work offline).

Each request iterates the agent's run (`RecThinker.stream`) in a worker thread and sends each finished turn
as events. At most `max_concurrency` run at once: a request beyond that is refused at once with 503 and
`Retry-After` (no queue to wait in). A request that runs past `timeout_s` gets 504 (or an `error` event), and
one whose client disconnects is cancelled: either way its worker stops iterating after the current turn (a
run still waiting for the model leaves the queue), so no new model call starts and its slot is freed. A body
over `max_body_bytes` gets 413 before it is read.
When the model back end cannot be reached (`/healthz` says `unavailable`, HTTP 503), a request gets 503 at
once, and a run whose model call fails gets 502. The model, the dataset and the limits are fixed when the
server starts; a request carries only ids and counts.

Why ~640 lines: it holds one concept, a request's life. `Service` takes a slot, builds the episode, runs the
agent in a worker and turns its steps into events; `create_app` maps those onto routes, status codes and
SSE. The limits and the cancellation described above span both halves, so they read best in one file. The
two pure ASGI middlewares (the body limit and the pages' CSP) are in `middleware.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from recthinker.agent.claims import trajectory_claims
from recthinker.agent.loop import AgentConfig, RecThinker
from recthinker.agent.prompting import render_item
from recthinker.agent.rankers import default_config
from recthinker.agent.recommend import recommendation
from recthinker.agent.trajectory import Step, Trajectory
from recthinker.data.prepared import ensure_benchmark
from recthinker.errors import DataError
from recthinker.llm import ChatModel, LLMServerError, load_chat_model
from recthinker.serve.middleware import BodyLimit, SameOriginPages
from recthinker.serve.schemas import (
    ErrorBody,
    Health,
    ItemInfo,
    RecommendRequest,
    RecommendResponse,
    SampleUser,
)
from recthinker.tools.build import load_resources
from recthinker.tools.candidates import make_episode, propose_candidates
from recthinker.tools.env import RecEnv, ToolHost
from recthinker.types import Episode

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ANONYMOUS = "anonymous"  # user id of a request that gives only a history
DEFAULT_PROPOSE = 10  # proposed candidates when a request gives neither `candidates` nor `propose`
N_HISTORY_SHOWN = 10  # history items whose titles the response carries
MAX_BODY_BYTES = 1 << 20  # default request-body limit; the largest valid request is about 50 KB
CLIENT_GONE = 499  # status of a run whose client disconnected (nginx's "client closed request"; never sent)


class ApiError(Exception):
    """A request the API refuses on purpose: status code, one-sentence message, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Cancelled(Exception):
    """The request timed out or its client went away: its run stops between turns, or while it waits for the
    model, and makes no further model call."""


class _CancellableModel:
    """The shared model behind a gate of `model_slots` calls at once; a run waiting at the gate stops (raises
    `Cancelled`) as soon as its request is cancelled, so it never holds the model for a client that left."""

    def __init__(self, model: ChatModel, gate: threading.Semaphore, cancel: threading.Event) -> None:
        self.model, self.gate, self.cancel = model, gate, cancel
        self.name = getattr(model, "name", type(model).__name__)

    def generate(self, messages, **options):
        while not self.gate.acquire(timeout=0.1):
            if self.cancel.is_set():
                raise Cancelled
        try:
            if self.cancel.is_set():
                raise Cancelled
            return self.model.generate(messages, **options)
        finally:
            self.gate.release()


class _Job:
    """One agent run in a worker thread; its events reach the event loop through an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.cancel = threading.Event()

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))


def step_events(step: Step) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of one finished assistant turn: the turn, its tool calls and their results."""
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "turn",
            {
                "index": step.index,
                "analyze": step.analyze,
                "plan": step.plan,
                "problems": list(step.problems),
                "content": step.content[:2000],
            },
        )
    ]
    for call in step.tool_calls:
        events.append(("tool_call", {"turn": step.index, "name": call.name, "arguments": call.arguments}))
        events.append(
            (
                "tool_result",
                {
                    "turn": step.index,
                    "name": call.name,
                    "ok": call.ok,
                    "error": call.error,
                    "observation": call.observation,
                },
            )
        )
    return events


def claim_events(traj: Trajectory) -> list[tuple[str, dict[str, Any]]]:
    """One `claims` event per turn whose analysis or plan states something no observation or the prompt
    supports (`agent.claims`): the page marks those turns."""
    return [
        ("claims", {"turn": step.index, "unsupported": [c.to_dict() for c in claims if not c.supported]})
        for step, claims in zip(traj.steps, trajectory_claims(traj), strict=True)
        if any(not c.supported for c in claims)
    ]


def answer_events(traj: Trajectory) -> list[tuple[str, dict[str, Any]]]:
    """The `answer` event of a finished run with a valid ranking (its last turn is the answer)."""
    if not traj.valid:
        return []
    step = traj.steps[-1]
    return [("answer", {"turn": step.index, "ranking": list(traj.ranking), "raw": step.answer})]


def sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class Service:
    """The agent and its inputs, shared by all requests; builds episodes and runs jobs under the limits."""

    def __init__(
        self,
        resources,
        items,
        model: ChatModel,
        config: AgentConfig,
        *,
        max_concurrency: int,
        timeout_s: float,
        retry_after_s: int,
        model_slots: int,
        sample_users: Sequence[str] | None,
        seed: int,
    ) -> None:
        if max_concurrency < 1 or timeout_s <= 0 or retry_after_s < 1 or model_slots < 1:
            raise ValueError(
                f"max_concurrency >= 1, timeout_s > 0, retry_after_s >= 1 and model_slots >= 1 required: "
                f"{max_concurrency}, {timeout_s}, {retry_after_s}, {model_slots}"
            )
        self.resources, self.items, self.model, self.config = resources, items, model, config
        self.max_concurrency, self.timeout_s, self.retry_after_s = max_concurrency, timeout_s, retry_after_s
        self.seed = seed
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.model_gate = threading.Semaphore(model_slots)
        self.busy = 0
        self._busy_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="recthinker-serve")
        self.model_name = str(getattr(model, "name", type(model).__name__))
        self.sample_user_ids = list(sample_users) if sample_users is not None else self._default_samples()

    # ---- requests -> episodes -----------------------------------------------------------------------
    def _default_samples(self, n: int = 8) -> list[str]:
        log_ = self.resources.log
        ids = sorted(u for u in log_.users.ids.tolist() if len(log_.sequence(u)) >= 5)
        return ids[:n]

    def item_info(self, item_id: str) -> ItemInfo:
        return ItemInfo(
            id=item_id, title=self.resources.catalog.title(item_id), line=render_item(item_id, self.items)
        )

    def episode(self, req: RecommendRequest) -> tuple[Episode, bool]:
        """Check the request against the dataset and build its episode (ApiError 422 on unknown ids)."""
        res = self.resources
        catalog = res.catalog
        for field, ids in (("history", req.history), ("candidates", req.candidates)):
            unknown = [i for i in ids or () if i not in catalog]
            if unknown:
                raise ApiError(422, f"unknown item id(s) in {field}: {unknown[:5]} (not in the catalog)")
        user = req.user_id or ANONYMOUS
        known = len(res.log.sequence(user)) > 0
        if not known and not req.history:
            raise ApiError(
                422, f"unknown user_id {user!r}: give an explicit `history` for a user outside the dataset"
            )
        candidates = req.candidates
        if candidates is None:
            hist = req.history or res.log.sequence(user)[-50:]
            k = req.propose or DEFAULT_PROPOSE
            try:
                candidates = propose_candidates(
                    res, user, hist, k=k, n_cf=max(1, round(0.7 * k)), seed=self.seed
                )
            except DataError as e:
                raise ApiError(422, f"cannot propose {k} candidates: {e}") from e
        try:
            episode, _ = make_episode(res, user, req.history, candidates, seed=self.seed)
        except DataError as e:
            raise ApiError(422, str(e)) from e
        return episode, req.candidates is None

    def agent_config(self, req: RecommendRequest) -> AgentConfig:
        return replace(
            self.config,
            max_steps=req.max_steps if req.max_steps is not None else self.config.max_steps,
            max_tool_calls=req.max_tool_calls
            if req.max_tool_calls is not None
            else self.config.max_tool_calls,
        )

    # ---- running ------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take a run slot or refuse at once with 503 (a full server sheds load instead of queueing)."""
        if not self.slots.acquire(blocking=False):
            raise ApiError(
                503,
                f"server busy: all {self.max_concurrency} agent slots are running; retry later",
                {"Retry-After": str(self.retry_after_s)},
            )
        with self._busy_lock:
            self.busy += 1

    def release(self) -> None:
        with self._busy_lock:
            self.busy -= 1
        self.slots.release()

    def start(self, req: RecommendRequest, episode: Episode, proposed: bool) -> _Job:
        """Run the agent for `episode` in a worker thread (the caller holds a slot; the job frees it)."""
        job = _Job(asyncio.get_running_loop())
        job.emit("start", self._start_event(episode, proposed, self.agent_config(req)))
        self.pool.submit(self._work, job, episode, proposed, self.agent_config(req))
        return job

    def _start_event(self, episode: Episode, proposed: bool, cfg: AgentConfig) -> dict[str, Any]:
        return {
            "user_id": episode.user_id,
            "history_total": len(episode.history),
            "history": [self.item_info(i).model_dump() for i in episode.history[-N_HISTORY_SHOWN:]],
            "candidates": [self.item_info(i).model_dump() for i in episode.candidates],
            "candidates_proposed": proposed,
            "max_steps": cfg.max_steps,
            "max_tool_calls": cfg.max_tool_calls,
            "model": self.model_name,
        }

    def _work(self, job: _Job, episode: Episode, proposed: bool, cfg: AgentConfig) -> None:
        last: tuple[str, dict[str, Any]] | None = None
        try:
            agent = RecThinker(
                _CancellableModel(self.model, self.model_gate, job.cancel),
                ToolHost(RecEnv(self.resources)),
                items=self.items,
                config=cfg,
            )
            traj = self._run(job, agent, episode)
            result = recommendation(traj, ToolHost(RecEnv(self.resources)), episode, proposed)
            shown = [*episode.candidates, *episode.history[-N_HISTORY_SHOWN:]]
            result["items"] = {i: self.item_info(i).model_dump() for i in shown}
            last = ("done", RecommendResponse(**result).model_dump())
        except Cancelled:
            log.info("run for user %s cancelled (timeout or client gone)", episode.user_id)
        except LLMServerError as e:  # the back end, not us: 502 with its reason
            log.warning("model back end failed for user %s: %s", episode.user_id, e)
            last = ("error", {"status": 502, "error": f"model back end failed: {e}"})
        except Exception as e:  # noqa: BLE001 -- request boundary: log our bug, answer 500, keep serving
            log.exception("agent run failed for user %s", episode.user_id)
            last = ("error", {"status": 500, "error": f"internal error: {type(e).__name__}"})
        finally:
            self.release()  # before the last event, so a client that got its answer finds the slot free
        if last is not None:
            job.emit(*last)

    @staticmethod
    def _run(job: _Job, agent: RecThinker, episode: Episode) -> Trajectory:
        """Iterate the agent's run, sending each finished turn's events, and return its trajectory.

        Cancellation is checked between turns: once the job is cancelled the run's generator is closed, so
        its next model call never starts, and `Cancelled` ends the job (`_CancellableModel` raises it too,
        for a run that is waiting for the model)."""
        with closing(agent.stream(episode)) as run:
            for item in run:
                if isinstance(item, Step):
                    for kind, data in step_events(item):
                        job.emit(kind, data)
                    if job.cancel.is_set():
                        raise Cancelled
        traj = item  # the stream's last item
        for kind, data in [*claim_events(traj), *answer_events(traj)]:
            job.emit(kind, data)
        return traj

    async def backend_problem(self) -> str | None:
        """Why the model back end cannot be used now (None: it can); in-process models always can.

        Asks the model's `probe()` when it has one (`OpenAICompatible`: a cached `GET /models`)."""
        probe = getattr(self.model, "probe", None)
        if probe is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(None, probe)

    async def events(self, job: _Job) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The job's events until `done` or `error`; a 504 `error` when the deadline passes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            while True:
                left = deadline - loop.time()
                try:
                    kind, data = await asyncio.wait_for(job.events.get(), timeout=max(left, 0.0))
                except TimeoutError:
                    job.cancel.set()
                    yield "error", {"status": 504, "error": f"request timed out after {self.timeout_s:g} s"}
                    return
                yield kind, data
                if kind in ("done", "error"):
                    return
        finally:
            job.cancel.set()  # no-op after `done`; stops the agent when the client left or time ran out


def request_examples(service: Service) -> dict[str, dict[str, Any]]:
    """Example bodies for /docs (and schemathesis) with ids of this dataset."""
    res = service.resources
    user = service.sample_user_ids[0] if service.sample_user_ids else ANONYMOUS
    seq = res.log.sequence(user)
    items = [i for i in res.log.items.ids.tolist() if i not in set(seq)][:5]
    return {
        "known_user": {
            "summary": "A user of the dataset, given candidates",
            "value": {"user_id": user, "candidates": items, "max_steps": 2, "max_tool_calls": 1},
        },
        "propose": {
            "summary": "Let the tools propose 5 candidates",
            "value": {"user_id": user, "propose": 5},
        },
        "new_user": {
            "summary": "A user described by a history",
            "value": {"history": seq[-3:] or items[:2], "candidates": items, "max_steps": 2},
        },
    }


def create_app(
    resources,
    items,
    model: ChatModel,
    *,
    config: AgentConfig | None = None,
    max_concurrency: int = 4,
    timeout_s: float = 300.0,
    retry_after_s: int = 10,
    model_slots: int = 1,
    max_body_bytes: int = MAX_BODY_BYTES,
    sample_users: Sequence[str] | None = None,
    dataset: str = "",
    seed: int = 42,
) -> FastAPI:
    """The FastAPI app serving the agent over `resources` with `model` (shared by all requests).

    Args:
        resources: `Resources` the tools read (`load_resources(bench, "dense/test")`).
        items: The item table (`bench.items`), for titles in prompts and responses.
        model: Any `ChatModel`; fixed for the server's life.
        config: Agent settings; a request may change only `max_steps` and `max_tool_calls`.
        max_concurrency: Agent runs at once; more requests get 503 + Retry-After.
        timeout_s: Wall-clock limit per request (504 past it).
        retry_after_s: The `Retry-After` value of a 503, in seconds.
        model_slots: Model calls at once: 1 for the in-process llama.cpp (it runs one at a time anyway),
            the server's slot count for an OpenAI-compatible server. Waiting runs stay cancellable.
        max_body_bytes: Largest request body accepted, in bytes (default 1 MiB); a larger one gets 413
            before it is read.
        sample_users: User ids offered by `/v1/sample-users` (default: the first 8 with >= 5 items).
        dataset: Name shown by `/healthz`.
        seed: Seed of candidate proposal.
    """
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1: {max_body_bytes}")
    service = Service(
        resources,
        items,
        model,
        config or AgentConfig(),
        max_concurrency=max_concurrency,
        timeout_s=timeout_s,
        retry_after_s=retry_after_s,
        model_slots=model_slots,
        sample_users=sample_users,
        seed=seed,
    )
    app = FastAPIOffline(  # FastAPI whose /docs and /redoc load Swagger UI and ReDoc from this server
        title="RecThinker",
        version="0.1.0",
        description="An LLM recommendation agent that investigates with tools before it ranks.",
        swagger_ui_parameters={"validatorUrl": None},  # Swagger UI would send the spec to a public validator
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SameOriginPages)
    app.state.service = service
    errors = {
        400: {"model": ErrorBody, "description": "Malformed JSON body"},
        413: {"model": ErrorBody, "description": "Request body over the server's limit"},
        422: {"model": ErrorBody, "description": "Invalid request or unknown ids"},
        502: {"model": ErrorBody, "description": "The model back end failed during the run"},
        503: {"model": ErrorBody, "description": "All agent slots busy, or the model back end unreachable"},
        504: {"model": ErrorBody, "description": "The run exceeded the server's time limit"},
    }

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(ErrorBody(error=exc.message).model_dump(), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        if any(d["type"] == "json_invalid" for d in details):
            return JSONResponse(ErrorBody(error="malformed JSON body", details=details).model_dump(), 400)
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body") or "body"
        return JSONResponse(ErrorBody(error=f"{where}: {first['msg']}", details=details).model_dump(), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            ErrorBody(error=str(exc.detail)).model_dump(), exc.status_code, headers=exc.headers
        )

    request_body = Body(openapi_examples=request_examples(service))  # examples with this dataset's ids

    async def _prepare(req: RecommendRequest) -> tuple[Episode, bool]:
        problem = await service.backend_problem()
        if problem is not None:
            raise ApiError(
                503,
                f"model back end unavailable: {problem}",
                {"Retry-After": str(service.retry_after_s)},
            )
        service.acquire()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, service.episode, req)
        except BaseException:
            service.release()
            raise

    async def _cancel_when_gone(request: Request, job: _Job) -> None:
        """Cancel `job` when the client disconnects (its body is read, so the next message says so)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel.set()
        job.events.put_nowait(("error", {"status": CLIENT_GONE, "error": "client disconnected"}))

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=errors)
    async def recommend(request: Request, req: RecommendRequest = request_body) -> Response:
        """Run the agent once and return its ranking, evidence and full trajectory."""
        episode, proposed = await _prepare(req)
        job = service.start(req, episode, proposed)
        watcher = asyncio.create_task(_cancel_when_gone(request, job))
        try:
            async for kind, data in service.events(job):
                if kind == "done":
                    return JSONResponse(data)
                if kind == "error" and data["status"] == CLIENT_GONE:
                    return Response(status_code=CLIENT_GONE)  # nobody reads it
                if kind == "error":
                    raise ApiError(data["status"], data["error"])
        finally:
            watcher.cancel()
        raise ApiError(500, "the run ended without a result")  # unreachable: events end in done/error

    @app.post(
        "/v1/recommend/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "SSE events"}, **errors},
    )
    async def recommend_stream(req: RecommendRequest = request_body) -> StreamingResponse:
        """The same run as Server-Sent Events: start, turn, tool_call, tool_result, answer, then done or error."""
        episode, proposed = await _prepare(req)
        job = service.start(req, episode, proposed)

        async def body() -> AsyncIterator[str]:
            async for kind, data in service.events(job):
                yield sse(kind, data)

        # Starlette stops `body()` when the client disconnects, and `events` then cancels the job; the
        # background task covers a client that left before the first event was awaited.
        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(job.cancel.set),
        )

    @app.get("/v1/sample-users", response_model=list[SampleUser])
    async def sample_users_(n: int = Query(default=6, ge=1, le=20)) -> list[SampleUser]:
        """A few users of the dataset with a short summary of their history."""
        out = []
        catalog = resources.catalog
        for user in service.sample_user_ids[:n]:
            seq = resources.log.sequence(user)
            cats = Counter(c for i in seq for c in catalog.categories[catalog.pos[i]] if i in catalog.pos)
            out.append(
                SampleUser(
                    user_id=user,
                    n_items=len(seq),
                    recent=[catalog.title(i) for i in seq[-3:]],
                    top_categories=[c for c, _ in cats.most_common(3)],
                )
            )
        return out

    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health, "description": "The model back end cannot be reached"}},
    )
    async def healthz() -> JSONResponse:
        """Ready (200) or not (503: the model back end cannot be reached), with the reason."""
        problem = await service.backend_problem()
        health = Health(
            status="ok" if problem is None else "unavailable",
            ready=problem is None,
            reason=problem or "",
            dataset=dataset or str(getattr(resources, "name", "")),
            model=service.model_name,
            busy=service.busy,
            max_concurrency=service.max_concurrency,
        )
        return JSONResponse(health.model_dump(), 200 if problem is None else 503)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def main(
    dataset: str,
    host: str,
    port: int,
    model: str | None,
    max_concurrency: int,
    timeout_s: float,
) -> int:
    """`recthinker serve`: load the dataset's resources and the model, then serve until interrupted.

    Args:
        dataset: A bundled dataset name (`ml-1m`), a folder of atomic files or a prepared benchmark.
        host: Interface to bind (keep it on loopback unless a proxy in front handles access).
        port: TCP port.
        model: Chat model spec for `load_chat_model` (None: the default trained model).
        max_concurrency: Agent runs at once (more requests get 503).
        timeout_s: Wall-clock limit per request.
    """
    import uvicorn  # heavy: uvicorn, only to serve (create_app needs none)

    t0 = time.perf_counter()
    bench = ensure_benchmark(dataset)
    resources = load_resources(bench, "dense/test")
    resources.scorer("als")  # fit or load now, not inside the first request
    chat = load_chat_model(model)
    samples = list(dict.fromkeys(e.user_id for e in bench.episodes("dense/test")))[:8]
    app = create_app(
        resources,
        bench.items,
        chat,
        config=default_config("agent", chat),
        max_concurrency=max_concurrency,
        timeout_s=timeout_s,
        model_slots=max_concurrency if model and model.startswith(("http://", "https://")) else 1,
        sample_users=samples,
        dataset=str(bench.manifest.get("dataset", dataset)),
    )
    log.info(
        "serving %s with model %s on http://%s:%d/ (ready in %.1fs)",
        dataset,
        app.state.service.model_name,
        host,
        port,
        time.perf_counter() - t0,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
