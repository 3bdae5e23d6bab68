"""``python -m ssfilter`` (also what ``torchrun -m ssfilter`` runs)."""

import sys

from ssfilter.cli import main

sys.exit(main())
