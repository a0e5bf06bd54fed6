"""Sentence encoders in sentence-transformers' (ST) folder layout, read and written by bertkit alone.

An ST folder is a standard BERT checkpoint plus a few small files that say how token vectors
become one sentence vector:

    modules.json                       the pipeline: Transformer ("" or a subfolder), Pooling, Dense..., Normalize
    1_Pooling/config.json              pooling_mode_* flags (cls, max, mean, mean_sqrt_len, weightedmean, lasttoken)
    2_Dense/config.json + weights      a linear layer and activation on the pooled vector (optional)
    sentence_bert_config.json          max_seq_length, do_lower_case (beside the Transformer's config.json)
    config_sentence_transformers.json  prompts, default_prompt_name, similarity_fn_name

`SentenceEncoder.from_pretrained` reads either that layout or a plain BERT checkpoint (then: mean
pooling and L2 normalisation, what bertkit always did); `save_pretrained` writes both layouts into
one folder, so transformers' AutoModel and `SentenceTransformer(dir)` load it. Every rule here is
the one of sentence-transformers' Pooling/Dense/Normalize modules, checked against the library in
tests/test_sentence.py; bertkit never imports it.

Shapes: B batch, T tokens, C hidden size, D sentence-vector size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit import checkpoint
from bertkit.config import BertConfig
from bertkit.errors import CheckpointError, InputError
from bertkit.fileio import write_text_atomically
from bertkit.model import BertModel, Pretrained
from bertkit.tokenizer import Tokenizer

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# 1_Pooling/config.json's flags, in the order sentence-transformers concatenates the modes they set.
POOLING_FLAGS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)
ST_ORDER = tuple(mode for _, mode in POOLING_FLAGS)
SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
SBERT_CONFIG_FILE = "sentence_bert_config.json"
POOLING_DIR, DENSE_DIR, NORMALIZE_DIR = "1_Pooling", "Dense", "Normalize"
# the type names sentence-transformers has written since v2; every version since reads them
ST_TYPES = {kind: f"sentence_transformers.models.{kind}" for kind in ("Transformer", "Pooling", "Dense", "Normalize")}

# Dense activation: the class name ST writes (its `fullname`) -> the function. Only these; a file
# never names code to import.
ACTIVATIONS: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {
    "Tanh": ("torch.nn.modules.activation.Tanh", torch.tanh),
    "Identity": ("torch.nn.modules.linear.Identity", lambda x: x),
    "ReLU": ("torch.nn.modules.activation.ReLU", F.relu),
    "GELU": ("torch.nn.modules.activation.GELU", F.gelu),
    "Sigmoid": ("torch.nn.modules.activation.Sigmoid", torch.sigmoid),
    "SiLU": ("torch.nn.modules.activation.SiLU", F.silu),
}


# ---- pooling: (B, T, C) token vectors -> (B, C) per mode ---------------------------------------------


def pool(hidden: Tensor, attention_mask: Tensor, modes: Sequence[str], *, prompt_length: int = 0) -> Tensor:
    """(B, T, C), (B, T) -> (B, C * len(modes)): each mode's vector, concatenated in the order given.

    `prompt_length` tokens at the start ([CLS] and a prompt) take no part in the pooling — ST's
    include_prompt=False; they still shaped the other tokens' vectors through attention. Padding is
    on the right (bertkit never pads left), so every weighted-mean position counts from 1."""
    if not modes:
        raise InputError(f"pooling needs at least one mode of {', '.join(POOLING_MODES)}")
    mask = attention_mask
    if prompt_length:
        mask = attention_mask.clone()
        mask[:, :prompt_length] = 0
    return torch.cat([POOLERS[_check_mode(m)](hidden, mask) for m in modes], dim=-1)


def _check_mode(mode: str) -> str:
    if mode not in POOLING_MODES:
        raise InputError(f"unknown pooling mode {mode!r}; choose from {', '.join(POOLING_MODES)}")
    return mode


def _token_sum(hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    m = mask[..., None].to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)  # (B, C), (B, 1)


def mean_tokens(hidden: Tensor, mask: Tensor) -> Tensor:
    """The average of the real tokens' vectors (all-MiniLM-L6-v2 and most ST models)."""
    total, count = _token_sum(hidden, mask)
    return total / count  # (B, C)


