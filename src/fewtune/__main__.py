"""``python -m fewtune`` (and ``accelerate launch -m fewtune``): the ``fewtune`` command."""

from fewtune.cli.commands import main

if __name__ == "__main__":
    main()
