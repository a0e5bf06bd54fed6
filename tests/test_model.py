"""The encoder: shapes, invariants, initialisation, and parity with transformers on real and random weights."""

import pytest
import torch

import bertkit
from bertkit import BertConfig, BertModel
from bertkit.model import activation, attention
from tests.conftest import random_batch, reference_config, tiny_config

transformers = pytest.importorskip("transformers")

VARIED = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve Ångström — accents & punctuation?!",
    "北京是中国的首都。我们今天去吃饭。",
    "emoji 😀🎉 and symbols ©®™ and numbers 3.14159 and 1,000,000",
    "",
    "   ",
    "tabs\tand\nnewlines and a URL https://example.com/a?b=c",
    "supercalifragilisticexpialidocious " * 3,
    " ".join(["a long input that runs past the maximum length of the model"] * 80),
]


def test_shapes_and_no_pooler():
    config = tiny_config()
    batch = random_batch(config)
    out = BertModel(config).eval()(**batch)
    assert out.last_hidden_state.shape == (3, 11, 32) and out.pooler_output.shape == (3, 32)
    assert BertModel(config, add_pooler=False)(**batch).pooler_output is None


def test_initialisation_follows_the_paper():
    config = tiny_config(vocab_size=2000, hidden_size=64, intermediate_size=256)
    model = BertModel(config)
    w = model.embeddings.word.weight
    assert abs(w[1:].std().item() - 0.02) < 0.002 and w[config.pad_token_id].abs().sum() == 0
    up = model.layers[0].ffn.up
    assert abs(up.weight.std().item() - 0.02) < 0.002 and up.bias.abs().sum() == 0
    assert torch.all(model.layers[0].ffn_norm.weight == 1)


def test_padding_does_not_change_real_token_outputs():
    config = tiny_config()
    model = BertModel(config).eval()
    batch = random_batch(config, B=1, T=7)
    padded = {k: torch.cat([v, torch.zeros(1, 5, dtype=v.dtype)], dim=1) for k, v in batch.items()}
    a, b = model(**batch), model(**padded)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state[:, :7], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-6, rtol=0)


