"""finetune/relation_extraction.py and finetune/event_extraction.py: prediction through the driver's windows
(each triple / event reported once, in the dataset's own JSONL format), and end-to-end smoke runs (slow)."""

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

import suji_models as S
from suji_models.tasks.extraction import (
    EVENT_LINK_TYPES,
    RELATION_ENTITY_TYPES,
    TRIGGER,
    Event,
    EventExample,
    RelationExample,
    SujiForGPLinker,
    event_key,
    event_list_for_output,
    set_gplinker_config,
    spo_key,
)
from suji_models.tasks.offsets import char_to_token_maps
from suji_models.tasks.windows import encode_windows
from suji_models.training.finetune import FinetuneArgs, UsageError, evaluate_shard
from tokenization import load_tokenizer

from .conftest import REPO_ROOT, SHARED

sys.path.insert(0, str(REPO_ROOT / "finetune"))
from event_extraction import EventOptions, EventTask  # noqa: E402
from relation_extraction import RelationOptions, RelationTask  # noqa: E402

REFERENCE = SHARED / "models" / "suji-roformer-small-zh"
DUIE = SHARED / "data" / "extraction" / "duie2.0_subset"
DUEE = SHARED / "data" / "extraction" / "duee1.0"
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(REFERENCE))


def perfect_forward(task, text, targets, num_entity, num_link):
    """forward(batch) standing in for the model: on each window row of `text` (as the task cuts it), +1 on the
    gold targets that lie wholly inside that window, -1 elsewhere: what a perfect model would score, so what
    comes out is the windowing and merging alone. `targets`: ("entity", type, span, None), ("link", predicate,
    subject span, object span) or ("event", 0, span, span) (event links read at (min, max)), character spans."""
    windows = encode_windows(task.tokenizer, [text], task.options.eval_max_length, task.options.eval_overlap)
    offsets_of = {tuple(w.input_ids): w.offsets for w in windows.examples}

    def forward(batch):
        size, length = batch["input_ids"].shape
        out = SimpleNamespace(entity_logits=torch.full((size, num_entity, length, length), -1.0),
                              head_logits=torch.full((size, num_link, length, length), -1.0),
                              tail_logits=torch.full((size, num_link, length, length), -1.0))
        for b in range(size):
            ids = batch["input_ids"][b][batch["attention_mask"][b].bool()].tolist()
            starts, ends = char_to_token_maps(offsets_of[tuple(ids)])
            for kind, t, a, c in targets:
                if a[0] not in starts or a[1] not in ends or (c and (c[0] not in starts or c[1] not in ends)):
                    continue
                if kind == "entity":
                    out.entity_logits[b, t, starts[a[0]], ends[a[1]]] = 1.0
                elif kind == "link":
                    out.head_logits[b, t, starts[a[0]], starts[c[0]]] = 1.0
                    out.tail_logits[b, t, ends[a[1]], ends[c[1]]] = 1.0
                else:
                    heads, tails = sorted((starts[a[0]], starts[c[0]])), sorted((ends[a[1]], ends[c[1]]))
                    out.head_logits[b, t, heads[0], heads[1]] = 1.0
                    out.tail_logits[b, t, tails[0], tails[1]] = 1.0
        return out

    return forward, len(windows.examples)


def make_model(entity_types, link_types, vocab_size):
    config = S.SujiConfig.from_preset("roformer-tiny", vocab_size=vocab_size)
    return SujiForGPLinker(set_gplinker_config(config, "global_pointer", entity_types, link_types, head_size=8))


