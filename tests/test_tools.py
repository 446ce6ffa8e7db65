"""RecEnv and the tools: TRL-shaped discovery, schemas from docstrings, the declarations (`@tool`) that every
tool list derives from, bounded outputs with ids, error observations, reset, no leakage of held-out interactions (tiny fixture + ML-1M), index cache, ANN vs
brute force, and the tool commands."""

from __future__ import annotations

import functools
import inspect
import json
import time
from pathlib import Path

import numpy as np
import pytest

from recthinker.data.log import InteractionLog
from recthinker.data.prepared import Benchmark, ensure_benchmark
from recthinker.errors import ConfigError, DataError, RecThinkerError
from recthinker.tools import collab
from recthinker.tools.build import build_resources, load_resources
from recthinker.tools.commands import ToolError, bench_tools, run_tool
from recthinker.tools.env import MAX_CHARS, TOOL_NAMES, TOOLS, RecEnv, ToolHost, clip, tool_schemas
from recthinker.types import Episode

LEAK_SETS = ("dense/test", "sparse/test", "dense/valid", "sparse/valid")
CALLS = {  # one test call per tool: a new tool adds its line (test_every_tool_has_a_test_call)
    "user_profile": {},
    "user_history": {"k": 15},
    "item_info": {"item_ids": ["[1]", "[2]"]},
    "search_items": {"query": "harbor kingdom drama", "scope": "catalog"},
    "similar_users": {"k": 10},
    "item_relations": {},
    "cf_scores": {"model": "als"},
}


@pytest.fixture(scope="module")
def res(tiny_benchmark: Benchmark):
    return load_resources(tiny_benchmark, "dense/test")


@pytest.fixture
def host(res, tiny_benchmark: Benchmark) -> ToolHost:
    e = ToolHost(RecEnv(res))
    e.reset_episode(tiny_benchmark.episodes("dense/test")[0])
    return e


# ---- shape: TRL discovery, schemas --------------------------------------------------------------------


def test_trl_discovers_exactly_the_tools(res):
    # TRL 1.16 lists the public functions of the environment's class, minus reset/get_reward
    on_class = {
        n
        for n, _ in inspect.getmembers(RecEnv, predicate=inspect.isfunction)
        if not n.startswith("_") and n not in ("reset", "get_reward")
    }
    assert on_class == set(TOOL_NAMES)
    # earlier TRL listed the bound methods of the instance: the host's names must not show there either
    on_instance = {n for n, _ in inspect.getmembers(RecEnv(res), predicate=inspect.ismethod) if n[0] != "_"}
    assert on_instance - {"reset"} == set(TOOL_NAMES)
    assert {"call", "signals", "reset_episode", "ok_calls"}.isdisjoint(dir(RecEnv(res)))


def test_trl_gets_a_factory_of_environments(res, tiny_benchmark: Benchmark):
    factory = functools.partial(RecEnv, res)  # what GRPOTrainer(environment_factory=...) calls, no arguments
    a, b = factory(), factory()
    e = tiny_benchmark.episodes("dense/test")[0]
    a.reset(**e.to_dict())
    b.reset(**e.to_dict())
    assert a is not b and a.user_profile() == ToolHost(b).call("user_profile", {}).text
    with pytest.raises(TypeError):
        RecEnv()  # no class-global resources to fall back on


def test_schemas_build_from_docstrings():
    pytest.importorskip("transformers")
    schemas = tool_schemas()
    assert [s["function"]["name"] for s in schemas] == sorted(TOOL_NAMES)  # alphabetical, as TRL lists them
    for s in schemas:
        fn = getattr(RecEnv, s["function"]["name"])
        params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
        props = s["function"]["parameters"].get("properties", {})
        assert s["function"]["description"]
        assert [p.name for p in params] == list(props)
        assert all(props[p.name]["description"] for p in params)
        required = [p.name for p in params if p.default is inspect.Parameter.empty]
        assert s["function"]["parameters"].get("required", []) == required
    item_info = next(s for s in schemas if s["function"]["name"] == "item_info")
    assert item_info["function"]["parameters"]["properties"]["item_ids"]["type"] == "array"


# ---- declarations: one @tool method per tool, every list derives from them -------------------------------


