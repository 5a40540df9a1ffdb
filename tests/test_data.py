"""The dataset registry, the decoded cache and DeviceImages, on real sample files and tiny fakes."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.data import cache as datacache
from orchestrator.data import dataset as data
from orchestrator.data.dataset import DataSpec, DeviceImages, images_to_float, prepare_dataset, validate
from orchestrator.errors import DataError

FOOD_CLASSES = ("apple_pie", "baklava")


def reference_decode(path: Path, resolution: int, draft: bool = True) -> np.ndarray:
    """PIL's own decode, centre crop and bicubic resize, written independently of the loader."""
    image = Image.open(path)
    if draft:
        image.draft("RGB", (2 * resolution, 2 * resolution))
    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return np.asarray(image.resize((resolution, resolution), Image.BICUBIC, box=box)).transpose(2, 0, 1)


def find_row(images: np.ndarray, expected: np.ndarray) -> int:
    """Index of the one cached image byte-equal to ``expected``; the cache order is shuffled."""
    hits = [i for i in range(len(images)) if np.array_equal(images[i], expected)]
    assert len(hits) == 1, f"expected one exact match, found {len(hits)}"
    return hits[0]


def write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def metadata(dataset: data.CachedDataset) -> dict:
    return json.loads(dataset.path.with_name(f"{dataset.key}.json").read_text())


