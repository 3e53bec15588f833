"""Format-matched teacher-forced pairs: pick the hallucinated reference answer closest in length.

A teacher-forced pair compares the model's activations on a truthful and a hallucinated
reference answer to the same question. When the two differ in length, every statistic that
drifts with token position, and every "massive activation" token that only long answers
contain, differs between the classes for a reason that has nothing to do with truth. TruthfulQA
lists several incorrect answers per question (4.1 on average, at least 1); taking the one closest in token
length to the truthful answer removes most of that difference at no cost. HaluEval has one
hallucinated answer per question, so nothing can be matched there (its right answers are names,
its hallucinated answers sentences); the report shows the lengths before and after either way.
"""

from __future__ import annotations

from typing import Sequence

from eavss.errors import EavssError

MATCH_MODES = ("none", "length")
"""``none``: the incorrect answers in file order; ``length``: closest in token length."""


def match_by_length(target_lengths: Sequence[int], candidate_lengths: Sequence[int]) -> list[int]:
    """For each target (in order), the index of the unused candidate closest in length.

    Greedy, in target order: target ``j`` takes the candidate minimising ``|len - target_j|``
    among those not yet taken; ties go to the earlier candidate (file order), so a candidate
    list already matched is left as it is.

    Args:
        target_lengths: token lengths of the truthful answers of one question (``J`` of them).
        candidate_lengths: token lengths of its incorrect answers (at least ``J``).

    Returns:
        ``J`` distinct candidate indices.

    Raises:
        EavssError: fewer candidates than targets.
    """
    if len(candidate_lengths) < len(target_lengths):
        raise EavssError(f"length matching needs at least as many incorrect answers ({len(candidate_lengths)}) as "
                         f"truthful ones ({len(target_lengths)})")
    free = list(range(len(candidate_lengths)))
    out = []
    for t in target_lengths:
        best = min(free, key=lambda i: (abs(candidate_lengths[i] - t), i))
        free.remove(best)
        out.append(best)
    return out
