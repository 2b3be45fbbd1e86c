# python -m sim: see sim/cli.py and sim/README.md.
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
