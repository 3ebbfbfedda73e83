"""Training: the loop with early stopping (:mod:`~kdtune.train.fit`), its optimiser
(:mod:`~kdtune.train.optim`), full-ranking evaluation (:mod:`~kdtune.train.evaluate`) and the teacher
(:mod:`~kdtune.train.teacher`, the one ``get_teacher``)."""
