"""``python -m satcompress.runtime``: see :mod:`satcompress.runtime.cli`."""

import sys

from satcompress.runtime.cli import main

sys.exit(main())