def test_every_tool_has_a_test_call():
    assert list(CALLS) == list(TOOL_NAMES) == list(TOOLS)


def test_declared_limits_are_the_documented_ones():
    for spec in TOOLS.values():
        doc = inspect.getdoc(getattr(RecEnv, spec.name))
        if spec.max_k:
            assert "k" in spec.params and f"(1-{spec.max_k})" in doc, spec.name
        else:
            assert "k" not in spec.params, spec.name


def test_declared_signals_are_signals_the_host_computes(host: ToolHost):
    keys = set(host.signals(models=("als",)))
    for spec in TOOLS.values():
        assert not spec.signal or spec.signal_for({"model": "als"} if "model" in spec.params else {}) in keys
    assert TOOLS["cf_scores"].signal_for({"model": "sasrec"}) == "cf_sasrec"


def test_the_tool_lists_derive_from_the_declarations(host: ToolHost, tiny_benchmark: Benchmark):
    from recthinker.agent.evidence import evidence_signals
    from recthinker.agent.rankers import fixed_workflow_calls
    from recthinker.agent.teacher import TOOL_SIGNAL
    from recthinker.tools.commands import bench_arguments

    e = tiny_benchmark.episodes("dense/test")[0]
    for calls in (fixed_workflow_calls(e, tiny_benchmark.items), list(bench_arguments(host).items())):
        assert [name for name, _ in calls] == list(TOOL_NAMES)
        host.reset_episode(e)
        assert all(host.call(name, args).ok for name, args in calls)
        assert evidence_signals(host.ok_calls) == list(
            dict.fromkeys(TOOLS[n].signal_for(a) for n, a in calls if TOOLS[n].signal)
        )
    # the teacher's map is the declared one without genre_match, on purpose (see agent/teacher.py)
    declared = {n: s.signal_for({}) for n, s in TOOLS.items() if s.signal}
    assert {n: s for n, s in declared.items() if s != "genre_match"} == TOOL_SIGNAL
    assert {n for n, s in declared.items() if s == "genre_match"} == {"user_profile", "user_history"}


def test_every_example_call_succeeds(res, tiny_benchmark: Benchmark):
    host = ToolHost(RecEnv(res))
    for e in tiny_benchmark.episodes("sparse/test"):
        host.reset_episode(e)
        assert all(host.call(name, spec.example).ok for name, spec in TOOLS.items())


# ---- outputs ------------------------------------------------------------------------------------------


def test_every_tool_returns_bounded_text_with_ids(res, tiny_benchmark: Benchmark):
    host = ToolHost(RecEnv(res))
    for e in tiny_benchmark.episodes("dense/test") + tiny_benchmark.episodes("loo/test")[:10]:
        host.reset_episode(e)
        for name, args in CALLS.items():
            obs = host.call(name, args)
            assert obs.ok, (name, obs.text)
            assert 0 < len(obs.text) <= MAX_CHARS
            assert any(i in obs.text for i in res.catalog.pos), (name, obs.text)
            if name in ("item_info", "similar_users", "item_relations", "cf_scores"):
                assert e.candidates[0] in obs.text, (name, obs.text)
        assert host.n_calls == len(CALLS) and host.n_errors == 0


def test_tool_outputs_are_correct_on_the_fixture(host: ToolHost, res):
    hist = host.call("user_history", {"k": 3}).text.splitlines()
    newest = host.history[::-1][:3]
    assert [line.split(" ")[0] for line in hist[1:4]] == list(newest)
    page2 = host.call("user_history", {"k": 3, "page": 2}).text
    assert host.history[-4] in page2 and newest[0] not in page2
    profile = host.call("user_profile", {}).text
    assert "gender" in profile and "History:" in profile and "Top categories" in profile
    info = host.call("item_info", {"item_ids": ["[1]"]}).text
    count = int((res.log.frame["item_id"] == host.candidates[0]).sum())
    assert f"{count} interactions" in info and info.startswith(f"[1] {host.candidates[0]}")
    title = res.catalog.title(host.candidates[0])
    search = host.call("search_items", {"query": title, "k": 1}).text
    assert f"[1] {host.candidates[0]}" in search
    scores = host.call("cf_scores", {}).text.splitlines()[1:]
    assert len(scores) == len(host.candidates) and scores[0].endswith("1.00")
    assert host.call("search_items", {"query": "zzzz qqqq"}).text.startswith("No item")


