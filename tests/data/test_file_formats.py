"""CIFAR-10 and SVHN from files in their real on-disk formats, written small by the test.

CIFAR-10's python batches (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``:
pickled dicts of uint8 rows 3x32x32 and labels) and SVHN's MATLAB files (``train_32x32.mat``,
``test_32x32.mat``: X of shape 32x32x3xN, y with 10 for the digit 0) are read by torchvision's own
readers, as on a machine that has the data. Those readers check each file's md5 against the real
release, which a small file written here cannot match: the first test shows that check refusing
them (one error naming the dataset), the others stand in for it with a check that passes, saying so,
and test everything after it (shapes, [0, 1], the label mapping, the stratified subsets).
"""
import pickle

import numpy as np
import pytest
import scipy.io

from dwf_lab.data import DatasetUnavailableError, load_dataset

N_TRAIN_PER_BATCH, N_TEST = 20, 30


def _cifar10_files(root, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)

    def batch(name, n):
        labels = [int(v) for v in np.arange(n) % 10]
        rows = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        with open(d / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": rows,
                         "filenames": [f"{name}_{i}.png" for i in range(n)]}, f)
        return rows, labels
    train = [batch(f"data_batch_{i}", N_TRAIN_PER_BATCH) for i in range(1, 6)]
    test = batch("test_batch", N_TEST)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": N_TRAIN_PER_BATCH}, f)
    return train, test


def _svhn_files(root, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", 50), ("test", N_TEST)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]     # SVHN writes 0 as 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, digits)
    return out


@pytest.fixture
def integrity_stands_in(monkeypatch):
    """torchvision's md5 check of each file, replaced by one that passes (the files are the test's own)."""
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)     # the metadata file's md5
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)


@pytest.mark.parametrize("dataset, write", [("cifar10", _cifar10_files), ("svhn", _svhn_files)])
def test_the_real_integrity_check_refuses_files_that_are_not_the_release(tmp_path, monkeypatch, dataset, write):
    monkeypatch.delenv("DWF_CIFAR10_SUBSET", raising=False)
    write(tmp_path)
    with pytest.raises(DatasetUnavailableError, match=dataset):
        load_dataset(dataset, root=tmp_path, download=False)


def test_cifar10_python_batches_load_as_images_in_0_1_with_their_labels(tmp_path, monkeypatch, integrity_stands_in):
    monkeypatch.delenv("DWF_CIFAR10_SUBSET", raising=False)
    train, (test_rows, test_labels) = _cifar10_files(tmp_path)
    d = load_dataset("cifar10", root=tmp_path, download=False)
    assert d.name == "cifar10" and not d.generated
    assert tuple(d.x_train.shape) == (5 * N_TRAIN_PER_BATCH, 3, 32, 32) and tuple(d.x_test.shape) == (N_TEST, 3, 32, 32)
    assert float(d.x_test.min()) >= 0 and float(d.x_test.max()) <= 1
    # the file's row order is channel-major (R plane, G plane, B plane): image 0 of the test batch, exactly
    assert np.allclose(d.x_test[0].numpy(), test_rows[0].reshape(3, 32, 32) / 255.0, atol=1e-6)
    assert d.y_test.tolist() == test_labels
    small = load_dataset("cifar10", n_train=50, n_test=10, root=tmp_path, download=False)
    assert len(small.x_train) == 50 and sorted(small.y_test.tolist()) == list(range(10))   # stratified


def test_svhn_mat_files_load_with_zero_as_zero(tmp_path, integrity_stands_in):
    files = _svhn_files(tmp_path)
    d = load_dataset("svhn", root=tmp_path, download=False)
    assert d.name == "svhn" and tuple(d.x_test.shape) == (N_TEST, 3, 32, 32)
    x, digits = files["test"]
    assert d.y_test.tolist() == digits.tolist()                        # 10 in the file is the digit 0
    assert np.allclose(d.x_test[3].numpy(), x[:, :, :, 3].transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert float(d.x_train.max()) <= 1 and d.num_classes == 10
