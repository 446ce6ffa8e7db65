"""Training mechanics on a tiny random Qwen2: one chat format everywhere, assistant-only SFT loss, and
(slow) a few SFT and GRPO steps that must change the adapter weights and log loss / rewards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from recthinker.agent.loop import AgentConfig, system_prompt  # noqa: E402
from recthinker.agent.prompting import render_for_prompt_mode  # noqa: E402
from recthinker.agent.trajectory import Trajectory  # noqa: E402
from recthinker.llm import parse_hermes_tool_calls  # noqa: E402
from recthinker.train.grpo import grpo_row, run_grpo  # noqa: E402
from recthinker.train.model import tiny_test_model  # noqa: E402
from recthinker.train.sft import build_sft_trainer, run_sft, sft_dataset, training_row  # noqa: E402
from recthinker.types import Episode  # noqa: E402

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "user_history",
            "description": "Most recent items of the user.",
            "parameters": {
                "type": "object",
                "properties": {"k": {"type": "integer", "description": "How many items."}},
                "required": [],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "item_info",
            "description": "Details of items.",
            "parameters": {
                "type": "object",
                "properties": {"item_ids": {"type": "array", "items": {"type": "string"}}},
                "required": ["item_ids"],
            },
        },
    },
]
ANSWER = "<analyze>b</analyze><plan>q</plan><answer>[2] > [1] > [3]</answer>"


def trajectory(name: str = "user_history", arguments: str = '{"k": 5}') -> Trajectory:
    """A prompt-mode agent trajectory as the loop records it (JSON-string arguments, tools in the system)."""
    system = system_prompt(AgentConfig(max_tool_calls=2), 3, TOOLS)
    call = {"id": "c0", "type": "function", "function": {"name": name, "arguments": arguments}}
    return Trajectory(
        episode_id="u1/test",
        user_id="u1",
        candidates=["m1", "m2", "m3"],
        target="m2",
        tools=TOOLS,
        messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": "TASK TEXT"},
            {"role": "assistant", "content": "<analyze>a</analyze><plan>p</plan>", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c0", "name": name, "content": "OBSERVATION TEXT"},
            {"role": "assistant", "content": ANSWER},
        ],
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_test_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def test_training_render_matches_prompt_mode(tokenizer) -> None:
    """SFT/GRPO text (structured messages + tools through the template) == the agent's prompt-mode text."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    traj = trajectory()
    row = training_row(traj.to_sft_row())
    trained = tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    prompt_mode = tokenizer.apply_chat_template(render_for_prompt_mode(traj.messages), tokenize=False)
    system_t, rest_t = trained.split("<|im_end|>\n", 1)
    system_p, rest_p = prompt_mode.split("<|im_end|>\n", 1)
    assert rest_t == rest_p  # user task, assistant tool call, tool response, answer: byte-identical
    # the system turn: protocol + one line per tool, the same in both renderings
    assert system_t == system_p.rstrip("\n")
    assert trained.count("# Tools") == 1
    assert '<tool_call>\n{"name": "user_history", "arguments": {"k": 5}}\n</tool_call>' in trained
    assert "<tool_response>\nOBSERVATION TEXT\n</tool_response>" in trained
    # the template already carries TRL's generation markers, so TRL trains with it as is (assistant-only loss)
    assert has_generation_markers(tokenizer.chat_template)
    assert get_training_chat_template(tokenizer) is None
    assert "# Tools\n\n- user_history(" in trained  # one line per tool, no JSON schemas
    # and what the model would write parses back into the call
    assistant = rest_t.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    content, calls = parse_hermes_tool_calls(assistant)
    assert content.strip() == "<analyze>a</analyze><plan>p</plan>"
    assert calls[0]["function"]["name"] == "user_history"
    assert json.loads(calls[0]["function"]["arguments"]) == {"k": 5}


def test_llamacpp_renders_what_training_rendered(tokenizer) -> None:
    """llama.cpp serves the bundled GGUF (and its adapter exports) with the GGUF's own SmolLM2 template; on
    the agent's prompt-mode messages that template writes exactly the text SFT and GRPO trained on."""
    import gguf

    from recthinker.llm import bundled_model_path

    field = gguf.GGUFReader(bundled_model_path()).fields["tokenizer.chat_template"]
    smollm2 = bytes(field.parts[field.data[0]]).decode()
    traj = trajectory()
    row = training_row(traj.to_sft_row())
    trained = tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    served = tokenizer.apply_chat_template(
        render_for_prompt_mode(traj.messages), tokenize=False, chat_template=smollm2
    )
    assert served == trained
    assert "You are a helpful AI assistant named SmolLM" not in served  # our system prompt, not its default


