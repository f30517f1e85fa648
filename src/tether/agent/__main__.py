import sys

from tether.agent.cli import main

sys.exit(main())
