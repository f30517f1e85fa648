import sys

from tether.cli.entry import main

sys.exit(main())
