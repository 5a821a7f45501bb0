"""``python -m pipeline run --config configs/pipeline.yaml``: see pipeline/orchestrate.py."""

import sys

from pipeline.orchestrate import main

sys.exit(main())