def mean_sqrt_len_tokens(hidden: Tensor, mask: Tensor) -> Tensor:
    """The sum over real tokens divided by sqrt(their number) (Sentence-BERT paper's variant)."""
    total, count = _token_sum(hidden, mask)
    return total / count.sqrt()  # (B, C)


def cls_token(hidden: Tensor, mask: Tensor) -> Tensor:
    """The first token that counts: [CLS], or the first after an excluded prompt."""
    first = mask.int().argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]  # (B, C)


def max_tokens(hidden: Tensor, mask: Tensor) -> Tensor:
    """The largest value of each component over the real tokens (-inf when there are none, as in ST)."""
    return hidden.masked_fill(mask[..., None] == 0, float("-inf")).max(dim=1).values  # (B, C)


def weightedmean_tokens(hidden: Tensor, mask: Tensor) -> Tensor:
    """Token t (counting from 1) weighs t: later tokens count more (SGPT, Muennighoff 2022)."""
    T = hidden.shape[1]
    weights = torch.arange(1, T + 1, device=hidden.device, dtype=hidden.dtype)[None, :, None]  # (1, T, 1)
    w = mask[..., None].to(hidden.dtype) * weights  # (B, T, 1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)  # (B, C)


def lasttoken(hidden: Tensor, mask: Tensor) -> Tensor:
    """The last real token's vector (decoder-style embedders); the last position when none is real."""
    B, T, _ = hidden.shape
    found, from_end = mask.flip(1).max(dim=1)  # (B,), (B,)
    last = torch.where(found == 0, 0, T - 1 - from_end)  # (B,); a row without tokens gives zeros
    return (hidden * mask[..., None].to(hidden.dtype))[torch.arange(B, device=hidden.device), last]  # (B, C)


POOLERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mean": mean_tokens,
    "cls": cls_token,
    "max": max_tokens,
    "mean_sqrt_len_tokens": mean_sqrt_len_tokens,
    "weightedmean": weightedmean_tokens,
    "lasttoken": lasttoken,
}


# ---- settings and Dense modules -----------------------------------------------------------------------


@dataclass(frozen=True)
class DenseSettings:
    """One ST Dense module: y = activation(W x + b) (+ x, or + R x, with use_residual)."""

    in_features: int
    """Size of the vector it reads."""
    out_features: int
    """Size of the vector it writes."""
    bias: bool = True
    """Whether the linear layer has a bias."""
    activation: str = "Tanh"
    """One of ACTIVATIONS (ST's default is Tanh)."""
    use_residual: bool = False
    """Add the input back (through a bias-free projection when the sizes differ)."""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise InputError(f"Dense activation {self.activation!r} is not supported; "
                             f"choose from {', '.join(ACTIVATIONS)}")


