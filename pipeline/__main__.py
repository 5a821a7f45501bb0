"""``python -m pipeline run --config configs/pipeline.yaml``: see pipeline/conductor/orchestrate.py."""

import sys

from pipeline.conductor.orchestrate import main

sys.exit(main())
