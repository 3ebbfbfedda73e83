"""The model: matrix factorisation (:mod:`~kdtune.model.mf`), the table reads training hooks
(:mod:`~kdtune.model.rows`), and models on disk (:mod:`~kdtune.model.store`). How a model is served (its
item table in a Faiss index) is :mod:`kdtune.serving`'s."""