@dataclass(frozen=True)
class SentenceSettings:
    """Everything in ST's files that changes a sentence vector; the defaults are bertkit's plain-BERT ones."""

    pooling: tuple[str, ...] = ("mean",)
    """Pooling modes, concatenated in this order."""
    normalize: bool = True
    """L2-normalise the final vector (ST's Normalize module)."""
    max_seq_length: int | None = None
    """Tokens a text keeps ([CLS] and [SEP] included); None: what the tokenizer and positions allow."""
    do_lower_case: bool = False
    """Lower-case texts before tokenizing (sentence_bert_config.json)."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Named prompts, e.g. {"query": "query: "}: text put before the input."""
    default_prompt_name: str | None = None
    """The prompt used when none is asked for."""
    include_prompt: bool = True
    """Whether the prompt's tokens take part in pooling."""
    similarity_fn_name: str = "cosine"
    """How ST compares two vectors: cosine, dot, euclidean, manhattan."""
    dense: tuple[DenseSettings, ...] = ()
    """Dense modules after pooling, in order."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pooling", tuple([self.pooling] if isinstance(self.pooling, str) else self.pooling))
        object.__setattr__(self, "dense", tuple(self.dense))
        if not self.pooling:
            raise InputError(f"pooling needs at least one mode of {', '.join(POOLING_MODES)}")
        for mode in self.pooling:
            _check_mode(mode)
        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int) or self.max_seq_length < 3):
            raise InputError(f"max_seq_length must be an integer of at least 3, got {self.max_seq_length!r}")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise InputError(f"default_prompt_name {self.default_prompt_name!r} is not one of the prompts "
                             f"({', '.join(self.prompts) or 'none'})")
        if self.similarity_fn_name not in SIMILARITY_FUNCTIONS:
            raise InputError(f"similarity_fn_name {self.similarity_fn_name!r} is not one of "
                             f"{', '.join(SIMILARITY_FUNCTIONS)}")


class Dense(nn.Module):
    """ST's Dense module; parameter names (linear., residual.) are ST's, so its weight files load as they are."""

    def __init__(self, settings: DenseSettings):
        super().__init__()
        self.settings = settings
        self.linear = nn.Linear(settings.in_features, settings.out_features, bias=settings.bias)
        self.residual = (nn.Linear(settings.in_features, settings.out_features, bias=False)
                         if settings.use_residual and settings.in_features != settings.out_features else None)
        self.act = ACTIVATIONS[settings.activation][1]

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.linear(x))  # (B, D_out)
        if self.settings.use_residual:
            y = y + (x if self.residual is None else self.residual(x))
        return y


# ---- the model ------------------------------------------------------------------------------------------


class SentenceEncoder(Pretrained):
    """The BERT encoder (`self.bert`), pooling, Dense modules and normalisation: texts' ids -> (B, D).

    The encoder keeps its pooler (so a saved folder holds every weight it was loaded with) but it is
    frozen: no sentence vector reads it, and an unused trainable parameter would stall DDP."""

    architecture = "BertModel"  # config.json says BertModel: other tools read the folder as a plain BERT

    def __init__(self, config: BertConfig, settings: SentenceSettings | None = None, *,
                 encoder: BertModel | None = None):
        """A new model, or (encoder=) one around an encoder already loaded, shared, not copied."""
        super().__init__()
        self.bert = encoder if encoder is not None else BertModel(config)
        if self.bert.pooler is not None:
            self.bert.pooler.requires_grad_(False)
        self.settings = settings or SentenceSettings()
        check_dense_sizes(self.settings, self.bert.config.hidden_size, Path("settings"))
        self.dense = nn.ModuleList(Dense(d) for d in self.settings.dense)
        self.source_dir: Path | None = None  # where from_pretrained found the encoder (and its tokenizer)
        if encoder is None:
            self.init_weights()
        else:
            self.dense.apply(lambda m: _init_linear(m, config.initializer_range))

    @property
    def config(self) -> BertConfig:
        return self.bert.config

    @config.setter
    def config(self, value: BertConfig) -> None:
        self.bert.config = value

    @property
    def dim(self) -> int:
        """The size D of the vectors forward returns."""
        if self.settings.dense:
            return self.settings.dense[-1].out_features
        return self.config.hidden_size * len(self.settings.pooling)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None, *,
                layer: int | None = None, pooling: Sequence[str] | None = None, prompt_length: int = 0,
                normalize: bool | None = None) -> Tensor:
        """(B, T) ids and mask -> (B, D) sentence vectors.

        layer: whose hidden states are pooled (None: the last; -2: the second-to-last, as
        bert-as-service did; 0: the embeddings). pooling: other modes than the settings' (only
        without Dense modules, which expect the pooled size they were trained on). prompt_length:
        leading tokens left out of pooling when the settings say include_prompt=False. normalize:
        overrides the settings' L2 normalisation."""
        modes = self._modes(pooling)
        skip = 0 if self.settings.include_prompt else prompt_length
        if layer is None and modes == ("cls",) and not skip:  # the last layer at [CLS] alone (BertModel.forward_at)
            first = torch.zeros_like(attention_mask, dtype=torch.bool)
            first[torch.arange(first.shape[0], device=first.device), attention_mask.int().argmax(1)] = True  # cls_token's
            x = self.bert.forward_at(input_ids, token_type_ids, attention_mask, first).last_hidden_state  # (B, C)
        else:
            if layer is None:
                hidden = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state  # (B, T, C)
            else:
                states = self.bert(input_ids, token_type_ids, attention_mask, output_hidden_states=True).hidden_states
                hidden = states[check_layer(layer, len(states) - 1)]  # (B, T, C)
            x = pool(hidden, attention_mask, modes, prompt_length=skip)  # (B, C * modes)
        for dense in self.dense:
            x = dense(x)  # (B, D)
        return F.normalize(x, dim=-1) if (self.settings.normalize if normalize is None else normalize) else x

    def _modes(self, pooling: Sequence[str] | str | None) -> tuple[str, ...]:
        if pooling is None:
            return self.settings.pooling
        modes = parse_pooling(pooling)
        if self.dense and modes != self.settings.pooling:
            raise InputError(f"this model's Dense layers read {'+'.join(self.settings.pooling)} pooling; "
                             f"pooling {'+'.join(modes)} would not fit them")
        return modes

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, with_head: bool = True,
                        pooling: str | Sequence[str] | None = None, normalize: bool | None = None,
                        max_seq_length: int | None = None, **config_changes) -> SentenceEncoder:
        """A plain BERT checkpoint or an ST folder (module docstring); explicit arguments override the files.

        with_head=False initialises the Dense modules afresh (their sizes still come from the files);
        `config_changes` override config.json fields, as for every bertkit model."""
        directory = Path(path).expanduser()
        settings, encoder_dir, dense_dirs = _read_layout(directory)
        overrides: dict[str, Any] = {}
        if pooling is not None:
            overrides["pooling"] = parse_pooling(pooling)
        if normalize is not None:
            overrides["normalize"] = bool(normalize)
        if max_seq_length is not None:
            overrides["max_seq_length"] = max_seq_length
        if overrides:
            settings = replace(settings, **overrides)
        model = checkpoint.load_pretrained(cls, encoder_dir, with_head=with_head, **config_changes)
        check_dense_sizes(settings, model.config.hidden_size, directory)
        model.settings = settings
        model.dense = nn.ModuleList(Dense(d) for d in settings.dense)
        model.dense.apply(lambda m: _init_linear(m, model.config.initializer_range))
        if with_head:
            for dense, folder in zip(model.dense, dense_dirs):
                _load_dense(dense, folder)
        model.source_dir = encoder_dir
        return model

    def restore_weights(self, directory: str | os.PathLike) -> None:
        """Every weight from a folder this model's save_pretrained wrote: the encoder, then the Dense
        modules (checkpoint.restore_weights calls this on resume and when the best model is restored)."""
        checkpoint.load_state_into(self, Path(directory))
        self.load_dense_weights(directory)

    def load_dense_weights(self, directory: str | os.PathLike) -> None:
        """The Dense modules' weights from a folder this model's save_pretrained wrote."""
        _, _, dense_dirs = _read_layout(Path(directory))
        if len(dense_dirs) != len(self.dense):
            raise InputError(f"{directory}: {len(dense_dirs)} Dense modules, this model has {len(self.dense)}")
        for dense, folder in zip(self.dense, dense_dirs):
            _load_dense(dense, folder)

    def save_pretrained(self, directory: str | os.PathLike, *, tokenizer=None) -> Path:
        """The standard layout (config.json, model.safetensors of the encoder, tokenizer files) and
        ST's files beside it, each written atomically."""
        directory = Path(directory)
        checkpoint.save_pretrained(self.bert, directory, tokenizer=tokenizer)
        write_settings(self.settings, directory, hidden_size=self.config.hidden_size)
        for i, dense in enumerate(self.dense):
            state = {k: v.detach().cpu().contiguous() for k, v in dense.state_dict().items()}
            checkpoint.write_weights(state, directory / f"{i + 2}_{DENSE_DIR}" / checkpoint.WEIGHTS_NAME)
        return directory


