import sys

from jann.cli import main

sys.exit(main())
