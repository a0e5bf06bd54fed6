"""The one objective: for every head, the summed loss over its count is the head's own mean loss,
the counts known before the model runs are those of the losses, and the summary divides by hand."""

import math

import pytest
import torch

import bertkit
from bertkit.labels import IGNORE
from bertkit.objective import Mean, Objective, Step, cross_entropy_loss, labelled
from bertkit.pretrain import PretrainingObjective
from bertkit.tasks.choice import ChoiceObjective
from bertkit.tasks.classify import ClassifyObjective
from bertkit.tasks.qa import SpanObjective
from bertkit.tasks.tag import TagObjective
from tests.conftest import random_batch, tiny_config

B, T, N, L = 4, 10, 3, 3


def _tokens(seed: int = 0) -> dict:
    return random_batch(tiny_config(), B=B, T=T, seed=seed)


def _token_labels(high: int, mask, g) -> torch.Tensor:
    labels = torch.randint(0, high, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.5] = IGNORE
    return labels.masked_fill(mask == 0, IGNORE)


def _nsp_objective(model):
    """A generic objective for a head no task trains (NSP alone), written as a task would."""

    def step(model, batch):
        logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits
        return Step({"nsp": cross_entropy_loss(logits, batch["labels"])}, {})

    return Objective(model, step, counts={"nsp": lambda batch: labelled(batch["labels"])}, report={})


def _case(name: str):
    """(model, objective, batch, the head's label arguments) on a random batch."""
    g = torch.Generator().manual_seed(1)
    batch = _tokens()
    mask = batch["attention_mask"]
    labelled_config = tiny_config(id2label={i: f"l{i}" for i in range(L)})
    if name in ("mlm", "pretraining"):
        model = (bertkit.BertForMaskedLM if name == "mlm" else bertkit.BertForPreTraining)(tiny_config())
        batch["labels"] = _token_labels(tiny_config().vocab_size, mask, g)
        heads = {"labels": batch["labels"]}
        if name == "pretraining":
            batch["next_sentence_label"] = heads["next_sentence_label"] = torch.tensor([0, 1, 1, 0])
        return model, PretrainingObjective(model), batch, heads
    if name == "nsp":
        model = bertkit.BertForNextSentencePrediction(tiny_config())
        batch["labels"] = torch.tensor([0, 1, 1, 0])
        return model, _nsp_objective(model), batch, {"labels": batch["labels"]}
    if name == "tag":
        model = bertkit.BertForTokenClassification(labelled_config)
        batch["labels"] = _token_labels(L, mask, g)
        return model, TagObjective(model), batch, {"labels": batch["labels"]}
    if name == "qa":
        model = bertkit.BertForQuestionAnswering(tiny_config())
        batch["attention_mask"] = torch.ones_like(mask)  # the objective keeps padding out of the softmax
        batch["start_positions"] = torch.tensor([0, 2, 5, 9])
        batch["end_positions"] = torch.tensor([0, 4, 5, 9])
        return model, SpanObjective(model), batch, {k: batch[k] for k in ("start_positions", "end_positions")}
    if name == "choice":
        model = bertkit.BertForMultipleChoice(tiny_config())
        batch = {k: v.view(B, N, T) for k, v in random_batch(tiny_config(), B=B * N, T=T).items()}
        batch["choice_mask"] = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]])
        batch["labels"] = torch.tensor([2, 1, 0, 0])
        return model, ChoiceObjective(model), batch, {k: batch[k] for k in ("labels", "choice_mask")}
    problem_type = name
    config = tiny_config(id2label={0: "score"} if name == "regression" else labelled_config.id2label,
                         problem_type=problem_type)
    model = bertkit.BertForSequenceClassification(config)
    batch["labels"] = {"single_label_classification": torch.randint(0, L, (B,), generator=g),
                       "multi_label_classification": (torch.rand(B, L, generator=g) > 0.5).float(),
                       "regression": torch.randn(B, generator=g)}[name]
    return model, ClassifyObjective(model, problem_type), batch, {"labels": batch["labels"]}


HEADS = ["mlm", "pretraining", "nsp", "tag", "qa", "choice",
         "single_label_classification", "multi_label_classification", "regression"]


