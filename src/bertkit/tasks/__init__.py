"""Fine-tuning task families, one module each: classify, tag, qa, choice, embed."""

from __future__ import annotations

import importlib

from bertkit.errors import InputError
from bertkit.settings import TASKS  # name -> implementing class; torch-free there, for the CLI
from bertkit.tasks.base import BadInput, DataOptions, Task


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_task(name: str, options: DataOptions | None = None) -> Task:
    return task_class(name)(options)


def task_for_architecture(architecture: str) -> str:
    """The task family whose head is `architecture` (e.g. BertForTokenClassification -> tag)."""
    for name in TASKS:
        if task_class(name).architecture == architecture:
            return name
    raise InputError(f"a {architecture} checkpoint has no fine-tuning task head; fine-tune it first")


__all__ = ["BadInput", "DataOptions", "TASKS", "Task", "make_task", "task_class", "task_for_architecture"]
