"""Load generator entry point: ``python scripts/loadgen.py --url URL --workload NAME ...`` (same as
``python -m eval.loadgen``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.loadgen import main

if __name__ == "__main__":
    sys.exit(main())
