"""``python -m nsnet_sdk.cli``: the same as the ``nsnet`` command."""
import sys

from . import main

sys.exit(main())
