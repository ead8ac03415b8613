"""The generated CRI message code matches protos/cri.proto (`make protos` regenerates it); our partial
messages keep the CRI's field numbers and the fields they do not declare."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def test_generated_code_is_current(tmp_path: Path) -> None:
    # The compiler in this process, with the include `python -m grpc_tools.protoc` adds itself.
    well_known = resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        ["protoc", f"-I{PROTOS}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         str(PROTOS / "cri.proto"), str(PROTOS / "containerd.proto"), f"-I{well_known}"]
    )  # fmt: skip
    assert status == 0, "protoc failed on protos/*.proto"
    for name in ("cri_pb2.py", "cri_pb2.pyi", "containerd_pb2.py", "containerd_pb2.pyi"):
        fresh = (tmp_path / name).read_text()
        assert (PROTOS / name).read_text() == fresh, f"protos/{name} is stale: run `make protos`"


def test_field_numbers_match_the_cri() -> None:
    """Our partial messages use the CRI's field numbers (checked against an independent copy)."""
    from cri_api.v1 import api_pb2 as v1
    from cri_api.v1alpha2 import api_pb2 as v1alpha2

    from image_cri_shim.protos import cri_pb2 as ours

    for name in ("ImageSpec", "AuthConfig", "Image", "PullImageRequest", "PullImageResponse",
                 "ImageStatusRequest", "ImageStatusResponse", "RemoveImageRequest", "ImageFilter",
                 "ListImagesRequest", "ListImagesResponse", "VersionRequest", "VersionResponse",
                 "ContainerConfig", "CreateContainerRequest"):  # fmt: skip
        mine = getattr(ours, name).DESCRIPTOR
        for api in (v1, v1alpha2):
            theirs = getattr(api, name).DESCRIPTOR
            for field in mine.fields:
                other = theirs.fields_by_name[field.name]
                assert (field.number, field.type) == (other.number, other.type), f"{name}.{field.name}"


def test_unknown_fields_survive_a_rewrite() -> None:
    """A field the shim does not declare is written back unchanged after the name is changed."""
    from cri_api.v1 import api_pb2 as v1

    from image_cri_shim.protos import cri_pb2 as ours

    original = v1.PullImageRequest(
        image=v1.ImageSpec(
            image="nginx", annotations={"a": "b"}, user_specified_image="nginx", runtime_handler="rh"
        ),
        sandbox_config=v1.PodSandboxConfig(hostname="node-1", labels={"app": "web"}),
    )
    request = ours.PullImageRequest.FromString(original.SerializeToString())
    request.image.image = "registry.example.com/library/nginx:latest"
    back = v1.PullImageRequest.FromString(request.SerializeToString())
    assert back.image.image == "registry.example.com/library/nginx:latest"
    assert back.image.annotations == {"a": "b"}
    assert back.image.user_specified_image == "nginx"
    assert back.image.runtime_handler == "rh"
    assert back.sandbox_config.hostname == "node-1"
    assert dict(back.sandbox_config.labels) == {"app": "web"}
