"""`python -m agent` runs the same CLI as the `nodewarden` console script."""

import sys

from agent.cli import main

sys.exit(main())
