"""kdtune's search spaces (YAML). Installed as the package data ``kdtune.spaces``: this folder is the only
copy, and ``kdtune.space.load_space("default")`` finds it in a source checkout and an installed package alike."""
