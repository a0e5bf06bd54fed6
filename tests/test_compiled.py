"""Compiled inference: bucket rounding, padding to a bucket, and equality with the eager encoder."""

import pytest
import torch

from bertkit import BertModel
from bertkit.compiled import (
    CompileOptions,
    bucket_length,
    compile_for_inference,
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
