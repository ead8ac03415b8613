"""`python -m image_cri_shim`: the same entry as the console script and the frozen binary."""

from image_cri_shim.cli import main

raise SystemExit(main())
