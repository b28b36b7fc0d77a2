"""The ``fewtune`` command: its commands, options, the terminal UI."""
