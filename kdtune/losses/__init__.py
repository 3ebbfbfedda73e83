"""The loss registry (``LOSSES``, ``get_loss``, ``register``) with every loss registered: BPR and the
distillation losses, plain functions of tensors registered by name. See :mod:`kdtune.losses.registry`."""

from kdtune.losses import dcd, experts, htd, listwise, pairwise, ranking, unkd  # noqa: F401, I001  (each registers its losses)
from kdtune.losses import combined  # noqa: F401  (registers its losses after the ones it combines)
from kdtune.losses.draws import (
    per_user_uninteresting,
    rank_weights,
    sample_ranks,
    shared_uninteresting,
    sorted_topn_of,
)
from kdtune.losses.experts import DistillationExperts, de_tau, de_term, gumbel_mixture, make_de_extra
from kdtune.losses.pairwise import mse_diff_term, soft_bce_term
from kdtune.losses.ranking import cd_term, rd_dynamic_weights, rd_term, rrd_term
from kdtune.losses.registry import LOSSES, KDContext, LossDef, bpr_term, get_loss, register

__all__ = [
    "LOSSES", "DistillationExperts", "KDContext", "LossDef", "bpr_term", "cd_term", "de_tau", "de_term",
    "get_loss", "gumbel_mixture", "make_de_extra", "mse_diff_term", "per_user_uninteresting", "rank_weights",
    "rd_dynamic_weights", "rd_term", "register", "rrd_term", "sample_ranks", "shared_uninteresting",
    "soft_bce_term", "sorted_topn_of",
]
