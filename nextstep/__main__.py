"""``python -m nextstep``: the ``nextstep`` command line."""

from training.cli import main

if __name__ == "__main__":
    main()
