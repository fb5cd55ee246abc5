"""``python -m tomoprior <verb>`` runs the console script (e.g. under ``torchrun``:
``torchrun --nproc_per_node 2 -m tomoprior train ...``)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
