"""SujiForNer: batches, losses, decoding back to characters, save / load and encoder loading."""

import pytest
import torch

import suji_models as S
from suji_models.layers import GlobalPointer
from suji_models.losses import multilabel_categorical_crossentropy
from suji_models.tasks.ner import (
    HEADS,
    NerExample,
    SujiForNer,
    collate,
    crf_tag_names,
    encode_examples,
    left_align,
    predict,
    set_ner_config,
)
from tokenization import load_tokenizer

from .conftest import REPO_ROOT

TYPES = ["LOC", "ORG", "PER"]
EXAMPLES = [
    NerExample("新华社北京5月7日电国务院副总理李岚清今天在中南海会见了客人。",
               [(0, 3, "ORG"), (3, 5, "LOC"), (10, 13, "ORG"), (16, 19, "PER"), (22, 25, "LOC")]),
    NerExample("北京大学在北京", [(0, 2, "LOC"), (0, 4, "ORG"), (5, 7, "LOC")]),  # nested
    NerExample("今天天气很好", []),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(REPO_ROOT / "pretrain" / "data" / "vocab.txt")


def tiny(tokenizer, head, seed=0):
    torch.manual_seed(seed)
    config = S.SujiConfig.from_preset("roformer-tiny", vocab_size=len(tokenizer), hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
    return SujiForNer(set_ner_config(config, head, TYPES, head_size=8, crf_lr_multiplier=10.0)).eval()


def batch_for(tokenizer, head):
    encoded, report = encode_examples(tokenizer, EXAMPLES, TYPES, 64)
    assert report.aligned == report.spans == 8
    return encoded, collate([e.as_row() for e in encoded], tokenizer.pad_token_id, head, len(TYPES))


def test_global_pointer_labels_give_the_dense_zlpr_loss(tokenizer):
    model = tiny(tokenizer, "global_pointer")
    encoded, batch = batch_for(tokenizer, "global_pointer")
    out = model(**batch)
    B, T, L, _ = out.logits.shape
    dense = torch.zeros(B, T, L, L)
    for b, e in enumerate(encoded):
        for first, last, t in e.token_spans:
            dense[b, t, first, last] = 1
    assert int(dense.sum()) == 8
    expected = multilabel_categorical_crossentropy(dense.view(B * T, -1), out.logits.reshape(B * T, -1)).mean()
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    # [CLS], [SEP] and padding never take part in a span
    assert (out.logits[:, :, 0] < -1e11).all() and (out.logits[2, :, :, len(encoded[2].input_ids) - 1] < -1e11).all()


def test_crf_labels_and_left_alignment(tokenizer):
    _, batch = batch_for(tokenizer, "crf")
    names = crf_tag_names(TYPES)
    tags = [names[i] for i in batch["labels"][1].tolist() if i >= 0]
    assert tags[:7] == ["B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "B-LOC", "I-LOC"]  # nested LOC dropped for the CRF
    assert batch["labels"][0, 0].item() == -100  # [CLS]
    x = torch.arange(12).view(2, 6)
    mask = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]])
    aligned, aligned_mask, positions = left_align(x, mask)
    assert aligned[0, :2].tolist() == [1, 2] and aligned[1, :4].tolist() == [7, 8, 9, 10]
    assert aligned_mask.sum(1).tolist() == [2, 4] and positions[1, :4].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("head", HEADS)
def test_training_steps_fit_a_batch_and_decode_back_to_characters(tokenizer, head):
    model = tiny(tokenizer, head).train()
    encoded, batch = batch_for(tokenizer, head)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(100):  # every head decodes the batch exactly from ~60 steps on
        opt.zero_grad()
        loss = model(**batch).loss
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    model.eval()
    got = predict(model, tokenizer, [e.text for e in EXAMPLES])
    if head == "crf":  # flat tags: the nested LOC inside 北京大学 cannot be produced
        assert got[1] == [(0, 4, "ORG"), (5, 7, "LOC")]
        assert got[0] == EXAMPLES[0].entities and got[2] == []
    else:
        assert got == [e.entities for e in EXAMPLES]


