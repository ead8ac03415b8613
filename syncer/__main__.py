"""`python -m image_cri_shim.syncer --file CONFIG`: the ConfigMap syncer in the foreground."""

import sys

from image_cri_shim.cli import main

raise SystemExit(main(["syncer", *sys.argv[1:]]))
