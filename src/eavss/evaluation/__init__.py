"""Evaluation: lm-eval task definitions, token perplexity, retention, the answer judge, ranking metrics.

Importing the package registers every evaluation task in :data:`eavss.evaluation.harness.TASKS`:
the harness's own (``ppl``, ``wikitext2``, ``squad``, ``sst2``) and the hallucination suite's
(``nq_open``, ``triviaqa``, ``sciq_mc``, ``truthfulqa``, ``wikiqa``;
:mod:`eavss.evaluation.hallucination_suite`). Both modules import only light dependencies at import
time (lm-eval and torch are imported when a task runs).
"""

from eavss.evaluation import hallucination_suite as _hallucination_suite  # noqa: F401 -- registers the suite's tasks
