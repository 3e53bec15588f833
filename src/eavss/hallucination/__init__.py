"""EAVSS library pieces: find the decoder layers where hallucination lives.

* :mod:`eavss.hallucination.capture` -- teacher-forced passes and batched greedy generation that
  capture answer-token statistics and probe features in the same forward passes
  (``greedy_generate``, ``teacher_forced_pass``, ``PrefixCache``, ``PooledFeatures``, ``Capture``).
* :mod:`eavss.hallucination.prompts` -- the few-shot prompts.
* :mod:`eavss.hallucination.splits` -- deterministic score/train/eval splits (``build_splits``,
  ``load_splits``, ``check_disjoint``, ``excluded_ids``) for later steps that must not reuse the
  ids scored here.
* :mod:`eavss.hallucination.probe` -- per-layer linear probes (``probe_layers``).

Elsewhere, by what they are: the QA sources in :mod:`eavss.data.qa`, the answer judge in
:mod:`eavss.evaluation.judge`, HSAV/HSS/EAVSS in :mod:`eavss.scores.hallucination`, rank
agreement in :mod:`eavss.scores.agreement`; the command is :mod:`eavss.recipes.hallucination`
and its report renderer :mod:`eavss.report.hallucination`. This package imports nothing heavy.
"""
