"""``python -m bench.micro``: see :mod:`bench.micro.report`."""

import sys

from bench.micro.report import main

sys.exit(main())
