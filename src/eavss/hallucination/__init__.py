"""EAVSS: find the decoder layers where hallucination lives.

Labelled answers (teacher-forced TruthfulQA / HaluEval pairs and the model's own judged answers
to NQ-open, TriviaQA and SciQ) -> per-sample answer-token statistics from the streaming engine
(:mod:`eavss.stats`) -> HSAV, HSS and EAVSS per layer (:mod:`eavss.hallucination.scores`) ->
a check against per-layer linear-probe AUROC (:mod:`eavss.hallucination.probe`).

Public API (import from the submodules; this package imports nothing heavy):

* :func:`eavss.hallucination.recipe.run` -- the whole ``eavss hallucination`` command.
* :class:`eavss.hallucination.config.HallucinationConfig`, ``load_hallucination_config``.
* :func:`eavss.hallucination.scores.compute_eavss`, ``bootstrap_eavss``, ``permutation_test``,
  :class:`~eavss.hallucination.scores.SampleStatistics`, registries ``HSAV_METHODS``,
  ``HSS_METHODS``, ``COMBINATIONS``, ``POOLINGS``.
* :func:`eavss.hallucination.judge.normalize_answer`, ``match_answer``, ``judge_options``.
* :func:`eavss.hallucination.capture.greedy_generate`, ``teacher_forced_pass``, ``PrefixCache``,
  ``PooledFeatures``.
* :func:`eavss.hallucination.probe.probe_layers`, ``agreement``.
* :func:`eavss.hallucination.splits.build_splits`, ``load_splits``, ``check_disjoint``,
  ``excluded_ids`` -- for later steps that must not reuse the ids scored here.
* :func:`eavss.hallucination.sources.load_source`.
"""