@pytest.fixture
def food_root(tmp_path: Path, shared_data: Path) -> Path:
    """Food-101's exact layout, restricted to 2 classes x (10 train, 5 test) real images."""
    source, root = shared_data / "food-101", tmp_path / "food"
    meta = root / "food-101" / "meta"
    meta.mkdir(parents=True)
    for split, count in (("train", 10), ("test", 5)):
        ids = json.loads((source / "meta" / f"{split}.json").read_text())
        chosen = {name: ids[name][:count] for name in FOOD_CLASSES}
        (meta / f"{split}.json").write_text(json.dumps(chosen))
        for image_id in (i for group in chosen.values() for i in group):
            target = root / "food-101" / "images" / f"{image_id}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source / "images" / f"{image_id}.jpg")
    (meta / "classes.txt").write_text("\n".join(FOOD_CLASSES) + "\n")
    return root


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """MNIST and Fashion-MNIST idx files, decompressed where torchvision looks for them."""
    root = tmp_path_factory.mktemp("idx")
    for name, folder in (("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")):
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        for gz in (shared_data / name).glob("*.gz"):
            (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    return root


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny CIFAR-10 in its own pickle format. torchvision checks every file against the real
    md5s, so the narrowest shim: its md5 table is pointed at the files written here; the loading
    code, including that integrity check, is torchvision's own."""
    from torchvision.datasets import CIFAR10

    base = tmp_path / "cifar" / CIFAR10.base_folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(7)
    batches = {f"data_batch_{i}": 4 for i in range(1, 6)} | {"test_batch": 6}
    written = {}
    for name, count in batches.items():
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        entry = {"data": pixels, "labels": [int(x) for x in rng.integers(0, 10, count)]}
        (base / name).write_bytes(pickle.dumps(entry))
        written[name] = pixels.reshape(count, 3, 32, 32)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))

    def md5(name: str) -> str:
        return hashlib.md5((base / name).read_bytes()).hexdigest()

    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5("batches.meta")})
    return tmp_path / "cifar", written


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two class sub-folders of non-square PNGs, plus files that are not images."""
    root = tmp_path / "pictures"
    for i in range(4):
        write_image(root / "cats" / f"{i}.png", (40 + 7 * i, 30), seed=i)
    for i in range(3):
        write_image(root / "dogs" / "nested" / f"{i}.png", (30, 50), seed=10 + i)
    (root / "cats" / "notes.txt").write_text("not an image")
    (root / "cats" / "._0.png").write_bytes(b"macOS resource fork debris")
    return root


# --- every loader, on real or faithfully faked files


def test_food101_through_torchvision(food_root: Path, tmp_path: Path) -> None:
    spec = DataSpec("food101", resolution=32, root=food_root)
    dataset = prepare_dataset(spec, tmp_path / "cache", progress=False)
    assert dataset.images.shape == (20, 3, 32, 32) and dataset.images.dtype == np.uint8
    assert dataset.labels.dtype == np.int64 and np.bincount(dataset.labels).tolist() == [10, 10]
    assert dataset.class_names == FOOD_CLASSES
    assert (dataset.channels, dataset.resolution, len(dataset)) == (3, 32, 20)
    train_ids = json.loads((food_root / "food-101" / "meta" / "train.json").read_text())
    for image_id in (i for group in train_ids.values() for i in group):
        path = food_root / "food-101" / "images" / f"{image_id}.jpg"
        row = find_row(dataset.images, reference_decode(path, 32))
        assert dataset.class_names[dataset.labels[row]] == path.parent.name
        # the reduced-scale JPEG decode stays close to a full-size decode
        full = reference_decode(path, 32, draft=False).astype(int)
        assert np.abs(dataset.images[row].astype(int) - full).mean() < 3


def test_food101_test_split_and_class_subset(food_root: Path, tmp_path: Path) -> None:
    spec = DataSpec("food101", split="test", resolution=64, root=food_root, classes=("baklava",))
    dataset = prepare_dataset(spec, tmp_path / "cache", progress=False)
    assert dataset.images.shape == (5, 3, 64, 64)
    assert dataset.class_names == ("baklava",) and dataset.labels.tolist() == [0] * 5
    test_ids = json.loads((food_root / "food-101" / "meta" / "test.json").read_text())["baklava"]
    for image_id in test_ids:
        find_row(dataset.images, reference_decode(food_root / "food-101" / "images" / f"{image_id}.jpg", 64))


def test_food101_unknown_class_lists_valid_ones(food_root: Path, tmp_path: Path) -> None:
    spec = DataSpec("food101", root=food_root, classes=("baklav",))
    message = r"no class 'baklav' \(did you mean 'baklava'\?\); valid: apple_pie, baklava$"
    with pytest.raises(DataError, match=message):
        validate(spec)  # from classes.txt, before any loading
    (food_root / "food-101" / "meta" / "classes.txt").unlink()
    with pytest.raises(DataError, match=message):
        prepare_dataset(spec, tmp_path / "cache", progress=False)  # from torchvision's class list


def test_folder_unknown_class_fails_in_validate(folder: Path) -> None:
    with pytest.raises(DataError, match=r"no class 'dog' \(did you mean 'dogs'\?\)"):
        validate(DataSpec(f"folder:{folder}", classes=("dog",)))


def test_default_root_from_environment(
    food_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATA", str(food_root))
    dataset = prepare_dataset(DataSpec("food101", resolution=32, limit=3), tmp_path / "c", progress=False)
    assert len(dataset) == 3


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("resolution", [32, 64])
def test_idx_datasets_keep_one_channel(
    idx_root: Path, tmp_path: Path, name: str, folder: str, resolution: int
) -> None:
    import torchvision.datasets

    spec = DataSpec(name, split="test", resolution=resolution, root=idx_root, limit=40)
    dataset = prepare_dataset(spec, tmp_path / "cache", progress=False)
    assert dataset.images.shape == (40, 1, resolution, resolution) and dataset.labels.dtype == np.int64
    assert 0 < dataset.images.mean() < 128  # dark backgrounds, bright strokes
    reference = getattr(torchvision.datasets, folder)(idx_root, train=False)
    assert dataset.class_names == tuple(reference.classes)
    # each cached image is one of torchvision's, resized by PIL, under its own label
    label_of = {
        np.asarray(Image.fromarray(pixels).resize((resolution,) * 2, Image.BICUBIC)).tobytes(): int(label)
        for pixels, label in zip(reference.data.numpy(), reference.targets.numpy(), strict=True)
    }
    for image, label in zip(dataset.images, dataset.labels, strict=True):
        assert label_of[image[0].tobytes()] == label


def test_cifar10_fake_in_its_own_format(cifar_root: tuple[Path, dict], tmp_path: Path) -> None:
    root, written = cifar_root
    train = prepare_dataset(DataSpec("cifar10", resolution=32, root=root), tmp_path / "c", progress=False)
    assert train.images.shape == (20, 3, 32, 32) and train.class_names[0] == "airplane"
    for image in np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)]):
        find_row(train.images, image)  # at 32 px the pixels are CIFAR's own, untouched
    test = prepare_dataset(DataSpec("cifar10", "test", 64, root=root), tmp_path / "c", progress=False)
    assert test.images.shape == (6, 3, 64, 64)
    upscaled = Image.fromarray(written["test_batch"][0].transpose(1, 2, 0)).resize((64, 64), Image.BICUBIC)
    find_row(test.images, np.asarray(upscaled).transpose(2, 0, 1))


def test_folder_with_class_subfolders(folder: Path, tmp_path: Path) -> None:
    dataset = prepare_dataset(DataSpec(f"folder:{folder}", resolution=32), tmp_path / "c", progress=False)
    assert dataset.class_names == ("cats", "dogs") and np.bincount(dataset.labels).tolist() == [4, 3]
    for path in folder.rglob("[0-9].png"):
        row = find_row(dataset.images, reference_decode(path, 32))
        assert dataset.class_names[dataset.labels[row]] in path.parts
    assert metadata(dataset)["skipped"] == []


def test_flat_folder_is_one_class(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "flat" / f"{i}.jpg", (64, 48), seed=i)
    dataset = prepare_dataset(
        DataSpec(f"folder:{tmp_path / 'flat'}", resolution=32), tmp_path / "c", progress=False
    )
    assert dataset.class_names == ("flat",) and dataset.labels.tolist() == [0, 0, 0]


def test_process_pool_decodes_the_same(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(30):
        write_image(folder / "cats" / f"extra{i}.png", (33, 20), seed=100 + i)
    spec = DataSpec(f"folder:{folder}", resolution=32)
    serial = prepare_dataset(spec, tmp_path / "serial", progress=False)
    monkeypatch.setattr(datacache, "_CHUNK", 4)
    monkeypatch.setattr(datacache, "_MIN_POOL_FILES", 0)
    monkeypatch.setattr(datacache.os, "cpu_count", lambda: 2)
    pooled = prepare_dataset(spec, tmp_path / "pooled", progress=False)
    assert pooled.images.tobytes() == serial.images.tobytes()
    assert pooled.labels.tolist() == serial.labels.tolist()


@pytest.mark.parametrize(("files", "cores", "size"),
                         [(101_000, 16, 256), (1_000, 16, 16), (2_000, 2, 250), (3, 16, 1), (600, 1, 150)])
def test_chunks_keep_every_core_busy(files: int, cores: int, size: int) -> None:
    """Full chunks of 256 on big sets; on small ones, a few tasks for every core."""
    assert datacache.chunk_size(files, cores) == size


# --- the cache


def test_key_changes_with_every_input(folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = DataSpec(f"folder:{folder}", resolution=32)

    def key(spec: DataSpec) -> str:
        return prepare_dataset(spec, cache, progress=False).key

    keys = [
        key(base),
        key(DataSpec(base.name, resolution=64)),
        key(DataSpec(base.name, resolution=32, limit=3)),
    ]
    keys.append(key(DataSpec(base.name, resolution=32, classes=("dogs",))))
    keys.append(key(DataSpec(base.name, split="test", resolution=32)))
    write_image(folder / "dogs" / "new.png", (20, 20), seed=99)
    keys.append(key(base))
    (folder / "dogs" / "new.png").write_bytes(
        (folder / "cats" / "0.png").read_bytes()
    )  # same name, new bytes
    keys.append(key(base))
    assert len(set(keys)) == len(keys)
    assert key(DataSpec(base.name, resolution=32, root=tmp_path, download=True)) == keys[-1]


def test_second_prepare_reuses_the_cache(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DataSpec(f"folder:{folder}", resolution=64)
    first = prepare_dataset(spec, tmp_path, progress=False)
    mtime = first.path.stat().st_mtime_ns

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(data, "_build", no_decoding)
    second = prepare_dataset(spec, tmp_path, progress=False)
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert second.images.tobytes() == first.images.tobytes() and np.array_equal(second.labels, first.labels)
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable


def test_reload_is_fast(tmp_path: Path) -> None:
    spec = DataSpec("shapes", resolution=32)
    prepare_dataset(spec, tmp_path, progress=False)
    start = time.perf_counter()
    dataset = prepare_dataset(spec, tmp_path, progress=False)
    assert time.perf_counter() - start < 0.5 and len(dataset) == 10_000


def test_crash_mid_write_leaves_nothing(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DataSpec(f"folder:{folder}", resolution=32)
    real_save = np.save

    def crash(file: object, array: np.ndarray) -> None:
        file.write(b"\x93NUMPY half an array")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(data.np, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(spec, tmp_path, progress=False)
    assert list((tmp_path / "data").iterdir()) == []
    monkeypatch.setattr(data.np, "save", real_save)
    assert len(prepare_dataset(spec, tmp_path, progress=False)) == 7


def test_entry_without_metadata_is_rebuilt(folder: Path, tmp_path: Path) -> None:
    spec = DataSpec(f"folder:{folder}", resolution=32)
    first = prepare_dataset(spec, tmp_path, progress=False)
    first.path.with_name(f"{first.key}.json").unlink()  # as if killed before the last rename
    again = prepare_dataset(spec, tmp_path, progress=False)
    assert again.images.tobytes() == first.images.tobytes()


# --- unreadable files


def test_corrupt_file_is_skipped_and_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "many"
    for i in range(120):
        write_image(root / f"{i:03d}.png", (8, 8), seed=i)
    (root / "garbage.jpg").write_bytes(b"this is not a jpeg" * 10)
    with caplog.at_level(logging.WARNING, logger="orchestrator.data"):
        dataset = prepare_dataset(DataSpec(f"folder:{root}", resolution=32), tmp_path / "c", progress=False)
    assert len(dataset) == 120 and len(dataset.labels) == 120
    assert "garbage.jpg" in caplog.text
    skipped = metadata(dataset)["skipped"]
    assert [Path(s["file"]).name for s in skipped] == ["garbage.jpg"] and metadata(dataset)["count"] == 120
    assert dataset.images.reshape(120, -1).max(axis=1).min() > 0  # no black placeholder row was kept


def test_mostly_corrupt_files_raise(tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "bad"
    write_image(root / "good.png", (8, 8), seed=0)
    real = next((shared_data / "food-101" / "images" / "baklava").glob("*.jpg")).read_bytes()
    (root / "truncated.jpg").write_bytes(real[: len(real) // 3])
    (root / "zeros.png").write_bytes(bytes(500))
    with pytest.raises(
        DataError, match=r"2 of 3 images cannot be read, first: .*(truncated\.jpg|zeros\.png)"
    ):
        prepare_dataset(DataSpec(f"folder:{root}", resolution=32), tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "data").exists() or not list((tmp_path / "c" / "data").glob("*.npy"))


# --- bad input, all before any work


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            DataSpec("shapez"),
            r"unknown dataset 'shapez' \(did you mean 'shapes'\?\); valid: shapes, food101, .*folder:PATH",
        ),
        (DataSpec("imagenet"), r"unknown dataset 'imagenet'; valid: .*cifar10"),
        (DataSpec("shapes", resolution=48), "resolution 48 is not supported: use 32 or 64"),
        (DataSpec("shapes", split="val"), "split 'val' is not one of train, test"),
        (DataSpec("shapes", limit=0), "limit 0 must be a positive integer"),
        (DataSpec("shapes", classes="red large circle"), "must be a non-empty tuple"),  # type: ignore[arg-type]
        (DataSpec("shapes", classes=("red big circle",)), r"did you mean 'red large circle'"),
        (DataSpec("folder:"), "folder: needs a directory"),
        (DataSpec("folder:/no/such/dir"), "image folder /no/such/dir does not exist"),
    ],
)
def test_bad_specs(spec: DataSpec, message: str) -> None:
    with pytest.raises(DataError, match=message):
        validate(spec)


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("food101", "food-101"),
        ("mnist", "MNIST/raw"),
        ("fashion-mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
    ],
)
def test_missing_data_names_the_path_and_the_fix(tmp_path: Path, name: str, where: str) -> None:
    fix = f"pass --download to fetch it, or --data-root DIR holding {where}/"
    expected = f"{name} data not found at {tmp_path / where}: {fix}"
    with pytest.raises(DataError) as caught:
        prepare_dataset(DataSpec(name, root=tmp_path), tmp_path / "cache", progress=False)
    assert str(caught.value) == expected


def test_incomplete_torchvision_data_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)  # the folder exists, the idx files do not
    with pytest.raises(DataError, match=r"mnist data at .*MNIST/raw is missing or corrupt .*--download"):
        prepare_dataset(DataSpec("mnist", root=tmp_path), tmp_path / "cache", progress=False)


# --- DeviceImages


def test_device_images_sample() -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 3, 8, 8), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    device_images = DeviceImages(images)
    assert len(device_images) == 50
    batch = device_images.sample(16, torch.Generator().manual_seed(1))
    assert batch.shape == (16, 3, 8, 8) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    again = DeviceImages(images).sample(16, torch.Generator().manual_seed(1))
    assert torch.equal(batch, again)
    other = device_images.sample(16, torch.Generator().manual_seed(2))
    assert not torch.equal(batch, other)
    # every sampled image is one of the originals, scaled
    originals = images_to_float(torch.from_numpy(images))
    assert all(any(torch.equal(b, o) for o in originals) for b in batch)


def test_device_images_channels_last_and_memmap(tmp_path: Path) -> None:
    dataset = prepare_dataset(DataSpec("shapes", resolution=32, limit=64), tmp_path, progress=False)
    device_images = DeviceImages(dataset.images, "cpu", channels_last=True)
    batch = device_images.sample(8, torch.Generator().manual_seed(0))
    assert batch.is_contiguous(memory_format=torch.channels_last) and batch.shape == (8, 3, 32, 32)
    assert torch.equal(device_images.images, torch.from_numpy(np.array(dataset.images)))


def test_images_to_float_range() -> None:
    values = images_to_float(torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8))
    assert values[0] == -1 and values[-1] == 1 and values.dtype == torch.float32
    assert torch.all(values[1:] > values[:-1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_images_on_cuda() -> None:
    images = np.random.default_rng(0).integers(0, 256, (100, 3, 32, 32), dtype=np.uint8)
    on_gpu = DeviceImages(images, "cuda", channels_last=True)
    batch = on_gpu.sample(32, torch.Generator(device="cuda").manual_seed(0))
    assert batch.is_cuda and batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(on_gpu.images.cpu(), torch.from_numpy(images))
    assert batch.min() >= -1 and batch.max() <= 1