def test_candidate_labels_and_ids_name_the_same_item(host: ToolHost):
    c3 = host.candidates[2]
    texts = {
        host.call("item_info", {"item_ids": [ref]}).text for ref in ("[3]", "3", f"[3] {c3}", c3, " [ 3 ] ")
    }
    assert len(texts) == 1 and c3 in texts.pop()
    assert (
        host.call("item_relations", {"item_id": "[3]"}).text
        == host.call("item_relations", {"item_id": c3}).text
    )


def test_clip_bounds_any_text():
    long = "\n".join(f"line {i} " + "x" * 50 for i in range(100))
    out = clip(long)
    assert len(out) <= MAX_CHARS and out.endswith("more lines cut: ask for fewer)")
    assert len(clip("y" * 5000)) <= MAX_CHARS


def test_one_env_per_thread_over_shared_resources(res, tiny_benchmark: Benchmark):
    from concurrent.futures import ThreadPoolExecutor

    episodes = tiny_benchmark.episodes("loo/test")

    def run(e: Episode) -> list[str]:
        host = ToolHost(RecEnv(res))
        host.reset_episode(e)
        return [host.call(name, args).text for name, args in CALLS.items()]

    sequential = [run(e) for e in episodes]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, episodes)) == sequential


# ---- model mistakes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "kind", "hint"),
    [
        ("recommend", {}, "unknown_tool", "Available tools: user_profile"),
        ("user_history", {"n": 5}, "bad_arguments", "Usage: user_history(k: integer"),
        ("item_info", {}, "bad_arguments", "missing argument(s) ['item_ids']"),
        ("user_history", {"k": "5"}, "bad_arguments", "'k' must be an integer"),
        ("user_history", {"k": True}, "bad_arguments", "'k' must be an integer"),
        ("item_info", {"item_ids": "m01"}, "bad_arguments", "must be a list of strings"),
        ("item_info", {"item_ids": ["[42]"]}, "unknown_item", "label [1]-[10]"),
        ("item_info", {"item_ids": ["no such movie"]}, "unknown_item", "Unknown item 'no such movie'"),
        ("item_info", {"item_ids": []}, "bad_arguments", "at least one id"),
        ("item_info", {"item_ids": ["[1]"] * 11}, "bad_arguments", "at most 10"),
        ("search_items", {"query": "x", "scope": "web"}, "bad_arguments", "scope must be one of"),
        ("search_items", {"query": "  "}, "bad_arguments", "at least one word"),
        ("similar_users", {"k": 0}, "bad_arguments", "k must be at least 1"),
        ("cf_scores", {"model": "gpt"}, "bad_arguments", "model must be one of ['als', 'sasrec']"),
        ("user_history", "not json", "bad_arguments", "must be a JSON object"),
        ("item_relations", {"item_id": "[0]"}, "unknown_item", "Unknown item '[0]'"),
    ],
)
def test_model_mistakes_become_error_observations(host: ToolHost, name, args, kind, hint):
    obs = host.call(name, args)
    assert not obs.ok and obs.error == kind
    assert hint in obs.text
    assert (host.n_calls, host.n_errors, host.errors_by_kind[kind]) == (1, 1, 1)


def test_arguments_as_json_text_and_integral_floats_are_accepted(host: ToolHost):
    assert host.call("user_history", json.dumps({"k": 2})).text == host.call("user_history", {"k": 2.0}).text
    capped = host.call("similar_users", {"k": 500})
    assert capped.ok and capped.text.endswith("(k capped at 20)")


def test_direct_tool_calls_never_raise_on_model_mistakes(host: ToolHost):
    # TRL calls the bound methods directly: bad values must come back as text, not exceptions
    env = host.env
    assert env.item_info(item_ids=["nope"]).startswith("Unknown item")
    assert "must be an integer" in env.user_history(k="ten")  # type: ignore[arg-type]
    assert host.n_errors == 2
    # an argument the signature lacks fails as a plain method would: TRL shows the model str(error)
    with pytest.raises(TypeError, match=r"^RecEnv.user_history\(\) got an unexpected keyword argument 'n'$"):
        env.user_history(n=5)
    with pytest.raises(TypeError, match=r"^RecEnv.item_info\(\) missing 1 required positional argument"):
        env.item_info()
    assert host.n_calls == 2
    # TRL's calls are recorded with the defaults filled in
    env.user_history()
    assert host.ok_calls[-1] == ("user_history", {"k": 10, "keyword": "", "page": 1})


