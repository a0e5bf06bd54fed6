"""models.py: what `--model X` means (a path, the built-in name, a local model name) and `bertkit models`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertkit.cli import main, models_table
from bertkit.errors import CheckpointError
from bertkit.models import (
    BUILTIN_MODEL,
    ModelInfo,
    available_models,
    default_model_dir,
    models_dir,
    resolve_model,
)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty BERTKIT_HOME, and a working directory of its own (a relative path there is no model)."""
    monkeypatch.setenv("BERTKIT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def local_model(home: Path, name: str, config: dict | None = None, weights: bytes = b"") -> Path:
    directory = home / "models" / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config or {}))
    (directory / "model.safetensors").write_bytes(weights)
    return directory


def test_no_model_and_the_builtin_name_mean_the_builtin_model(home, minilm_dir):
    assert resolve_model(None) == default_model_dir() == minilm_dir
    assert resolve_model(BUILTIN_MODEL) == minilm_dir


def test_a_name_in_the_models_folder(home):
    mine = local_model(home, "my-bert")
    assert models_dir() == home / "models"
    assert resolve_model("my-bert") == mine


def test_an_existing_path_wins_over_a_name(home, tmp_path):
    local_model(home, "my-bert")
    (tmp_path / "my-bert").mkdir()
    assert resolve_model("my-bert") == Path("my-bert")
    assert resolve_model(tmp_path / "my-bert") == tmp_path / "my-bert"


def test_a_missing_path_is_left_to_the_loader_and_an_unknown_name_is_refused(home):
    assert resolve_model("runs/missing") == Path("runs/missing")  # the loader names what is missing
    with pytest.raises(CheckpointError) as e:
        resolve_model("bert-huge")
    assert str(e.value) == (f"bert-huge: no such file or directory, and no model of that name (the built-in "
                            f"{BUILTIN_MODEL}, or a folder in {home / 'models'}; `bertkit models` lists them)")


def test_home_defaults_to_the_cache_folder(monkeypatch):
    monkeypatch.delenv("BERTKIT_HOME", raising=False)
    assert models_dir() == Path("~/.cache/bertkit/models").expanduser()


def test_available_models_describe_themselves(home, minilm_dir):
    local_model(home, "tagger", {"architectures": ["BertForTokenClassification"], "num_hidden_layers": 2,
                                 "hidden_size": 32}, weights=b"x" * 2_000_000)
    (home / "models" / "broken").mkdir()
    builtin, broken, tagger = available_models()
    assert (builtin.name, builtin.path, builtin.architecture, builtin.layers, builtin.hidden, builtin.builtin) == \
        (BUILTIN_MODEL, minilm_dir, "BertModel", 6, 384, True)
    assert builtin.size_bytes > 80e6
    assert (broken.name, broken.architecture, broken.layers, broken.size_bytes) == ("broken", "?", None, 0)
    assert tagger == ModelInfo("tagger", home / "models" / "tagger", "BertForTokenClassification", 2, 32, 2_000_000)


def test_models_table_by_hand():
    rows = models_table([ModelInfo("a", Path("/m/a"), "BertModel", 6, 384, 90_900_000, builtin=True),
                         ModelInfo("longer-name", Path("/m/b"), "?", None, None, 0)])
    assert rows == [
        "NAME         ARCHITECTURE  LAYERS  HIDDEN     SIZE  PATH",
        "a            BertModel          6     384  90.9 MB  /m/a (built-in)",
        "longer-name  ?                  ?       ?   0.0 MB  /m/b",
    ]


def test_bertkit_models_and_models_by_name_on_the_command_line(home, tiny_model_dir, capsys):
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny").symlink_to(tiny_model_dir)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"{BUILTIN_MODEL}  BertModel" in out and "\ntiny " in out and str(home / "models") in out
    assert main(["info", "--model", "tiny"]) == 0
    assert "layers 2, hidden 32" in capsys.readouterr().out
    assert main(["tokenize", "--model", "tiny", "hello"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == ["[CLS]", "hello", "[SEP]"]
    assert main(["info", "--model", "tinny"]) == 2
    assert "tinny: no such file or directory, and no model of that name" in capsys.readouterr().err


def test_the_python_api_takes_names_too(home, tiny_model_dir):
    from bertkit import pipeline
    from bertkit.embedding import Embedder

    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny").symlink_to(tiny_model_dir)
    assert Embedder.from_pretrained("tiny").dim == 32
    assert pipeline("embed", model="tiny").dim == 32
    with pytest.raises(CheckpointError, match="no model of that name"):
        pipeline("fill-mask", model="tinny")
