"""The BERT encoder in one file: embeddings, self-attention, feed-forward, layers, pooler.

Devlin et al. 2018, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", on the Transformer encoder of Vaswani et al. 2017 with post-LayerNorm residuals.

Dimension letters used in the shape comments:
    B batch, T tokens, C hidden size, H attention heads, D head size (C = H * D),
    F feed-forward width, V vocabulary size, N choices (multiple choice),
    R real (non-padding) tokens of a batch, all rows together, on the unpadded path,
    S examples of a packed batch (several to a row: packing.py).

This file knows nothing of devices, precision or processes. Parameter names are our own; the
checkpoint loader (checkpoint.py) maps them to and from the standard BERT key names.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit import checkpoint
from bertkit.config import BertConfig
from bertkit.dropout import Dropout, dropout, own_dropout_pays, torch_draws_everywhere
from bertkit.errors import InputError

# hidden_act name -> function, for every name in config.ACTIVATION_NAMES (where a config is checked).
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # exact (erf) GELU, as in the original BERT
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class BertOutput(NamedTuple):
    last_hidden_state: Tensor  # (B, T, C)
    pooler_output: Tensor | None  # (B, C), packed rows: (S, C) one per example; None without a pooler
    hidden_states: tuple[Tensor, ...] | None = None
    """With output_hidden_states: the embeddings' output, then every layer's, (B, T, C) each (L + 1)."""
    attentions: tuple[Tensor, ...] | None = None
    """With output_attentions: every layer's attention weights, (B, H, T, T) each (L)."""


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """Scaled dot-product attention; every layer's attention goes through here.

    q, k, v: (B, H, T, D). mask: (B, 1, 1, T) booleans, True where a key may be attended, or None.
    Returns (B, H, T, D). With dropout where bertkit's mask is the cheaper one (the CPU: there SDPA
    with dropout takes its plain, unfused path anyway), the attention is written out
    (attention_with_weights); a query with no key to attend, which the encoder never makes (a padded
    query attends its row's real keys), then averages every value instead of SDPA's answer.
    """
    if dropout_p > 0 and own_dropout_pays(q):
        return attention_with_weights(q, k, v, mask, dropout_p)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def attention_with_weights(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                           dropout_p: float) -> tuple[Tensor, Tensor]:
    """The same attention written out, for when the weights themselves are wanted (a look inside
    the model): softmax(q k^T / sqrt(D)) over the keys a query may attend. Returns (B, H, T, D) and
    the weights (B, H, T, T), dropout applied as to the output."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, T, T); scaling q is the smaller pass
    if mask is not None:  # in place (the product's backward needs only q, k), as an added bias: 7x masked_fill_
        scores.add_(torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
                    .masked_fill_(~mask, torch.finfo(scores.dtype).min))
    weights = dropout(scores.softmax(-1), dropout_p)  # (B, H, T, T)
    return weights @ v, weights


# ---- the unpadded path: padding dropped before the first layer ----------------------------------------
# Measured on the 2-core CPU (all-MiniLM-L6-v2, fp32, batches of 32 of a Penn Treebank mix): see
# bench/unpadded.py and varlen_attention's docstring for the attention variants tried.


class Unpadding(NamedTuple):
    """Where the real tokens of a padded (B, T) batch are: what the unpadded path gathers them by,
    lays them out for attention by, and scatters the result back with. Computed once per batch."""

    indices: Tensor  # (R,) flat positions b * T + t of the real tokens, row after row
    positions: Tensor  # (R,) each token's own position t in its row: its position embedding
    slots: Tensor  # (R,) flat positions b * L + i in the (B, L) layout with each row's tokens first
    lengths: Tensor  # (B,) real tokens per row
    max_length: int  # L, the longest row's real tokens


def unpad(attention_mask: Tensor) -> Unpadding:
    """(B, T) mask, 1 at real tokens -> their indices, positions and the layout for attention.

    Any mask works, not only right padding: a token keeps its own position t (as on the padded path),
    and attention does not depend on where in the row the keys sit, only on which ones are real."""
    B, T = attention_mask.shape
    real = attention_mask.bool()  # (B, T)
    indices = real.reshape(-1).nonzero().squeeze(1)  # (R,)
    lengths = real.sum(1)  # (B,)
    L = int(lengths.max()) if B else 0
    rows = torch.div(indices, T, rounding_mode="floor")  # (R,)
    starts = lengths.cumsum(0) - lengths  # (B,): where each row's tokens begin among the R
    rank = torch.arange(indices.numel(), device=indices.device) - starts[rows]  # (R,): i-th real token of its row
    return Unpadding(indices, indices - rows * T, rows * L + rank, lengths, L)


# ---- packed rows: several examples to a row (packing.py) -----------------------------------------------


def is_packed(attention_mask: Tensor | None) -> bool:
    """Whether a batch holds several examples in a row: its integer mask numbers a second one (2..k).
    A mask of 0s and 1s (one example per row) keeps the meaning it always had. Never in a traced or
    compiled graph: the check reads data, which would break the graph (and sync a GPU) on every call;
    training refuses --pack with --compile (settings.TrainConfig)."""
    if attention_mask is None or attention_mask.dtype == torch.bool or attention_mask.is_floating_point():
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return bool((attention_mask > 1).any())


def packed_positions(attention_mask: Tensor) -> Tensor:
    """(B, T) packed mask -> (B, T) positions counted from the first token of each example (and of
    the padding after the last)."""
    B, T = attention_mask.shape
    t = torch.arange(T, device=attention_mask.device).expand(B, T)  # (B, T)
    starts = torch.ones_like(attention_mask, dtype=torch.bool)
    starts[:, 1:] = attention_mask[:, 1:] != attention_mask[:, :-1]
    return t - torch.where(starts, t, 0).cummax(1).values  # (B, T)


def same_example(attention_mask: Tensor) -> Tensor:
    """(B, T) packed mask -> (B, 1, T, T) booleans: a query attends the keys of its own example.
    Padding attends padding only (never nothing: a query with no key would give NaN)."""
    return attention_mask[:, None, :, None] == attention_mask[:, None, None, :]  # (B, 1, T, T)


def pad_back(x: Tensor, unpadding: Unpadding, B: int, T: int) -> Tensor:
    """(R, C) -> (B, T, C): every real token back at its place, zeros at padding."""
    out = x.new_zeros(B * T, x.shape[-1]).index_copy_(0, unpadding.indices, x)  # (B*T, C)
    return out.view(B, T, -1)


def varlen_attention(qkv: Tensor, unpadding: Unpadding, n_heads: int, dropout_p: float) -> Tensor:
    """Attention within each row of the unpadded batch: (R, 3C) fused q/k/v -> (R, C).

    The rows are laid out again as (B, H, L, D), L the longest row's real tokens, only around the
    fused scaled_dot_product_attention, and gathered back to (R, C) right after: every Linear,
    GELU, LayerNorm and dropout around it still runs on the R real tokens alone. Exact: each query
    sees its own row's real keys and nothing else.

    Chosen by measuring (bench/unpadded.py, all-MiniLM-L6-v2, 2 threads, 128 Penn Treebank texts
    in batches of 32, median of 3, real tokens/s relative to the padded path; given order /
    length-sorted): this 1.53x / 1.55x; rows sorted into up to 4 length groups, each padded to
    its own longest, 1.49x / 1.44x; 4 equal length buckets 0.99x / 0.93x; one SDPA call per row
    0.51x / 0.44x; a block-diagonal (R, R) mask 0.60x / 0.21x and nested (jagged) tensors with
    SDPA 0.12x / 0.13x (64 texts, 1 pass: no fused CPU kernel for either)."""
    y = heads_attention(lay_out(qkv, unpadding), key_mask(unpadding), n_heads, dropout_p)  # (B, H, L, D)
    return gather_heads(y, unpadding)  # (R, C)


def lay_out(x: Tensor, unpadding: Unpadding) -> Tensor:
    """(R, K) rows of the unpadded batch -> (B, L, K): each row's tokens first, zeros after them."""
    B, L = unpadding.lengths.shape[0], unpadding.max_length
    return x.new_zeros(B * L, x.shape[-1]).index_copy_(0, unpadding.slots, x).view(B, L, x.shape[-1])  # (B, L, K)


