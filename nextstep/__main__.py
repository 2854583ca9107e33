"""``python -m nextstep``: the ``nextstep`` command line."""

from nextstep.cli.app import main

if __name__ == "__main__":
    main()
