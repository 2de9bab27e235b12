"""``python -m mixture_of_thoughts.cli`` (and ``torchrun ... -m mixture_of_thoughts.cli train ...``)."""

import sys

from . import main

sys.exit(main())
