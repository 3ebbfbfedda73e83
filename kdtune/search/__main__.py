"""``python -m kdtune.search``: see :mod:`kdtune.cli.search`."""

from kdtune.cli.search import cli

if __name__ == "__main__":
    cli()