def _init_linear(module: nn.Module, std: float) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def check_layer(layer: int, num_layers: int) -> int:
    """A hidden-state index in -(L+1)..L (0 is the embeddings' output, L or -1 the last layer)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not -(num_layers + 1) <= layer <= num_layers:
        raise InputError(f"--layer must be an integer from {-(num_layers + 1)} to {num_layers} "
                         f"(this model has {num_layers} layers; 0 is the embeddings, -1 the last layer), got {layer!r}")
    return layer


def parse_pooling(pooling: str | Sequence[str]) -> tuple[str, ...]:
    """'mean', 'cls+max' (or 'cls,max'), or a list of modes -> a tuple of checked modes."""
    if isinstance(pooling, str):
        pooling = [p.strip() for p in pooling.replace(",", "+").split("+")]
    modes = tuple(pooling)
    if not modes or any(not isinstance(m, str) or m not in POOLING_MODES for m in modes):
        raise InputError(f"--pooling must be one or more of {', '.join(POOLING_MODES)} joined by '+', "
                         f"got {'+'.join(map(str, modes)) or 'nothing'}")
    return modes


def check_dense_sizes(settings: SentenceSettings, hidden_size: int, where: Path) -> None:
    size = hidden_size * len(settings.pooling)
    for i, d in enumerate(settings.dense):
        if d.in_features != size:
            raise InputError(f"{where}: Dense module {i + 1} reads {d.in_features} features but receives {size} "
                             f"({'+'.join(settings.pooling)} pooling of hidden size {hidden_size})")
        size = d.out_features


# ---- reading ST's files ---------------------------------------------------------------------------------


def read_settings(directory: str | os.PathLike) -> tuple[SentenceSettings, Path]:
    """(the settings, the folder of the encoder's config.json, weights and tokenizer) of a checkpoint
    folder. Without modules.json: a plain BERT checkpoint, bertkit's defaults (mean pooling, normalised)."""
    settings, encoder_dir, _ = _read_layout(Path(directory).expanduser())
    return settings, encoder_dir


def _read_layout(directory: Path) -> tuple[SentenceSettings, Path, list[Path]]:
    """read_settings, and the folders of the Dense modules' weights."""
    if not (directory / MODULES_FILE).is_file():
        return SentenceSettings(), directory, []
    modules = _read_modules(directory / MODULES_FILE)
    kinds = [kind for kind, _ in modules]
    _check_order(kinds, directory / MODULES_FILE)
    encoder_dir = _inside(directory, modules[0][1], directory / MODULES_FILE)
    values: dict[str, Any] = {"normalize": "Normalize" in kinds}
    values.update(_read_sbert_config(encoder_dir / SBERT_CONFIG_FILE))
    pooling_paths = [path for kind, path in modules if kind == "Pooling"]
    if pooling_paths:
        values.update(_read_pooling(_inside(directory, pooling_paths[0], directory / MODULES_FILE) / "config.json"))
    dense_dirs = [_inside(directory, path, directory / MODULES_FILE) for kind, path in modules if kind == "Dense"]
    values["dense"] = tuple(_read_dense_config(folder / "config.json") for folder in dense_dirs)
    values.update(_read_st_config(directory / ST_CONFIG_FILE))
    try:
        return SentenceSettings(**values), encoder_dir, dense_dirs
    except InputError as e:
        raise InputError(f"{directory}: {e}") from None


def _read_json(path: Path, *, required: bool = True) -> dict[str, Any]:
    """A JSON object from `path` ({} when absent and not required); one line naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise InputError(f"{path}: missing (the sentence-transformers layout needs it)") from None
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, (dict, list)):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_modules(path: Path) -> list[tuple[str, str]]:
    """modules.json -> [(kind, path)], kind one of Transformer, Pooling, Dense, Normalize."""
    data = _read_json(path)
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty list of modules")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise InputError(f"{path}: module {i} has no \"type\"")
        module_type = entry["type"]
        kind = module_type.rsplit(".", 1)[-1]
        if not module_type.startswith("sentence_transformers.") or kind not in ST_TYPES:
            raise InputError(f"{path}: module {i} has type {module_type!r}, which bertkit does not support "
                             f"(it reads {', '.join(ST_TYPES)})")
        module_path = entry.get("path", "")
        if not isinstance(module_path, str):
            raise InputError(f"{path}: module {i} has a \"path\" that is not a string")
        out.append((kind, module_path))
    return out


def _check_order(kinds: list[str], path: Path) -> None:
    """Transformer, Pooling, Dense..., then Normalize: the pipelines bertkit runs (all of ST's BERT models)."""
    rank = {"Transformer": 0, "Pooling": 1, "Dense": 2, "Normalize": 3}
    ranks = [rank[k] for k in kinds]
    if kinds[0] != "Transformer" or kinds.count("Transformer") > 1 or kinds.count("Pooling") != 1 \
            or kinds.count("Normalize") > 1 or ranks != sorted(ranks):
        raise InputError(f"{path}: modules {' -> '.join(kinds)} are not supported (bertkit runs "
                         "Transformer -> Pooling -> Dense... -> Normalize)")


def _inside(directory: Path, sub: str, source: Path) -> Path:
    """directory/sub, refusing a path that leaves the folder."""
    target = (directory / sub).resolve()
    if target != directory.resolve() and directory.resolve() not in target.parents:
        raise InputError(f"{source}: module path {sub!r} is outside the model folder")
    return directory / sub if sub else directory


def _read_sbert_config(path: Path) -> dict[str, Any]:
    data = _read_json(path, required=False)
    out: dict[str, Any] = {}
    if data.get("max_seq_length") is not None:
        value = data["max_seq_length"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 3:
            raise InputError(f"{path}: max_seq_length must be an integer of at least 3, got {value!r}")
        out["max_seq_length"] = value
    if "do_lower_case" in data:
        out["do_lower_case"] = _flag(data["do_lower_case"], "do_lower_case", path)
    return out


def _read_pooling(path: Path) -> dict[str, Any]:
    """1_Pooling/config.json: the pooling_mode_* flags (older files) or pooling_mode (ST >= 6), include_prompt."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    if "pooling_mode" in data:
        value = data["pooling_mode"]
        modes = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else ()
        if not modes or any(m not in POOLING_MODES for m in modes):
            raise InputError(f"{path}: pooling_mode {value!r} is not one or more of {', '.join(POOLING_MODES)}")
    else:
        modes = tuple(mode for flag, mode in POOLING_FLAGS if _flag(data.get(flag, False), flag, path))
        modes = modes or ("mean",)  # ST's rule when no flag is set
    out: dict[str, Any] = {"pooling": modes}
    if "include_prompt" in data:
        out["include_prompt"] = _flag(data["include_prompt"], "include_prompt", path)
    return out


def _read_dense_config(path: Path) -> DenseSettings:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    for key in ("in_features", "out_features"):
        if isinstance(data.get(key), bool) or not isinstance(data.get(key), int) or data[key] < 1:
            raise InputError(f"{path}: {key} must be a positive integer, got {data.get(key)!r}")
    for key in ("module_input_name", "module_output_name"):
        if data.get(key) not in (None, "sentence_embedding"):
            raise InputError(f"{path}: {key} {data[key]!r} is not supported (only sentence_embedding)")
    activation = data.get("activation_function", ACTIVATIONS["Tanh"][0])
    names = {full: short for short, (full, _) in ACTIVATIONS.items()}
    if activation not in names:
        raise InputError(f"{path}: activation_function {activation!r} is not supported; bertkit runs "
                         f"{', '.join(names)}")
    return DenseSettings(data["in_features"], data["out_features"], bias=_flag(data.get("bias", True), "bias", path),
                         activation=names[activation],
                         use_residual=_flag(data.get("use_residual", False), "use_residual", path))


def _read_st_config(path: Path) -> dict[str, Any]:
    data = _read_json(path, required=False)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    model_type = data.get("model_type", "SentenceTransformer")
    if model_type != "SentenceTransformer":
        raise InputError(f"{path}: model_type {model_type!r} is not a sentence embedding model (SentenceTransformer)")
    out: dict[str, Any] = {}
    prompts = data.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, (str, type(None)))
                                                for k, v in prompts.items()):
        raise InputError(f"{path}: prompts must map names to strings")
    out["prompts"] = {k: v or "" for k, v in prompts.items()}
    if data.get("default_prompt_name") is not None:
        out["default_prompt_name"] = data["default_prompt_name"]
    if data.get("similarity_fn_name") is not None:
        out["similarity_fn_name"] = data["similarity_fn_name"]
    return out


def _flag(value: Any, name: str, path: Path) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{path}: {name} must be true or false, got {value!r}")
    return value


def _load_dense(dense: Dense, folder: Path) -> None:
    """A Dense module's weights: model.safetensors, or pytorch_model.bin read weights-only."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            try:
                state = checkpoint.read_weights(folder / name)
            except CheckpointError as e:
                raise InputError(str(e)) from None
            break
    else:
        raise InputError(f"{folder}: no Dense weights (model.safetensors or pytorch_model.bin)")
    own = dense.state_dict()
    if set(state) != set(own):
        raise InputError(f"{folder}: Dense weights {', '.join(sorted(state))} do not match the config's "
                         f"{', '.join(sorted(own))}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise InputError(f"{folder}: {key} has shape {tuple(value.shape)}, the config implies {tuple(own[key].shape)}")
    dense.load_state_dict(state)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The WordPiece tokenizer of an encoder folder: from vocab.txt (Tokenizer.from_pretrained), or,
    in a folder sentence-transformers >= 5 saved (tokenizer.json, no vocab.txt), from the vocabulary
    and normaliser in tokenizer.json, with tokenizer_config.json's model_max_length."""
    directory = Path(directory)
    engine = directory / "tokenizer.json"
    if (directory / "vocab.txt").is_file() or not engine.is_file():
        return Tokenizer.from_pretrained(directory)
    data = _read_json(engine)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise InputError(f"{engine}: not a WordPiece (BERT) tokenizer, and there is no vocab.txt")
    norm = data.get("normalizer") or {}
    settings: dict[str, Any] = {}
    if isinstance(norm, dict) and norm.get("type") == "BertNormalizer":
        settings = {"lowercase": norm.get("lowercase", True), "strip_accents": norm.get("strip_accents"),
                    "chinese_chars": norm.get("handle_chinese_chars", True)}
    length = _read_json(directory / "tokenizer_config.json", required=False).get("model_max_length")
    if isinstance(length, int) and not isinstance(length, bool) and length >= 1:
        settings["model_max_length"] = min(length, 10**9)  # transformers writes 1e30 for "no limit"
    return Tokenizer(model["vocab"], **settings)


# ---- writing ST's files ---------------------------------------------------------------------------------


def write_settings(settings: SentenceSettings, directory: Path, *, hidden_size: int) -> None:
    """ST's files for a model whose encoder is saved at `directory` itself (Transformer path "")."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TYPES["Transformer"]},
               {"idx": 1, "name": "1", "path": POOLING_DIR, "type": ST_TYPES["Pooling"]}]
    files: dict[str, Any] = {f"{POOLING_DIR}/config.json": pooling_config(settings, hidden_size)}
    for i, d in enumerate(settings.dense):
        folder = f"{i + 2}_{DENSE_DIR}"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder, "type": ST_TYPES["Dense"]})
        files[f"{folder}/config.json"] = dense_config(d)
    if settings.normalize:
        folder = f"{len(modules)}_{NORMALIZE_DIR}"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder, "type": ST_TYPES["Normalize"]})
        files[f"{folder}/config.json"] = {}
    files[MODULES_FILE] = modules
    sbert: dict[str, Any] = {"do_lower_case": settings.do_lower_case}
    if settings.max_seq_length is not None:  # else ST takes the tokenizer's model_max_length, as bertkit does
        sbert = {"max_seq_length": settings.max_seq_length, **sbert}
    files[SBERT_CONFIG_FILE] = sbert
    files[ST_CONFIG_FILE] = {
        "model_type": "SentenceTransformer",
        "__version__": {"bertkit": _version(), "pytorch": torch.__version__},
        "prompts": settings.prompts,
        "default_prompt_name": settings.default_prompt_name,
        "similarity_fn_name": settings.similarity_fn_name,
    }
    for name, content in files.items():
        write_text_atomically(directory / name, json.dumps(content, indent=2, ensure_ascii=False) + "\n")


def pooling_config(settings: SentenceSettings, hidden_size: int) -> dict[str, Any]:
    """1_Pooling/config.json: the flags every ST version reads when the modes are in ST's order,
    else ST >= 6's pooling_mode list (the flags cannot say another order)."""
    config: dict[str, Any] = {"word_embedding_dimension": hidden_size}
    modes = settings.pooling
    if len(set(modes)) == len(modes) and list(modes) == [m for m in ST_ORDER if m in modes]:
        config.update({flag: mode in modes for flag, mode in POOLING_FLAGS})
    else:
        config["pooling_mode"] = list(modes)
    config["include_prompt"] = settings.include_prompt
    return config


def dense_config(d: DenseSettings) -> dict[str, Any]:
    config: dict[str, Any] = {"in_features": d.in_features, "out_features": d.out_features, "bias": d.bias,
                              "activation_function": ACTIVATIONS[d.activation][0]}
    if d.use_residual:  # written only when set: ST before 5.7 refuses keys it does not know
        config["use_residual"] = True
    return config


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bertkit")
    except PackageNotFoundError:
        return "unknown"


__all__ = ["POOLING_MODES", "DenseSettings", "SentenceEncoder", "SentenceSettings", "load_tokenizer", "pool",
           "read_settings"]
