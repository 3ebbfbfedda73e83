"""A run's report: the front (:mod:`~kdtune.report.front`), its files (:mod:`~kdtune.report.tables`), the
Optuna study (:mod:`~kdtune.report.study`), and the export that writes them once (:mod:`~kdtune.report.export`)."""
