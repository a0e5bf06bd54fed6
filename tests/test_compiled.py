"""Compiled inference: bucket rounding, padding to a bucket, and equality with the eager encoder."""

import pytest
import torch

from bertkit import BertModel
from bertkit.compiled import (
    CompileOptions,
    bucket_length,
    compile_for_inference,
    compile_layers,
    compiled_encoder,
    encode_padded,
    pad_to,
)
from bertkit.errors import InputError
from tests.conftest import random_batch, tiny_config


def test_bucket_length_by_hand():
    assert [bucket_length(n) for n in (0, 1, 16, 17, 32, 33, 49, 65, 97, 129, 193, 257, 385, 512)] == \
        [16, 16, 16, 32, 32, 48, 64, 96, 128, 192, 256, 384, 512, 512]
    assert [bucket_length(n, 1) for n in (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 32)] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 32]
    assert bucket_length(300, 16, limit=256) == 300  # longer than the limit: itself, never less
    assert bucket_length(200, 16, limit=256) == 256 and bucket_length(257, 16, limit=300) == 300


def test_buckets_are_few_and_waste_at_most_half():
    buckets = {bucket_length(n) for n in range(1, 513)}
    assert len(buckets) == 10
    for n in range(17, 513):
        b = bucket_length(n)
        assert n <= b < 2 * n and b % 16 == 0


def test_pad_to_keeps_rows_and_adds_safe_ones():
    batch = random_batch(tiny_config(), B=3, T=11)
    big = pad_to(batch, 4, 16, pad_id=0)
    assert {k: tuple(v.shape) for k, v in big.items()} == {k: (4, 16) for k in batch}
    for k in batch:
        assert torch.equal(big[k][:3, :11], batch[k]) and not big[k][:3, 11:].any()
    assert big["attention_mask"][3].tolist() == [1] + [0] * 15  # an added row attends its one token


def test_encode_padded_equals_the_model_at_real_tokens():
    config = tiny_config()
    model = BertModel(config).eval()
    batch = random_batch(config, B=3, T=11)
    big = pad_to(batch, bucket_length(3, 1), bucket_length(11), pad_id=config.pad_token_id)
    with torch.inference_mode():
        want = model(**batch).last_hidden_state  # (B, T, C), unpadded path
        got = encode_padded(model, big["input_ids"], big["token_type_ids"], big["attention_mask"])[:3, :11]
    real = batch["attention_mask"].bool()
    assert (got[real] - want[real]).abs().max() <= 1e-5


def test_options_are_checked():
    with pytest.raises(InputError):
        CompileOptions(mode="fastest")
    with pytest.raises(InputError):
        CompileOptions(minimum=0)


@pytest.mark.slow
def test_compiled_equals_eager():
    torch._dynamo.reset()
    config = tiny_config()
    model = BertModel(config).eval()
    run = compiled_encoder(model)
    with torch.inference_mode():
        for T in (11, 7):  # both round to the 16 bucket: one graph
            batch = random_batch(config, B=3, T=T, seed=T)
            big = pad_to(batch, 3, bucket_length(T), pad_id=config.pad_token_id)
            got = run(big["input_ids"], big["token_type_ids"], big["attention_mask"])[:, :T]
            want = model(**batch).last_hidden_state
            real = batch["attention_mask"].bool()
            assert (got[real] - want[real]).abs().max() <= 1e-5


@pytest.mark.slow
def test_compile_for_inference_stands_in_for_forward():
    torch._dynamo.reset()
    config = tiny_config()
    model = BertModel(config).eval()
    batch = random_batch(config, B=3, T=11)
    with torch.inference_mode():
        want = model(**batch)
        keys = set(model.state_dict())
        compiled = compile_for_inference(model)
        assert compiled is model and set(model.state_dict()) == keys
        forward = model.forward
        assert compile_for_inference(model).forward is forward  # a second call changes nothing
        got = model(**batch)
        real = batch["attention_mask"].bool()
        assert got.last_hidden_state.shape == (3, 11, 32)
        assert (got.last_hidden_state[real] - want.last_hidden_state[real]).abs().max() <= 1e-5
        assert (got.pooler_output - want.pooler_output).abs().max() <= 1e-5
        extras = model(**batch, output_hidden_states=True)  # the eager path: the extras are there
        assert len(extras.hidden_states) == config.num_hidden_layers + 1


# ---- compiled layers (--compile) ------------------------------------------------------------------------


def _packed_batch(config):
    """Two rows, the first holding two examples (mask 1, 1, 2, 2, 2), the second one and padding."""
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    return dict(input_ids=torch.randint(1, config.vocab_size, (2, 6), generator=g) * (mask > 0),
                token_type_ids=torch.zeros_like(mask), attention_mask=mask)


