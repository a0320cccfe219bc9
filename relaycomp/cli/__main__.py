"""``python -m relaycomp.cli``."""

import sys

from relaycomp.cli.main import main

sys.exit(main())
