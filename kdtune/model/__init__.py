"""The model: matrix factorisation (:mod:`~kdtune.model.mf`), the table reads training hooks
(:mod:`~kdtune.model.rows`), serving kernels (:mod:`~kdtune.model.kernels`), quantised forms
(:mod:`~kdtune.model.quantized`), and models on disk (:mod:`~kdtune.model.store`)."""
