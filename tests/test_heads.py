"""Every head against the transformers head of the same kind, on shared random weights, both directions."""

import pytest
import torch

import bertkit
from bertkit.heads import HEADS, IGNORE, classification_loss, span_loss
from tests.conftest import random_batch, reference_config, tiny_config

transformers = pytest.importorskip("transformers")

B, T, N = 3, 11, 4


def _labels(name: str, config):
    g = torch.Generator().manual_seed(1)
    mask = random_batch(config)["attention_mask"]
    if name in ("BertForMaskedLM", "BertForTokenClassification"):
        labels = torch.randint(0, config.num_labels if "Token" in name else config.vocab_size, (B, T), generator=g)
        labels[torch.rand(B, T, generator=g) < 0.5] = IGNORE
        return {"labels": labels.masked_fill(mask == 0, IGNORE)}
    if name == "BertForPreTraining":
        labels = torch.randint(0, config.vocab_size, (B, T), generator=g).masked_fill(mask == 0, IGNORE)
        return {"labels": labels, "next_sentence_label": torch.tensor([0, 1, 1])}
    if name == "BertForQuestionAnswering":
        # the last position is past the end of the sequence: it must be ignored, as in the reference
        return {"start_positions": torch.tensor([1, 4, 50]), "end_positions": torch.tensor([2, 6, 50])}
    if name == "BertForMultipleChoice":
        return {"labels": torch.tensor([0, 3, 2])}
    if name == "BertForSequenceClassification":
        return {"labels": torch.tensor([0, 2, 1])}
    return {"labels": torch.tensor([0, 1, 1])}


def _batch(name: str, config):
    if name != "BertForMultipleChoice":
        return random_batch(config)
    flat = random_batch(config, B=B * N)
    return {k: v.view(B, N, T) for k, v in flat.items()}


def _outputs(out):
    """The tensors a head returns, as a tuple, from either library."""
    if isinstance(out, tuple) and not hasattr(out, "keys"):
        return tuple(t for t in out if t is not None)
    keys = ("loss", "logits", "prediction_logits", "seq_relationship_logits", "start_logits", "end_logits")
    return tuple(out[k] for k in keys if out.get(k) is not None)


def _compare(ours, ref, name, config):
    batch, labels = _batch(name, config), _labels(name, config)
    with torch.no_grad():
        a = _outputs(ours(**batch, **labels))
        b = _outputs(ref(**batch, **labels, return_dict=True))
    # ours: logits..., loss last; reference: loss first
    b = b[1:] + b[:1]
    assert len(a) == len(b)
    real = batch["attention_mask"].bool()  # (B, T) or (B, N, T)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        if x.shape[:real.dim()] == real.shape:  # per-token outputs: padding is not computed (unpadded path)
            x, y = x[real], y[real]
        torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-5)


HEAD_NAMES = [n for n in HEADS if n != "BertModel" and HEADS[n].architecture == n]  # transformers has these classes


def _config(name):
    # the reference QA head has num_labels outputs and needs exactly two (start, end)
    return tiny_config() if name == "BertForQuestionAnswering" else tiny_config(id2label={0: "a", 1: "b", 2: "c"})


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_head_loads_transformers_weights_and_matches(tmp_path, name):
    config = _config(name)
    torch.manual_seed(0)
    ref = getattr(transformers, name)(reference_config(config)).eval()
    ref.save_pretrained(tmp_path)
    ours = HEADS[name].from_pretrained(tmp_path).eval()
    assert ours.load_report.missing == [] and ours.load_report.unexpected == []
    _compare(ours, ref, name, config)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_transformers_loads_our_head_and_matches(tmp_path, name):
    config = _config(name)
    torch.manual_seed(0)
    ours = HEADS[name](config).eval()
    ours.save_pretrained(tmp_path)
    ref, info = getattr(transformers, name).from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] in (set(), []) and info["unexpected_keys"] in (set(), []), info
    _compare(ours, ref.eval(), name, config)


