"""The search: the space (:mod:`~kdtune.search.space`, read from YAML by :mod:`~kdtune.search.spacefile`),
dominance and fronts (:mod:`~kdtune.search.pareto`), the Pareto-aware scheduler (:mod:`~kdtune.search.rungs`,
:mod:`~kdtune.search.scheduler`), the trial (:mod:`~kdtune.search.trainable`), the plain students
(:mod:`~kdtune.search.baselines`), the cluster (:mod:`~kdtune.search.cluster`), the typed run
(:mod:`~kdtune.search.run`), Tune's saved state (:mod:`~kdtune.search.tunestate`) and the driver
(:mod:`~kdtune.search.driver`). ``python -m kdtune.search`` runs :mod:`kdtune.cli.search`."""