def gather_heads(y: Tensor, unpadding: Unpadding) -> Tensor:
    """(B, H, L, D) attention output in the (B, L) layout -> (R, C): the real tokens' rows again."""
    B, H, L, D = y.shape
    return take_rows(y.transpose(1, 2).reshape(B * L, H * D), unpadding.slots)  # (R, C)


def key_mask(unpadding: Unpadding) -> Tensor:
    """(B, 1, 1, L) booleans: which places of the (B, L) layout hold a real token."""
    L = unpadding.max_length
    return (torch.arange(L, device=unpadding.lengths.device)[None, :] < unpadding.lengths[:, None])[:, None, None, :]


def heads_attention(qkv: Tensor, mask: Tensor | None, n_heads: int, dropout_p: float) -> Tensor:
    """(B, T, 3C) fused q/k/v -> (B, H, T, D): split into heads, then `attention`."""
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_heads, C3 // (3 * n_heads)).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
    return attention(q, k, v, mask, dropout_p)  # (B, H, T, D)


class _TakeRows(torch.autograd.Function):
    """x.index_select(0, index) for an index without repeats. Its gradient puts each row back in
    place (index_copy into zeros) instead of adding rows up (index_add, the general case): the same
    numbers, measured 1.06x on a fine-tuning step's forward and backward."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.rows, *grad.shape[1:]).index_copy_(0, index, grad), None


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """(N, C), (R,) distinct row numbers -> (R, C): x's rows in that order."""
    return _TakeRows.apply(x, index)


