"""Relation extraction (subject, predicate, object) with GPLinker, on DuIE 2.0.

    python finetune/relation_extraction.py --config configs/finetune/re_duie_gp_pretrained.json
    deepspeed --num_gpus 8 finetune/relation_extraction.py --train_file duie_train.json \
        --dev_file duie_dev.json --schema duie_schema.json --model path/to/chinese-bert --output_dir runs/re
    python finetune/relation_extraction.py --do_train false --model runs/re/best --schema duie_schema.json \
        --predict texts.json          # JSONL with "spo_list", in DuIE's own format

Method: "GPLinker：基于GlobalPointer的实体关系联合抽取" (kexue.fm/archives/8888). One GlobalPointer marks
subject and object spans; per predicate, a head pointer links subject head -> object head and a tail
pointer subject tail -> object tail (no RoPE, no triangle); all three trained with sparse ZLPR. A
triple is decoded when both of its spans and both links are predicted, so an entity may be in several
triples and a pair may hold several predicates. DuIE 2.0's complex objects (``{"@value", "inWork",
...}``) are modelled: each extra slot is one more link type ``predicate_slot`` from the ``@value``
object to the slot's value (see suji_models/tasks/extraction.py). --head global_pointer |
efficient_global_pointer picks the pointer kind of all three.

Data: ../shared/data/extraction/duie2.0_subset: train 4,000 / dev 2,000 sentences, 48 predicates
(duie_schema.json, required: --schema). DuIE gives entities as strings: each is placed at its first
occurrence on token boundaries. Triples whose predicate, subject or object do not fit the schema or
the text are skipped and counted with file:line; so are training triples cut by --max_seq_length (dev
and --predict texts are read whole, in overlapping windows of --eval_max_length tokens, each triple
reported once). Metric: DuIE's triple-level micro P/R/F1 on exact (subject, predicate, object), a
complex object right only when all of its slots are.

Results (triple-level F1 on DuIE dev, %, first 500 dev sentences). Measured so far: the reference encoder
with the GP head, 150 steps (0.6 epoch), twice: F1 0.00 both times (no triple predicted), first with one learning
rate of 1e-3 for encoder and head, then with the committed --learning_rate 2e-5 --head_learning_rate 1e-3.
What that means, found on 8 training sentences (full batch): with one rate of 2e-4 or 1e-3 the loss sticks at
~46 and nothing is ever predicted, because the link pointers' initial loss (~440 each: 48+ predicates x L^2
cells scored near 0) drives the encoder to a collapsed state; the entity pointer alone fits them in 10 steps;
with the encoder at 2e-5 and the head at 1e-3 all three fit (loss 898 -> 11 in 20 steps, 20 of 24 entities
predicted). So the recipe learns, but 150 steps on the full data are too few for any triple to pass all three
thresholds; the rows below need a longer run than this CPU allowed (about 2-4 s a step here):

| encoder                                              | GP           | EGP          | config                    |
|------------------------------------------------------|--------------|--------------|---------------------------|
| random init (roformer-small overrides, 256x4, 7.3M)  | not measured | not measured | re_duie_{gp,egp}_random     |
| ../shared/models/suji-roformer-small-zh (pretrained) | 0.00 (150 steps) | not measured | re_duie_{gp,egp}_pretrained |
| published: BERT-base, full DuIE (bert4keras / bert4torch) | 82.7 / 82.38 | -        |                           |

Each config: the 4,000 train sentences at --max_seq_length 128 (116 of 7,222 training links cut off and
counted), batch 16, AdamW lr 2e-5 for the encoder and 1e-3 for the head (--head_learning_rate), 20 warmup
steps, 1 epoch (250 steps; evaluated and checkpointed every 125), seed 42, evaluated on 500 dev sentences
(--dev_limit 500, a seeded subset; 0 for all 2,000), head_size 64. The one measured cell ran the earlier
form of the config: 150 steps, the first 500 dev sentences. Run as
``python finetune/relation_extraction.py --config configs/finetune/re_duie_gp_pretrained.json``. Expect
numbers far below the published ones: 4,000 training sentences and a 7.3M-parameter encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from suji_models.layers.gplinker import HEADS
from suji_models.tasks.batching import length_batches
from suji_models.tasks.extraction import (
    RELATION_ENTITY_TYPES,
    RelationExample,
    SkipReport,
    SujiForGPLinker,
    collate,
    decode_relations,
    encode_relations,
    read_duie,
    read_relation_schema,
    relation_counts,
    set_gplinker_config,
    spo_for_output,
    spo_from_triples,
)
from suji_models.tasks.output import write_jsonl
from suji_models.tasks.readers import read_texts
from suji_models.tasks.windows import encode_windows
from suji_models.training.finetune import Task, UsageError, run
from suji_models.training.options import option


@dataclass
class RelationOptions:
    schema: str = option("", "DuIE schema: one {predicate, subject_type, object_type} per line (required)")
    head: Literal[HEADS] = option("global_pointer", "pointer kind of the entity and link pointers")
    head_size: int = option(64, "query/key size of each pointer")
    threshold: float = option(0.0, "a span or link is predicted when its score is above this")
    eval_max_length: int = option(512, "dev / predicted texts longer than this many tokens are read in windows")
    eval_overlap: int | None = option(None, "tokens shared by neighbouring windows (default: a quarter of a window)")


class RelationTask(Task):
    Options = RelationOptions
    model_class = SujiForGPLinker
    # small prediction batches: the link scores are [batch, predicates, L, L], L the longest text of the batch
    defaults = dict(output_dir="runs/re", epochs=10.0, learning_rate=1e-3, eval_batch_size=8)

    def __init__(self, options, args, tokenizer, say=print):
        super().__init__(options, args, tokenizer, say)
        if not options.schema:
            raise UsageError("--schema is required (DuIE's duie_schema.json)")
        self.schema = read_relation_schema(options.schema)
        self.skipped = SkipReport()

    def read(self, path):
        return read_duie(path, self.schema, self.skipped)

    def read_predict(self, path):
        return [RelationExample(text, []) for text in read_texts(path)]

    def describe(self, train, dev):
        self.encoded = encode_relations(self.tokenizer, train, self.schema, self.args.max_seq_length, self.skipped)
        self.say(f"{len(self.schema.predicates)} predicates, {len(self.schema.links)} link types\n"
                 f"{self.skipped.summary()}")
        self.notes["skipped"] = {"counts": dict(self.skipped.counts()), "first": self.skipped.skipped[:20]}

    def configure(self, config, train):
        o = self.options
        return set_gplinker_config(config, o.head, RELATION_ENTITY_TYPES, self.schema.link_names, o.head_size)

    def encode(self, examples):
        return [e.as_row() for e in self.encoded if any(e.label_mask)]

    def collate(self, rows):
        return collate(rows, self.tokenizer.pad_token_id, len(RELATION_ENTITY_TYPES), len(self.schema.links))

    def predict(self, model, examples, forward):
        if list(model.config.gplinker_link_types) != self.schema.link_names:
            raise UsageError("the model was trained with other predicates than --schema names")
        windows = encode_windows(self.tokenizer, [e.text for e in examples], self.options.eval_max_length,
                                 self.options.eval_overlap)
        found = [[] for _ in windows.examples]
        for chunk in length_batches([len(w.input_ids) for w in windows.examples], self.args.eval_batch_size):
            batch = collate([windows.examples[i].as_row() for i in chunk], self.tokenizer.pad_token_id, 2,
                            len(self.schema.links))
            out = forward(batch)
            for b, i in enumerate(chunk):
                found[i] = decode_relations(out.entity_logits[b].float().cpu(), out.head_logits[b].float().cpu(),
                                            out.tail_logits[b].float().cpu(), windows.examples[i].offsets,
                                            self.options.threshold)
        merged = windows.merge(found, start_of=lambda t: min(t[0], t[3]))
        return [spo_from_triples(e.text, triples, self.schema) for e, triples in zip(examples, merged)]

    def metric(self, examples, predictions):
        return relation_counts([e.spo_list for e in examples], predictions)

    def write_predictions(self, path, examples, predictions):
        return write_jsonl(path, ({"text": e.text, "spo_list": spo_for_output(p, self.schema)}
                                  for e, p in zip(examples, predictions)))


if __name__ == "__main__":
    run(RelationTask)
