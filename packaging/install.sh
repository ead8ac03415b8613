#!/bin/sh
# Install image-cri-shim from this bundle on an (air-gapped) node; docs/install.md.
#
#   ./install.sh                  the program, the systemd unit, a config if there is none
#   ./install.sh --uninstall      remove them again; the config is kept
#   --prefix ROOT                 install under ROOT instead of / (for packaging and tests)
#
# Safe to run again: an upgrade installs the new version beside the previous one (a running
# service keeps re-executing its own version until it is restarted) and never touches a config.
set -eu

usage() { sed -n '2,6s/^# \{0,1\}//p' "$0"; }
die() { echo "install.sh: $*" >&2; exit 1; }
# The one line of a failed start that names what is missing: the dynamic loader's "version ...
# not found" or "cannot open shared object file" (from PyInstaller's loader or from selfcheck),
# else the last line said.
problem() {
    line=$(printf '%s\n' "$1" | grep -o "[^ :']*: version \`[^']*' not found" | head -n 1)
    [ -n "$line" ] || line=$(printf '%s\n' "$1" | grep -o "[^ :']*: cannot open shared object file" | head -n 1)
    [ -n "$line" ] || line=$(printf '%s\n' "$1" | grep -v '^[[:space:]]*$' | tail -n 1)
    printf '%s' "$line"
}

here=$(cd "$(dirname "$0")" && pwd)
root=""
action=install_bundle
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; root=$2; shift 2 ;;
        --prefix=*) root=${1#--prefix=}; shift ;;
        --uninstall) action=uninstall_bundle; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
if [ -n "$root" ]; then
    mkdir -p "$root"
    root=$(cd "$root" && pwd)
    [ "$root" != / ] || root=""
fi

if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then die "run it as root (or with --prefix ROOT)"; fi

bin=$root/usr/local/bin/image-cri-shim
lib=$root/usr/local/lib/image-cri-shim
unit=$root/etc/systemd/system/image-cri-shim.service
config=$root/etc/image-cri-shim/config.yaml
systemd_here() { [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

uninstall_bundle() {
    if systemd_here && [ -e "$unit" ]; then
        echo "stopping and disabling image-cri-shim (point kubelet back at the runtime first)"
        systemctl disable --now image-cri-shim || true
    fi
    case $(readlink "$bin" 2>/dev/null) in
        ../lib/image-cri-shim/*) rm -f "$bin" ;;
        "") ;;
        *) echo "left $bin alone: it is not this installer's link" ;;
    esac
    rm -rf "$lib"
    rm -f "$unit"
    if systemd_here; then systemctl daemon-reload; fi
    echo "removed image-cri-shim; kept ${config} (remove it yourself if it is no longer needed)"
}

install_bundle() {
    if command -v sha256sum >/dev/null; then
        if ! sums=$(cd "$here" && sha256sum -c SHA256SUMS 2>&1); then
            echo "$sums" | grep -v ': OK$' >&2
            die "the bundle is damaged: its files do not match SHA256SUMS"
        fi
    else
        echo "sha256sum not found: the bundle's checksums are not verified"
    fi
    # The program must run here before anything is installed. selfcheck loads every library the
    # service loads (grpc and the node's libstdc++, OpenSSL, the kubernetes client), where
    # --version would load libpython alone.
    program=$here/image-cri-shim/image-cri-shim
    if ! said=$("$program" selfcheck 2>&1); then
        die "this node cannot run image-cri-shim: $(problem "$said") (bundled.txt says what it needs)"
    fi
    banner=$("$program" --version)
    version=${banner#image-cri-shim }
    case $version in "" | *[!0-9A-Za-z.+_-]*) die "unexpected version output: $banner" ;; esac

    mkdir -p "$lib" "$(dirname "$bin")" "$(dirname "$unit")"
    previous=$(readlink "$bin" 2>/dev/null || true)
    if [ -e "$bin" ] && [ -z "$previous" ]; then echo "replacing $bin, which this installer did not install"; fi
    rm -rf "$lib/$version.new"
    cp -RP "$here/image-cri-shim" "$lib/$version.new"
    chmod -R u+rwX,go+rX,go-w "$lib/$version.new"
    rm -rf "${lib:?}/${version:?}"
    mv "$lib/$version.new" "$lib/$version"
    # Replace the command by rename: it always names a complete program.
    rm -f "$bin.new"
    ln -s "../lib/image-cri-shim/$version/image-cri-shim" "$bin.new"
    mv -f "$bin.new" "$bin"
    # Keep the new version and the one a running service may still use; remove the rest.
    for dir in "$lib"/*; do
        [ -d "$dir" ] || continue
        case "$previous" in "../lib/image-cri-shim/${dir##*/}/"*) continue ;; esac
        [ "${dir##*/}" = "$version" ] || rm -rf "$dir"
    done

    cp "$here/image-cri-shim.service" "$unit.new"
    chmod 0644 "$unit.new"
    mv -f "$unit.new" "$unit"

    if [ -e "$config" ]; then
        echo "kept the existing $config"
    else
        mkdir -p "$(dirname "$config")"
        (umask 077 && cp "$here/config.example.yaml" "$config.new")
        chmod 0600 "$config.new"
        mv "$config.new" "$config"
        echo "wrote $config from the example (mode 0600): edit it"
    fi

    "$bin" --version
    cat <<EOF
Installed $bin -> $lib/$version and $unit.
Next:
  1. Edit $config: your registries and their credentials.
     Check it: $bin -f $config --dry-run
  2. systemctl daemon-reload && systemctl enable --now image-cri-shim
     (after an upgrade: systemctl daemon-reload && systemctl restart image-cri-shim)
  3. Point kubelet at the shim in its KubeletConfiguration ($here/kubelet-config.yaml), then restart kubelet:
       imageServiceEndpoint: unix:///var/run/image-cri-shim.sock
  4. Once per cluster, from a machine with kubectl: kubectl apply -f $here/manifests/
EOF
}

"$action"
