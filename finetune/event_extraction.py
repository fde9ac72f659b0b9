"""Joint event extraction with GPLinker, on DuEE 1.0.

    python finetune/event_extraction.py --config configs/finetune/ee_duee_gp_pretrained.json
    deepspeed --num_gpus 8 finetune/event_extraction.py --train_file duee_train.json --dev_file duee_dev.json \
        --schema duee_event_schema.json --model path/to/chinese-bert --output_dir runs/ee
    python finetune/event_extraction.py --do_train false --model runs/ee/best --schema duee_event_schema.json \
        --predict texts.json          # JSONL with "event_list", in DuEE's own format

Method: "GPLinker：基于GlobalPointer的事件联合抽取" (kexue.fm/archives/8926). One GlobalPointer marks
argument spans per (event type, role), the trigger being one more role (触发词); a head pointer and a
tail pointer link the heads and the tails of two arguments of one event (no RoPE, upper triangle: a
link is written (min, max)); all three trained with sparse ZLPR. Decoding: two arguments are linked when both links are predicted;
per event type, every maximal clique (complete subgraph) of linked arguments that holds a trigger is
one event. --head global_pointer | efficient_global_pointer picks the pointer kind.

Data: ../shared/data/extraction/duee1.0: the official DuEE 1.0 dev set (1,492 sentences, 1,783 events;
schema duee_event_schema.json, 65 event types, required: --schema), split by a seeded shuffle into
train / dev (--dev_fraction 0.2 --split_seed 0: 1,194 train / 298 dev sentences). Events of unknown
types, roles not in the schema and offsets that do not match their text are skipped and counted with
file:line; so are training arguments cut by --max_seq_length (dev and --predict texts are read whole,
in overlapping windows of --eval_max_length tokens, each event reported once).
Metrics (as the post evaluates DuEE): event-level P/R/F1 (event type, trigger and every argument
right) and argument-level P/R/F1 on (event type, role, argument text); the best checkpoint is the one
with the best argument F1 (a small model's event F1 stays near zero for long).

Results (event-level / argument-level F1 on the 298 held-out sentences, %; the best checkpoint by argument F1,
the first on a tie), all cells with the committed configs, 4 epochs (300 steps) each, one process on a shared
2-core CPU (GP ~10 s a step under load, its entity scores are [batch, 282 labels, L, L]; EGP ~3 s):

| encoder                                              | GP           | EGP          | config                      |
|------------------------------------------------------|--------------|--------------|-----------------------------|
| random init (roformer-small overrides, 256x4, 7.3M)  | 2.56 / 0.28  | 0.00 / 0.00  | ee_duee_{gp,egp}_random     |
| ../shared/models/suji-roformer-small-zh (pretrained) | 3.09 / 3.31  | 0.00 / 0.00  | ee_duee_{gp,egp}_pretrained |
| published: bert4torch GPLinker, BERT-base, full DuEE train (11,958 sentences) | 44.1 / 72.8 | - |   |

Each config: 1,194 training sentences at --max_seq_length 128, batch 16 grouped by length (--group_by_length),
AdamW lr 1e-4 for the encoder and 3e-3 for the head (--head_learning_rate: see relation_extraction.py for why),
20 warmup steps, evaluated and checkpointed every 100 steps, seed 42, head_size 64. Run as
``python finetune/event_extraction.py --config configs/finetune/ee_duee_gp_pretrained.json``.
Expect numbers far below the published ones: 1,194 training sentences and a 7.3M-parameter encoder.
With the reference encoder, GP finds triggers from step 100 (315 events predicted) and arguments slowly
(argument precision 86%, recall 1.7% at step 300); EGP predicts triggers (event F1 1.21 at step 300, from events
whose gold has no argument) but no argument yet, so its best checkpoint by argument F1 is step 100; so does
the randomly initialized EGP (event F1 1.46 at step 300). The recipe learns: the smoke test (tests/test_extraction_recipes.py), on the 8 most frequent event types' short sentences
(481, ~45 labels), reaches held-out argument F1 0.18 in 400 steps; the 282 labels of the full schema need
many more steps than this CPU allowed, or a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from suji_models.layers.gplinker import HEADS
from suji_models.tasks.batching import length_batches
from suji_models.tasks.extraction import (
    EVENT_LINK_TYPES,
    EventExample,
    SkipReport,
    SujiForGPLinker,
    collate,
    decode_events,
    encode_events,
    event_counts,
    event_list_for_output,
    read_duee,
    read_event_schema,
    set_gplinker_config,
)
from suji_models.tasks.metrics import scores_from_counts
from suji_models.tasks.output import write_jsonl
from suji_models.tasks.readers import iter_json_objects, json_field, read_texts
from suji_models.tasks.windows import encode_windows
from suji_models.training.finetune import Task, UsageError, run
from suji_models.training.options import option


@dataclass
class EventOptions:
    schema: str = option("", "DuEE event schema: one {event_type, role_list, class} per line (required)")
    head: Literal[HEADS] = option("global_pointer", "pointer kind of the argument and link pointers")
    head_size: int = option(64, "query/key size of each pointer")
    threshold: float = option(0.0, "a span or link is predicted when its score is above this")
    eval_max_length: int = option(512, "dev / predicted texts longer than this many tokens are read in windows")
    eval_overlap: int | None = option(None, "tokens shared by neighbouring windows (default: a quarter of a window)")


class EventTask(Task):
    Options = EventOptions
    model_class = SujiForGPLinker
    best_metric = "argument_f1"
    # small prediction batches: the argument scores are [batch, (type, role) labels, L, L]
    defaults = dict(output_dir="runs/ee", epochs=10.0, learning_rate=1e-3, eval_batch_size=8)

    def __init__(self, options, args, tokenizer, say=print):
        super().__init__(options, args, tokenizer, say)
        if not options.schema:
            raise UsageError("--schema is required (DuEE's duee_event_schema.json)")
        self.schema = read_event_schema(options.schema)
        self.skipped = SkipReport()

    def read(self, path):
        return read_duee(path, self.schema, self.skipped)

    def read_predict(self, path):
        """JSON lines with "text" (and "id", kept; gold events, if any, are ignored), or one text per line."""
        if not Path(path).read_text(encoding="utf-8").lstrip().startswith("{"):
            return [EventExample(text, []) for text in read_texts(path)]
        return [EventExample(json_field(obj, "text", f"{path}:{line}", str), [], obj.get("id"))
                for line, obj in iter_json_objects(path, with_lines=True)]

    def describe(self, train, dev):
        self.encoded = encode_events(self.tokenizer, train, self.schema, self.args.max_seq_length, self.skipped)
        self.say(f"{len(self.schema.roles)} event types, {len(self.schema.labels)} (type, role) labels\n"
                 f"{self.skipped.summary()}")
        self.notes["skipped"] = {"counts": dict(self.skipped.counts()), "first": self.skipped.skipped[:20]}

    def configure(self, config, train):
        o = self.options
        return set_gplinker_config(config, o.head, self.schema.label_names, EVENT_LINK_TYPES, o.head_size,
                                   triangular_links=True)

    def encode(self, examples):
        return [e.as_row() for e in self.encoded if any(e.label_mask)]

    def collate(self, rows):
        return collate(rows, self.tokenizer.pad_token_id, len(self.schema.labels), len(EVENT_LINK_TYPES))

    def predict(self, model, examples, forward):
        if list(model.config.gplinker_entity_types) != self.schema.label_names:
            raise UsageError("the model was trained with other event types / roles than --schema names")
        windows = encode_windows(self.tokenizer, [e.text for e in examples], self.options.eval_max_length,
                                 self.options.eval_overlap)
        found = [[] for _ in windows.examples]
        for chunk in length_batches([len(w.input_ids) for w in windows.examples], self.args.eval_batch_size):
            batch = collate([windows.examples[i].as_row() for i in chunk], self.tokenizer.pad_token_id,
                            len(self.schema.labels), 1)
            out = forward(batch)
            for b, i in enumerate(chunk):
                found[i] = decode_events(out.entity_logits[b].float().cpu(), out.head_logits[b].float().cpu(),
                                         out.tail_logits[b].float().cpu(), windows.examples[i].offsets, self.schema,
                                         self.options.threshold)
        merged = windows.merge(found, start_of=lambda event: event.start)
        return [event_list_for_output(e.text, events, self.schema) for e, events in zip(examples, merged)]

    def metric(self, examples, predictions):
        gold = [event_list_for_output(e.text, e.events, self.schema) for e in examples]
        return event_counts(gold, predictions)

    def scores(self, counts):
        out = {}
        for level in ("event", "argument"):
            for key, value in scores_from_counts(counts, overall=level).items():
                if key != "per_type":
                    out[f"{level}_{key}"] = value
        return out

    def write_predictions(self, path, examples, predictions):
        return write_jsonl(path, ({"text": e.text, **({"id": e.id} if e.id is not None else {}), "event_list": p}
                                  for e, p in zip(examples, predictions)))


if __name__ == "__main__":
    run(EventTask)
