"""Serving: every model is served from a Faiss index of its item table (:mod:`~kdtune.serving.index`,
:mod:`~kdtune.serving.served`, deployable on disk: :mod:`~kdtune.serving.deploy`); its cost: architecture
keys ``(dim, index)`` (:mod:`~kdtune.serving.arch`), timing one configuration (:mod:`~kdtune.serving.timing`),
many together in interleaved rounds (:mod:`~kdtune.serving.interleaved`), and a run's plan of what it times
and when (:mod:`~kdtune.serving.plan`)."""
