"""TF-free TF1 checkpoint reader (suji_models.convert.tf_checkpoint) and name mapping (tf_names).

Real TF-written fixtures live in shared/fixtures/tf_checkpoints; other cases (optimizer slots,
TF2 object graphs, partitioned variables, ALBERT, GPT2) are synthesized with the small bundle
writer below, which writes the same SSTable / BundleEntryProto layout TensorFlow does.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from suji_models.convert.tf_checkpoint import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    TFCheckpointReader,
    UnsupportedCheckpointError,
    _crc_update_py,
    crc32c,
    masked_crc32c,
    read_tf_checkpoint,
)
from suji_models.convert.tf_names import TFNameMappingError, tf_checkpoint_to_hf

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tf_checkpoints"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no fixtures at {FIXTURES}")

CASES = [("google_bert_tiny", "bert_tiny_hf", "BertForMaskedLM", "bert", 46),
         ("roformer_tiny_bert4keras", "roformer_tiny_hf", "RoFormerForMaskedLM", "roformer", 45)]
INPUTS = dict(input_ids=torch.tensor([[2, 10, 11, 12, 3, 0]]),
              attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]),
              token_type_ids=torch.zeros(1, 6, dtype=torch.long))


# ------------------------------------------------------------------ a minimal bundle writer
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, bytes):  # length-delimited
        return _varint(num << 3 | 2) + _varint(len(value)) + value
    return _varint(num << 3) + _varint(value) if value else b""  # proto3 omits zeros


def _entry(dtype: int, shape, offset: int, size: int, crc: int, slices: int = 0) -> bytes:
    dims = b"".join(_field(2, _field(1, d) or b"") for d in shape)
    return (_field(1, dtype) + _field(2, dims) + _field(4, offset) + _field(5, size)
            + _varint(6 << 3 | 5) + struct.pack("<I", crc)
            + b"".join(_field(7, _field(1, b"\x08\x00")) for _ in range(slices)))


def _block(items) -> bytes:
    """LevelDB block: prefix-compressed entries, restart every 16, restart array, count."""
    out, restarts, prev = bytearray(), [], b""
    for i, (k, v) in enumerate(items):
        shared = 0
        if i % 16 == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(k) - shared) + _varint(len(v)) + k[shared:] + v
        prev = k
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def _write_sstable(path: Path, items, block_size: int = 4096, ctype: int = 0):
    buf = bytearray()

    def put(contents: bytes, t: int = ctype) -> bytes:
        handle = _varint(len(buf)) + _varint(len(contents))
        c = crc32c(contents + bytes([t]))
        buf.extend(contents + bytes([t]) + struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF))
        return handle

    index, chunk, size = [], [], 0
    for k, v in items:
        chunk.append((k, v))
        size += len(k) + len(v)
        if size >= block_size:
            index.append((chunk[-1][0], put(_block(chunk))))
            chunk, size = [], 0
    if chunk:
        index.append((chunk[-1][0], put(_block(chunk))))
    meta = put(_block([]), 0)
    idx = put(_block(index), 0)
    footer = (meta + idx).ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    path.write_bytes(bytes(buf) + footer)


_TF_DTYPE = {np.dtype("float32"): 1, np.dtype("float64"): 2, np.dtype("int32"): 3,
             np.dtype("int64"): 9, np.dtype("float16"): 19}


def write_bundle(prefix: Path, tensors: dict, *, raw_entries=(), header=b"\x08\x01",
                 block_size=4096, ctype=0):
    """Write a TF1 tensor bundle; ``raw_entries`` adds (key, entry bytes) verbatim."""
    data, items = bytearray(), [(b"", header + _field(3, _field(1, 1)))]
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        items.append((name.encode(), _entry(_TF_DTYPE[a.dtype], a.shape, len(data), len(raw),
                                            masked_crc32c(raw))))
        data += raw
    items = sorted(items + list(raw_entries))
    Path(str(prefix) + ".data-00000-of-00001").write_bytes(bytes(data))
    _write_sstable(Path(str(prefix) + ".index"), items, block_size, ctype)


def _copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def _logits(model) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(**INPUTS).logits.numpy()


def _perturb(model: torch.nn.Module, seed: int = 0):
    """Large random weights (as in the fixtures) so that mapping mistakes change the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "LayerNorm" in name or "ln_" in name or "layer_norm" in name:
                p.copy_((1 + 0.1 * noise) if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.2 * noise if p.dim() > 1 else 0.1 * noise)