def test_reset_clears_all_state(host: ToolHost, tiny_benchmark: Benchmark):
    host.call("user_profile", {})
    host.call("nope", {})
    before = (host.candidates, host.history, host.call("item_info", {"item_ids": ["[1]"]}).text)
    other = next(e for e in tiny_benchmark.episodes("sparse/test") if e.candidates[0] != host.candidates[0])
    host.reset_episode(other)
    assert (
        host.n_calls,
        host.n_errors,
        sum(host.calls_by_tool.values()),
        sum(host.errors_by_kind.values()),
    ) == (
        0,
        0,
        0,
        0,
    )
    assert host.episode_id == other.episode_id and host.candidates == other.candidates
    assert host.history != before[1]
    assert other.candidates[0] in host.call("item_info", {"item_ids": ["[1]"]}).text != before[2]


def test_reset_takes_trl_rows_and_drops_the_target(res, tiny_benchmark: Benchmark):
    e = tiny_benchmark.episodes("dense/test")[0]
    env = RecEnv(res)
    assert env.reset(**e.to_dict(), prompt=[{"role": "user", "content": "rank"}]) is None
    assert e.target not in vars(env).values() and "target" not in vars(env)


# ---- no leakage ---------------------------------------------------------------------------------------


def heldout_pairs(bench: Benchmark, episode_set: str = "dense/test") -> set[tuple[str, str]]:
    """(user, item) that the tools of `episode_set` must never see: every test target of every set, and
    every validation target too, except for the leave-one-out test sets, whose input holds the validation
    item by design (SASRec's protocol: their background is train + validation)."""
    sees_valid = episode_set.startswith("loo") and episode_set.endswith("/test")
    sees_valid = sees_valid and bench.manifest["config"].get("loo_test_sees_valid", False)
    return {
        (e.user_id, e.target)
        for name in bench.manifest["episodes"]
        if not (sees_valid and name.endswith("/valid"))
        for e in bench.episodes(name)
    }