@pytest.mark.parametrize("head", HEADS)
def test_save_and_reload_give_the_same_outputs(tokenizer, head, tmp_path):
    model = tiny(tokenizer, head)
    _, batch = batch_for(tokenizer, head)
    batch.pop("labels")
    model.save_pretrained(tmp_path)
    again = SujiForNer.from_pretrained(tmp_path).eval()
    assert again.config.ner_head == head and again.types == TYPES
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits)


def test_from_encoder_takes_a_pretrained_suji_or_transformers_encoder(tokenizer, tmp_path):
    torch.manual_seed(3)
    mlm = S.SujiForMaskedLM(S.SujiConfig.from_preset("roformer-tiny", vocab_size=len(tokenizer)))
    mlm.save_pretrained(tmp_path / "suji")
    model = SujiForNer.from_encoder(tmp_path / "suji", "efficient_global_pointer", TYPES, head_size=8)
    for name, p in mlm.suji.state_dict().items():
        torch.testing.assert_close(model.suji.state_dict()[name], p, msg=name)
    assert isinstance(model.classifier.dense, torch.nn.Linear)

    import transformers

    hf = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    hf.eval().save_pretrained(tmp_path / "bert")
    model = SujiForNer.from_encoder(tmp_path / "bert", "crf", TYPES).eval()
    ids = torch.tensor([[2, 100, 200, 300, 3]])
    with torch.no_grad():
        reference = hf.bert(ids).last_hidden_state
        ours = model.suji(ids).last_hidden_state
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert model.classifier.crf.transitions.abs().sum().item() == 0.0  # the new head starts uniform


def test_global_pointer_head_is_the_layer(tokenizer):
    model = tiny(tokenizer, "global_pointer")
    assert isinstance(model.classifier, GlobalPointer) and model.classifier.num_types == 3
    with pytest.raises(ValueError, match="ner_head"):
        SujiForNer(S.SujiConfig.from_preset("roformer-tiny"))


class SpotBeijing(torch.nn.Module):
    """A stand-in model whose answer does not depend on context: every 北京 is a LOC. It records the
    length of every row it is shown."""

    types = ["LOC"]

    def __init__(self, tokenizer):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # predict() reads the device from the parameters
        self.bei, self.jing = tokenizer.convert_tokens_to_ids(["北", "京"])
        self.lengths = []

    def forward(self, input_ids, label_mask, **batch):
        self.lengths += [int(n) for n in batch["attention_mask"].sum(-1)]
        return type("Output", (), {"logits": input_ids * label_mask})

    def decode(self, logits, label_mask):
        return [[(i, i + 1, 0) for i in range(len(row) - 1) if (row[i], row[i + 1]) == (self.bei, self.jing)]
                for row in logits.tolist()]


@pytest.mark.parametrize("max_length, overlap", [(32, None), (32, 2), (20, 17), (4, 1)])
def test_long_texts_are_read_in_overlapping_windows(tokenizer, max_length, overlap):
    texts = ["今天我们在北京开会" * 40, "北京", "", "上海和北京" * 7]
    model = SpotBeijing(tokenizer)
    got = predict(model, tokenizer, texts, max_length=max_length, overlap=overlap, batch_size=8)
    expected = [[(i, i + 2, "LOC") for i in range(len(t) - 1) if t[i:i + 2] == "北京"] for t in texts]
    assert got == expected  # every entity once, at its place in the whole text
    assert max(model.lengths) <= max_length and len(model.lengths) > len(texts)
    assert predict(SpotBeijing(tokenizer), tokenizer, texts, max_length=512) == expected  # one window each


def test_without_overlap_an_entity_across_a_window_edge_is_lost_not_misplaced(tokenizer):
    text = "今天我们在北京开会" * 40
    got = predict(SpotBeijing(tokenizer), tokenizer, [text], max_length=32, overlap=0)[0]
    expected = [(i, i + 2, "LOC") for i in range(len(text) - 1) if text[i:i + 2] == "北京"]
    assert set(got) < set(expected) and len(got) >= len(expected) - len(text) // 30


def test_window_settings_that_leave_no_room_are_refused(tokenizer):
    with pytest.raises(ValueError, match="overlap must be in"):
        predict(SpotBeijing(tokenizer), tokenizer, ["北京"], max_length=10, overlap=8)
