"""TensorFlow checkpoints through the public API: from_pretrained and the conversion CLI."""

import numpy as np
import pytest
import torch
import transformers

import suji_models as S
from suji_models.convert.from_tf import main as convert_main

from .conftest import SHARED

FIXTURES = SHARED / "fixtures" / "tf_checkpoints"
CASES = [("google_bert_tiny", "bert_tiny_hf", transformers.BertForMaskedLM),
         ("roformer_tiny_bert4keras", "roformer_tiny_hf", transformers.RoFormerForMaskedLM)]
INPUTS = dict(input_ids=torch.tensor([[2, 10, 11, 12, 3, 0]]), attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]),
              token_type_ids=torch.zeros(1, 6, dtype=torch.long))


@pytest.mark.parametrize("tf_dir,hf_dir,_", CASES)
def test_from_pretrained_reads_tf_checkpoint(tf_dir, hf_dir, _):
    model, info = S.SujiForMaskedLM.from_pretrained(FIXTURES / tf_dir, output_loading_info=True)
    with torch.no_grad():
        logits = model(**INPUTS).logits
    expected = torch.from_numpy(np.load(FIXTURES / tf_dir / "expected_logits.npy"))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    # the same weights as the matching transformers folder, converted on load
    from_hf = S.SujiForMaskedLM.from_pretrained(FIXTURES / hf_dir).state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, from_hf[name], atol=0, rtol=0, msg=name)
    # the pooler and NSP head a masked LM does not use are reported, not fatal
    assert any("pooler" in k for k in info["unexpected_keys"] + info["ignored_keys"])
    assert any("seq_relationship" in k for k in info["ignored_keys"] + info["unexpected_keys"])


def test_classifier_keeps_the_pretrained_pooler():
    model, info = S.SujiForSequenceClassification.from_pretrained(FIXTURES / "google_bert_tiny", num_labels=2,
                                                                   output_loading_info=True)
    assert info["new_head_keys"] == ["classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("tf_dir,_,hf_cls", CASES)
def test_cli_converts_to_plain_transformers_with_tokenizer(tf_dir, _, hf_cls, tmp_path, capsys):
    convert_main([str(FIXTURES / tf_dir / "bert_model.ckpt"), str(tmp_path / "out"), "--format", "transformers"])
    assert "wrote transformers" in capsys.readouterr().out
    model = hf_cls.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        logits = model(**INPUTS).logits
    expected = torch.from_numpy(np.load(FIXTURES / tf_dir / "expected_logits.npy"))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer("人我在")["input_ids"] == [2, 10, 11, 12, 3]


def test_cli_suji_format_loads_back(tmp_path):
    convert_main([str(FIXTURES / "google_bert_tiny"), str(tmp_path / "suji")])
    model = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "suji").eval()
    assert isinstance(model, S.SujiForMaskedLM)
    with torch.no_grad():
        logits = model(**INPUTS).logits
    expected = torch.from_numpy(np.load(FIXTURES / "google_bert_tiny" / "expected_logits.npy"))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_tf_release_whose_config_is_named_config_json(tmp_path):
    # bert4keras' CPM-LM and other TF releases ship their bert_config as config.json (no model_type)
    import shutil

    source = FIXTURES / "google_bert_tiny"
    for f in source.iterdir():
        shutil.copy(f, tmp_path / ("config.json" if f.name == "bert_config.json" else f.name))
    assert S.convert.loading.checkpoint_kind(tmp_path) == "tf"
    with torch.no_grad():
        logits = S.SujiForMaskedLM.from_pretrained(tmp_path)(**INPUTS).logits
    torch.testing.assert_close(logits, torch.from_numpy(np.load(source / "expected_logits.npy")), atol=1e-4, rtol=0)