def user_side_outputs(host: ToolHost, title: str) -> list[str]:
    """Every user-side output for the episode, all history pages, and searches aimed at the target."""
    out = [host.call("user_profile", {}).text]
    for page in range(1, len(host.history) // 15 + 2):
        out.append(host.call("user_history", {"k": 15, "page": page}).text)
    out.append(host.call("user_history", {"keyword": title}).text)
    out.append(host.call("search_items", {"query": title, "scope": "history"}).text)
    return out


def users_by_item(log: InteractionLog) -> dict[str, set[str]]:
    return {i: set(u) for i, u in log.frame.groupby("item_id", sort=False)["user_id"]}


def assert_no_leak(host: ToolHost, e: Episode, user_targets: set[str], users_of: dict[str, set[str]]) -> None:
    """No tool output for episode `e` reveals that the user interacted with a held-out item.

    `user_targets`: the user's held-out items (validation and test); `users_of`: item -> users in the
    background the tools were built from.
    """
    res = host.resources
    title = res.catalog.title(e.target)
    assert not user_targets & set(host.history), e.episode_id
    for text in user_side_outputs(host, title):
        for t in user_targets:
            assert t not in text, (e.episode_id, text)
            t_title = res.catalog.title(t)
            if t_title not in t:  # ids that are not titles: titles are printed quoted
                assert f'"{t_title}"' not in text, (e.episode_id, text)
    # item-side tools may name the target (it is a candidate) but never as part of the user's history,
    # and its popularity is the background count
    info = host.call("item_info", {"item_ids": [e.target]}).text
    assert "in the user's history" not in info
    assert f" {len(users_of.get(e.target, ()))} interactions" in info
    found = host.call("search_items", {"query": title, "scope": "catalog", "k": 10}).text.splitlines()
    assert not [line for line in found for t in user_targets if t in line and "in the user's history" in line]
    # similar users: never the user; their candidate counts are recounts over the background
    nbrs = collab.similar_users(res.index, e.user_id, host.history, 10)
    names = {str(res.index.users.ids[r]) for r, _, _ in nbrs}
    assert e.user_id not in names
    counts = collab.neighbour_counts(res.index, [r for r, _, _ in nbrs], e.candidates)
    assert counts.tolist() == [len(users_of.get(c, set()) & names) for c in e.candidates]


def check_sets(bench: Benchmark, sets: tuple[str, ...]) -> int:
    """Run the leak checks on every episode of `sets`; returns how many episodes were checked."""
    checked = 0
    for name in sets:
        heldout = heldout_pairs(bench, name)
        res = load_resources(bench, name)
        pairs = set(zip(res.log.frame["user_id"], res.log.frame["item_id"], strict=True))
        assert not heldout & pairs, f"{name}: the background holds held-out interactions"
        users_of = users_by_item(res.log)
        host = ToolHost(RecEnv(res))
        als = res.scorer("als")
        for e in bench.episodes(name):
            host.reset_episode(e)
            assert_no_leak(host, e, {i for u, i in heldout if u == e.user_id}, users_of)
            # collaborative models are fitted on this background: the fitted ALS matrix has no (user, target)
            u, i = als.users_.get(e.user_id), als.items_.get(e.target)
            assert u < 0 or i < 0 or als.matrix_[u, i] == 0
            checked += 1
    return checked


def test_no_leakage_on_the_fixture(tiny_benchmark: Benchmark):
    assert check_sets(tiny_benchmark, (*LEAK_SETS, "loo/test")) == 4 * 5 + 30


def test_leak_check_catches_a_leaky_background(tiny_benchmark: Benchmark, tiny_dataset, tmp_path: Path):
    # the same checks over the full log (held-out rows included) must fail: the test can fail
    leaky = build_resources(tiny_dataset.log, tiny_benchmark.items, tiny_benchmark.users, tmp_path)
    host = ToolHost(RecEnv(leaky))
    e = tiny_benchmark.episodes("dense/test")[0]
    host.reset_episode(e)
    with pytest.raises(AssertionError):
        assert_no_leak(host, e, {e.target}, users_by_item(tiny_dataset.log))


@pytest.mark.realdata
@pytest.mark.slow
def test_no_leakage_on_ml1m():
    bench = ensure_benchmark("ml-1m")
    assert check_sets(bench, LEAK_SETS) == 400


# ---- indices ------------------------------------------------------------------------------------------


def test_index_cache_round_trip(tiny_benchmark: Benchmark, tmp_path: Path):
    log = tiny_benchmark.background("dense/test")
    a = build_resources(log, tiny_benchmark.items, tiny_benchmark.users, tmp_path)
    folders = list(tmp_path.glob("index-*"))
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()
    b = build_resources(log, tiny_benchmark.items, tiny_benchmark.users, tmp_path)  # loads the cache
    assert a.index.fingerprint == b.index.fingerprint
    for name in (
        "item_count",
        "item_mean_rating",
        "user_count",
        "nbr_idx",
        "nbr_sim",
        "user_emb",
        "item_proj",
    ):
        np.testing.assert_array_equal(getattr(a.index, name), getattr(b.index, name))
    assert (a.index.matrix != b.index.matrix).nnz == 0
    assert list(a.index.users.ids) == list(b.index.users.ids)
    q = a.index.user_emb[:3]
    np.testing.assert_array_equal(a.index.ann.knn_query(q, k=5)[0], b.index.ann.knn_query(q, k=5)[0])
    np.testing.assert_allclose(a.index.bm25.get_scores(["silent"]), b.index.bm25.get_scores(["silent"]))
    smaller = InteractionLog(log.frame.iloc[:-1])
    build_resources(smaller, tiny_benchmark.items, tiny_benchmark.users, tmp_path)
    assert len(list(tmp_path.glob("index-*"))) == 2  # another background, another index


def test_similar_users_via_ann_agrees_with_brute_force(res):
    index = res.index
    for user in index.users.ids:
        ann = collab.similar_users(index, user, [], 5)
        exact = collab.exact_similar_users(index, user, [], 5)
        assert [r for r, _, _ in ann] == [r for r, _, _ in exact]
        np.testing.assert_allclose([c for _, c, _ in ann], [c for _, c, _ in exact])
    # the ANN index alone returns the exact nearest embeddings
    emb = index.user_emb
    labels, _ = index.ann.knn_query(emb, k=5)
    brute = np.argsort(-(emb @ emb.T), axis=1, kind="stable")[:, :5]
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(labels, brute, strict=True)]) >= 0.95


