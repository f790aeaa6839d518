"""Suite-wide settings.

The suite runs in parallel (pytest-xdist), so every timing it takes sees another busy worker:
tuning would flag each measurement as disturbed and refuse to cache it. Tests of caching
behaviour need decisions cached, so the suite asks for that (tests of the contention policy
itself remove the variable).
"""

import os

os.environ.setdefault("SPARSECNN_TUNE_CONTENDED", "cache")
