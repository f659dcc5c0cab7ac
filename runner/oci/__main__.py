"""``python -m runner.oci``: strata-oci without the console script."""

import sys

from .cli import main

sys.exit(main())
