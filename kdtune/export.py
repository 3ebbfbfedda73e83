"""``python -m kdtune.export results/<run>``: see :mod:`kdtune.cli.export`."""

from kdtune.cli.export import cli

if __name__ == "__main__":
    cli()
