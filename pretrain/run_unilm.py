"""UniLM seq2seq pretraining on (source, target) pairs from JSONL, e.g. article -> title.

    deepspeed --num_gpus 2 pretrain/run_unilm.py --train_file news.jsonl --source_field content \
        --target_field title --tokenizer vocab.txt --model_preset roformer-tiny

One encoder, UniLM mask: the source attends to itself, the title to the source and its own past.
Options: see `suji_models.training.pretrain.DataArgs` and `suji_models.training.loop.TrainArgs`.
"""

from suji_models import SujiForUniLM
from suji_models.training.errors import run_main
from suji_models.training.pretrain import run

if __name__ == "__main__":
    run_main(run, "unilm", SujiForUniLM, output_dir="runs/unilm")