def test_cold_user_is_folded_in_from_the_episode_history(res, tiny_benchmark: Benchmark):
    e = tiny_benchmark.episodes("dense/test")[0]
    host = ToolHost(RecEnv(res))
    host.env.reset(
        episode_id="cold", user_id="someone-new", candidates=list(e.candidates), history=list(e.history)
    )
    assert host.history == e.history
    assert "cold-start" not in host.call("user_profile", {}).text
    assert "most similar users" in host.call("similar_users", {}).text
    assert host.call("cf_scores", {}).ok


def test_item_neighbours_match_dense_cosine(res):
    x = res.index.matrix.toarray()
    norms = np.linalg.norm(x, axis=0)
    cos = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(cos, 0)
    for i in range(0, x.shape[1], 7):
        top = res.index.nbr_idx[i][0]
        assert np.isclose(res.index.nbr_sim[i][0], cos[i].max(), atol=1e-5) and np.isclose(
            cos[i, top], cos[i].max()
        )


def test_signals_are_per_candidate_and_match_the_tools(host: ToolHost, res):
    sig = host.signals(models=("als",))
    assert set(sig) == {"popularity", "item_relations", "similar_users", "genre_match", "cf_als"}
    assert all(len(v) == len(host.candidates) and np.isfinite(v).all() for v in sig.values())
    pop = [int((res.log.frame["item_id"] == c).sum()) for c in host.candidates]
    assert sig["popularity"].tolist() == pop
    best = host.candidates[int(np.argmax(sig["cf_als"]))]
    first = host.call("cf_scores", {}).text.splitlines()[1]
    assert first.startswith("1. ") and best in first and first.endswith(" 1.00")


@pytest.mark.slow
def test_sasrec_scores_on_the_fixture(host: ToolHost):
    obs = host.call("cf_scores", {"model": "sasrec"})
    assert obs.ok and len(obs.text.splitlines()) == 1 + len(host.candidates)


# ---- commands -----------------------------------------------------------------------------------------


def test_run_tool_uses_the_users_test_episode(tiny_benchmark: Benchmark):
    e = tiny_benchmark.episodes("dense/test")[0]
    text = run_tool(str(tiny_benchmark.root), e.user_id, "item_info", {"item_ids": ["[1]"]})
    assert text.startswith(f"[1] {e.candidates[0]}")
    given = run_tool(
        str(tiny_benchmark.root), e.user_id, "item_info", {"item_ids": ["[1]"]}, candidates=["m00"]
    )
    assert given.startswith("[1] m00")
    as_json = run_tool(str(tiny_benchmark.root), e.user_id, "user_history", '{"k": 2}')
    assert as_json == run_tool(str(tiny_benchmark.root), e.user_id, "user_history", {"k": 2})


@pytest.mark.parametrize(
    ("name", "args", "kind", "hint"),
    [
        ("nope", {}, "unknown_tool", "Unknown tool 'nope'. Available tools: user_profile"),
        ("user_history", {"k": "x"}, "bad_arguments", "argument 'k' must be an integer"),
        ("user_history", {"bogus": 1}, "bad_arguments", "unknown argument(s) ['bogus']"),
        ("item_info", {}, "bad_arguments", "missing argument(s) ['item_ids']"),
        ("item_info", {"item_ids": ["zzz"]}, "unknown_item", "Unknown item 'zzz'"),
        ("item_relations", {"item_id": "[99]"}, "unknown_item", "Unknown item '[99]'"),
        ("cf_scores", {"model": "gpt"}, "bad_arguments", "model must be one of"),
    ],
)
def test_run_tool_raises_on_an_error_observation(tiny_benchmark: Benchmark, name, args, kind, hint):
    e = tiny_benchmark.episodes("dense/test")[0]
    with pytest.raises(ToolError) as info:
        run_tool(str(tiny_benchmark.root), e.user_id, name, args)
    assert isinstance(info.value, RecThinkerError)
    assert info.value.observation.error == kind and not info.value.observation.ok
    assert hint in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{bad json", "not valid JSON"),
        ('{"k": 5', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"k"', "must be a JSON object"),
        ("5", "must be a JSON object"),
        ("[" * 100_000, "nested too deeply"),
        ([1], "must be a JSON object"),
    ],
)
def test_run_tool_rejects_arguments_that_are_not_a_json_object(tiny_benchmark: Benchmark, args, message):
    e = tiny_benchmark.episodes("dense/test")[0]
    with pytest.raises(ConfigError, match=message):
        run_tool(str(tiny_benchmark.root), e.user_id, "user_history", args)