def test_attention_matches_a_hand_written_softmax_in_float64():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()[:, None, None, :]
    scores = q @ k.transpose(-1, -2) / 2.0  # sqrt(D) = 2
    scores = scores.masked_fill(~mask, float("-inf"))
    expected = scores.softmax(-1) @ v
    torch.testing.assert_close(attention(q, k, v, mask, 0.0), expected)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unsupported hidden_act"):
        activation("mish2")


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_random_weights_match_transformers(tmp_path, act):
    config = tiny_config(hidden_act=act)
    torch.manual_seed(0)
    ref = transformers.BertModel(reference_config(config)).eval()
    ref.save_pretrained(tmp_path)
    ours = BertModel.from_pretrained(tmp_path).eval()
    assert ours.load_report.missing == [] and ours.load_report.unexpected == []
    batch = random_batch(config)
    with torch.no_grad():
        a, b = ours(**batch), ref(**batch)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(a.last_hidden_state[mask], b.last_hidden_state[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def minilm_pair(minilm_dir):
    ours = BertModel.from_pretrained(minilm_dir).eval()
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    reftok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    return ours, ref, reftok


def _varied_batch(reftok, pairs: bool):
    second = list(reversed(VARIED)) if pairs else None
    return reftok(VARIED, second, padding=True, truncation=True, max_length=512, return_tensors="pt")


@pytest.mark.parametrize("pairs", [False, True])
def test_real_minilm_matches_transformers(minilm_pair, pairs):
    ours, ref, reftok = minilm_pair
    batch = _varied_batch(reftok, pairs)
    assert batch["input_ids"].shape[1] == 512  # the long input reaches the model's maximum
    with torch.no_grad():
        a, b = ours(**batch), ref(**batch)
    mask = batch["attention_mask"].bool()
    hidden_err = (a.last_hidden_state - b.last_hidden_state)[mask].abs().max().item()
    pooled_err = (a.pooler_output - b.pooler_output).abs().max().item()
    assert hidden_err < 1e-5 and pooled_err < 1e-5, (hidden_err, pooled_err)


def test_real_minilm_mean_pooled_embeddings_match(minilm_pair):
    ours, ref, reftok = minilm_pair
    batch = _varied_batch(reftok, pairs=False)

    def mean_pool(hidden, mask):
        m = mask[..., None].to(hidden.dtype)
        v = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(v, dim=-1)

    with torch.no_grad():
        a = mean_pool(ours(**batch).last_hidden_state, batch["attention_mask"])
        b = mean_pool(ref(**batch).last_hidden_state, batch["attention_mask"])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_real_minilm_puts_related_sentences_close_and_unrelated_ones_apart(minilm_pair, minilm_dir):
    """The weights are the real ones, loaded into the right places: paraphrases score about 0.7,
    unrelated sentences about 0 (measured: 0.72 and 0.65 vs -0.08..-0.03). Random weights give
    0.92-0.96 for every pair, so both the bounds and the margin fail for a model that is not the
    trained one (or whose weights went to the wrong parameters)."""
    ours = minilm_pair[0]
    tokenizer = bertkit.Tokenizer.from_pretrained(minilm_dir)
    texts = ["A man is playing a guitar.", "Someone is strumming a guitar.",
             "The stock market fell.", "Shares dropped as investors worried about inflation."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ours(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sims = vectors @ vectors.T
    related = [sims[0, 1].item(), sims[2, 3].item()]
    unrelated = [sims[i, j].item() for i in (0, 1) for j in (2, 3)]
    assert min(related) > 0.55, sims
    assert max(abs(x) for x in unrelated) < 0.2, sims
    assert min(related) - max(unrelated) > 0.5, sims


def test_config_from_real_checkpoint(minilm_dir):
    config = BertConfig.load(minilm_dir)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)
    assert config.extra.get("transformers_version") == "4.8.2"


def test_too_long_input_is_a_clear_error():
    config = tiny_config()
    with pytest.raises(bertkit.InputError, match="70 tokens is longer than the model's maximum of 64"):
        BertModel(config)(torch.ones(1, 70, dtype=torch.long))


def test_real_minilm_saved_by_bertkit_loads_in_transformers(minilm_pair, tmp_path):
    ours, _, reftok = minilm_pair
    ours.save_pretrained(tmp_path)
    ref, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = _varied_batch(reftok, pairs=True)
    with torch.no_grad():
        # the padded path: the same matrix shapes as transformers', so agreement to 1e-6 everywhere
        a, b = ours(**batch, unpadded=False), ref.eval()(**batch)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-6, rtol=0)


def test_every_hidden_act_a_config_accepts_has_a_function():
    """config.py checks hidden_act against names of its own (so it never imports the model)."""
    from bertkit.config import ACTIVATION_NAMES
    from bertkit.model import ACTIVATIONS

    assert tuple(ACTIVATIONS) == ACTIVATION_NAMES


# ---- every layer's hidden states and attention weights (a look inside the model) --------------------


def _compare_extras(a, b, mask, atol):
    """Ours (a) against transformers' (b): as many hidden states and attention maps, the same shapes,
    and the same values at real tokens (hidden states) and for real queries (attention rows)."""
    assert len(a.hidden_states) == len(b.hidden_states) and len(a.attentions) == len(b.attentions)
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert x.shape == y.shape
        torch.testing.assert_close(x[mask], y[mask], atol=atol, rtol=0)
    for x, y in zip(a.attentions, b.attentions):
        assert x.shape == y.shape
        # (B, H, T, T) -> rows of real queries: (N, H, T); padded keys get weight 0 in both
        torch.testing.assert_close(x.transpose(1, 2)[mask], y.transpose(1, 2)[mask], atol=atol, rtol=0)


def test_random_weights_hidden_states_and_attentions_match_transformers(tmp_path):
    config = tiny_config()
    torch.manual_seed(0)
    transformers.BertModel(reference_config(config)).save_pretrained(tmp_path)
    ref = transformers.BertModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours = BertModel.from_pretrained(tmp_path).eval()
    batch = random_batch(config)
    with torch.no_grad():
        a = ours(**batch, output_hidden_states=True, output_attentions=True)
        b = ref(**batch, output_hidden_states=True, output_attentions=True)
        plain = ours(**batch)
    assert len(a.hidden_states) == config.num_hidden_layers + 1 and len(a.attentions) == config.num_hidden_layers
    assert a.attentions[0].shape == (3, config.num_attention_heads, 11, 11)
    _compare_extras(a, b, batch["attention_mask"].bool(), atol=1e-5)
    torch.testing.assert_close(a.hidden_states[-1], a.last_hidden_state, atol=0, rtol=0)
    # asking for the extras changes nothing else (the written-out softmax vs the fused kernel)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(a.last_hidden_state[mask], plain.last_hidden_state[mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.pooler_output, plain.pooler_output, atol=1e-6, rtol=0)
    assert plain.hidden_states is None and plain.attentions is None


def test_attention_weights_are_distributions_over_real_keys():
    config = tiny_config()
    batch = random_batch(config)
    with torch.no_grad():
        out = BertModel(config).eval()(**batch, output_attentions=True)
    keys = batch["attention_mask"].bool()[:, None, None, :]  # (B, 1, 1, T)
    for w in out.attentions:  # (B, H, T, T)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-6, rtol=0)
        assert torch.all(w.masked_select(~keys.expand_as(w)) == 0)


def test_only_hidden_states_or_only_attentions():
    config = tiny_config()
    batch = random_batch(config)
    model = BertModel(config).eval()
    with torch.no_grad():
        h = model(**batch, output_hidden_states=True)
        w = model(**batch, output_attentions=True)
    assert len(h.hidden_states) == 3 and h.attentions is None
    assert len(w.attentions) == 2 and w.hidden_states is None


def test_training_mode_with_dropout_gives_the_same_shapes_either_way():
    config = tiny_config(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    batch = random_batch(config)
    model = BertModel(config).train()
    torch.manual_seed(0)
    plain = model(**batch)
    torch.manual_seed(0)
    full = model(**batch, output_hidden_states=True, output_attentions=True)
    assert plain.last_hidden_state.shape == full.last_hidden_state.shape == (3, 11, 32)
    assert all(w.shape == (3, 4, 11, 11) for w in full.attentions)
    # dropout acts on the weights: the rows no longer sum to one, but stay non-negative
    assert not torch.allclose(full.attentions[0].sum(-1), torch.ones(3, 4, 11))
    assert torch.all(full.attentions[0] >= 0)
    full.last_hidden_state.sum().backward()  # the written-out path trains too
    assert model.layers[0].attention.qkv.weight.grad is not None


def test_real_minilm_hidden_states_and_attentions_match_transformers(minilm_pair, minilm_dir):
    ours, _, reftok = minilm_pair
    ref = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    batch = reftok(VARIED[:5], list(reversed(VARIED[:5])), padding=True, return_tensors="pt")
    with torch.no_grad():
        a = ours(**batch, output_hidden_states=True, output_attentions=True)
        b = ref(**batch, output_hidden_states=True, output_attentions=True)
        plain = ours(**batch)
    assert len(a.hidden_states) == 7 and len(a.attentions) == 6 and a.attentions[0].shape[1] == 12
    mask = batch["attention_mask"].bool()
    _compare_extras(a, b, mask, atol=1e-5)
    torch.testing.assert_close(a.last_hidden_state[mask], plain.last_hidden_state[mask], atol=1e-5, rtol=0)


# ---- the unpadded path: padding dropped before the first layer ---------------------------------------


def test_unpad_finds_the_real_tokens_by_hand():
    from bertkit.model import pad_back, unpad

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]])  # right, right, and left padding
    u = unpad(mask)
    assert u.indices.tolist() == [0, 1, 2, 4, 5, 9, 10, 11]
    assert u.positions.tolist() == [0, 1, 2, 0, 1, 1, 2, 3]  # each token's own position, as when padded
    assert u.lengths.tolist() == [3, 2, 3]
    x = torch.arange(8.0)[:, None].repeat(1, 2)  # (R, 2)
    back = pad_back(x, u, 3, 4)  # (B, T, 2)
    assert back[..., 0].tolist() == [[0, 1, 2, 0], [3, 4, 0, 0], [0, 5, 6, 7]]
    assert u.max_length == 3 and u.slots.tolist() == [0, 1, 2, 3, 4, 6, 7, 8]  # (B, L) with each row's tokens first