# ------------------------------------------------------------------------------------ crc32c
def test_crc32c_vectors():
    assert crc32c(b"123456789", pure=True) == 0xE3069283
    assert crc32c(b"", pure=True) == 0
    assert crc32c(bytes(32), pure=True) == 0x8A9136AA  # RFC 3720 test vectors
    assert crc32c(b"\xff" * 32, pure=True) == 0x62A8AB43
    rng = np.random.default_rng(0)
    for n in (1, 3, 2047, 2048, 2049, 9999, 65536 + 5, 300_001):  # braided numpy vs scalar
        b = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(b, pure=True) == _crc_update_py(0xFFFFFFFF, b) ^ 0xFFFFFFFF, n
        assert crc32c(memoryview(b"x" + b)[1:], pure=True) == crc32c(b, pure=True)  # unaligned


# ------------------------------------------------------------------------- real TF fixtures
@pytest.mark.parametrize("tf_dir,hf_dir,cls,family,count", CASES)
def test_reads_every_variable(tf_dir, hf_dir, cls, family, count):
    weights = read_tf_checkpoint(FIXTURES / tf_dir / "bert_model.ckpt")
    listed = {}
    for line in (FIXTURES / tf_dir / "VARIABLES.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")[:2]
            listed[name] = tuple(json.loads(shape))
    assert len(weights) == count == len(listed)
    assert {k: v.shape for k, v in weights.items()} == listed
    assert all(v.dtype == np.float32 for v in weights.values())


def test_path_forms(tmp_path):
    ref = read_tf_checkpoint(FIXTURES / "google_bert_tiny" / "bert_model.ckpt")
    d = _copy_fixture("google_bert_tiny", tmp_path)
    # TF's default Saver writes absolute paths of the training machine: resolved by basename
    (d / "checkpoint").write_text('model_checkpoint_path: "/train/run7/bert_model.ckpt"\n')
    for p in (d, d / "checkpoint", d / "bert_model.ckpt.index",
              d / "bert_model.ckpt.data-00000-of-00001", d / "bert_model.ckpt.meta"):
        got = read_tf_checkpoint(p)
        assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
    (d / "checkpoint").unlink()  # Google's zips ship none: the single .index is found
    assert read_tf_checkpoint(d).keys() == ref.keys()
    for f in ("index", "data-00000-of-00001"):  # a second checkpoint makes the folder ambiguous
        shutil.copy(d / f"bert_model.ckpt.{f}", d / f"model.ckpt-5.{f}")
    with pytest.raises(ValueError, match=r"holds 2 checkpoints \(bert_model\.ckpt\.index, model\.ckpt-5\.index\)"):
        read_tf_checkpoint(d)
    assert read_tf_checkpoint(d / "model.ckpt-5").keys() == ref.keys()