def test_long_texts_are_windowed_and_each_event_reported_once(tokenizer, tmp_path):
    task = EventTask(EventOptions(schema=str(DUEE / "duee_event_schema.json"), eval_max_length=40, eval_overlap=30),
                     FinetuneArgs(eval_batch_size=3), tokenizer, say=lambda *a: None)
    pieces = ["5月份甲骨文在华裁员900余人。", "今天天气很好，我们出去走走吧。", "昨晚警方在城南抓获两名嫌疑人。"]
    text = "".join(pieces * 4)  # 180 characters in windows of 38 text tokens, 30 shared with the next
    events, targets = [], []
    for n in range(4):
        base = n * len("".join(pieces))
        lay = base + len(pieces[0]) + len(pieces[1])
        found = [Event("组织关系-裁员", tuple(sorted([(TRIGGER, base + 8, base + 10), ("裁员方", base + 3, base + 6),
                                                      ("时间", base, base + 3)]))),
                 Event("司法行为-拘捕", tuple(sorted([(TRIGGER, lay + 7, lay + 9), ("拘捕者", lay + 2, lay + 4),
                                                      ("被拘捕者", lay + 9, lay + 14)])))]
        events += found
    labels = task.schema.labels
    for event in events:
        spans = [(labels.index((event.event_type, role)), (s, e)) for role, s, e in event.arguments]
        targets += [("entity", label, span, None) for label, span in spans]
        targets += [("event", 0, a[1], b[1]) for i, a in enumerate(spans) for b in spans[i + 1:]]
    forward, windows = perfect_forward(task, text, targets, len(labels), 1)
    assert windows > 10
    model = make_model(task.schema.label_names, EVENT_LINK_TYPES, len(tokenizer))
    (predicted,) = task.predict(model, [EventExample(text, [], "t1")], forward)
    gold = event_list_for_output(text, sorted(events), task.schema)
    assert sorted(map(event_key, predicted)) == sorted(map(event_key, gold))
    assert len(predicted) == len(gold) == 8  # every event once, though the windows overlap
    path = task.write_predictions(tmp_path / "p.jsonl", [EventExample(text, [], "t1")], [predicted])
    (record,) = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert record["id"] == "t1" and record["text"] == text
    for event in record["event_list"]:
        assert text[event["trigger_start_index"]:].startswith(event["trigger"])
        for a in event["arguments"]:
            assert text[a["argument_start_index"]:].startswith(a["argument"])
    assert {e["class"] for e in record["event_list"]} == {"组织关系", "司法行为"}


def test_relation_predictions_merge_windows_and_are_written_as_duie(tokenizer, tmp_path):
    task = RelationTask(RelationOptions(schema=str(DUIE / "duie_schema.json"), eval_max_length=32, eval_overlap=6),
                        FinetuneArgs(eval_batch_size=2), tokenizer, say=lambda *a: None)
    text = "《功夫》的导演是周星驰。" + "今天天气很好。" * 3 + "张智尧在《楚留香新传》里饰演楚留香"
    ids = {name: i for i, name in enumerate(task.schema.link_names)}
    spans = {name: (text.index(name), text.index(name) + len(name)) for name in ("功夫", "周星驰", "张智尧", "楚留香新传")}
    spans["楚留香"] = (text.rindex("楚留香"), text.rindex("楚留香") + 3)
    triples = [("功夫", "导演", "周星驰"), ("张智尧", "饰演", "楚留香"), ("楚留香", "饰演_inWork", "楚留香新传")]
    targets = []
    for s, p, o in triples:
        targets += [("entity", 0, spans[s], None), ("entity", 1, spans[o], None), ("link", ids[p], spans[s], spans[o])]
    forward, windows = perfect_forward(task, text, targets, 2, len(task.schema.links))
    assert windows == 2
    model = make_model(RELATION_ENTITY_TYPES, task.schema.link_names, len(tokenizer))
    (predicted,) = task.predict(model, [RelationExample(text, [])], forward)
    assert sorted(map(spo_key, predicted)) == sorted([
        ("功夫", "导演", (("@value", "周星驰"),)), ("张智尧", "饰演", (("@value", "楚留香"), ("inWork", "楚留香新传")))])
    path = task.write_predictions(tmp_path / "p.jsonl", [RelationExample(text, [])], [predicted])
    (record,) = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    role = next(s for s in record["spo_list"] if s["predicate"] == "饰演")
    assert role == {"predicate": "饰演", "subject": "张智尧", "subject_type": "娱乐人物",
                    "object": {"@value": "楚留香", "inWork": "楚留香新传"},
                    "object_type": {"@value": "人物", "inWork": "影视作品"}}
    other = make_model(RELATION_ENTITY_TYPES, ["作者"], len(tokenizer))
    with pytest.raises(UsageError, match="other predicates"):
        task.predict(other, [RelationExample(text, [])], forward)


