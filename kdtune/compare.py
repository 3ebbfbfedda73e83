"""``python -m kdtune.compare``: see :mod:`kdtune.cli.compare`."""

from kdtune.cli.compare import cli

if __name__ == "__main__":
    cli()
