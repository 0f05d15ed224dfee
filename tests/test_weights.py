"""The weights registry: names match the libraries, search order, verification, offline
loading, and fetch (against file:// URLs and a stubbed opener, never the network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision
from pytorch_fid.inception import FID_WEIGHTS_URL

from svai import weights
from svai.errors import SvaiError
from svai.metrics.inception import load_inception


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SVAI_WEIGHTS_DIR, TORCH_HOME in tmp_path/torch."""
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def with_digest(monkeypatch: pytest.MonkeyPatch, key: str, content: bytes, url: str | None = None) -> None:
    """Make the registry expect `content` for `key` (test-made files cannot hash like the real ones)."""
    entry = weights.REGISTRY[key]
    changes = {"sha256": hashlib.sha256(content).hexdigest()}
    if url is not None:
        changes["url"] = url
    monkeypatch.setitem(weights.REGISTRY, key, dataclasses.replace(entry, **changes))


# -- the table --------------------------------------------------------------------------


def test_names_and_urls_are_the_libraries_own() -> None:
    assert weights.REGISTRY["inception"].url == FID_WEIGHTS_URL
    assert weights.REGISTRY["alexnet"].url == torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    assert weights.REGISTRY["vgg16"].url == torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    assert weights.REGISTRY["squeezenet"].url == torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url
    assert weights.REGISTRY["vgg19"].url == torchvision.models.VGG19_Weights.IMAGENET1K_V1.url
    for entry in weights.REGISTRY.values():
        assert entry.url.endswith("/" + entry.filename)
        if entry.filename.endswith(".pth"):
            assert len(entry.hash_prefix) == 8
            # torch.hub names carry the first hex digits of the file's sha256.
            assert entry.sha256 == "" or (len(entry.sha256) == 64 and entry.sha256.startswith(entry.hash_prefix))
        else:
            # The face layer's files carry no digest in their names: the full sha256 is known.
            assert len(entry.sha256) == 64 and entry.licence


# -- search order -----------------------------------------------------------------------


def test_search_order(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(clean_env / "env"))
    assert weights.search_dirs(clean_env / "arg") == [
        clean_env / "arg",
        clean_env / "env",
        clean_env / "torch" / "hub" / "checkpoints",
    ]
    assert weights.search_dirs() == [clean_env / "env", clean_env / "torch" / "hub" / "checkpoints"]
    assert weights.search_dirs(clean_env / "env") == [clean_env / "env", clean_env / "torch" / "hub" / "checkpoints"]


@pytest.mark.parametrize("torch_home, xdg", [(True, False), (False, True), (False, False)])
def test_torch_home_resolves_like_torch_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, torch_home: bool, xdg: bool
) -> None:
    for name, wanted in (("TORCH_HOME", torch_home), ("XDG_CACHE_HOME", xdg)):
        if wanted:
            monkeypatch.setenv(name, str(tmp_path / name.lower()))
        else:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    assert weights.search_dirs() == [Path(torch.hub.get_dir()) / "checkpoints"]


def test_locate_takes_the_first_folder_holding_the_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = weights.REGISTRY["alexnet"].filename
    assert weights.locate("alexnet") is None
    in_hub = write(clean_env / "torch" / "hub" / "checkpoints" / name, b"hub")
    assert weights.locate("alexnet") == in_hub
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(clean_env / "env"))
    in_env = write(clean_env / "env" / name, b"env")
    assert weights.locate("alexnet") == in_env
    in_arg = write(clean_env / "arg" / name, b"arg")
    assert weights.locate("alexnet", clean_env / "arg") == in_arg
    # A folder without the file is skipped, not fatal.
    assert weights.locate("alexnet", clean_env / "nowhere") == in_env


def test_require_names_the_file_and_the_fix(clean_env: Path) -> None:
    with pytest.raises(SvaiError) as caught:
        weights.require("inception", clean_env / "mine")
    message = str(caught.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert "FID" in message
    assert "svai weights fetch inception" in message
    assert f"copy the file into {clean_env / 'mine'}" in message
    assert "\n" not in message


def test_unknown_key_lists_the_known_ones() -> None:
    with pytest.raises(SvaiError, match="inception, alexnet"):
        weights.locate("resnet")


# -- hashing and verification -------------------------------------------------------------


def test_sha256_file_follows_content_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "f.bin", b"first")
    assert weights.sha256_file(path) == hashlib.sha256(b"first").hexdigest()
    write(path, b"second, longer")
    assert weights.sha256_file(path) == hashlib.sha256(b"second, longer").hexdigest()


