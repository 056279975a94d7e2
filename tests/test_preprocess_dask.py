"""The `preprocess-dask` flow on a real Dask LocalCluster of 2 worker processes, under the real Prefect test
server: every sample stored, verified by `load_sample`, and bit-identical to the threaded `preprocess`."""

from __future__ import annotations

import logging

import numpy as np

from flows.preprocess_dask import preprocess_dask
from odbench.dataset import FolderSource, ingest, load_manifest
from odbench.models import get_spec
from odbench.preprocess import load_sample, preprocess, preprocessed_path
from odbench.storage import Storage

MODEL = "retinanet_coco"  # 800 px
IMAGES = 16  # of the synthetic set's 40: enough for 8 tasks of 2 over 2 workers


def test_dask_flow_stores_the_threaded_samples_bit_for_bit(prefect_api, tmp_path, synthetic_dir, caplog):
    resolution = get_spec(MODEL).resolution
    out = preprocess_dask(dataset_url=str(synthetic_dir), loadgen_dataset_size=IMAGES, model_name=MODEL,
                          preprocess_resize_dtype="float32", n_workers=2, storage_url=str(tmp_path / "dask"))
    assert (out["images"], out["created"], out["resolution"], out["workers"]) == (IMAGES, IMAGES, resolution, 2)
    assert out["tasks"] == 8 and out["chunk"] == 2  # about 4 tasks per worker
    assert out["workers_used"] == 2, "both worker processes ran tasks"
    assert out["images_per_s"] > 0 and out["images_per_s_per_worker"] == out["images_per_s"] / 2

    dask_storage = Storage(str(tmp_path / "dask"))
    manifest = load_manifest(dask_storage, out["dataset_digest"])
    assert [im.index for im in manifest.images] == list(range(IMAGES))
    assert dask_storage.missing(preprocessed_path(resolution, im.md5) for im in manifest.images) == []

    threaded = Storage(str(tmp_path / "threaded"))
    assert ingest(FolderSource(str(synthetic_dir)), IMAGES, threaded).digest == manifest.digest
    preprocess(manifest, resolution, threaded, workers=2, resize_dtype="float32")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="odbench"):
        for im in manifest.images:
            rel = preprocessed_path(resolution, im.md5)
            assert dask_storage.read_bytes(rel) == threaded.read_bytes(rel), im.file_name
            array = load_sample(dask_storage, im, resolution, resize_dtype="float32")
            assert array.dtype == np.float32 and array.shape == (resolution, resolution, 3)
            assert np.array_equal(array, load_sample(threaded, im, resolution, resize_dtype="float32"))
    assert not [r for r in caplog.records if r.name.startswith("odbench")], "a sample failed verification"

