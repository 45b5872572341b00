"""``python -m pipeline run SPEC``."""

import sys

from pipeline.cli import main

sys.exit(main())
