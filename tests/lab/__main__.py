"""``python -m tests.lab`` (``make lab``): the network lab, left running for a person.

A module of its own so that ``tests.lab.sites`` is imported under its name: the lab runs its
functions inside namespaces by pickling them, which cannot refer to ``__main__``.
"""

import sys

from tests.lab.sites import main

sys.exit(main())
