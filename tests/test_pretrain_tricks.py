"""The training tricks in pretraining (suji_models.training.pretrain): switched by the recipes' options,
and with --ema the final model is the exponential average of the weights the run stepped through."""

import pytest
import torch
from safetensors.torch import load_file

from .test_error_tails import last_line
from .test_pretrain_e2e import CLUE, COMMON, launch, ok

STEPS, DECAY = 4, 0.5
RUN = ["pretrain/run_mlm.py", "--train_file", CLUE, "--max_steps", STEPS, "--zero_stage", 2, "--optimizer", "adax",
       *COMMON]


@pytest.mark.slow  # two pretraining runs (~1.5 min); CI runs the slow tests
def test_ema_final_model_is_the_average_of_the_steps_weights(tmp_path):
    # EMA does not change training (dropout and masks are seeded by step): the plain run's per-step
    # checkpoints hold the raw weights W_1..W_4 that the EMA run averages
    ok(*RUN, "--output_dir", tmp_path / "plain", "--save_steps", 1, "--save_total_limit", STEPS, procs=1)
    ok(*RUN, "--output_dir", tmp_path / "ema", "--ema", DECAY, procs=1)
    raw = [torch.load(tmp_path / "plain" / f"checkpoint-{t}" / "state" / "mp_rank_00_model_states.pt",
                      weights_only=False)["module"] for t in range(1, STEPS)]
    raw.append(load_file(tmp_path / "plain" / "final" / "model.safetensors"))
    final = load_file(tmp_path / "ema" / "final" / "model.safetensors")
    checked = 0
    for name, saved in final.items():
        average = raw[0][name].float()  # the average starts at the first step's weights
        for weights in raw[1:]:
            average = DECAY * average + (1 - DECAY) * weights[name].float()
        torch.testing.assert_close(saved, average, atol=1e-6, rtol=1e-5, msg=name)
        checked += not torch.equal(saved, raw[-1][name])
    assert checked > len(final) // 2  # the saved model is not the last step's weights


def test_rdrop_is_refused_in_pretraining_in_one_line(tmp_path):
    code, log = launch(*RUN, "--output_dir", tmp_path / "run", "--loss_trick", "rdrop", procs=1)
    assert code != 0 and "rdrop is for finetuning" in last_line(log), log[-2000:]