def test_recipes_need_a_schema(tokenizer):
    with pytest.raises(UsageError, match="--schema is required"):
        RelationTask(RelationOptions(), FinetuneArgs(), tokenizer)
    with pytest.raises(UsageError, match="--schema is required"):
        EventTask(EventOptions(), FinetuneArgs(), tokenizer)


# ---- end to end (slow: a few minutes of CPU) ----------------------------------------------------------
# The reference encoder with the committed rates (encoder 1e-4, head 3e-3) on short sentences: within 150
# (relations) / 400 (events) steps the held-out F1 is well above an untrained model's (which predicts no
# correct triple / argument).
# (A 2-layer, 64-wide random encoder only learns, in that time, to stop predicting the ~50% of spans and
# links an untrained pointer scores above 0: its F1 stays 0.)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_recipe(script, args):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1",
           "MASTER_PORT": str(free_port())}  # the default (29500 + pid % 1000) can meet another run's
    run = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=3600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    return log


def held_out_scores(task, model, examples):
    """The recipe's own dev metric (its windows, decoding and counts) for `model` on `examples`."""
    model.eval()
    with torch.no_grad():
        return evaluate_shard(task, model, examples, 0, 1, lambda batch: model(**batch))


def untrained_like(path):
    trained = SujiForGPLinker.from_pretrained(path)
    torch.manual_seed(1)
    return SujiForGPLinker(trained.config)