def test_compiled_layers_equal_the_eager_ones():
    """Unpadded, without padding (the padded path) and packed rows: the same outputs as eager, <=1e-5;
    the graphs are shared by every layer and batch shape; gradients and attention weights run eagerly."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # no graphs from earlier tests: the warm-up compiles its own
    config = tiny_config()
    model = BertModel(config).eval()
    batches = [random_batch(config, B=3, T=11), random_batch(config, B=4, T=9, seed=1),
               {k: v[:1, :5] for k, v in random_batch(config, B=1, T=5).items()}, _packed_batch(config)]
    with torch.inference_mode():
        want = [model(**b) for b in batches]
    keys = set(model.state_dict())
    before = counters["stats"]["unique_graphs"]
    assert compile_layers(model) is model and set(model.state_dict()) == keys
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == before + 2  # the warm-up compiled the two parts
    forward = model.layers[0].forward
    assert compile_layers(model).layers[0].forward is forward  # a second call changes nothing
    with torch.inference_mode():
        for b, w in zip(batches, want):
            got = model(**b)
            real = b["attention_mask"] > 0
            assert (got.last_hidden_state[real] - w.last_hidden_state[real]).abs().max() <= 1e-5
            assert (got.pooler_output - w.pooler_output).abs().max() <= 1e-5
        assert len(model(**batches[0], output_attentions=True).attentions) == config.num_hidden_layers
    assert counters["stats"]["unique_graphs"] == graphs  # every shape and mask ran the warm-up's graphs
    model.train()
    loss = model(**batches[0]).last_hidden_state.square().mean()
    loss.backward()  # the eager forward: gradients flow
    assert model.layers[0].attention.qkv.weight.grad is not None


def test_compiled_int8_layers_round_as_the_eager_ones():
    """An int8 encoder compiled: the same int8 arithmetic, fused (a few inputs may round to the
    neighbouring step)."""
    from types import SimpleNamespace

    from torch._dynamo.utils import counters

    from bertkit.quantize import quantize_int8

    config = tiny_config()
    torch.manual_seed(0)
    model = BertModel(config).eval()
    batch = random_batch(config, B=3, T=11)
    rows = [random_batch(config, B=1, T=12, seed=s)["input_ids"][0].tolist() for s in range(8)]
    quantize_int8(model, SimpleNamespace(pad_token_id=0), calibration=rows)
    torch._dynamo.reset()
    with torch.inference_mode():
        want = model(**batch).last_hidden_state
        before = counters["stats"]["unique_graphs"]
        compile_layers(model)
        assert counters["stats"]["unique_graphs"] == before + 2  # Int8Linear inside compiled graphs
        got = model(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    cosine = torch.nn.functional.cosine_similarity(got[real], want[real], dim=-1)
    assert cosine.min() >= 0.999 and (got[real] - want[real]).abs().max() <= 0.05


def test_compile_is_refused_in_one_line_without_a_cxx_compiler(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="C\\+\\+ compiler"):
        compile_layers(BertModel(tiny_config()))
    with pytest.raises(InputError, match="BERT encoder"):
        compile_layers(torch.nn.Linear(2, 2))


def test_cli_compile_gives_the_eager_vectors(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`bertkit embed --compile` (fp32 and int8) compiles the model it loads, and only then; the
    vectors are the eager run's."""
    import numpy as np

    from bertkit import compiled, quantize
    from bertkit.cli import main

    calls = []
    monkeypatch.setattr(quantize, "compile_layers", lambda model: calls.append(model) or compiled.compile_layers(model))
    monkeypatch.setattr(compiled, "_announce", False)  # restored when the test ends (the CLI sets it)
    texts = tmp_path / "t.txt"
    texts.write_text("a short line\nand a somewhat longer line of text to embed\nthird\n", encoding="utf-8")
    for precision in ("fp32", "int8"):
        vectors = {}
        for flag in ([], ["--compile"]):
            monkeypatch.setattr(compiled, "_compile_inference", False)  # the switch is the process's: off again
            out = tmp_path / f"{precision}{len(flag)}.npy"
            n = len(calls)
            assert main(["embed", "-i", str(texts), "-o", str(out), "--model", str(tiny_model_dir),
                         "--device", "cpu", "--precision", precision, *flag]) == 0
            assert len(calls) == n + len(flag)  # compiled with --compile alone
            vectors[len(flag)] = np.load(out)
        assert all(layer.forward.func is compiled._compiled_layer_forward for layer in calls[-1].bert.layers)
        tolerance = 1e-5 if precision == "fp32" else 0.02
        assert np.abs(vectors[0] - vectors[1]).max() <= tolerance
    assert "--compile: compiling" in capsys.readouterr().err


def test_cli_compile_with_a_bad_model_says_only_what_is_wrong(tmp_path, monkeypatch, capsys):
    """The compiling note comes once the model has loaded: a bad --model gives the one-line error alone."""
    from bertkit import compiled
    from bertkit.cli import main

    monkeypatch.setattr(compiled, "_compile_inference", False)
    monkeypatch.setattr(compiled, "_announce", False)
    texts = tmp_path / "t.txt"
    texts.write_text("a line\n", encoding="utf-8")
    assert main(["embed", "-i", str(texts), "-o", str(tmp_path / "v.npy"), "--model", str(tmp_path / "missing"),
                 "--device", "cpu", "--compile"]) != 0
    err = capsys.readouterr().err
    assert "compiling" not in err and len(err.strip().splitlines()) == 1, err
