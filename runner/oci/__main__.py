"""``python -m runner.oci``: strata-oci without its launcher (the same entry: ``entry.main``)."""

import sys

from .entry import main

sys.exit(main())
