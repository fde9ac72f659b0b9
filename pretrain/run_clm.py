"""Causal-LM pretraining (GPT2 / CPM-LM shapes) on packed documents.

    deepspeed --num_gpus 2 pretrain/run_clm.py --model_preset gpt2-tiny --train_file corpus.txt --tokenizer vocab.txt

Options: see `suji_models.training.pretrain.DataArgs` and `suji_models.training.loop.TrainArgs`.
"""

from pathlib import Path

from suji_models import SujiForCausalLM
from suji_models.training.errors import run_main
from suji_models.training.pretrain import run

DATA = Path(__file__).resolve().parent / "data"

if __name__ == "__main__":
    run_main(run, "clm", SujiForCausalLM, model_preset="gpt2-tiny", output_dir="runs/clm",
             train_file=str(DATA / "peoples_daily_1998_sample.txt"), tokenizer=str(DATA / "vocab.txt"))
