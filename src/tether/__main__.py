import sys

from tether.cli.main import main

sys.exit(main())
