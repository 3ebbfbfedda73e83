"""One training-settings dataclass: the single source of every trainer default.

``fit``, the search space's ``fixed:`` settings (through ``kdtune.space.TRAIN_DEFAULTS``), the plain
baselines, ``kdtune.compare`` and the teacher all read their defaults from :data:`DEFAULTS`, so they
cannot drift apart (nanoGPT's ``GPTConfig``: one config, many readers). The model never sees it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    """How a student is trained."""

    epochs: int = 40
    """Epoch budget: an upper bound, early stopping on validation NDCG@K usually ends sooner."""
    patience: int = 5
    """Epochs without a better validation NDCG@K before stopping."""
    batch_size: int = 4096
    """BPR triplets per optimisation step."""
    lr: float = 0.01
    """AdamW learning rate."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay of every row (keeps rarely seen rows small)."""
    optimizer: str = "dense"
    """``dense`` AdamW, or row-sparse ``lazy`` AdamW (see ``kdtune.train.make_optimizer``)."""
    lr_schedule: str = "constant"
    """``constant``, or ``cosine`` over the epoch budget."""
    valid_users: int = 256
    """Validation users (a fixed seeded sample) behind each epoch's signal; 0 = all. A finished run's
    reported metrics are always over every validation user."""


DEFAULTS = TrainSettings()

SPACE_KEYS = ("epochs", "patience", "batch_size", "weight_decay")
"""The trainer settings a search space may search or fix."""
