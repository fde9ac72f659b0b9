"""Masked-LM pretraining with Chinese whole-word masking (BERT / RoFormer / ALBERT, any attention variant).

    ./launch.sh pretrain                                   # tiny RoFormer on the embedded corpus
    deepspeed --num_gpus 8 pretrain/run_mlm.py --config configs/pretrain/roformer_tiny.json \
        --train_file corpus/ --tokenizer vocab.txt --model_preset roformer-base --max_seq_length 512

Options: see `suji_models.training.pretrain.DataArgs` and `suji_models.training.loop.TrainArgs`
(`--key value` overrides the JSON `--config`).
"""

from pathlib import Path

from suji_models import SujiForMaskedLM
from suji_models.training.errors import run_main
from suji_models.training.pretrain import run

DATA = Path(__file__).resolve().parent / "data"

if __name__ == "__main__":
    run_main(run, "mlm", SujiForMaskedLM, train_file=str(DATA / "peoples_daily_1998_sample.txt"), tokenizer=str(DATA / "vocab.txt"))
