"""``python -m voicemesh.cli``: the ``voicemesh`` command (the detached supervisor starts so)."""

import sys

from voicemesh.cli import main

sys.exit(main())
