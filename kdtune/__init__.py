"""kdtune: find the smallest, fastest distilled matrix-factorisation recommender that keeps a teacher's accuracy."""

__version__ = "0.1.0"
