"""Serving cost: architecture keys (:mod:`~kdtune.serving.arch`), timing one configuration
(:mod:`~kdtune.serving.timing`), many together in interleaved rounds (:mod:`~kdtune.serving.interleaved`),
and a run's plan of what it times and when (:mod:`~kdtune.serving.plan`)."""
