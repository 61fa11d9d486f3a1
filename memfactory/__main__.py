import sys

from memfactory.cli import main

sys.exit(main())