class Embeddings(nn.Module):
    """Token + segment + learned position embeddings, then LayerNorm and dropout (paper §3, Fig. 2)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.segment = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, positions: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, T, C), positions 0..T-1 (or the (B, T) positions of packed rows); or (R,)
        ids of real tokens and their (R,) positions -> (R, C) on the unpadded path."""
        if positions is None:
            self.check_length(input_ids.shape[1])
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = self.word(input_ids) + self.segment(token_type_ids) + self.position(positions)  # (B, T, C) or (R, C)
        return self.dropout(self.norm(x))

    def check_length(self, T: int) -> None:
        if T > self.position.num_embeddings:
            raise InputError(
                f"sequence of {T} tokens is longer than the model's maximum of {self.position.num_embeddings} "
                "(truncate it when tokenizing)"
            )


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused projection for queries, keys and values."""

    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.n_heads = config.num_attention_heads
        self.qkv = nn.Linear(C, 3 * C)  # rows: [query; key; value]
        self.out = nn.Linear(C, C)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: Tensor, mask: Tensor | Unpadding | None, *,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, T, C) -> (B, T, C), and the attention weights (B, H, T, T) when need_weights;
        or, with an Unpadding for mask, the real tokens (R, C) -> (R, C) (never with weights)."""
        if not need_weights or isinstance(mask, Unpadding):
            return self.out(self.mix(self.qkv(x), mask)), None
        B, T, C = x.shape
        H, D = self.n_heads, C // self.n_heads
        qkv = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        y, weights = attention_with_weights(qkv[0], qkv[1], qkv[2], mask, self.p)  # (B, H, T, D), (B, H, T, T)
        return self.out(y.transpose(1, 2).reshape(B, T, C)), weights

    @property
    def p(self) -> float:
        """The attention weights' dropout now: none when evaluating."""
        return self.dropout_p if self.training else 0.0

    def mix(self, qkv: Tensor, mask: Tensor | Unpadding | None) -> Tensor:
        """The attention itself, between the two projections: fused q/k/v (B, T, 3C) -> (B, T, C)
        (mask a (B, 1, 1, T) or (B, 1, T, T) boolean mask, or None), or (R, 3C) -> (R, C) on the
        unpadded path (mask an Unpadding)."""
        if isinstance(mask, Unpadding):
            return varlen_attention(qkv, mask, self.n_heads, self.p)  # (R, C)
        B, T, C3 = qkv.shape
        return heads_attention(qkv, mask, self.n_heads, self.p).transpose(1, 2).reshape(B, T, C3 // 3)  # (B, T, C)


class FeedForward(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)  # C -> F
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)  # F -> C
        self.act = activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class Layer(nn.Module):
    """One encoder layer: x = LN(x + Drop(Attn(x))); x = LN(x + Drop(FFN(x))) — post-LN, as in BERT."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, mask: Tensor | Unpadding | None, *,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, T, C) -> (B, T, C), and the attention weights (B, H, T, T) when need_weights;
        (R, C) -> (R, C) on the unpadded path (mask an Unpadding)."""
        a, weights = self.attention(x, mask, need_weights=need_weights)
        x = self.attention_norm(x + self.dropout(a))  # (B, T, C)
        return self.ffn_norm(x + self.dropout(self.ffn(x))), weights  # (B, T, C)

    def at(self, x: Tensor, unpadding: Unpadding, wanted: Unpadding, mask: Tensor | None = None) -> Tensor:
        """The layer computed at some of its rows only (the last layer, where only those are read):
        x (R, C), the rows `unpadding` lays out -> (M, C) at the M rows `wanted` picks (its `indices`
        are positions among x's R rows, its `slots` their place in a (B, M_b) layout of queries).

        Keys and values come from every row; queries, the output projection, the residuals, the
        LayerNorms and the feed-forward block run on the M rows alone. The same numbers as the
        forward's rows there: each picked query attends exactly the keys it attends in forward
        (packed rows: `mask`, (B, 1, M_b, L), says which)."""
        att = self.attention
        B, C = unpadding.lengths.shape[0], x.shape[1]
        H = att.n_heads
        picked = take_rows(x, wanted.indices)  # (M, C)
        if isinstance(att.qkv, nn.Linear):  # queries at the picked rows alone
            w, b = att.qkv.weight, att.qkv.bias  # rows: [query; key; value]
            q, kv = F.linear(picked, w[:C], b[:C]), F.linear(x, w[C:], b[C:])  # (M, C), (R, 2C)
        else:  # another kind of projection (int8): at every row, then split
            qkv = att.qkv(x)  # (R, 3C)
            q, kv = take_rows(qkv[:, :C], wanted.indices), qkv[:, C:]  # (M, C), (R, 2C)
        q, kv = lay_out(q, wanted), lay_out(kv, unpadding)  # (B, Mb, C), (B, L, 2C)
        q = q.view(B, wanted.max_length, H, C // H).transpose(1, 2)  # (B, H, Mb, D)
        k, v = kv.view(B, kv.shape[1], 2, H, C // H).permute(2, 0, 3, 1, 4)  # (B, H, L, D) each
        if mask is None and x.shape[0] < B * kv.shape[1]:  # else no row has padding
            mask = key_mask(unpadding)
        y = attention(q, k, v, mask, att.p)  # (B, H, Mb, D)
        picked = self.attention_norm(picked + self.dropout(att.out(gather_heads(y, wanted))))  # (M, C)
        return self.ffn_norm(picked + self.dropout(self.ffn(picked)))  # (M, C)


class Pooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence representation NSP and classifiers read (paper §3.1)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, C)


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) weights, zero biases, unit LayerNorm; the [PAD] embedding row starts at zero."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Pretrained(nn.Module):
    """Loading and saving in the standard checkpoint layout, shared by the encoder and every head."""

    architecture = "BertModel"  # the class name other BERT implementations know this model by

    config: BertConfig

    def init_weights(self) -> None:
        self.apply(lambda m: init_weights(m, self.config.initializer_range))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, with_head: bool = True, require: tuple[str, str] | None = None,
                        **config_changes):
        """Load a standard BERT checkpoint directory (config.json + model.safetensors or pytorch_model.bin).

        Weights the checkpoint lacks are initialised and listed in `model.load_report`.
        `config_changes` override config.json fields (e.g. id2label for a new classifier);
        with_head=False loads the encoder only, for a head trained from scratch on a new task;
        require=(prefix, what) refuses a checkpoint without those weights (e.g. an MLM head).
        """
        return checkpoint.load_pretrained(cls, path, with_head=with_head, require=require, **config_changes)

    def save_pretrained(self, directory: str | Path, *, tokenizer=None) -> Path:
        """Write config.json and model.safetensors (and the tokenizer's files if given) to `directory`."""
        return checkpoint.save_pretrained(self, directory, tokenizer=tokenizer)


