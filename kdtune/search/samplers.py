"""The Optuna samplers a search can use, by name (seeded by ``--seed``)."""

from __future__ import annotations

from kdtune.errors import UsageError

SAMPLERS = ("tpe", "nsga2", "gp", "random")


def make_sampler(name: str, seed: int, trials: int):
    """The Optuna sampler called ``name`` for a search of ``trials`` trials."""
    import optuna

    if name == "tpe":
        # constant_liar keeps parallel workers from proposing the same point while trials are running.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "nsga2":
        # The default population (50) would spend a whole 50-trial budget on one generation.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 5)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