def _ragged(config, *, pairs=True):
    """Rows of 11, 7, 1 real tokens and one without padding; two segments when `pairs`."""
    batch = random_batch(config, B=4, T=11, pairs=pairs)
    lengths = torch.tensor([11, 7, 1, 11])
    batch["attention_mask"] = (torch.arange(11)[None, :] < lengths[:, None]).long()
    batch["input_ids"] = batch["input_ids"].clamp(min=1) * batch["attention_mask"]
    batch["token_type_ids"] = batch["token_type_ids"] * batch["attention_mask"]
    if pairs:
        batch["token_type_ids"][3, 6:] = 1
    return batch


@pytest.mark.parametrize("pairs", [False, True])
def test_unpadded_equals_padded_in_eval_mode(pairs):
    from bertkit.model import worth_unpadding

    config = tiny_config()
    torch.manual_seed(0)
    model = BertModel(config).eval()
    batch = _ragged(config, pairs=pairs)
    assert worth_unpadding(batch["attention_mask"])
    with torch.no_grad():
        a, b = model(**batch), model(**batch, unpadded=False)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(a.last_hidden_state[mask], b.last_hidden_state[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=0)
    assert torch.all(a.last_hidden_state[~mask] == 0)  # nothing computed at padding


def test_unpadded_equals_padded_with_left_padding_and_long_and_short_rows():
    """Any mask, not only right padding."""
    config = tiny_config()
    torch.manual_seed(0)
    model = BertModel(config).eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([60, 3, 55, 2, 40, 1, 64, 5])
    mask = (torch.arange(64)[None, :] < lengths[:, None]).long()  # (8, 64)
    mask[1] = mask[1].flip(0)  # left padding in one row
    ids = torch.randint(1, config.vocab_size, (8, 64), generator=g) * mask
    with torch.no_grad():
        a, b = model(ids, None, mask), model(ids, None, mask, unpadded=False)
    torch.testing.assert_close(a.last_hidden_state[mask.bool()], b.last_hidden_state[mask.bool()], atol=1e-5, rtol=0)


def test_unpadded_gradients_equal_padded():
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = _ragged(config)
    mask = batch["attention_mask"].bool()
    grads = []
    for unpadded in (True, False):
        torch.manual_seed(0)
        model = BertModel(config).train()
        out = model(**batch, unpadded=unpadded)
        # a loss reading real tokens and the pooler, as the heads do
        (out.last_hidden_state[mask].pow(2).sum() + out.pooler_output.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(BertModel(config).parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=0, msg=name)


def test_take_rows_gives_index_selects_values_and_gradients():
    from bertkit.model import take_rows

    x = torch.randn(50, 7, requires_grad=True)
    index = torch.randperm(50)[:31]
    grad = torch.randn(31, 7)
    mine, = torch.autograd.grad(take_rows(x, index), x, grad)
    theirs, = torch.autograd.grad(x.index_select(0, index), x, grad)
    assert torch.equal(take_rows(x, index), x.index_select(0, index)) and torch.equal(mine, theirs)
    assert torch.autograd.gradcheck(lambda y: take_rows(y, index[:5]), (torch.randn(9 + 41, 3, dtype=torch.float64,
                                                                                      requires_grad=True),))


def test_unpadded_training_with_dropout_keeps_shapes_and_trains():
    config = tiny_config(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    batch = _ragged(config)
    model = BertModel(config).train()
    a, b = model(**batch), model(**batch, unpadded=False)
    assert a.last_hidden_state.shape == b.last_hidden_state.shape == (4, 11, 32)
    assert a.pooler_output.shape == (4, 32) and torch.isfinite(a.last_hidden_state).all()
    a.pooler_output.sum().backward()
    assert model.layers[0].attention.qkv.weight.grad.abs().sum() > 0


def test_padded_path_is_kept_where_unpadding_cannot_help_or_would_change_meaning():
    from bertkit.model import worth_unpadding

    assert not worth_unpadding(None)
    assert not worth_unpadding(torch.ones(2, 5, dtype=torch.long))  # no padding at all
    assert not worth_unpadding(torch.tensor([[1, 1, 0], [0, 0, 0]]))  # a row of padding alone
    assert worth_unpadding(torch.tensor([[1, 1, 0], [1, 0, 0]]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_traced_graph_takes_the_padded_path():
    """A traced graph (the ONNX export) must not freeze one batch's count of real tokens."""
    config = tiny_config()
    model = BertModel(config, add_pooler=False).eval()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(*inputs).last_hidden_state

    batch = _ragged(config)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    with torch.no_grad():
        traced = torch.jit.trace(Hidden(), args, check_trace=False)
        other = _ragged(config)
        other["attention_mask"][1, :9] = 1
        expected = model(other["input_ids"], other["token_type_ids"], other["attention_mask"], unpadded=False)
        got = traced(other["input_ids"], other["token_type_ids"], other["attention_mask"])
    torch.testing.assert_close(got, expected.last_hidden_state, atol=1e-5, rtol=0)


def test_real_minilm_unpadded_equals_padded(minilm_pair):
    ours, _, reftok = minilm_pair
    batch = _varied_batch(reftok, pairs=True)
    with torch.no_grad():
        a, b = ours(**batch), ours(**batch, unpadded=False)
    mask = batch["attention_mask"].bool()
    assert (a.last_hidden_state - b.last_hidden_state)[mask].abs().max() < 1e-5
    assert (a.pooler_output - b.pooler_output).abs().max() < 1e-5


def _at(mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """About a third of the real tokens, as a masked LM's selection."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(mask.shape, generator=g) < 0.35) & mask.bool()


@pytest.mark.parametrize("padding", ["ragged", "none", "left", "packed"])
@pytest.mark.parametrize("pooler", [True, False])
def test_forward_at_equals_forward_picked_values_and_gradients(padding, pooler):
    """The last layer at a few positions only: the same vectors, pooled output and gradients."""
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = _ragged(config)
    if padding == "none":
        batch["attention_mask"].fill_(1)
    elif padding == "left":
        batch["attention_mask"][1] = batch["attention_mask"][1].flip(0)  # with a pooler: forward's, picked
    elif padding == "packed":  # examples numbered 1..k in a row, padding 0
        batch["attention_mask"] = torch.tensor([[1] * 4 + [2] * 5 + [3] * 2, [1] * 7 + [0] * 4,
                                                [1, 2, 2, 3, 3, 3, 0, 0, 0, 0, 0], [1] * 11])
    at = _at(batch["attention_mask"])
    results = []
    rows = {}
    for picked in (False, True):
        torch.manual_seed(0)
        model = BertModel(config, add_pooler=pooler).train()
        model.layers[-1].ffn.up.register_forward_hook(
            lambda m, args, out, picked=picked: rows.__setitem__(picked, args[0].shape[:-1].numel()))
        if picked:
            out = model.forward_at(**batch, at=at)
            hidden = out.last_hidden_state
        else:
            out = model(**batch)
            hidden = out.last_hidden_state[at]
        loss = hidden.pow(2).sum() + (out.pooler_output.sum() if pooler else 0)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((hidden.detach(), out.pooler_output, grads))
    (h0, p0, g0), (h1, p1, g1) = results
    assert h1.shape == (int(at.sum()), config.hidden_size)
    assert rows[True] < rows[False] or (padding == "left" and pooler)  # the last layer at fewer rows
    torch.testing.assert_close(h1, h0, atol=1e-5, rtol=0)
    if pooler:
        torch.testing.assert_close(p1, p0, atol=1e-5, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=0, msg=name)


def test_forward_at_leaves_out_the_last_layer_at_unread_rows():
    """What makes it pay: the last layer's feed-forward block sees only the picked rows (and the
    first token of each row, for the pooler); the layers below see every real token."""
    config = tiny_config()
    model = BertModel(config).eval()
    batch = _ragged(config)
    at = _at(batch["attention_mask"])
    rows = {}
    for i, layer in enumerate(model.layers):
        layer.ffn.up.register_forward_hook(lambda m, args, out, i=i: rows.__setitem__(i, args[0].shape[0]))
    with torch.no_grad():
        model.forward_at(**batch, at=at)
    picked = at.clone()
    picked[:, 0] = True
    assert rows == {0: int(batch["attention_mask"].sum()), 1: int(picked.sum())}
    with torch.no_grad():
        out = model.forward_at(**batch)  # a classifier: the pooled first tokens alone
    assert out.last_hidden_state is None and rows[1] == 4


def test_forward_at_falls_back_where_forward_runs_padded():
    """A row of padding alone: forward's values, picked."""
    config = tiny_config()
    model = BertModel(config).eval()
    batch = _ragged(config)
    batch["attention_mask"][2] = 0  # a row of padding alone
    at = _at(batch["attention_mask"])
    with torch.no_grad():
        got, want = model.forward_at(**batch, at=at), model(**batch)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state[at])
    with pytest.raises(ValueError, match="padding"):
        model.forward_at(**_ragged(config), at=torch.ones(4, 11, dtype=torch.bool))
    with pytest.raises(ValueError, match="booleans"):
        model.forward_at(**_ragged(config), at=torch.tensor([[0, 1]]))


def test_forward_at_with_nothing_picked_and_no_pooler():
    model = BertModel(tiny_config(), add_pooler=False).eval()
    batch = _ragged(tiny_config())
    with torch.no_grad():
        assert model.forward_at(**batch, at=torch.zeros(4, 11, dtype=torch.bool)).last_hidden_state.shape == (0, 32)
        assert model.forward_at(**batch).last_hidden_state is None


def test_forward_at_takes_compile_for_inference_forward(monkeypatch):
    """An encoder whose forward compile_for_inference replaced: the heads reach that forward."""
    model = BertModel(tiny_config()).eval()
    calls = []
    eager = model.forward
    model.forward = lambda *a, **k: calls.append(1) or eager(*a, **k)
    model.compiled_for_inference = True
    with torch.no_grad():
        model.forward_at(**_ragged(tiny_config()))
    assert calls == [1]


def test_forward_at_draws_every_mask_under_use_torch_dropout():
    """With transformers' dropout draws (use_torch_dropout, bench/finetune.py's side-by-side runs) a
    training forward_at is forward picked: the same masks, the same random state after."""
    from bertkit.dropout import use_torch_dropout

    config = tiny_config(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    model = BertModel(config).train()
    batch = _ragged(config)
    at = _at(batch["attention_mask"])
    use_torch_dropout(True)
    try:
        torch.manual_seed(5)
        got = model.forward_at(**batch, at=at)
        after = torch.get_rng_state()
        torch.manual_seed(5)
        want = model(**batch)
        assert torch.equal(torch.get_rng_state(), after)
    finally:
        use_torch_dropout(False)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state[at], atol=0, rtol=0)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=0, rtol=0)
