"""Prompts rendered with the tokenizer's chat template: the exact token ids the engine receives, and a real run."""
import json
import os
import subprocess
import sys

import pytest

from megatron_sgpo.loop.build import InputError, uses_chat_template
from megatron_sgpo.model.flops import ModelShape
from megatron_sgpo.rollout.engine import SamplingParams
from megatron_sgpo.rollout.groups import GroupRunner
from megatron_sgpo.tasks.dataset import TaskItem
from megatron_sgpo.tasks.verifiers import get_verifier

from .helpers import build_tiny_model

# A ChatML-style template written for this test: BOS once, then one block per turn, then the opened assistant turn.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = {"<|im_start|>": 3, "<|im_end|>": 4, "system": 5, "user": 6, "assistant": 7}


def chat_model(path: str) -> str:
    """The rollout tests' tiny Llama, with a tokenizer that knows ChatML's markers and roles and has a template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    build_tiny_model(path)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **SPECIAL}
    vocab.update({f"w{i}": i for i in range(8, 256)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = TEMPLATE
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return chat_model(str(tmp_path_factory.mktemp("chat_llama")))


class RecordingEngine:
    """The real LocalEngine, remembering the token ids of every prompt it was asked to extend."""

    def __init__(self, engine):
        self.engine, self.prompts = engine, []

    def generate(self, prompts, n_per_prompt, params):
        self.prompts.extend(list(p) for p in prompts)
        return self.engine.generate(prompts, n_per_prompt, params)


def runner(model_dir, template: bool, system_prompt: str = ""):
    from transformers import AutoTokenizer

    from megatron_sgpo.model.hf_config import load_hf_config
    from megatron_sgpo.rollout.local import LocalEngine

    engine = RecordingEngine(LocalEngine(model_dir, device="cpu"))
    shape = ModelShape.from_hf_config(load_hf_config(model_dir))
    return GroupRunner(engine, AutoTokenizer.from_pretrained(model_dir), get_verifier("exact"), shape, template,
                       system_prompt)


def test_the_engine_receives_the_templated_token_ids(chat_dir):
    r = runner(chat_dir, template=True, system_prompt="w9 w10")
    groups = r.run([TaskItem("a", "w20 w21 w22", "w30")], [2], SamplingParams(max_new_tokens=3, seed=0))
    im_start, im_end = SPECIAL["<|im_start|>"], SPECIAL["<|im_end|>"]
    expected = [1, im_start, SPECIAL["system"], 9, 10, im_end, im_start, SPECIAL["user"], 20, 21, 22, im_end,
                im_start, SPECIAL["assistant"]]
    assert r.engine.prompts == [expected]  # BOS once, markers as single tokens, assistant turn opened
    assert groups[0].prompt_ids == expected and len(groups[0].completions) == 2


def test_without_the_template_the_prompt_is_tokenised_as_written(chat_dir):
    r = runner(chat_dir, template=False)
    r.run([TaskItem("a", "w20 w21 w22", "w30")], [1], SamplingParams(max_new_tokens=2, seed=0))
    assert r.engine.prompts == [[20, 21, 22]]  # this tokenizer adds no special tokens of its own


def test_chat_template_setting_resolves_against_the_tokenizer(chat_dir):
    from transformers import AutoTokenizer

    with_template = AutoTokenizer.from_pretrained(chat_dir)
    without = AutoTokenizer.from_pretrained(chat_dir)
    without.chat_template = None
    assert uses_chat_template("auto", "", with_template, "x") is True
    assert uses_chat_template("auto", "", without, "x") is False
    assert uses_chat_template("never", "", with_template, "x") is False
    with pytest.raises(InputError, match=r"data.chat_template=always, but the tokenizer in x has no chat template"):
        uses_chat_template("always", "", without, "x")
    with pytest.raises(InputError, match=r"data.system_prompt is set, but the tokenizer in x has no chat template"):
        uses_chat_template("auto", "be brief", without, "x")


def test_profiling_of_a_real_run_sees_the_templated_prompts(chat_dir, tmp_path):
    """``sgpo profile`` on an Instruct-style checkpoint: the profile's prompt lengths are the rendered ones."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"w{20 + i} w{30 + i}", "answer": "w40"}) + "\n"
                            for i in range(4)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_sgpo.cli", "profile", f"run.output_dir={out}", f"model.hf_path={chat_dir}",
           "data.task=jsonl", f"data.train_file={data}", "data.verifier=exact", "data.system_prompt=w9",
           "profile.k=2", "rollout.max_new_tokens=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "profile.partial.jsonl").read_text().splitlines()]
    # BOS + system block (4) + user block (5) + opened assistant turn (2)
    assert [r["prompt_len"] for r in rows] == [1 + 4 + 5 + 2] * 4
