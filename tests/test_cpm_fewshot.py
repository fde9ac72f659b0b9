"""CPM-LM few-shot: low-memory loading of a CPM-Generate folder (transformers gpt2 + CpmTokenizer) and
of a bert4keras TF checkpoint, on a small random model of the same architecture with a sentencepiece
vocabulary built by `tokenization`; the 2.6B shape planned on the meta device; few-shot prompting."""

import json
import subprocess
import sys

import pytest
import torch
import transformers

import suji_models as S
from suji_models.tasks import fewshot as F
from tokenization import build_sentencepiece, load_tokenizer

from .conftest import REPO_ROOT, SHARED
from .test_tf_checkpoint import write_bundle

NEWS = SHARED / "data" / "corpus" / "clue_corpus_small" / "CLUECorpusSmall_sampled.txt"
HIDDEN, LAYERS = 32, 2


@pytest.fixture(scope="module")
def cpm_dir(tmp_path_factory):
    """A CPM-Generate-style folder: GPT2LMHeadModel (random, same architecture) + spiece.model."""
    folder = build_sentencepiece(NEWS, tmp_path_factory.mktemp("cpm"), vocab_size=4000, max_texts=200)
    tokenizer = load_tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_inner=64,
                                     n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping shows
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(cpm_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(cpm_dir).eval()


IDS = torch.tensor([[5, 17, 99, 230, 4, 61, 300]])


def test_cpm_generate_folder_loads_on_meta_without_random_init(cpm_dir, reference, monkeypatch):
    materialized = []
    original = S.SujiPreTrainedModel._init_weights

    def spy(self, module):
        materialized += [p for p in module.parameters(recurse=False) if not p.is_meta]
        return original(self, module)

    monkeypatch.setattr(S.SujiPreTrainedModel, "_init_weights", spy)
    model, info = F.load_low_memory(cpm_dir, torch.float32)
    assert materialized == []  # built on the meta device: no random weights ever allocated
    assert info["missing_keys"] == [] and info["unknown_keys"] == []
    assert model.lm_head.decoder.weight is model.suji.embeddings.word_embeddings.weight  # tied
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, reference(input_ids=IDS).logits, atol=1e-5, rtol=0)


