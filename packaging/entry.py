"""The frozen program's entry point: the same `main` as `python -m image_cri_shim` and the console script."""

from image_cri_shim.cli import main

raise SystemExit(main())
