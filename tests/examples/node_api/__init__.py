"""Tests of the node API example. The example is not installed: its directory goes on
sys.path here, before any test module of this package imports it."""

import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "contrib" / "examples" / "node_api"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))
