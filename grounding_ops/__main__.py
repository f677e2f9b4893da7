import sys

from grounding_ops.cli import main

sys.exit(main())