def test_bfloat16_load_and_greedy_generation_equal_gpt2(cpm_dir, reference):
    model, _ = F.load_low_memory(cpm_dir, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        ours = model(input_ids=IDS).logits.float()
        bf16_reference = transformers.GPT2LMHeadModel.from_pretrained(cpm_dir, dtype=torch.bfloat16).eval()
        theirs = bf16_reference(input_ids=IDS).logits.float()
    torch.testing.assert_close(ours, theirs, atol=0.05, rtol=0.02)
    fp32, _ = F.load_low_memory(cpm_dir, torch.float32)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert fp32.generate(input_ids=IDS, **kwargs).tolist() == reference.generate(input_ids=IDS, **kwargs).tolist()


def test_bert4keras_tf_checkpoint_loads(cpm_dir, reference, tmp_path):
    sd = {k: v.numpy() for k, v in reference.state_dict().items()}
    tf = {"gpt/embeddings/word_embeddings": sd["transformer.wte.weight"],
          "gpt/embeddings/position_embeddings": sd["transformer.wpe.weight"],
          "gpt/output/LayerNorm/gamma": sd["transformer.ln_f.weight"],
          "gpt/output/LayerNorm/beta": sd["transformer.ln_f.bias"]}
    for i in range(LAYERS):
        p, h = f"gpt/transformer/layer_{i}/", f"transformer.h.{i}."
        for j, qkv in enumerate(("query", "key", "value")):
            tf[p + f"attention/self/{qkv}/kernel"] = sd[h + "attn.c_attn.weight"][:, HIDDEN * j:HIDDEN * (j + 1)]
            tf[p + f"attention/self/{qkv}/bias"] = sd[h + "attn.c_attn.bias"][HIDDEN * j:HIDDEN * (j + 1)]
        for t, hh in [("attention/output/dense", "attn.c_proj"), ("intermediate/dense", "mlp.c_fc"),
                      ("output/dense", "mlp.c_proj")]:
            tf[p + t + "/kernel"], tf[p + t + "/bias"] = sd[h + hh + ".weight"], sd[h + hh + ".bias"]
        for t, hh in [("attention/input/LayerNorm", "ln_1"), ("input/LayerNorm", "ln_2")]:
            tf[p + t + "/gamma"], tf[p + t + "/beta"] = sd[h + hh + ".weight"], sd[h + hh + ".bias"]
    write_bundle(tmp_path / "model.ckpt", tf)
    cfg = reference.config
    (tmp_path / "config.json").write_text(json.dumps(dict(
        vocab_size=cfg.vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=256, hidden_act="gelu_new",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    model, _ = F.load_low_memory(tmp_path, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, reference(input_ids=IDS).logits, atol=1e-5, rtol=0)


def test_plan_for_the_2_6b_shape_on_meta():
    config = S.SujiConfig.from_preset("cpm-lm-2.6b")
    H, L, V, P = 2560, 32, 30000, 1024
    expected = V * H + P * H + L * (12 * H * H + 13 * H) + 2 * H  # embeddings, layers, final norm (head tied)
    assert F.count_parameters(config) == expected == 2_597_073_920
    for dtype, size in [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)]:
        plan = F.memory_plan(config, dtype, batch=2, context=512, parameters=expected)
        assert plan.weights == expected * size
        assert plan.kv_cache == 2 * L * 2 * 512 * H * size
        assert plan.total == plan.weights + plan.kv_cache + plan.loading_staging + plan.overhead
    tf_plan = F.memory_plan(config, torch.bfloat16, parameters=expected, source="tf")
    assert tf_plan.loading_staging == expected * 4  # a TF bundle is read whole, in fp32
    table = F.plan_table(config, 1024)
    assert "| bfloat16 | 4.84 |" in table and "| float32 | 9.67 |" in table


def test_clear_error_when_the_machine_lacks_memory(cpm_dir, monkeypatch):
    plan = F.memory_plan(S.SujiConfig.from_preset("cpm-lm-2.6b"), torch.float32, parameters=2_597_073_920)
    with pytest.raises(F.InsufficientMemoryError, match=r"not enough memory on cpu: 2\.597B parameters in "
                                                        r"float32: weights 9\.67 GiB.*but 4\.00 GiB is available.*"
                                                        r"--dtype bfloat16"):
        F.check_fits(plan, "cpu", available=4 * F.GiB)
    F.check_fits(plan, "cpu", available=64 * F.GiB)  # fits: no error
    monkeypatch.setattr(F, "available_memory", lambda device: 1024)
    with pytest.raises(F.InsufficientMemoryError):
        F.load_low_memory(cpm_dir, torch.float32)  # checked before anything is read into the model
    assert F.available_memory("cpu") > 0


def test_fewshot_prompt_and_completion_stop_at_the_line_end(cpm_dir):
    prompt = F.fewshot_prompt("问题：{x}\n答案：{y}", [("中国的首都是哪里？", "北京")], "英国的首都是哪里？")
    assert prompt == "问题：中国的首都是哪里？\n答案：北京\n问题：英国的首都是哪里？\n答案："
    tokenizer = load_tokenizer(cpm_dir)
    newline = F.newline_token_id(tokenizer)
    assert tokenizer.convert_ids_to_tokens(newline) == "\u2583"
    model, _ = F.load_low_memory(cpm_dir, torch.float32)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0,
                         eos_token_id=None)[0, len(ids):].tolist()
    expected = tokenizer.decode(out[: out.index(newline)] if newline in out else out, skip_special_tokens=True)
    assert F.complete(model, tokenizer, prompt, max_new_tokens=12) == expected.strip()
    rows = F.run_task(model, tokenizer, "translation", max_new_tokens=4)
    assert [r["query"] for r in rows] == F.TASKS["translation"]["queries"]
    assert all(r["prompt"].endswith(f"{r['query']}的英文是") for r in rows)


def test_script_plans_the_2_6b_shape_and_answers_with_the_tiny_model(cpm_dir, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    import os

    plan = subprocess.run([sys.executable, "finetune/cpm_fewshot.py", "--model_preset", "cpm-lm-2.6b", "--plan"],
                          cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "2,597,073,920 parameters" in plan.stdout and "| bfloat16 | 4.84 |" in plan.stdout
    out = tmp_path / "answers.json"
    run = subprocess.run([sys.executable, "finetune/cpm_fewshot.py", "--model", str(cpm_dir), "--tasks", "qa,sentiment",
                          "--max_new_tokens", "4", "--output", str(out)],
                         cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [r["task"] for r in rows] == ["qa", "qa", "sentiment", "sentiment"]
    assert run.stdout.count("[qa]") == 2


def test_streamed_completion_prints_what_it_returns(cpm_dir, capsys):
    from transformers import TextStreamer

    tokenizer = load_tokenizer(cpm_dir)
    model, _ = F.load_low_memory(cpm_dir, torch.float32)
    prompt = F.fewshot_prompt("{x}的英文是{y}", [("狗", "dog"), ("猫", "cat")], "猪")
    capsys.readouterr()
    answer = F.complete(model, tokenizer, prompt, max_new_tokens=6,
                        streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
    assert capsys.readouterr().out.split("\n")[0].strip() == answer