class BertModel(Pretrained):
    """The BERT encoder: embeddings, a stack of layers, and (optionally) the pooler."""

    def __init__(self, config: BertConfig, *, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config) if add_pooler else None
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        unpadded: bool = True,
    ) -> BertOutput:
        """input_ids, token_type_ids, attention_mask: (B, T); attention_mask is 1 for real tokens, 0 for padding.

        output_hidden_states / output_attentions also return every layer's hidden states and
        attention weights, in the shapes and order transformers uses.

        A batch with padding runs unpadded (see `unpadded`): no layer computes anything for the
        padding, and last_hidden_state is zero there (the padded path leaves values there that
        no caller may use). The extras, traced or compiled graphs and unpadded=False take the
        padded path.

        Packed rows (packing.py): attention_mask numbers the examples of a row 1..k (0 on padding).
        Each example then runs as if alone: positions from 0, attention masked to its own tokens;
        pooler_output is (S, C), one per example, row after row. Packed rows run as rows (the
        padded path with a (B, 1, T, T) mask): on the CPU that measured as fast as making every
        example a sequence of the unpadded path for tagging and pretraining, and 1.2-1.3x faster
        for short classification texts, whose unpadded attention pads to the longest (bench/packing.py).
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        packed = is_packed(attention_mask)
        if (unpadded and not packed and not (output_hidden_states or output_attentions)
                and worth_unpadding(attention_mask)):
            B, T = input_ids.shape
            self.embeddings.check_length(T)
            hidden, unpadding = self.unpadded(input_ids, token_type_ids, attention_mask)  # (R, C)
            x = pad_back(hidden, unpadding, B, T)  # (B, T, C)
            return BertOutput(x, self.pooler(x) if self.pooler is not None else None)
        positions = None
        if packed:
            self.embeddings.check_length(input_ids.shape[1])
            positions, mask = packed_positions(attention_mask), same_example(attention_mask)  # (B, T), (B, 1, T, T)
        else:
            mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids, positions)  # (B, T, C)
        hidden, attentions = [x], []
        for layer in self.layers:
            x, weights = layer(x, mask, need_weights=output_attentions)
            hidden.append(x)
            attentions.append(weights)
        pooled = None
        if self.pooler is not None:
            firsts = x[(positions == 0) & (attention_mask > 0)][:, None] if packed else x  # packed: (S, 1, C)
            pooled = self.pooler(firsts)  # (B, C), packed (S, C)
        return BertOutput(x, pooled, tuple(hidden) if output_hidden_states else None,
                          tuple(attentions) if output_attentions else None)

    def unpadded(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor, *,
                 layers: int | None = None) -> tuple[Tensor, Unpadding]:
        """(B, T) inputs -> the last layer's vectors of the real tokens alone, (R, C) row after row,
        and where they sit: for callers that read only some tokens (pooling, masked positions).
        `layers`: stop after that many layers (forward_at runs the last one itself)."""
        u = unpad(attention_mask)
        flat = u.indices
        x = self.embeddings(input_ids.reshape(-1)[flat], token_type_ids.reshape(-1)[flat], u.positions)  # (R, C)
        for layer in self.layers[:layers]:
            x, _ = layer(x, u)  # (R, C)
        return x, u

    def forward_at(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                   attention_mask: Tensor | None = None, at: Tensor | None = None) -> BertOutput:
        """forward, for callers that read the last layer at a few positions: the masked LM's
        selected tokens, a classifier's pooled [CLS]. `at`: (B, T) booleans at real tokens, or None.

        Returns last_hidden_state (M, C), the vectors at `at` row after row (forward's
        last_hidden_state[at]; None without `at`), and pooler_output as forward's ((S, C) for
        packed rows). The last layer runs only at those positions and at the first token of each
        row, or of each example of packed rows (Layer.at): for pretraining at 15% masking that is
        most of a layer's work left out. A traced or compiled graph, compile_for_inference's
        forward, a row of padding alone, a pooler reading a padded first token and training with
        use_torch_dropout (the same random draws as transformers) run forward and pick. Under
        compile_layers the last layer here runs eager (a few rows)."""
        if at is not None and at.dtype != torch.bool:
            raise ValueError(f"forward_at: `at` must be booleans (B, T), not {at.dtype}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        packed = is_packed(attention_mask)
        if (not self.layers or torch.jit.is_tracing() or reads_every_row(self.training)
                or getattr(self, "compiled_for_inference", False) or not bool(real.any(1).all())
                or (self.pooler is not None and not packed and not bool(real[:, 0].all()))):  # a padded [CLS]
            out = self.forward(input_ids, token_type_ids, attention_mask)
            return BertOutput(None if at is None else out.last_hidden_state[at], out.pooler_output)
        B, T = input_ids.shape
        self.embeddings.check_length(T)
        wanted = torch.zeros_like(real) if at is None else at.clone()  # (B, T)
        if bool((wanted & ~real).any()):
            raise ValueError("forward_at: `at` marks padding")
        x, u, firsts, rows_mask = self._below_last(input_ids, token_type_ids, attention_mask, real, packed)
        if self.pooler is not None:
            wanted |= firsts
        picks = unpad(wanted)
        row_of = torch.full((B * T,), -1, dtype=torch.long, device=x.device).index_copy_(
            0, u.indices, torch.arange(u.indices.numel(), device=x.device))  # flat position -> row of x
        query_mask = None
        if packed:  # each picked query attends its own example's keys: its row of rows_mask
            t = x.new_zeros(B * picks.max_length, dtype=torch.long).index_copy_(0, picks.slots, picks.indices % T)
            query_mask = rows_mask[:, 0].gather(1, t.view(B, -1, 1).expand(-1, -1, T))[:, None]  # (B, 1, Mb, T)
        y = self.layers[-1].at(x, u, picks._replace(indices=row_of[picks.indices]), query_mask)  # (M', C)
        hidden = None if at is None else y[at[wanted]]  # (M, C)
        pooled = None if self.pooler is None else self.pooler(y[firsts[wanted]][:, None])  # (B, C); packed (S, C)
        return BertOutput(hidden, pooled)

    def _below_last(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor | None, real: Tensor,
                    packed: bool) -> tuple[Tensor, Unpadding, Tensor, Tensor | None]:
        """forward_at's stack but its last layer: the rows (R, C) and their layout, the first tokens
        the pooler reads (B, T), and packed rows' (B, 1, T, T) mask. Each batch as forward runs it."""
        B, T = input_ids.shape
        firsts = torch.zeros_like(real)
        firsts[:, 0] = True
        if not packed and not bool(real.all()):  # padding: the unpadded path
            x, u = self.unpadded(input_ids, token_type_ids, attention_mask, layers=len(self.layers) - 1)  # (R, C)
            return x, u, firsts, None
        positions, mask = None, None  # no padding: (B, T, C) as in forward
        if packed:
            positions, mask = packed_positions(attention_mask), same_example(attention_mask)  # (B, T), (B, 1, T, T)
            firsts = (positions == 0) & real  # each example's first token
        x = self.embeddings(input_ids, token_type_ids, positions)  # (B, T, C)
        for layer in self.layers[:-1]:
            x, _ = layer(x, mask)
        return x.reshape(B * T, -1), unpad(torch.ones_like(real)), firsts, mask  # every slot a row


def reads_every_row(training: bool) -> bool:
    """Whether a head computes every token's output where it would pick some (forward_at, the
    tagger's training): inside a graph torch.compile captures (picking makes shapes depend on the
    data, which breaks the graph), and when training with transformers' dropout draws
    (use_torch_dropout: a mask for every token, as transformers draws them)."""
    return torch.compiler.is_compiling() or (training and torch_draws_everywhere())


def worth_unpadding(attention_mask: Tensor | None) -> bool:
    """Whether a batch goes the unpadded way: it has padding, every row has a real token (a row of
    padding alone keeps the padded path's meaning), and no graph is being traced or compiled (the
    number of real tokens is data, which a traced graph would freeze)."""
    if attention_mask is None or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    real = attention_mask.bool()
    return bool(real.any(1).all()) and not bool(real.all())


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

