"""``python -m graphc`` runs the ``graphc`` command."""
from graphc.cli import main

raise SystemExit(main())