def test_sft_dataset_keeps_each_rows_argument_keys() -> None:
    rows = [trajectory().to_sft_row(), trajectory("item_info", '{"item_ids": ["m1"]}').to_sft_row()]
    ds = sft_dataset(rows)
    args = [ds[i]["messages"][2]["tool_calls"][0]["function"]["arguments"] for i in range(2)]
    assert args == [{"k": 5}, {"item_ids": ["m1"]}]  # no merged struct with null-filled keys
    assert ds[0]["tools"] == TOOLS


def test_sft_loss_covers_assistant_turns_only(tiny_dir: Path, tmp_path: Path) -> None:
    rows = [trajectory().to_sft_row(), trajectory("item_info", '{"item_ids": ["m1"]}').to_sft_row()]
    trainer = build_sft_trainer(rows, tiny_dir, tmp_path, max_steps=1, per_device_train_batch_size=2)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    tok = trainer.processing_class
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    learned = tok.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
    assert learned == (
        '\n<analyze>a</analyze><plan>p</plan>\n<tool_call>\n{"name": "user_history", "arguments": {"k": 5}}'
        "\n</tool_call><|im_end|>\n\n" + ANSWER + "<|im_end|>\n"
    )
    masked = tok.decode([i for i, label in zip(ids, labels, strict=True) if label == -100])
    for text in ("TASK TEXT", "OBSERVATION TEXT", "<tool_response>", "# Tools", "You are RecThinker"):
        assert text in masked


# -- slow: a few real optimizer steps ----------------------------------------------------------------------


def _lora_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def sft_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sft")
    row = trajectory().to_sft_row()
    # one repeated batch and a high learning rate: the loss must fall
    run_sft([row] * 4, tiny_dir, out, max_steps=5, per_device_train_batch_size=4, learning_rate=1e-2)
    return out


@pytest.mark.slow
def test_sft_steps_change_adapter_and_log_falling_loss(sft_run: Path) -> None:
    tensors = _lora_tensors(sft_run / "adapter")
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # PEFT starts every B at zero
    rows = [json.loads(line) for line in (sft_run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 5
    assert losses[-1] < losses[0]
    assert (sft_run / "loss.png").stat().st_size > 0
    config = json.loads((sft_run / "config.json").read_text())
    assert config["trainer"]["assistant_only_loss"] is True and config["lora"]["r"] == 16
    assert (sft_run / "adapter" / "chat_template.jinja").is_file()


class TinyEnv:
    """A two-tool environment in TRL's shape, standing in for `RecEnv`."""

    def reset(self, *, user_id: str, candidates: list[str], **_: object) -> None:
        self.user_id, self.candidates, self.n_calls = user_id, list(candidates), 0
        return None

    def user_history(self, k: int = 5) -> str:
        """The user's most recent items.

        Args:
            k: How many items to list (1-10).
        """
        self.n_calls += 1
        return f"{self.user_id}: " + ", ".join(self.candidates[:k])

    def item_info(self, item_ids: list[str]) -> str:
        """Titles of items.

        Args:
            item_ids: Item ids to describe.
        """
        self.n_calls += 1
        return "\n".join(f"{i}: a film" for i in item_ids)


def length_reward(completions: list, **kwargs: object) -> list[float]:
    """Varies within every group, so the advantages (and the gradient) are never all zero."""
    return [len(json.dumps(c)) / 1000 for c in completions]


@pytest.mark.slow
def test_grpo_steps_change_adapter_and_log_rewards(sft_run: Path, tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    episodes = [
        Episode(
            episode_id=f"u{u}/train",
            user_id=f"u{u}",
            history=("m01", "m02"),
            candidates=tuple(f"m{j:02d}" for j in range(10)),
            target="m03",
        )
        for u in range(2)
    ]
    rows = [grpo_row(e, None) for e in episodes]
    before = _lora_tensors(sft_run / "adapter")
    adapter = run_grpo(
        rows,
        sft_run / "adapter",  # continue the SFT adapter
        tmp_path,
        TinyEnv,
        extra_rewards=[(length_reward, 1.0)],
        max_steps=2,
        max_completion_length=48,
        learning_rate=1e-3,
    )
    after = _lora_tensors(adapter)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert len(steps) == 2
    for r in steps:
        for name in ("ndcg_reward", "format_reward", "tool_efficiency_reward"):
            assert f"rewards/{name}/mean" in r
        assert "tools/call_frequency" in r
        assert -1.5 <= r["rewards/format_reward/mean"] <= 1.0
    assert (tmp_path / "rewards.png").stat().st_size > 0 and (tmp_path / "tools.png").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["rewards"]["tool_budget"] == 3
