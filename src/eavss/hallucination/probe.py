"""Does the EAVSS ranking mean something? Linear probes per layer and their agreement with EAVSS.

For each decoder layer, a logistic regression (L2, strength ``C``) on standardised mean-pooled
answer-token hidden states (``resid_post``) separates hallucinated from truthful answers. It is
evaluated on held-out answers by ``folds``-fold cross-validation inside the score split:
folds are grouped by question (both answers of a teacher-forced pair are always in the same
fold, so a probe never sees the question it is tested on) and stratified by label x source.
The AUROC of the out-of-fold decision values is reported overall and per source; the headline
``auroc`` of a layer is the mean of the per-source AUROCs (``within-source``), because the pooled
AUROC also rewards telling sources apart (sources differ in hallucination rate).

Agreement with EAVSS is :func:`eavss.scores.agreement.rank_agreement`. What trivial features of
the answer text achieve with the same folds is :mod:`eavss.hallucination.baselines`.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from eavss.errors import EavssError


def cv_folds(y: np.ndarray, groups: np.ndarray, strata: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cross-validation folds of the probes (and of the surface baselines, which must use the same).

    ``StratifiedGroupKFold(k, shuffle=True, random_state=seed)`` grouped by ``groups`` (question ids:
    both answers of a pair stay in one fold) and stratified by ``strata`` x label; ``k`` is capped
    at the number of groups. Deterministic in its arguments.

    Returns:
        ``[(train_indices, test_indices)]``, one per fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    code = np.array([f"{s}|{int(v)}" for s, v in zip(strata, y)])
    _, code_i = np.unique(code, return_inverse=True)
    _, grp_i = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    k = min(k, len(np.unique(grp_i)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has fewer than n_splits members"
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in cv.split(np.zeros(len(y)), code_i, grp_i)]


MIN_PER_CLASS_FOR_AUROC = 5
"""A source enters the within-source mean AUROC if it has at least this many answers of each class."""


def source_aurocs(y: np.ndarray, scores: np.ndarray, strata: np.ndarray) -> tuple[float, float, dict]:
    """AUROC of out-of-fold ``scores`` ``(N,)`` for labels ``y``: ``(within-source mean, pooled,
    {source: AUROC})``; sources with fewer than :data:`MIN_PER_CLASS_FOR_AUROC` answers of a class
    are left out of the mean (the pooled value stands in when no source qualifies)."""
    from sklearn.metrics import roc_auc_score

    pooled = float(roc_auc_score(y, scores))
    by_source = {}
    for s in dict.fromkeys(strata.tolist()):
        m = strata == s
        if (y[m] == 0).sum() >= MIN_PER_CLASS_FOR_AUROC and (y[m] == 1).sum() >= MIN_PER_CLASS_FOR_AUROC:
            by_source[s] = float(roc_auc_score(y[m], scores[m]))
    within = float(np.mean(list(by_source.values()))) if by_source else pooled
    return within, pooled, by_source


def _fit_layer(X: np.ndarray, layer: int, y: np.ndarray, splits, C: float, max_iter: int) -> np.ndarray:
    """``(N,)`` out-of-fold decision values of the probes of one layer (one per fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    oof = np.zeros(len(y))
    Xl = np.asarray(X[:, layer, :], dtype=np.float64)
    # one BLAS thread: these fits are tiny, and multi-threaded BLAS is 20-50x slower on a busy CPU
    with threadpool_limits(1):
        for tr, te in splits:
            if len(np.unique(y[tr])) < 2:
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning on nearly separable layers
                clf.fit(Xl[tr], y[tr])
            oof[te] = clf.decision_function(Xl[te])
    return oof


def _fit_all(X: np.ndarray, y: np.ndarray, splits, oof: np.ndarray, C: float, max_iter: int, progress: bool,
             n_jobs: int = 1) -> None:
    """Fill ``oof`` ``(L, N)`` with out-of-fold decision values, one probe per layer and fold; the
    layers in ``n_jobs`` worker processes (each fit is deterministic: the same values either way)."""
    from tqdm.auto import tqdm

    L = X.shape[1]
    if n_jobs > 1 and L > 1:
        from joblib import Parallel, delayed

        # X is memory-mapped into the workers once (joblib), each worker fits whole layers
        gen = Parallel(n_jobs=min(n_jobs, L), return_as="generator")(
            delayed(_fit_layer)(X, layer, y, splits, C, max_iter) for layer in range(L))
        for layer, row in enumerate(tqdm(gen, total=L, desc="probes", unit="layer", disable=not progress)):
            oof[layer] = row
        return
    for layer in tqdm(range(L), desc="probes", unit="layer", disable=not progress):
        oof[layer] = _fit_layer(X, layer, y, splits, C, max_iter)


def probe_layers(features: np.ndarray, y: np.ndarray, groups: np.ndarray, strata: np.ndarray, folds: int = 5,
                 C: float = 0.05, max_iter: int = 500, seed: int = 0, progress: bool = False,
                 site: str = "resid_post", n_jobs: int = 1) -> dict:
    """Cross-validated logistic-regression probe per layer.

    Args:
        features: ``(N, L, D)`` float mean-pooled answer-token hidden states.
        site: the capture site the features come from (recorded in the protocol text).
        y: ``(N,)`` labels, 1 = hallucinated, 0 = truthful.
        groups: ``(N,)`` question ids (fold grouping). strata: ``(N,)`` source names.
        folds: number of CV folds. C: inverse L2 strength of sklearn's LogisticRegression.
        seed: fold shuffling seed.
        n_jobs: worker processes for the layers' fits (1: in this process); the results do not
            depend on it.

    Returns:
        ``{"auroc": (L,) mean within-source AUROC, "auroc_pooled": (L,), "auroc_by_source":
        {source: (L,)}, "sources_used": [...], "n": N, "n_hallucinated", "folds", "C", "seconds",
        "protocol": str}``. A source enters the within-source mean if it has at least 5 samples of
        each class.

    Raises:
        EavssError: fewer than 2 samples in a class, or shapes that disagree.
    """
    from sklearn.metrics import roc_auc_score

    X = np.asarray(features)
    y = np.asarray(y).astype(int)
    if X.ndim != 3 or len(X) != len(y) or len(groups) != len(y) or len(strata) != len(y):
        raise EavssError(f"probe: features must be (N, L, D) with N = len(labels); got {X.shape} and {len(y)} labels")
    if min((y == 0).sum(), (y == 1).sum()) < 2:
        raise EavssError(f"probe needs at least 2 answers of each class, got {(y == 0).sum()} truthful and "
                         f"{(y == 1).sum()} hallucinated; raise the limits")
    strata = np.asarray(strata, dtype=object)
    t0 = time.perf_counter()
    splits = cv_folds(y, np.asarray(groups, dtype=object), strata, folds, seed)
    N, L, _ = X.shape
    oof = np.zeros((L, N))
    _fit_all(X, y, splits, oof, C, max_iter, progress, n_jobs)
    pooled = np.array([roc_auc_score(y, oof[layer]) for layer in range(L)])
    by_source = {}
    for s in dict.fromkeys(strata.tolist()):
        m = strata == s
        if (y[m] == 0).sum() >= MIN_PER_CLASS_FOR_AUROC and (y[m] == 1).sum() >= MIN_PER_CLASS_FOR_AUROC:
            by_source[s] = np.array([roc_auc_score(y[m], oof[layer, m]) for layer in range(L)])
    within = np.mean(list(by_source.values()), axis=0) if by_source else pooled
    return {"auroc": within, "auroc_pooled": pooled, "auroc_by_source": by_source,
            "sources_used": list(by_source), "n": int(N), "n_hallucinated": int((y == 1).sum()),
            "folds": len(splits), "C": C, "seconds": time.perf_counter() - t0,
            "protocol": f"{len(splits)}-fold CV inside the score split, grouped by question, stratified by label x source; "
                        "StandardScaler + LogisticRegression(L2, C) per layer on mean-pooled answer-token "
                        f"{site}; "
                        "AUROC of out-of-fold decision values; headline = mean of per-source AUROCs"}
