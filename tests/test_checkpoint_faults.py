"""Verified checkpoints and a full disk during save, without DeepSpeed: the manifest functions on real
files, and `save_checkpoint` with a stand-in engine (torch.distributed's barrier made a no-op)."""

import errno
import json

import pytest
import torch

from suji_models.training import checkpoint as ck
from suji_models.training.errors import UserError


def fake_checkpoint(root, step, payload=b"weights" * 100):
    path = root / f"checkpoint-{step}"
    (path / "state").mkdir(parents=True)
    (path / "state" / "mp_rank_00_model_states.pt").write_bytes(payload)
    (path / "config.json").write_text("{}")
    ck.write_manifest(path, step)
    (path / ck.MARKER).write_text(str(step))
    return path


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    path = fake_checkpoint(tmp_path, 4)
    manifest = json.loads((path / ck.MANIFEST).read_text())
    assert manifest["step"] == 4
    assert sorted(manifest["files"]) == ["config.json", "state/mp_rank_00_model_states.pt"]
    import hashlib

    shard = path / "state" / "mp_rank_00_model_states.pt"
    assert manifest["files"]["state/mp_rank_00_model_states.pt"] == {
        "size": shard.stat().st_size, "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()}
    assert ck.verify_checkpoint(path) is None


def flip_byte(file, offset=10):
    data = bytearray(file.read_bytes())
    data[offset] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, says", [
    (flip_byte, "sha256 differs from the manifest (corrupted)"),
    (lambda f: f.unlink(), "missing"),
    (lambda f: f.write_bytes(f.read_bytes()[:100]), "100 bytes, the manifest says 700 (truncated"),
])
def test_damaged_shard_is_named(tmp_path, damage, says):
    path = fake_checkpoint(tmp_path, 4)
    shard = path / "state" / "mp_rank_00_model_states.pt"
    damage(shard)
    problem = ck.verify_checkpoint(path)
    assert problem is not None and problem.startswith(f"{shard}: ") and says in problem


def test_unreadable_manifest_is_bad_and_legacy_checkpoint_without_manifest_is_accepted(tmp_path):
    path = fake_checkpoint(tmp_path, 4)
    (path / ck.MANIFEST).write_text('{"files": ')
    assert "MANIFEST.json: unreadable manifest" in ck.verify_checkpoint(path)
    (path / ck.MANIFEST).unlink()  # written before manifests existed: COMPLETE only
    assert ck.verify_checkpoint(path) is None
    assert ck.complete_checkpoints(tmp_path) == [path]


def test_bad_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    older, newer = fake_checkpoint(tmp_path, 4), fake_checkpoint(tmp_path, 8)
    (tmp_path / "checkpoint-12").mkdir()  # partial: no COMPLETE, never considered
    flip_byte(newer / "state" / "mp_rank_00_model_states.pt")
    lines = []
    assert ck.newest_valid_checkpoint(tmp_path, log=lines.append) == older
    assert len(lines) == 1 and "checkpoint-8 is bad: " in lines[0] and "mp_rank_00_model_states.pt" in lines[0]
    assert "moved to bad-checkpoint-8" in lines[0]
    assert (tmp_path / "bad-checkpoint-8" / "state").is_dir() and not newer.exists()
    assert ck.complete_checkpoints(tmp_path) == [older]  # the rotation no longer counts it
    flip_byte(older / "config.json", 0)
    assert ck.newest_valid_checkpoint(tmp_path, log=lines.append) is None
    assert (tmp_path / "bad-checkpoint-4").is_dir()


class FakeConfig:
    def save_pretrained(self, path):
        (path / "config.json").write_text("{}")


class FakeEngine:
    """What save_checkpoint uses of a DeepSpeed engine: save_checkpoint writes the shard with torch.save."""

    def __init__(self, fail_with=None):
        self.fail_with = fail_with
        self.module = type("M", (), {"config": FakeConfig()})()

    def save_checkpoint(self, path, tag, client_state):
        (torch_dir := ck.Path(path) / tag).mkdir(parents=True, exist_ok=True)
        if self.fail_with is not None:
            (torch_dir / "mp_rank_00_model_states.pt").write_bytes(b"half a shard")
            raise self.fail_with
        torch.save({"w": torch.arange(4.0), **client_state}, torch_dir / "mp_rank_00_model_states.pt")


