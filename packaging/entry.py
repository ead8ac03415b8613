"""The frozen program's entry point: the same `main` as `python -m image_cri_shim` and the console script."""

import os

from image_cri_shim.cli import main

# The bundled OpenSSL looks for CA certificates under /etc/ssl, where Debian and Ubuntu keep them.
# On a node that keeps them elsewhere (RHEL and CentOS: /etc/pki), name its bundle, unless the
# operator chose one; the children the master starts inherit it.
CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, CentOS, Fedora
    "/etc/ssl/ca-bundle.pem",  # SUSE
)
if not {"SSL_CERT_FILE", "SSL_CERT_DIR"} & os.environ.keys():
    found = next((path for path in CA_BUNDLES if os.path.exists(path)), None)
    if found is not None:
        os.environ["SSL_CERT_FILE"] = found

raise SystemExit(main())