@pytest.mark.parametrize("tf_dir,hf_dir,cls,family,count", CASES)
def test_converted_state_dict_equals_hf(tf_dir, hf_dir, cls, family, count):
    _, state, report = tf_checkpoint_to_hf(FIXTURES / tf_dir)
    ref = load_file(FIXTURES / hf_dir / "model.safetensors")
    assert report["family"] == family and report["architecture"] == cls
    extra = set(state) - set(ref)  # the pooler / NSP head of BertForPreTraining names
    assert extra == ({"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                      "cls.seq_relationship.weight", "cls.seq_relationship.bias"}
                     if family == "bert" else set())
    assert set(ref) <= set(state)
    for k in ref:
        assert state[k].dtype == ref[k].dtype and torch.equal(state[k], ref[k]), k
    assert report["unused"] == ["bert/pooler/dense/bias", "bert/pooler/dense/kernel",
                                "cls/seq_relationship/output_bias",
                                "cls/seq_relationship/output_weights"]
    assert report["ignored"] == [] and report["missing"] == []
    if family == "bert":  # [2, hidden] already: not transposed
        raw = read_tf_checkpoint(FIXTURES / tf_dir)["cls/seq_relationship/output_weights"]
        assert np.array_equal(state["cls.seq_relationship.weight"].numpy(), raw)
    _, mlm_state, _ = tf_checkpoint_to_hf(FIXTURES / tf_dir, head="mlm")
    assert set(mlm_state) == set(ref)


@pytest.mark.parametrize("tf_dir,hf_dir,cls,family,count", CASES)
def test_logits_match_reference(tf_dir, hf_dir, cls, family, count):
    config, state, _ = tf_checkpoint_to_hf(FIXTURES / tf_dir, head="mlm")
    assert config.hidden_act == "gelu"  # exact erf GELU
    model = getattr(transformers, cls)(config)
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) <= set(model.all_tied_weights_keys)
    np.testing.assert_allclose(_logits(model), np.load(FIXTURES / tf_dir / "expected_logits.npy"),
                               atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- damaged inputs
def test_truncated_data_file(tmp_path):
    d = _copy_fixture("google_bert_tiny", tmp_path)
    data = d / "bert_model.ckpt.data-00000-of-00001"
    cut = data.stat().st_size // 2
    data.write_bytes(data.read_bytes()[:cut])
    entries = TFCheckpointReader(d).entries.values()
    victim = min((e for e in entries if e.offset + e.size > cut), key=lambda e: e.offset).name
    with pytest.raises(CorruptCheckpointError,
                       match=rf"data-00000-of-00001: truncated data for variable '{re.escape(victim)}'"):
        read_tf_checkpoint(d)


def test_flipped_data_byte_names_variable(tmp_path):
    d = _copy_fixture("google_bert_tiny", tmp_path)
    name = "bert/encoder/layer_1/attention/self/key/kernel"
    entry = TFCheckpointReader(d).entries[name]
    data = d / "bert_model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 17] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=f"checksum mismatch for variable '{name}'"):
        read_tf_checkpoint(d)
    assert name in read_tf_checkpoint(d, verify=False)  # verify=False reads it anyway


def test_missing_index(tmp_path):
    d = _copy_fixture("google_bert_tiny", tmp_path)
    (d / "bert_model.ckpt.index").unlink()
    with pytest.raises(CheckpointNotFoundError,
                       match=r"index file not found: .*bert_model\.ckpt\.index .*data-00000-of-00001"):
        read_tf_checkpoint(d / "bert_model.ckpt")
    with pytest.raises(FileNotFoundError, match="no TF checkpoint in directory"):
        read_tf_checkpoint(d)


@pytest.mark.parametrize("where", ["data block", "index block"])
def test_flipped_index_byte_fails_block_crc(tmp_path, where):
    d = _copy_fixture("google_bert_tiny", tmp_path)
    index = d / "bert_model.ckpt.index"
    raw = bytearray(index.read_bytes())
    footer, pos, handle = raw[-48:], 0, []
    while len(handle) < 3:  # metaindex offset, size, then the index block offset
        value, shift = 0, 0
        while True:
            value |= (footer[pos] & 0x7F) << shift
            shift, pos = shift + 7, pos + 1
            if not footer[pos - 1] & 0x80:
                break
        handle.append(value)
    idx_offset = handle[2]
    raw[10 if where == "data block" else idx_offset + 2] ^= 0x20
    index.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=f"block crc mismatch in {where}"):
        read_tf_checkpoint(d)


