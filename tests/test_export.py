"""ONNX export: every head family on a tiny random model, the real MiniLM against bertkit.embed,
dynamic batch/length/choices, the output folder, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit import CheckpointError, InputError
from bertkit.export import (
    MODEL_FILE,
    ExportArgs,
    OnnxModel,
    cmd_export,
    export_onnx,
    graph_module,
    output_axes,
    run_onnx,
)
from bertkit.heads import HEADS
from tests.conftest import tiny_config

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tests.test_embedding import TEXTS as EMBEDDING_TEXTS  # noqa: E402

LABELS = {0: "a", 1: "b", 2: "c"}
TEXTS = [*EMBEDDING_TEXTS, "ok"]  # short, empty, CJK and long texts (tests/test_embedding.py), and a tiny one

# architecture -> {output: axes} that the export must declare (tiny config: C = 32, L = 3, V = 30522)
EXPECTED_OUTPUTS = {
    "BertModel": {"last_hidden_state": ("batch", "sequence", 32), "pooler_output": ("batch", 32),
                  "sentence_embedding": ("batch", 32)},
    "BertForMaskedLM": {"logits": ("batch", "sequence", 30522)},
    "BertForNextSentencePrediction": {"logits": ("batch", 2)},
    "BertForPreTraining": {"mlm_logits": ("batch", "sequence", 30522), "nsp_logits": ("batch", 2)},
    "BertForSequenceClassification": {"logits": ("batch", 3)},
    "BertForTokenClassification": {"logits": ("batch", "sequence", 3)},
    "BertForQuestionAnswering": {"start_logits": ("batch", "sequence"), "end_logits": ("batch", "sequence")},
    "BertForMultipleChoice": {"logits": ("batch", "choices")},
}


def tiny_checkpoint(directory: Path, architecture: str, tokenizer_dir: Path, **changes) -> Path:
    """A randomly initialised tiny model of `architecture` saved with MiniLM's vocabulary."""
    from bertkit import Tokenizer

    torch.manual_seed(0)
    config = tiny_config(vocab_size=30522, max_position_embeddings=128, id2label=LABELS)
    model = HEADS[architecture](config, **changes)
    model.save_pretrained(directory, tokenizer=Tokenizer.from_pretrained(tokenizer_dir))
    return directory


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, minilm_dir):
    """architecture -> (checkpoint dir, export dir, report), each exported once."""
    made = {}

    def get(architecture: str):
        if architecture not in made:
            root = tmp_path_factory.mktemp(architecture)
            source = tiny_checkpoint(root / "model", architecture, minilm_dir)
            made[architecture] = source, root / "onnx", export_onnx(source, root / "onnx")
        return made[architecture]

    return get


