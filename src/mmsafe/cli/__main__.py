"""``python -m mmsafe.cli``: the same as the ``mmsafe`` command."""

from mmsafe.cli import main

main()
