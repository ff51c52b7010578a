import sys

from stpipe.cli import main

sys.exit(main())