@pytest.mark.parametrize("name", HEADS)
def test_summed_loss_over_its_count_is_the_heads_mean_loss(name):
    torch.manual_seed(0)
    model, objective, batch, head_labels = _case(name)
    model.eval()
    with torch.no_grad():
        sums = objective(batch)
        head = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], **head_labels).loss
    counts = objective.counts(batch)
    assert set(counts) == set(sums.losses)
    mean = sum(sums.losses[term] / counts[term] for term in sums.losses)
    torch.testing.assert_close(mean, head, rtol=1e-5, atol=1e-6)
    logged = {f"n_{k}": v for k, v in counts.items()}
    logged.update({f"loss_{k}": float(v) for k, v in sums.losses.items()})
    assert objective.summarize(logged)["loss"] == pytest.approx(float(head), rel=1e-5)


@pytest.mark.parametrize("name", HEADS)
def test_counts_known_before_the_model_runs_are_the_losses_counts(name):
    torch.manual_seed(0)
    model, objective, batch, _ = _case(name)
    with torch.no_grad():
        losses = objective.step(model, batch).losses
    assert objective.counts(batch) == {term: float(loss.count) for term, loss in losses.items()}
    assert all(v > 0 for v in objective.counts(batch).values())


def test_sums_over_parts_divided_by_the_whole_count_equal_the_whole_batch():
    """What makes accumulation exact: the loss of a batch is the sum of its parts' sums over the
    count of the whole, not the mean of the parts' means (their counts differ)."""
    torch.manual_seed(0)
    model, objective, batch, _ = _case("tag")
    model.eval()
    parts = [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}]
    with torch.no_grad():
        whole = objective(batch).losses["tag"] / objective.counts(batch)["tag"]
        count = sum(objective.counts(p)["tag"] for p in parts)
        summed = sum(objective(p).losses["tag"] for p in parts) / count
        means = sum(objective(p).losses["tag"] / objective.counts(p)["tag"] for p in parts) / 2
    assert objective.counts(parts[0])["tag"] != objective.counts(parts[1])["tag"]
    torch.testing.assert_close(summed, whole)
    assert not torch.allclose(means, whole)


def test_summary_by_hand():
    report = {"a_loss": Mean("loss_a", over="a"), "b_accuracy": Mean("b_correct", over="b"),
              "a_exp": Mean("loss_a", over="a", then=math.exp)}
    objective = Objective(torch.nn.Linear(1, 1), step=None, counts={"a": None, "b": None}, report=report)
    summary = objective.summarize({"n_a": 4.0, "loss_a": 6.0, "n_b": 2.0, "loss_b": 1.0, "b_correct": 1.0})
    assert summary == {"loss": 2.0, "a_loss": 1.5, "b_accuracy": 0.5, "a_exp": pytest.approx(math.exp(1.5))}
    assert list(summary) == ["loss", "a_loss", "b_accuracy", "a_exp"]  # the order of metrics.jsonl rows
    assert objective.summarize({}) == {"loss": 0.0, "a_loss": 0.0, "b_accuracy": 0.0, "a_exp": 1.0}


def test_pretraining_reports_the_sentence_task_only_with_its_head():
    torch.manual_seed(0)
    sums = {"n_mlm": 10.0, "loss_mlm": 20.0, "mlm_correct": 3.0,
            "n_nsp": 4.0, "loss_nsp": 2.0, "nsp_correct": 2.0}
    mlm = PretrainingObjective(bertkit.BertForMaskedLM(tiny_config())).summarize(sums)
    both = PretrainingObjective(bertkit.BertForPreTraining(tiny_config())).summarize(sums)
    assert list(mlm) == ["loss", "mlm_loss", "perplexity", "selected_accuracy"] and mlm["loss"] == 2.0
    assert list(both) == ["loss", "mlm_loss", "perplexity", "selected_accuracy", "nsp_loss", "nsp_accuracy"]
    assert both["loss"] == 2.5 and both["nsp_accuracy"] == 0.5


def test_padded_choices_count_in_training_as_in_the_head():
    """The choice objective masks padding choices as the head does with choice_mask: an example's
    loss sum is that of its real choices alone."""
    torch.manual_seed(0)
    model, objective, batch, _ = _case("choice")
    model.eval()
    with torch.no_grad():
        padded = objective({k: v[1:2] for k, v in batch.items()}).losses["choice"]  # 2 of 3 choices real
        two = {k: v[1:2, :2] if v.dim() > 1 else v[1:2] for k, v in batch.items()}  # the real choices alone
        alone = objective(two).losses["choice"]
    torch.testing.assert_close(padded, alone)
