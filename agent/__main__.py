"""`python -m agent` runs the same CLI as the `nodewarden` console script."""

import sys

from agent.main import main

sys.exit(main())
