"""Run the ``omr-desktop`` command as ``python -m omr_desktop``.

It is also the entry script of the PyInstaller bundle (``build.spec``).
"""

import sys

from omr_desktop.cli import main

if __name__ == "__main__":
    sys.exit(main())
