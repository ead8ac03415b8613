"""`make demo`: the shim's main job on this machine, with real parts, explained step by step.

A private containerd, two registries (a private one with a password, and a backup), two images,
one shim worker; then kubelet's view and containerd's view of the same pulls.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.harness import CertAuthority, CertsDir, Containerd, CriClient, ImageBuilder, RegistryFactory
from tests.harness.containerd import default_sandbox_image
from tests.harness.processes import start_shim, wait_for


def say(text: str) -> None:
    print(f"\n== {text}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="shim-demo-"))
    certs = CertsDir(work / "certs.d")
    containerd = Containerd(work / "containerd", certs)
    registries = RegistryFactory(work / "registries", CertAuthority.create(work / "ca"), certs)
    shim = None
    try:
        containerd.start()
        private = registries(auth=("admin", "demo:secret"))
        backup = registries()
        images = ImageBuilder(work / "images")
        images(private, "library/nginx", "latest")
        images(backup, "library/redis", "demo")
        pause = default_sandbox_image(None)  # containerd's own, left at its default
        images(private, "pause", pause.rsplit(":", 1)[1])
        say(f"registries: {private.url} (private, needs a password) holds library/nginx:latest and")
        print(f"   pause:{pause.rsplit(':', 1)[1]} (containerd's sandbox image is {pause});")
        print(f"   {backup.url} (backup, anonymous) holds library/redis:demo")

        config = work / "config.yaml"
        socket = work / "shim.sock"
        config.write_text(
            yaml.safe_dump(
                {
                    "shim": str(socket),
                    "cri": containerd.address,
                    "address": private.url,
                    "auth": private.auth,
                    "registries": [{"address": backup.url, "priority": 500}],
                    "stateDir": str(work / "state"),
                    "configMap": {"enabled": False},
                }
            )
        )
        say(f"config {config}")
        print(config.read_text().replace("demo:secret", "********"))

        say("image-cri-shim --resolve nginx:latest")
        done = subprocess.run(
            [sys.executable, "-m", "image_cri_shim", "-f", str(config), "--resolve", "nginx:latest"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        print(done.stdout + done.stderr)

        service = [sys.executable, "-m", "image_cri_shim", "-f", str(config)]
        shim = start_shim(config, socket, log_path=work / "shim.log", argv=service)
        say(
            f"image-cri-shim -f {config} (master pid {shim.pid}) serves on {socket}; kubelet pulls through it"
        )
        with CriClient(socket) as kubelet, CriClient(containerd.socket) as runtime:
            for image in ("nginx:latest", "redis:demo"):
                image_id = kubelet.pull(image)
                status = kubelet.status(image)
                print(f"   PullImage({image}) -> {image_id}")
                print(f"     kubelet sees      {sorted(status.repo_tags) if status else 'absent'}")
                direct = runtime.status(image)
                seen = "absent under that name" if direct is None else direct.repo_tags
                print(f"     containerd alone  {seen}")
            wait_for(lambda: runtime.status(pause), 30, f"the sandbox image {pause}", interval=0.2)
            print(f"   containerd's sandbox image {pause}: on the node, put there by the shim (the runtime")
            print("   pulls it itself, past the shim, from a registry this node may not reach)")
        say("what the shim logged (master and worker; one line per fresh rewrite decision)")
        print(shim.log_text())
        return 0
    finally:
        if shim is not None:
            shim.stop()
        registries.close()
        containerd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
