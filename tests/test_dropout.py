"""bertkit.dropout: F.dropout's meaning (independent drops with probability p, survivors scaled to keep
the expectation), with a cheaper mask on the CPU."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bertkit.dropout import RANDOM_BITS, Dropout, dropout, dropout_multiplier, random_words

P = 0.1
P_ROUNDED = round(P * 2 ** RANDOM_BITS) / 2 ** RANDOM_BITS  # 0.1000061


def _dropped(n: int, p: float = P, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return dropout_multiplier(torch.ones(n), p) == 0  # (n,)


def test_each_element_is_dropped_with_probability_p():
    n = 2_000_000
    for p in (0.1, 0.5, 0.02):
        rate = _dropped(n, p).double().mean().item()
        want = round(p * 2 ** RANDOM_BITS) / 2 ** RANDOM_BITS
        assert abs(rate - want) < 5 * math.sqrt(want * (1 - want) / n), (p, rate)


@pytest.mark.parametrize("lag", [1, 2, 3, 4, 5, 8])
def test_drops_are_independent_across_the_lanes_of_one_draw_and_the_next(lag):
    """Four elements share a 64-bit draw: neighbours within it (lags 1-3) and the same lane of the next
    draw (lag 4) must be dropped together as often as independence says, p^2."""
    n = 2_000_000
    dropped = _dropped(n, 0.5, seed=lag)
    both = (dropped[:-lag] & dropped[lag:]).double().mean().item()
    want = 0.25  # p = 0.5: exact on the 2^-15 grid
    assert abs(both - want) < 5 * math.sqrt(want * (1 - want) / n)
    # every lane position of a word drops at rate p
    by_lane = dropped[: n - n % 4].view(-1, 4).double().mean(0)
    assert (by_lane - 0.5).abs().max() < 5 * math.sqrt(0.25 / (n / 4))


def test_survivors_are_scaled_so_the_expectation_is_kept():
    torch.manual_seed(1)
    x = torch.randn(1000, 384)
    y = dropout(x, P)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - P_ROUNDED))
    assert dropout(torch.ones(4_000_000), P).double().mean().item() == pytest.approx(1.0, abs=1e-3)


def test_the_gradient_uses_the_forward_mask():
    torch.manual_seed(2)
    x = torch.randn(64, 48, requires_grad=True)
    g = torch.randn(64, 48)
    y = dropout(x, P)
    y.backward(g)
    multiplier = (y / x).detach()  # x has no zeros
    scale = multiplier.max().item()
    assert scale == pytest.approx(1 / (1 - P_ROUNDED)) and ((multiplier == 0) | (multiplier - scale).abs().lt(1e-5)).all()
    torch.testing.assert_close(x.grad, g * multiplier)


def test_random_words_follow_torch_seed_and_rng_state():
    torch.manual_seed(7)
    a = random_words(1000)
    state = torch.get_rng_state()
    b = random_words(1000)
    torch.set_rng_state(state)  # what a resumed run does
    assert torch.equal(b, random_words(1000)) and not torch.equal(a, b)
    torch.manual_seed(7)
    assert torch.equal(a, random_words(1000)) and a.dtype == torch.int64
    ones = sum(((a >> i) & 1).sum().item() for i in range(64))  # every bit, the sign bit too
    assert abs(ones / 64_000 - 0.5) < 0.01


def test_seeded_runs_repeat_and_eval_or_zero_p_is_the_identity():
    x = torch.randn(3, 5, 7)
    torch.manual_seed(3)
    a = dropout(x, P)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, P)) and a.shape == x.shape
    assert dropout(x, P, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_the_module_is_nn_dropout_computed_the_cheaper_way():
    layer = Dropout(0.3)
    assert isinstance(layer, nn.Dropout) and layer.p == 0.3 and not list(layer.state_dict())
    x = torch.randn(10_000)
    dropped = (layer(x) == 0).double().mean().item()
    assert 0.27 < dropped < 0.33
    layer.eval()
    assert torch.equal(layer(x), x)


def test_same_statistics_as_torch_dropout():
    """Against F.dropout itself: the same share dropped and the same scale, draws aside."""
    torch.manual_seed(4)
    x = torch.ones(1_000_000)
    ours, theirs = dropout(x, P), F.dropout(x, P)
    assert (ours == 0).double().mean().item() == pytest.approx((theirs == 0).double().mean().item(), abs=2e-3)
    assert ours.max().item() == pytest.approx(theirs.max().item(), rel=1e-4)


def test_attention_with_dropout_is_unbiased_and_masks_keys():
    """model.attention with dropout (written out on the CPU): over many draws its mean is the attention
    without dropout, and a masked key never contributes."""
    from bertkit.model import attention

    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    mask = torch.tensor([True, True, True, False, False])[None, None, None, :]  # (1, 1, 1, 5)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    v_far = v.clone()
    v_far[:, :, 3:] = 1e6  # values of masked keys: any weight on them would show
    draws = torch.stack([attention(q, k, v_far, mask, 0.3) for _ in range(4000)])
    assert draws.abs().max() < 1e3
    torch.testing.assert_close(draws.mean(0), want, atol=0.05, rtol=0)


def test_edge_cases_go_to_torch_dropout():
    assert dropout(torch.empty(0, 384), P).shape == (0, 384)  # an empty batch
    assert torch.equal(dropout(torch.ones(100), 1 - 2 ** -17), torch.zeros(100))  # rounds to p = 1
    with pytest.raises(ValueError):
        dropout(torch.ones(3), 1.5)


def test_a_compiled_graph_takes_torchs_dropout_whole():
    """Training's --compile: inside a graph torch.compile captures, dropout is PyTorch's (inductor
    fuses its masks) instead of breaking the graph at the mask's seed; fullgraph would refuse a break."""
    from bertkit.dropout import dropout

    x = torch.ones(64, 64)
    y = torch.compile(lambda t: dropout(t * 2, 0.5), fullgraph=True, backend="eager")(x)
    assert {0.0, 4.0} >= set(y.unique().tolist()) and 0.3 < (y == 0).float().mean() < 0.7
