"""A module no request may import: importing it writes the file named by BNSWEEP_CANARY_FILE."""

import os
from pathlib import Path

if os.environ.get("BNSWEEP_CANARY_FILE"):
    Path(os.environ["BNSWEEP_CANARY_FILE"]).write_text("imported")
