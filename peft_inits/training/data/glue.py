"""GLUE task specifications (Hugging Face `glue` column names) for local copies of the benchmark."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlueTask:
    text: str
    text_pair: str | None
    num_labels: int  # 1 = regression
    metrics: tuple[str, ...]
    validation: str = "validation"


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("sentence", None, 2, ("matthews", "accuracy")),
    "sst2": GlueTask("sentence", None, 2, ("accuracy",)),
    "mrpc": GlueTask("sentence1", "sentence2", 2, ("f1", "accuracy")),
    "qqp": GlueTask("question1", "question2", 2, ("f1", "accuracy")),
    "stsb": GlueTask("sentence1", "sentence2", 1, ("pearson", "spearman")),
    "mnli": GlueTask("premise", "hypothesis", 3, ("accuracy",), validation="validation_matched"),
    "qnli": GlueTask("question", "sentence", 2, ("accuracy",)),
    "rte": GlueTask("sentence1", "sentence2", 2, ("accuracy",)),
    "wnli": GlueTask("sentence1", "sentence2", 2, ("accuracy",)),
}


def glue_task(name: str) -> GlueTask:
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown task {name!r}; valid GLUE tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]