def test_verify_catches_a_wrong_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / weights.REGISTRY["vgg16"].filename, b"not vgg16")
    assert not weights.verify("vgg16", path)
    with_digest(monkeypatch, "vgg16", b"not vgg16")
    assert weights.verify("vgg16", path)


def test_verify_uses_the_name_prefix_when_the_full_hash_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"some weights"
    prefix = hashlib.sha256(content).hexdigest()[:8]
    entry = dataclasses.replace(weights.REGISTRY["squeezenet"], filename=f"net-{prefix}.pth", sha256="")
    monkeypatch.setitem(weights.REGISTRY, "squeezenet", entry)
    path = write(tmp_path / entry.filename, content)
    assert weights.verify("squeezenet", path)
    write(path, b"other weights")
    assert not weights.verify("squeezenet", path)


# -- loading the Inception offline --------------------------------------------------------


class Payload:
    """Unpickling this creates a folder: the kind of side effect a malicious pickle exploits."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_load_inception_refuses_pickled_objects(tmp_path: Path, clean_env: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / weights.REGISTRY["inception"].filename
    torch.save({"weight": torch.zeros(1), "extra": Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the payload works when trusted...
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(SvaiError, match="not a readable weights file"):
        load_inception(tmp_path)
    assert not marker.exists()  # ...and never runs through load_inception.


def test_load_inception_rejects_another_network(tmp_path: Path, clean_env: Path) -> None:
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), tmp_path / weights.REGISTRY["inception"].filename)
    with pytest.raises(SvaiError, match="not pytorch-fid's Inception"):
        load_inception(tmp_path)


def test_load_inception_missing_file_is_a_user_error(clean_env: Path) -> None:
    with pytest.raises(SvaiError, match="svai weights fetch inception"):
        load_inception()


def test_load_inception_reads_the_located_file(use_torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Any attempt to download would go through torch.hub: make it fail loudly.
    def no_download(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    model = load_inception()
    saved = torch.load(use_torch_home / weights.REGISTRY["inception"].filename, weights_only=True)
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


# -- fetch ---------------------------------------------------------------------------------


def test_fetch_from_file_url_verifies_and_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = os.urandom(3 * (1 << 20) + 17)
    source = write(tmp_path / "mirror" / "blob", content)
    with_digest(monkeypatch, "alexnet", content, url=source.as_uri())
    seen: list[int] = []
    path = weights.fetch("alexnet", tmp_path / "dest", progress=lambda done, total: seen.append(done))
    assert path == tmp_path / "dest" / "alexnet-owt-7be5be79.pth"
    assert path.read_bytes() == content
    assert seen[-1] == len(content)
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [path.name]


def test_fetch_rejects_a_wrong_download_and_keeps_nothing(tmp_path: Path) -> None:
    source = write(tmp_path / "blob", b"corrupted")
    with pytest.raises(SvaiError, match="sha256"):
        weights.fetch("inception", tmp_path / "dest", url=source.as_uri())
    assert list((tmp_path / "dest").iterdir()) == []


def test_fetch_unreachable_source_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SvaiError, match="could not download"):
        weights.fetch("inception", tmp_path / "dest", url=(tmp_path / "absent").as_uri())
    assert list((tmp_path / "dest").iterdir()) == []


def test_fetch_defaults_to_the_published_url_and_first_search_dir(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"pretend squeezenet"
    with_digest(monkeypatch, "squeezenet", content)
    requested: list[str] = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(content))}

    def fake_urlopen(url: str, timeout: float):
        requested.append(url)
        return Response(content)

    monkeypatch.setattr(weights.urllib.request, "urlopen", fake_urlopen)
    path = weights.fetch("squeezenet")
    assert requested == ["https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"]
    assert path == clean_env / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    assert weights.locate("squeezenet") == path


def test_fetch_stops_a_source_that_sends_more_than_the_file_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endless = write(tmp_path / "mirror" / "blob", b"\0" * (3 << 20))
    entry = weights.REGISTRY["alexnet"]
    monkeypatch.setitem(weights.REGISTRY, "alexnet", dataclasses.replace(entry, size=1 << 20))
    with pytest.raises(SvaiError, match="more than the 1.0 MB|more than the 1 MB"):
        weights.fetch("alexnet", tmp_path / "dest", url=endless.as_uri())
    assert list((tmp_path / "dest").iterdir()) == []
