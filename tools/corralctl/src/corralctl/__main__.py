import sys

from corralctl.cli import main

sys.exit(main())
