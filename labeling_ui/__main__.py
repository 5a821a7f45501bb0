"""``python -m labeling_ui``: see labeling_ui/cli.py."""

import sys

from labeling_ui.cli import main

sys.exit(main())