@pytest.fixture
def no_barrier(monkeypatch):
    monkeypatch.setattr(ck.dist, "barrier", lambda: None)


def test_save_writes_manifest_then_marker_and_rotates_after(tmp_path, no_barrier):
    for step in (2, 4, 6):
        ck.save_checkpoint(FakeEngine(), tmp_path, step, keep=2, rank=0)
    assert [p.name for p in ck.complete_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert not (tmp_path / "checkpoint-2").exists()
    for path in ck.complete_checkpoints(tmp_path):
        assert ck.verify_checkpoint(path) is None
        assert set(json.loads((path / ck.MANIFEST).read_text())["files"]) == {
            "config.json", "state/mp_rank_00_model_states.pt"}
        assert not list(path.rglob("*.tmp"))


@pytest.mark.parametrize("how", ["engine", "fault_env"])
def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, no_barrier, monkeypatch, how):
    ck.save_checkpoint(FakeEngine(), tmp_path, 4, keep=1, rank=0)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "checkpoint-4").rglob("*") if p.is_file()}
    if how == "engine":
        engine = FakeEngine(fail_with=OSError(errno.ENOSPC, "No space left on device"))
    else:
        engine = FakeEngine()
        monkeypatch.setenv(ck.FAULT_ENV, "8")
    with pytest.raises(UserError, match=r"^no space left on device while saving checkpoint-8 in .*; "
                                        r"checkpoint-4 is intact \(free space and run again to resume\)$"):
        ck.save_checkpoint(engine, tmp_path, 8, keep=1, rank=0)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "checkpoint-4").rglob("*") if p.is_file()}
    assert after == before  # nothing removed or changed before the new checkpoint is complete
    assert ck.complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-4"]  # the partial one never counts
    assert ck.newest_valid_checkpoint(tmp_path, log=pytest.fail) == tmp_path / "checkpoint-4"


def test_other_write_errors_are_not_disguised_and_first_save_says_no_earlier(tmp_path, no_barrier):
    with pytest.raises(PermissionError):
        ck.save_checkpoint(FakeEngine(fail_with=PermissionError(errno.EACCES, "denied")), tmp_path, 2, 1, 0)
    with pytest.raises(UserError, match="checkpoint-2 in .*; there is no earlier checkpoint"):
        ck.save_checkpoint(FakeEngine(fail_with=OSError(errno.ENOSPC, "full")), tmp_path, 2, 1, 0)


def test_resaving_a_step_first_invalidates_the_leftover(tmp_path, no_barrier):
    fake_checkpoint(tmp_path, 4)
    with pytest.raises(UserError):
        ck.save_checkpoint(FakeEngine(fail_with=OSError(errno.ENOSPC, "full")), tmp_path, 4, 1, 0)
    assert ck.complete_checkpoints(tmp_path) == []  # half rewritten: no longer complete


class Payload:
    """What an attacker's pickle would carry: an object whose unpickling runs code."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_checkpoint_files_load_weights_only(tmp_path, capsys):
    good, evil = tmp_path / "good.pt", tmp_path / "evil.pt"
    torch.save({"w": torch.arange(3.0), "step": 4}, good)
    torch.save({"w": torch.arange(3.0), "x": Payload()}, evil)
    assert ck.safe_load(good)["step"] == 4
    with pytest.raises(UserError, match=r"evil.pt: refused to unpickle, not plain tensors and DeepSpeed state"):
        ck.safe_load(evil)
    assert "code ran" not in capsys.readouterr().out


def test_deepspeed_optimizer_state_classes_are_allowed(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients}, tmp_path / "optim.pt")
    state = ck.safe_load(tmp_path / "optim.pt")
    assert state["zero_stage"] == ZeroStageEnum.gradients and state["loss_scaler"].cur_scale == 1.0