@pytest.mark.parametrize(
    "problem_type, num_labels, labels",
    [
        ("multi_label_classification", 3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])),
        ("regression", 1, torch.tensor([0.5, -1.0, 2.0])),
        (None, 1, torch.tensor([0.5, -1.0, 2.0])),
    ],
)
def test_sequence_classification_problem_types_match(tmp_path, problem_type, num_labels, labels):
    config = tiny_config(id2label={i: f"l{i}" for i in range(num_labels)}, problem_type=problem_type)
    torch.manual_seed(0)
    ours = bertkit.BertForSequenceClassification(config).eval()
    ours.save_pretrained(tmp_path)
    ref = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = random_batch(config)
    with torch.no_grad():
        a, b = ours(**batch, labels=labels), ref(**batch, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=0)


def test_mlm_decoder_is_tied_to_the_word_embeddings():
    model = bertkit.BertForMaskedLM(tiny_config())
    assert not any("decoder" in n for n, _ in model.named_parameters())
    batch = random_batch(tiny_config())
    model(**batch).logits.sum().backward()
    assert model.bert.embeddings.word.weight.grad is not None


def test_loss_helpers_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log(torch.tensor(2.0))) / 2
    loss = classification_loss(logits, torch.tensor([0, 1]), None)
    assert loss.count == 2
    torch.testing.assert_close(loss.mean(), expected)
    torch.testing.assert_close(loss.total, 2 * expected)
    # a start position outside the sequence takes no part
    start = torch.tensor([[0.0, 5.0, 0.0], [1.0, 1.0, 1.0]])
    only_first = span_loss(start[:1], torch.tensor([1]))
    both = span_loss(start, torch.tensor([1, 9]))
    assert both.count == 1 and only_first.count == 1
    torch.testing.assert_close(both.total, only_first.total)
    with pytest.raises(ValueError, match="problem_type"):
        classification_loss(logits, torch.tensor([0, 1]), "ranking")


def test_padded_choices_change_no_multiple_choice_loss():
    """Example 0 has 2 real choices padded to 4 with other text; its loss and probabilities are
    those of the 2 choices alone, and the batch loss the mean of the examples' own losses."""
    torch.manual_seed(0)
    model = bertkit.BertForMultipleChoice(_config("BertForMultipleChoice")).eval()
    flat = random_batch(model.config, B=2 * N, seed=3)
    batch = {k: v.view(2, N, T) for k, v in flat.items()}
    choice_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        padded = model(**batch, labels=labels, choice_mask=choice_mask)
        alone = [model(**{k: v[i:i + 1, :n] for k, v in batch.items()}, labels=labels[i:i + 1])
                 for i, n in enumerate((2, N))]
        unmasked = model(**batch, labels=labels)
    torch.testing.assert_close(padded.loss, (alone[0].loss + alone[1].loss) / 2)
    torch.testing.assert_close(padded.logits[0].softmax(-1)[:2], alone[0].logits[0].softmax(-1))
    assert padded.logits[0].softmax(-1)[2:].tolist() == [0.0, 0.0]
    assert not torch.allclose(unmasked.loss, padded.loss)  # the padding text would change the loss


@pytest.mark.parametrize("left", [False, True])
def test_classifier_reads_the_pooled_first_token_as_the_full_encoder_gives_it(left):
    """The classification head runs the last layer at [CLS] alone (BertModel.forward_at); a batch
    whose first column is padding (left padding) takes the full encoder. Either way: its values."""
    config = tiny_config(id2label={0: "a", 1: "b", 2: "c"})
    torch.manual_seed(0)
    model = bertkit.BertForSequenceClassification(config).eval()
    batch = random_batch(config, B=4, T=11)
    if left:
        batch = {k: v.flip(1) for k, v in batch.items()}
    with torch.no_grad():
        want = model.classifier(model.bert(**batch).pooler_output)
        torch.testing.assert_close(model(**batch).logits, want, atol=1e-5, rtol=0)
