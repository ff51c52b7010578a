import sys

from stpipe.app.cli import main

sys.exit(main())
