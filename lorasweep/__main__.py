"""``python -m lorasweep``: the ``lorasweep`` command without its installed script."""

from lorasweep.cli import main

raise SystemExit(main())
