"""Served models: MiniLM itself, and tiny models with each task head, saved as `bertkit finetune` saves
them (the head's config changes and the task's reading options in config.json) but with random heads,
which is all a test of serving needs: the server must give what the offline code gives."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from bertkit import BertConfig, Tokenizer
from bertkit.heads import HEADS, BertForMaskedLM
from bertkit.predict import with_settings
from bertkit.tasks import DataOptions, make_task
from tests.conftest import tiny_config

NEEDS_SERVE = "the serve extra (pip install 'bertkit[serve]') is not installed"

TASK_LABELS = {
    "classify": ["neg", "pos"],
    "multilabel": ["art", "food", "sport"],
    "tag": ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"],
    "qa": ["span"],
    "choice": ["0", "1", "2"],
}
TASK_OPTIONS = {"multilabel": {"label_separator": "|"}, "tag": {"max_length": 32}}


def save_finetuned(directory: Path, base: Path, kind: str) -> Path:
    """A model as `bertkit finetune` leaves it (finetune.build_model), its head initialised at random."""
    task = make_task("classify" if kind == "multilabel" else kind, DataOptions(**TASK_OPTIONS.get(kind, {})))
    changes = task.configure(BertConfig.load(base), TASK_LABELS[kind])
    torch.manual_seed(1)
    model = HEADS[task.architecture].from_pretrained(base, with_head=False, **changes)
    model.config = with_settings(model.config, task)
    model.save_pretrained(directory, tokenizer=Tokenizer.from_pretrained(base))
    return directory


@pytest.fixture(scope="session")
def task_model(tmp_path_factory, tiny_model_dir):
    """task_model(kind) -> the directory of a tiny fine-tuned model (classify, multilabel, tag, qa, choice)."""
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = save_finetuned(tmp_path_factory.mktemp(f"served-{kind}"), tiny_model_dir, kind)
        return made[kind]

    return get


@pytest.fixture(scope="session")
def mlm_dir(tmp_path_factory, minilm_dir) -> Path:
    """A tiny random masked-LM checkpoint with MiniLM's vocabulary."""
    torch.manual_seed(2)
    directory = tmp_path_factory.mktemp("served-mlm")
    BertForMaskedLM(tiny_config(vocab_size=30522, max_position_embeddings=64)).save_pretrained(
        directory, tokenizer=Tokenizer.from_pretrained(minilm_dir))
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real uvicorn server on a free loopback port, in a thread of the test process."""

    def __init__(self, args):
        from bertkit.serve.server import make_server

        self.server = make_server(args)
        self.port = args.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