@pytest.mark.parametrize(
    ("user", "candidates", "message"),
    [
        (None, ["m00", "zzz"], "unknown item id 'zzz'"),
        (None, ["m00", "m01", "m00"], "candidate ids must be distinct"),
        (None, [], "no candidate ids given"),
        ("nobody", None, "unknown user 'nobody'"),
        ("nobody", ["m00"], "unknown user 'nobody'"),
        ("", None, "unknown user ''"),
    ],
)
def test_run_tool_checks_users_and_candidates_like_recommend(
    tiny_benchmark: Benchmark, user, candidates, message
):
    user = tiny_benchmark.episodes("dense/test")[0].user_id if user is None else user
    with pytest.raises(DataError, match=message):
        run_tool(str(tiny_benchmark.root), user, "user_profile", {}, candidates=candidates)


def test_tool_verb_exits_2_with_the_observation_on_stderr(tiny_benchmark: Benchmark, capsys):
    from recthinker.cli import main

    e = tiny_benchmark.episodes("dense/test")[0]
    where = ["--dataset", str(tiny_benchmark.root), "--user", e.user_id]
    assert main(["tool", "user_profile", *where]) == 0
    assert e.user_id in capsys.readouterr().out
    for bad in (
        ["nope"],
        ["item_info", "--args", '{"item_ids": ["zzz"]}'],
        ["user_profile", "--candidates", "zzz"],
        ["user_profile", "--candidates", "m00", "m00"],
        ["user_history", "--args", "{bad json"],
        ["user_history", "--args", "[1, 2]"],
    ):
        assert main(["tool", *bad, *where]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert main(["tool", "nope", *where]) == 2
    assert "Unknown tool 'nope'" in capsys.readouterr().err
    assert main(["tool", "user_profile", "--dataset", str(tiny_benchmark.root), "--user", "nobody"]) == 2
    assert "unknown user 'nobody'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_tools_writes_the_documented_json(tiny_benchmark: Benchmark, tmp_path: Path):
    result = bench_tools(str(tiny_benchmark.root), tmp_path)
    on_disk = json.loads((tmp_path / "tools.json").read_text())
    assert on_disk == result and set(result) == {"latency_ms", "signal_ndcg@10"}
    assert set(result["latency_ms"]) == set(TOOL_NAMES)
    assert all(set(v) == {"p50", "p99"} and 0 < v["p50"] <= v["p99"] for v in result["latency_ms"].values())
    assert set(result["signal_ndcg@10"]) == {"dense", "sparse"}
    assert all(0 <= x <= 1 for s in result["signal_ndcg@10"].values() for x in s.values())
    assert "| tool | p50 | p99 |" in (tmp_path / "tools.md").read_text()


@pytest.mark.realdata
def test_ml1m_similar_users_ann_recall():
    index = load_resources(ensure_benchmark("ml-1m"), "dense/test").index
    users = np.random.default_rng(0).choice(index.users.ids, 100, replace=False)
    recall = [
        len(
            {r for r, _, _ in collab.similar_users(index, u, [], 10)}
            & {r for r, _, _ in collab.exact_similar_users(index, u, [], 10)}
        )
        / 10
        for u in users
    ]
    assert np.mean(recall) >= 0.95


@pytest.mark.realdata
def test_ml1m_resources_load_in_under_2s():
    bench = ensure_benchmark("ml-1m")
    load_resources(bench, "dense/test")  # builds the index on the first run
    start = time.perf_counter()
    load_resources(bench, "dense/test")
    assert time.perf_counter() - start < 2.0
