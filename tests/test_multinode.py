"""Two "nodes" on one machine: `torchrun --nnodes 2 --nproc-per-node 1` with c10d rendezvous on 127.0.0.1.

Each torchrun process is what one node of a cluster runs (the README's Multi-node section has the cluster form).
torchrun sets every variable `init_distributed` reads (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
also LOCAL_WORLD_SIZE, which sizes the tokenization processes). It does not set DeepSpeed's LOCAL_SIZE, so
DeepSpeed's same-machine shared-memory allreduce stays off, as it must across nodes. Both nodes share one
--output_dir, as nodes sharing a filesystem do: rank 0 writes the manifest, every rank writes its own shard."""

import glob
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from .conftest import REPO_ROOT
from .test_pretrain_e2e import CLUE, COMMON, free_port, ok, step_losses

STEPS = 8
ARGS = ["--train_file", CLUE, "--max_steps", STEPS, "--deepspeed_config", "configs/deepspeed/zero2.json", *COMMON,
        "--log_steps", 1, "--seed", 7]


def two_nodes(tmp_path, name, *args, timeout=300):
    """Both "nodes" of one torchrun job; returns their logs joined (the step lines come from global rank 0,
    whichever node the rendezvous made it) and the MASTER_PORTs the agents gave their workers."""
    port = free_port()  # the rendezvous endpoint, served by the agent that binds it first
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"suji-{name}-{port}", "--local-addr", "127.0.0.1",
               "pretrain/run_mlm.py", *map(str, args)]
    # LOGLEVEL=INFO: the agents log the master_port they hand to their workers (checked for shm leftovers)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "LOGLEVEL": "INFO"}
    logs, procs = [tmp_path / f"{name}-node{n}.log" for n in range(2)], []
    try:
        for path in logs:
            with open(path, "w") as out:
                procs.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        codes = [proc.wait(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert codes == [0, 0], text[-5000:]
    ports = {port, *map(int, re.findall(r"master_port=(\d+)", text))}
    assert len(ports) > 1, "the agents' master_port line was not found"
    for p in ports:  # nothing of DeepSpeed's shared-memory allreduce may be left for these ports
        assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{p}_*"), f"shared-memory buffer left for port {p}"
    return text


@pytest.mark.slow
def test_two_nodes_on_loopback_resume_equals_uninterrupted_and_single_node(tmp_path):
    """save_steps + stop_at_step + resume across two torchrun "nodes" gives, step for step, the losses of an
    uninterrupted two-node run and of a plain 2-process DeepSpeed run on one node, and the same final weights."""
    single = ok("pretrain/run_mlm.py", *ARGS, "--output_dir", tmp_path / "single")
    full = two_nodes(tmp_path, "full", *ARGS, "--output_dir", tmp_path / "full")
    split = tmp_path / "split"
    first = two_nodes(tmp_path, "first", *ARGS, "--output_dir", split, "--save_steps", 2, "--stop_at_step", 5)
    assert "stopped at step 5" in first
    assert all((split / f"checkpoint-{s}" / "COMPLETE").is_file() for s in (4, 5))  # --save_total_limit 2
    second = two_nodes(tmp_path, "second", *ARGS, "--output_dir", split, "--save_steps", 2)
    assert "resumed from" in second and "at step 5" in second
    expected = step_losses(single)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert step_losses(full) == pytest.approx(expected, abs=1e-6)
    got = {**step_losses(first), **step_losses(second)}
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == pytest.approx(expected, abs=1e-6)
    weights = {run: load_file(tmp_path / run / "final" / "model.safetensors") for run in ("single", "full", "split")}
    for name, value in weights["single"].items():
        for run in ("full", "split"):
            torch.testing.assert_close(weights[run][name], value, atol=1e-6, rtol=0, msg=f"{run}: {name}")
