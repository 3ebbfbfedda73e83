"""Serve a deployed student: ``kdtune.serve.load(DIR).recommend(user_ids, k, exclude_seen=True)``.

``DIR`` is one student's directory written by ``python -m kdtune.export results/<run> --serve OUT``
(``OUT/<member>/``); ids in and out are those of the original data. See :mod:`kdtune.serving.deploy`.
"""

from kdtune.serving.deploy import Deployed, load

__all__ = ["Deployed", "load"]