def random_inputs(shape: tuple[int, ...], seed: int = 1) -> dict[str, torch.Tensor]:
    """Random ids (B, T) or (B, N, T) with ragged padding along T and a second segment."""
    g = torch.Generator().manual_seed(seed)
    T = shape[-1]
    lengths = torch.randint(2, T + 1, shape[:-1], generator=g)
    lengths.view(-1)[0] = T  # one row fills T
    mask = (torch.arange(T) < lengths[..., None]).long()
    ids = torch.randint(5, 30522, shape, generator=g) * mask
    types = (torch.arange(T) >= lengths[..., None] // 2).long() * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# ---- every head family on a tiny model --------------------------------------------------------------------


@pytest.mark.parametrize("architecture", list(EXPECTED_OUTPUTS))
def test_tiny_heads_export_and_match_pytorch_at_new_shapes(tiny_export, architecture):
    source, out, report = tiny_export(architecture)
    assert report.architecture == architecture
    assert report.outputs == EXPECTED_OUTPUTS[architecture]
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    choice = architecture == "BertForMultipleChoice"
    assert report.inputs["input_ids"] == (("batch", "choices", "sequence") if choice else ("batch", "sequence"))

    # exported once (at 2 × 5); now other batch sizes, lengths and numbers of choices
    model = HEADS[architecture].from_pretrained(source).eval()
    graph = graph_module(model)
    onnx_model = OnnxModel(out)
    assert onnx_model.output_names == list(EXPECTED_OUTPUTS[architecture])
    for shape in ([(1, 4, 9), (3, 2, 17)] if choice else [(1, 3), (7, 40), (4, 128)]):
        batch = random_inputs(shape)
        with torch.inference_mode():
            expected = graph(**batch)
        got = onnx_model.run(batch)
        real = batch["attention_mask"].bool().numpy()
        for name, e in zip(graph.output_names, expected):
            e = e.numpy()
            assert got[name].shape == e.shape, name
            per_token = report.outputs[name][:2] == ("batch", "sequence")
            diff = np.abs(got[name] - e)[real] if per_token else np.abs(got[name] - e)
            assert diff.max() <= 1e-4, (name, shape, diff.max())


def test_output_axes_follow_the_inputs(tiny_export):
    source, _, _ = tiny_export("BertForTokenClassification")
    graph = graph_module(HEADS["BertForTokenClassification"].from_pretrained(source).eval())
    assert output_axes(graph) == {"logits": ("batch", "sequence", 3)}


def test_encoder_without_pooler_exports_without_pooler_output(tmp_path, minilm_dir):
    source = tiny_checkpoint(tmp_path / "model", "BertModel", minilm_dir, add_pooler=False)
    report = export_onnx(source, tmp_path / "onnx")
    assert list(report.outputs) == ["last_hidden_state", "sentence_embedding"]


def test_run_onnx_on_texts_and_pairs(tiny_export):
    _, out, _ = tiny_export("BertForSequenceClassification")
    single = run_onnx(out, TEXTS[:3])
    paired = run_onnx(out, TEXTS[:3], TEXTS[1:4])
    assert single["logits"].shape == paired["logits"].shape == (3, 3)
    assert not np.allclose(single["logits"], paired["logits"])


# ---- the real MiniLM --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_export(tmp_path_factory, minilm_dir):
    out = tmp_path_factory.mktemp("minilm") / "onnx"
    return out, export_onnx(minilm_dir, out)


@pytest.mark.slow
def test_minilm_sentence_embeddings_match_bertkit_embed(minilm_export, minilm_dir):
    import bertkit

    out, report = minilm_export
    assert report.max_abs_diff <= 1e-4
    assert list(report.outputs) == ["last_hidden_state", "pooler_output", "sentence_embedding"]
    expected = bertkit.embed(TEXTS, model=minilm_dir, batch_size=3)
    # batches of 3 by length: other batch sizes and lengths (up to 512 tokens) than the export saw
    got = OnnxModel(out, threads=2).embed(TEXTS, batch_size=3)
    assert got.shape == expected.shape == (len(TEXTS), 384)
    assert np.abs(got - expected).max() <= 1e-4
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.99999
    assert OnnxModel(out).embed([]).shape == (0, 384)


@pytest.mark.slow
def test_minilm_folder_holds_a_whole_model(minilm_export, minilm_dir):
    from bertkit import Tokenizer

    out, report = minilm_export
    names = {p.name for p in out.iterdir()}
    assert {MODEL_FILE, "config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= names
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert report.model_bytes == (out / MODEL_FILE).stat().st_size
    assert [p.name for p in out.parent.iterdir()] == ["onnx"]  # no temporary folder left beside it
    text = "Tokenization of 北京 works the same."
    assert Tokenizer.from_pretrained(out)(text)["input_ids"] == Tokenizer.from_pretrained(minilm_dir)(text)["input_ids"]


@pytest.mark.slow
def test_onnxruntime_optimisation_levels_agree(minilm_export):
    out, _ = minilm_export
    basic = OnnxModel(out, optimization="basic", threads=1).embed(TEXTS[:3])
    full = OnnxModel(out, optimization="all", threads=1).embed(TEXTS[:3])
    assert np.abs(basic - full).max() <= 1e-5
    with pytest.raises(InputError, match="optimization must be one of"):
        OnnxModel(out, optimization="max")


# ---- the output folder ------------------------------------------------------------------------------------


def test_a_folder_with_files_is_refused_unless_overwrite(tiny_export, tmp_path):
    source, _, _ = tiny_export("BertModel")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError) as e:
        export_onnx(source, out)
    assert str(e.value) == f"{out}: exists and is not empty; choose another --out, or replace it with --overwrite"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    export_onnx(source, out, overwrite=True, check=False)
    assert not (out / "keep.txt").exists() and (out / MODEL_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_folder_is_used(tiny_export, tmp_path):
    source, _, _ = tiny_export("BertModel")
    (tmp_path / "out").mkdir()
    report = export_onnx(source, tmp_path / "out", check=False)
    assert report.max_abs_diff is None and (tmp_path / "out" / MODEL_FILE).is_file()
    assert any("not checked" in line for line in report.lines())


def test_the_model_folder_itself_is_refused_even_with_overwrite(tiny_export):
    source, _, _ = tiny_export("BertModel")
    with pytest.raises(InputError, match="holds the model being exported"):
        export_onnx(source, source, overwrite=True)
    with pytest.raises(InputError, match="holds the model being exported"):
        export_onnx(source, source.parent, overwrite=True)
    assert (source / "config.json").is_file()


def test_a_file_as_out_is_refused(tiny_export, tmp_path):
    source, _, _ = tiny_export("BertModel")
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file, not a directory"):
        export_onnx(source, tmp_path / "f")


def test_a_failed_check_writes_nothing(tiny_export, tmp_path, monkeypatch):
    import bertkit.export

    source, _, _ = tiny_export("BertForQuestionAnswering")
    monkeypatch.setattr(bertkit.export, "TOLERANCE", -1.0)  # any difference is too much
    with pytest.raises(CheckpointError, match="differs from PyTorch's by .*nothing was written"):
        export_onnx(source, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# ---- bad input: one line ----------------------------------------------------------------------------------


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_model_dir(tmp_path):
    with pytest.raises(CheckpointError) as e:
        export_onnx(tmp_path / "nowhere", tmp_path / "out")
    assert "nowhere" in one_line(e)
    assert not (tmp_path / "out").exists()


def test_folder_without_a_checkpoint(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("no model here")
    with pytest.raises(CheckpointError) as e:
        export_onnx(tmp_path / "model", tmp_path / "out")
    assert "model" in one_line(e)


def test_unknown_architecture(tiny_export, tmp_path):
    import shutil

    source, _, _ = tiny_export("BertModel")
    copy = shutil.copytree(source, tmp_path / "model")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "architectures": ["BertLMHeadModel"]}))
    with pytest.raises(CheckpointError) as e:
        export_onnx(copy, tmp_path / "out")
    assert "architecture BertLMHeadModel has no bertkit class" in one_line(e)


def test_missing_head_weights_are_refused(tiny_export, tmp_path):
    import shutil

    source, _, _ = tiny_export("BertModel")  # an encoder only, relabelled as a classifier
    copy = shutil.copytree(source, tmp_path / "model")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(CheckpointError) as e:
        export_onnx(copy, tmp_path / "out")
    assert "lacks 2 weights of BertForSequenceClassification (classifier." in one_line(e)


def test_opset_out_of_range(tmp_path):
    with pytest.raises(InputError, match="--opset must"):
        ExportArgs(out=tmp_path, opset=11)
    with pytest.raises(InputError, match="--opset must"):
        export_onnx(None, tmp_path / "out", opset=21)


def test_missing_packages_name_the_extra(monkeypatch, tiny_export, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    source, _, _ = tiny_export("BertModel")
    with pytest.raises(InputError) as e:
        export_onnx(source, tmp_path / "out")
    assert one_line(e) == "ONNX export needs onnxruntime: pip install 'bertkit[export]'"


def test_importing_the_module_needs_neither_torch_nor_onnx():
    code = ("import sys, bertkit.export; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---- the command ------------------------------------------------------------------------------------------


def test_the_command_line_options_and_report(tiny_export, tmp_path, capsys):
    from bertkit import cli

    parser = cli.Parser(prog="bertkit export")  # as cli.py registers it: command("export", cmd_export, ..., ExportArgs)
    cli.add_config_options(parser, ExportArgs)
    source, _, _ = tiny_export("BertForTokenClassification")
    args = parser.parse_args(["--model", str(source), "--out", str(tmp_path / "out")])
    assert (args.format, args.opset, args.check, args.overwrite) == ("onnx", 17, True, False)
    assert cmd_export(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 'out'}: model.onnx (BertForTokenClassification, opset 17")
    assert "logits (batch, sequence, 3)" in lines[2]
    assert "max |difference|" in lines[3]
    with pytest.raises(InputError, match="--format must be one of onnx"):
        parser.parse_args(["--out", "x", "--format", "tflite"])
    with pytest.raises(InputError, match="--opset must be"):
        cmd_export(parser.parse_args(["--out", str(tmp_path / "other"), "--opset", "99"]))


# ---- the benchmark ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_runs_on_a_tiny_model(tiny_export, tmp_path):
    source, _, _ = tiny_export("BertModel")
    bench = Path(__file__).resolve().parents[1] / "bench" / "onnx_inference.py"
    result_file = tmp_path / "result.json"
    cmd = [sys.executable, str(bench), "--model", str(source), "--texts", "12", "--batch-size", "4",
           "--threads", "1", "--repeats", "1", "--json", str(result_file)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result_file.read_text())["rows"]
    assert {r["runtime"] for r in rows} == {"pytorch", "onnxruntime basic", "onnxruntime all"}
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert max(r["max_abs_diff"] for r in rows) <= 1e-4