def test_config_shape_mismatch(tmp_path):
    d = _copy_fixture("google_bert_tiny", tmp_path)
    cfg = json.loads((d / "bert_config.json").read_text())
    cfg["hidden_size"] = 48
    (d / "bert_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TFNameMappingError, match=r"shape mismatch .*hidden_size=48.*"
                       r"bert/embeddings/word_embeddings \[128, 32\] -> "
                       r"bert\.embeddings\.word_embeddings\.weight expects \[128, 48\]"):
        tf_checkpoint_to_hf(d)
    cfg["hidden_size"], cfg["num_hidden_layers"] = 32, 1
    (d / "bert_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TFNameMappingError, match=r"no place in BertForPreTraining.*layer_1"):
        tf_checkpoint_to_hf(d)


# ----------------------------------------------------------------- synthesized checkpoints
def test_slots_skipped_multiblock_index(tmp_path):
    """Adam slots + global_step (as in Google's pretraining output), many small data blocks."""
    src = read_tf_checkpoint(FIXTURES / "google_bert_tiny")
    tensors = dict(src)
    for k, v in src.items():
        tensors[k + "/adam_m"], tensors[k + "/adam_v"] = v * 0.5, v * v
    tensors["global_step"] = np.array(1000, dtype=np.int64)
    d = tmp_path / "ckpt"
    d.mkdir()
    write_bundle(d / "model.ckpt-1000", tensors, block_size=256)
    shutil.copy(FIXTURES / "google_bert_tiny" / "bert_config.json", d)
    reader = TFCheckpointReader(d)
    assert len(reader.ignored) == 2 * len(src) + 1 and "global_step" in reader.ignored
    got = reader.read_all()
    assert got.keys() == src.keys() and all(np.array_equal(got[k], src[k]) for k in src)
    config, state, report = tf_checkpoint_to_hf(d, head="mlm")
    assert report["ignored"] == reader.ignored
    model = transformers.BertForMaskedLM(config)
    model.load_state_dict(state, strict=False)
    np.testing.assert_allclose(_logits(model),
                               np.load(FIXTURES / "google_bert_tiny" / "expected_logits.npy"),
                               atol=1e-4, rtol=0)


def test_tf2_object_checkpoint_refused(tmp_path):
    prefix = tmp_path / "ckpt-1"
    graph = _entry(7, (), 0, 0, 0)  # DT_STRING scalar
    write_bundle(prefix, {"model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE": np.zeros((2, 2), np.float32)},
                 raw_entries=[(b"_CHECKPOINTABLE_OBJECT_GRAPH", graph)])
    with pytest.raises(UnsupportedCheckpointError,
                       match=r"ckpt-1\.index: this is a TF2 object-based checkpoint.*"
                             r"_CHECKPOINTABLE_OBJECT_GRAPH"):
        read_tf_checkpoint(prefix)


@pytest.mark.parametrize("case,match", [
    ("partitioned", r"variable 'w' is partitioned into 2 slices"),
    ("slice_key", r"partitioned \(sliced\) variable 'w'"),
    ("big_endian", r"BIG-endian"),
    ("unknown_dtype", r"variable 'w' has dtype complex64"),
    ("compressed", r"data block 0 is compressed \(snappy\)"),
    ("newer_format", r"needs a reader of version >= 5"),
])
def test_unsupported_variants_refused(tmp_path, case, match):
    prefix = tmp_path / "model.ckpt"
    kw = {}
    tensors = {"v": np.ones(3, np.float32)}
    if case == "partitioned":
        kw["raw_entries"] = [(b"w", _entry(1, (4,), 0, 0, 0, slices=2))]
    elif case == "slice_key":
        kw["raw_entries"] = [(b"\x00w\x00\x01", _entry(1, (2,), 0, 8, 0))]
    elif case == "big_endian":
        kw["header"] = b"\x08\x01\x10\x01"
    elif case == "newer_format":  # VersionDef {min_consumer: 5}
        kw["header"] = b"\x08\x01\x1a\x02\x10\x05"
    elif case == "unknown_dtype":
        kw["raw_entries"] = [(b"w", _entry(8, (1,), 12, 8, 0))]
    else:
        kw["ctype"] = 1
    write_bundle(prefix, tensors, **kw)
    with pytest.raises(UnsupportedCheckpointError, match=match):
        read_tf_checkpoint(prefix)


def _albert_tf_names(model: transformers.AlbertForMaskedLM) -> dict:
    """AlbertForMaskedLM weights under Google ALBERT / bert4keras TF names (kernels [in, out])."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    lay = "albert.encoder.albert_layer_groups.0.albert_layers.0."
    tf = "bert/encoder/transformer/group_0/inner_group_0/"
    out = {
        "bert/embeddings/word_embeddings": sd["albert.embeddings.word_embeddings.weight"],
        "bert/embeddings/position_embeddings": sd["albert.embeddings.position_embeddings.weight"],
        "bert/embeddings/token_type_embeddings": sd["albert.embeddings.token_type_embeddings.weight"],
        "bert/embeddings/LayerNorm/gamma": sd["albert.embeddings.LayerNorm.weight"],
        "bert/embeddings/LayerNorm/beta": sd["albert.embeddings.LayerNorm.bias"],
        "bert/encoder/embedding_hidden_mapping_in/kernel": sd["albert.encoder.embedding_hidden_mapping_in.weight"].T,
        "bert/encoder/embedding_hidden_mapping_in/bias": sd["albert.encoder.embedding_hidden_mapping_in.bias"],
        "cls/predictions/transform/dense/kernel": sd["predictions.dense.weight"].T,
        "cls/predictions/transform/dense/bias": sd["predictions.dense.bias"],
        "cls/predictions/transform/LayerNorm/gamma": sd["predictions.LayerNorm.weight"],
        "cls/predictions/transform/LayerNorm/beta": sd["predictions.LayerNorm.bias"],
        "cls/predictions/output_bias": sd["predictions.bias"],
        # SOP head and pooler as in Google's release (random, unused by the MLM model)
        "bert/pooler/dense/kernel": np.eye(32, dtype=np.float32),
        "bert/pooler/dense/bias": np.zeros(32, np.float32),
        "cls/seq_relationship/output_weights": np.ones((2, 32), np.float32),
        "cls/seq_relationship/output_bias": np.zeros(2, np.float32),
    }
    for t, h in [("attention_1/self/query", "attention.query"), ("attention_1/self/key", "attention.key"),
                 ("attention_1/self/value", "attention.value"), ("attention_1/output/dense", "attention.dense"),
                 ("ffn_1/intermediate/dense", "ffn"), ("ffn_1/intermediate/output/dense", "ffn_output")]:
        out[tf + t + "/kernel"], out[tf + t + "/bias"] = sd[lay + h + ".weight"].T, sd[lay + h + ".bias"]
    for t, h in [("LayerNorm", "attention.LayerNorm"), ("LayerNorm_1", "full_layer_layer_norm")]:
        out[tf + t + "/gamma"], out[tf + t + "/beta"] = sd[lay + h + ".weight"], sd[lay + h + ".bias"]
    return out


def test_albert_roundtrip(tmp_path):
    cfg = dict(vocab_size=128, embedding_size=16, hidden_size=32, num_hidden_layers=3,
               num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
               type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, num_hidden_groups=1, inner_group_num=1)
    ref = transformers.AlbertForMaskedLM(transformers.AlbertConfig(**cfg))
    _perturb(ref)
    d = tmp_path / "albert_tiny"
    d.mkdir()
    write_bundle(d / "albert_model.ckpt", _albert_tf_names(ref))
    (d / "albert_config.json").write_text(json.dumps(cfg))
    config, state, report = tf_checkpoint_to_hf(d)
    assert report["family"] == "albert" and report["architecture"] == "AlbertForMaskedLM"
    assert "albert.pooler.weight" in state and "sop_classifier.classifier.weight" in state
    assert torch.equal(state["sop_classifier.classifier.weight"], torch.ones(2, 32))
    assert len(report["unused"]) == 4 and report["missing"] == []
    model = transformers.AlbertForMaskedLM(config)
    result = model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=False)
    assert set(result.missing_keys) <= set(model.all_tied_weights_keys)
    np.testing.assert_allclose(_logits(model), _logits(ref), atol=1e-5, rtol=0)
    pre = transformers.AlbertForPreTraining(config)  # the default state dict fits it whole
    result = pre.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) <= set(pre.all_tied_weights_keys)


def test_gpt2_cpm_roundtrip(tmp_path):
    """bert4keras GPT2 (CPM-LM) names -> GPT2LMHeadModel (q/k/v fused into c_attn)."""
    hf_cfg = transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                                     n_positions=64, activation_function="gelu", resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    ref = transformers.GPT2LMHeadModel(hf_cfg)
    _perturb(ref)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    tf = {"gpt/embeddings/word_embeddings": sd["transformer.wte.weight"],
          "gpt/embeddings/position_embeddings": sd["transformer.wpe.weight"],
          "gpt/output/LayerNorm/gamma": sd["transformer.ln_f.weight"],
          "gpt/output/LayerNorm/beta": sd["transformer.ln_f.bias"]}
    for i in range(2):
        p, h = f"gpt/transformer/layer_{i}/", f"transformer.h.{i}."
        for j, qkv in enumerate(("query", "key", "value")):  # Conv1D is already [in, out]
            tf[p + f"attention/self/{qkv}/kernel"] = sd[h + "attn.c_attn.weight"][:, 32 * j:32 * (j + 1)]
            tf[p + f"attention/self/{qkv}/bias"] = sd[h + "attn.c_attn.bias"][32 * j:32 * (j + 1)]
        for t, hh in [("attention/output/dense", "attn.c_proj"), ("intermediate/dense", "mlp.c_fc"),
                      ("output/dense", "mlp.c_proj")]:
            tf[p + t + "/kernel"], tf[p + t + "/bias"] = sd[h + hh + ".weight"], sd[h + hh + ".bias"]
        for t, hh in [("attention/input/LayerNorm", "ln_1"), ("input/LayerNorm", "ln_2")]:
            tf[p + t + "/gamma"], tf[p + t + "/beta"] = sd[h + hh + ".weight"], sd[h + hh + ".bias"]
    d = tmp_path / "cpm_tiny"
    d.mkdir()
    write_bundle(d / "model.ckpt", tf)
    (d / "config.json").write_text(json.dumps(dict(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    config, state, report = tf_checkpoint_to_hf(d)
    assert report["family"] == "gpt2" and report["unused"] == [] and report["missing"] == []
    assert all(torch.equal(state[k], ref.state_dict()[k]) for k in state)
    model = transformers.GPT2LMHeadModel(config)
    model.load_state_dict(state, strict=False)
    ids = INPUTS["input_ids"]
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()(input_ids=ids).logits.numpy(),
                                   ref.eval()(input_ids=ids).logits.numpy(), atol=1e-5, rtol=0)


def test_nezha_hint_maps_to_bert_names(tmp_path):
    d = _copy_fixture("roformer_tiny_bert4keras", tmp_path)
    cfg = json.loads((d / "bert_config.json").read_text())
    cfg["max_relative_position"] = 64
    (d / "bert_config.json").write_text(json.dumps(cfg))
    config, state, report = tf_checkpoint_to_hf(d)
    assert report["family"] == "nezha" and config.model_type == "bert"
    assert "bert.encoder.layer.1.attention.self.query.weight" in state
    assert report["missing"] == ["bert.embeddings.position_embeddings.weight"]
    assert "NEZHA" in report["notes"][0]


def test_missing_backbone_weight(tmp_path):
    tensors = read_tf_checkpoint(FIXTURES / "google_bert_tiny")
    del tensors["bert/encoder/layer_0/output/dense/kernel"]
    d = tmp_path / "partial"
    d.mkdir()
    write_bundle(d / "bert_model.ckpt", tensors)
    shutil.copy(FIXTURES / "google_bert_tiny" / "bert_config.json", d)
    with pytest.raises(TFNameMappingError, match=r"lacks: bert\.encoder\.layer\.0\.output\.dense\.weight$"):
        tf_checkpoint_to_hf(d)
