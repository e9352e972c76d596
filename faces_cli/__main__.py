"""``python -m faces_cli``: the ``faces`` command without its console script."""

from faces_cli.main import main

raise SystemExit(main())
