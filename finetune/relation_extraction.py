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

Results (triple-level F1 on 500 DuIE dev sentences, a seeded subset, %; precision / recall in brackets),
all four cells measured with the committed configs, one epoch (250 steps) each, on a shared 2-core CPU
(7-10 minutes a run):

| encoder                                              | GP                  | EGP                | config                      |
|------------------------------------------------------|---------------------|--------------------|-----------------------------|
| random init (roformer-small overrides, 256x4, 7.3M)  | 0.00 (0 predicted)  | 0.00 (0 predicted) | re_duie_{gp,egp}_random     |
| ../shared/models/suji-roformer-small-zh (pretrained) | 11.34 (67.5 / 6.2)  | 2.18 (71.4 / 1.1)  | re_duie_{gp,egp}_pretrained |
| published: BERT-base, full DuIE (bert4keras / bert4torch) | 82.7 / 82.38   | -                  |                             |

Each config: the 4,000 train sentences at --max_seq_length 128 (116 of 7,222 training links cut off and
counted), batch 16 grouped by length (--group_by_length: rows of similar length share a batch, so the L x L
scores pay little for padding), AdamW lr 1e-4 for the encoder and 3e-3 for the head (--head_learning_rate),
20 warmup steps, 1 epoch, evaluated and checkpointed every 125 steps, seed 42, --dev_limit 500 (0 for all
2,000), head_size 64. Run as ``python finetune/relation_extraction.py --config
configs/finetune/re_duie_gp_pretrained.json``. Expect numbers far below the published ones: 4,000 training
sentences, one epoch and a 7.3M-parameter encoder. After one epoch the reference encoder's triples are mostly
right (precision ~70%) but few pass all three thresholds yet (recall 6%); the random encoder predicts none
(training loss 53 vs 36). GP learns faster than EGP here: its per-predicate q/k give each link type its own
view. Why two rates: the link pointers start with a loss in the hundreds (48+ predicates x L^2 cells scored near
0); at one rate of 2e-4 or 1e-3 for everything that loss collapses the encoder and nothing is ever predicted
(found on 8 training sentences), while the encoder at 1e-4 (or 2e-5) with the head at 3e-3 (or 1e-3) fits.
The 1e-4 / 3e-3 pair learns much faster than 2e-5 / 1e-3, which after 150 steps had predicted no triple: with
it, on the smoke test's data (4 predicates, 400 short sentences, head_size 32), held-out F1 is 0.20 after 50
steps and 0.56 after 300.
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
