"""``python -m cytoclip`` is the same as the ``cytoclip`` command."""

from cytoclip.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
