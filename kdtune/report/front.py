"""Which students the front is taken over, and the front itself (pandas only, no Ray).

Plain students are candidates like the distilled ones; a distilled student is a candidate only if it beats
the plain student of its dim on validation in Recall@K *and* NDCG@K (:func:`behind_plain`): a distilled
student that a plain one of its size beats is never recommended. The front is then taken over those and the
plain students (:func:`choose_front`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from kdtune.search.pareto import pareto_front

PLAIN, DISTILLED, TEACHER = "plain", "distilled", "teacher"
"""The kinds of rows: plain students, distilled students (trials), the teacher."""


@dataclass
class FrontChoice:
    """The front of a run and what it was chosen from."""

    front: pd.DataFrame  # the front's rows (validation figures), best recall first
    candidates: pd.DataFrame  # plain students and the distilled students ahead of them
    every: pd.DataFrame  # plain students and every finished distilled student
    behind: pd.Series  # per finished trial: behind the plain student of its size


def choose_front(finished: pd.DataFrame, baselines: pd.DataFrame, k: int) -> FrontChoice:
    """The Pareto front (validation Recall@K vs latency) over the plain students and the finished trials
    that beat the plain student of their size on validation Recall@K and NDCG@K."""
    recall, ndcg = f"recall@{k}", f"ndcg@{k}"
    plain = baselines[baselines["kind"].eq(PLAIN)]
    behind = behind_plain(finished, plain, [recall, ndcg])
    every = pd.concat([finished.assign(kind=DISTILLED), plain], ignore_index=True)
    candidates = pd.concat([finished[~behind].assign(kind=DISTILLED), plain], ignore_index=True)
    front = pareto_front(candidates, objectives(k)).reset_index(drop=True)
    return FrontChoice(front, candidates, every, behind)


def objectives(k: int) -> dict[str, str]:
    """The search's objectives: validation Recall@K up, latency down."""
    return {f"recall@{k}": "max", "latency_ms": "min"}


def behind_plain(trials: pd.DataFrame, plain: pd.DataFrame, metrics: list[str]) -> pd.Series:
    """True for each trial that does not beat the plain student of its dim in every one of ``metrics``
    (validation figures, higher is better): a plain student as good in one of them beats it there, and
    the distilled student is not recommended. A trial whose dim has no plain student is not behind."""
    by_dim = plain.set_index(plain["dim"].astype(int))
    behind = pd.Series(False, index=trials.index)
    for m in metrics:
        reference = trials["dim"].astype(int).map(by_dim[m])
        behind |= reference.notna() & ~(trials[m] > reference)
    return behind
