"""``python -m runner``: the ``strata`` command (through the zygote, as the installed script)."""

import sys

from .launch import main

sys.exit(main())