def short_with(predicates, path, limit):
    """Raw lines of DuIE sentences of at most 50 characters whose triples all have one of `predicates`."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        obj = json.loads(line)
        if len(obj["text"]) <= 50 and obj["spo_list"] and {s["predicate"] for s in obj["spo_list"]} <= predicates:
            out.append(line)
    return out[:limit]


REFERENCE_RUN = ["--model", REFERENCE, "--learning_rate", 1e-4, "--head_learning_rate", 3e-3, "--head_size", 32,
                 "--per_device_batch_size", 16, "--group_by_length", "true", "--warmup_steps", 20,
                 "--log_steps", 25, "--seed", 1]


@pytest.mark.slow
def test_relation_recipe_beats_an_untrained_model_on_held_out_f1(tokenizer, tmp_path):
    keep = {"作者", "歌手", "导演", "主演"}
    (tmp_path / "train.json").write_text("".join(short_with(keep, DUIE / "duie_train.json", 400)), encoding="utf-8")
    (tmp_path / "dev.json").write_text("".join(short_with(keep, DUIE / "duie_dev.json", 60)), encoding="utf-8")
    out = tmp_path / "run"
    log = run_recipe("finetune/relation_extraction.py", [
        "--train_file", tmp_path / "train.json", "--dev_file", tmp_path / "dev.json", "--schema",
        DUIE / "duie_schema.json", "--max_seq_length", 64, "--max_steps", 150, "--eval_steps", 75,
        *REFERENCE_RUN, "--output_dir", out, "--predict", tmp_path / "dev.json"])
    results = json.loads((out / "results.json").read_text())
    assert [h["step"] for h in results["history"]] == [75, 150] and results["dev"]["gold"] == 77
    assert re.search(r"summary: dev f1 [\d.]+", log)
    task = RelationTask(RelationOptions(schema=str(DUIE / "duie_schema.json")), FinetuneArgs(), tokenizer,
                        say=lambda *a: None)
    dev = task.read(tmp_path / "dev.json")
    trained = held_out_scores(task, SujiForGPLinker.from_pretrained(out / "best"), dev)
    untrained = held_out_scores(task, untrained_like(out / "best"), dev)
    assert trained["f1"] == pytest.approx(results["dev"]["f1"])  # the recipe reports what its best model scores
    assert trained["f1"] > 0.2 and untrained["f1"] < 0.02, (trained, untrained)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 60 and all(set(r) == {"text", "spo_list"} for r in records)
    assert sum(len(r["spo_list"]) for r in records) == trained["pred"]


def frequent_event_subset(tmp_path, types=8, max_chars=80):
    """DuEE sentences of at most `max_chars` characters whose events all have one of the `types` most
    frequent event types, and the schema of those types: 481 sentences, 8 types, ~45 (type, role) labels,
    which a smoke run can learn in minutes (the full 282 labels need far longer)."""
    lines = (DUEE / "duee_dev.json").read_text(encoding="utf-8").splitlines(keepends=True)
    counts = Counter(e["event_type"] for line in lines for e in json.loads(line).get("event_list", []))
    keep = {t for t, _ in counts.most_common(types)}
    chosen = [line for line in lines if len((obj := json.loads(line))["text"]) <= max_chars
              and obj.get("event_list") and {e["event_type"] for e in obj["event_list"]} <= keep]
    schema = [line for line in (DUEE / "duee_event_schema.json").read_text(encoding="utf-8").splitlines(keepends=True)
              if json.loads(line)["event_type"] in keep]
    (tmp_path / "train.json").write_text("".join(chosen), encoding="utf-8")
    (tmp_path / "schema.json").write_text("".join(schema), encoding="utf-8")
    return tmp_path / "train.json", tmp_path / "schema.json"


@pytest.mark.slow
def test_event_recipe_beats_an_untrained_model_on_held_out_f1(tokenizer, tmp_path):
    train, schema = frequent_event_subset(tmp_path)
    out = tmp_path / "run"
    log = run_recipe("finetune/event_extraction.py", [
        "--train_file", train, "--dev_fraction", 0.15, "--split_seed", 0, "--schema", schema, "--max_seq_length", 96,
        "--max_steps", 400, "--eval_steps", 200, *REFERENCE_RUN, "--output_dir", out])
    results = json.loads((out / "results.json").read_text())
    assert results["dev_examples"] == 72 and {"event_f1", "argument_f1"} <= set(results["dev"])
    assert re.search(r"summary: dev argument_f1 [\d.]+", log)
    task = EventTask(EventOptions(schema=str(schema)), FinetuneArgs(dev_fraction=0.15), tokenizer,
                     say=lambda *a: None)
    _, dev = task.split(task.read(train))
    trained = held_out_scores(task, SujiForGPLinker.from_pretrained(out / "best"), dev)
    untrained = held_out_scores(task, untrained_like(out / "best"), dev)
    assert trained["argument_f1"] == pytest.approx(results["dev"]["argument_f1"])
    assert trained["argument_f1"] > 0.08 and untrained["argument_f1"] < 0.02, (trained, untrained)


def test_event_texts_to_predict_may_be_jsonl_or_plain_lines(tokenizer, tmp_path):
    task = EventTask(EventOptions(schema=str(DUEE / "duee_event_schema.json")), FinetuneArgs(), tokenizer)
    (tmp_path / "a.json").write_text('{"text": "甲", "id": "x1"}\n{"text": "乙"}\n', encoding="utf-8")
    (tmp_path / "b.txt").write_text("甲\n\n乙\n", encoding="utf-8")
    assert [(e.text, e.id) for e in task.read_predict(tmp_path / "a.json")] == [("甲", "x1"), ("乙", None)]
    assert [(e.text, e.id) for e in task.read_predict(tmp_path / "b.txt")] == [("甲", None), ("乙", None)]
