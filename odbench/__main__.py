import sys

from odbench.cli import main

sys.exit(main())
