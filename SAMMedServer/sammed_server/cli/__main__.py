"""`python -m sammed_server.cli`: the same as the `sammed-server` command."""

import sys

from . import main

sys.exit(main())
