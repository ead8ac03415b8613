"""`python -m image_cri_shim.workers --file CONFIG`: one proxy worker in the foreground."""

import sys

from image_cri_shim.cli import main

raise SystemExit(main(["worker", *sys.argv[1:]]))
