"""Stores on object storage (issue 5: "a Lance dataset on local disk or object storage").

Against a real S3-protocol server on localhost (moto's), not a mock of nomic-memory's code:
LanceDB talks HTTP to it exactly as it would to S3.  A store written there must hold the same
embeddings as a local store, reopen through a fresh ``Store``, skip unchanged files on a rerun,
and serve search; the CLI takes ``--store s3://...`` with credentials from the environment.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from conftest import CLEAN_IMAGES, cli_env, on_cpu, run_cli
from nomic_memory.store.table import Store, embedding_to_numpy

pytestmark = pytest.mark.slow  # starts CLI processes, servers or clusters

BUCKET = "nomic-memory-test"


@pytest.fixture(scope="module")
def s3():
    """``(environment variables, storage_options)`` for a running S3 server with one bucket."""
    pytest.importorskip("moto.server")
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    options = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_region": "us-east-1",
        "aws_endpoint": endpoint,
        "allow_http": "true",
    }
    yield env, options
    server.stop()


def _embeddings(store: Store) -> dict[str, np.ndarray]:
    t = store.only_table()
    return {
        r["path"]: embedding_to_numpy(r["embedding"], t.info.kind, t.info.dim)
        for r in t.to_arrow(["path", "embedding"]).to_pylist()
    }


def test_s3_store_same_as_local_reopens_and_resumes(s3, loaded, image_dir, tmp_path):
    _, options = s3
    emb = loaded["colqwen"]
    uri = f"s3://{BUCKET}/api-store"
    remote = Store(uri, storage_options=options)
    assert not remote.local and remote.path == uri
    report = emb.embed_directory(image_dir, store=remote, workers=0)
    assert report.embedded == len(CLEAN_IMAGES) and not report.failed
    assert not (tmp_path / "s3:").exists()  # nothing was created locally

    local = tmp_path / "local"
    emb.embed_directory(image_dir, store=local, workers=0)
    want = _embeddings(Store(local))
    got = _embeddings(Store(uri, storage_options=options))  # a fresh connection reads it back
    assert sorted(got) == sorted(want) == sorted(CLEAN_IMAGES)
    for path in want:
        # Two runs, not one copy: the CPU thread tuner may pick different intra-op thread counts in
        # each (it times the machine), which changes float sums in the last bits (seen: 8e-8).
        np.testing.assert_allclose(got[path], want[path], rtol=0, atol=1e-5)

    again = emb.embed_directory(image_dir, store=Store(uri, storage_options=options), workers=0)
    assert again.embedded == 0 and again.skipped_unchanged == len(CLEAN_IMAGES)
    assert Store(uri, storage_options=options).only_table().count() == len(CLEAN_IMAGES)


def test_cli_embed_and_search_on_s3(s3, tiny_colqwen, image_dir, tmp_path):
    env_vars, _ = s3
    env = {**cli_env(tmp_path), **env_vars}
    uri = f"s3://{BUCKET}/cli-store"
    r = run_cli("embed", image_dir, *on_cpu(tiny_colqwen, uri), "--json", "--no-progress", env=env)
    assert r.returncode == 0, r
    rep = r.json()
    assert rep["embedded"] == len(CLEAN_IMAGES) and rep["store"] == uri

    s = run_cli("search", "a red square", "--store", uri, "--backend", "cpu", "-k", "3", "--json", env=env)
    assert s.returncode == 0, s
    hits = s.json()["results"][0]  # one list of hits per query
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert {h["path"] for h in hits} <= set(CLEAN_IMAGES)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    # The pooled approximate index lives beside a local store only: a clear error, not a crash.
    b = run_cli("search", "--store", uri, "--build-index", "--backend", "cpu", env=env)
    assert b.returncode != 0 and "--index-method lance" in b.stderr, b


def test_unusable_store_is_refused_before_the_model_loads(tiny_colqwen, image_dir, tmp_path):
    r = run_cli("embed", image_dir, *on_cpu(tiny_colqwen, "nosuch://x/y"), "--no-progress", env=cli_env(tmp_path))
    assert r.returncode == 1, r
    assert "cannot open the store at nosuch://x/y" in r.stderr
    assert "Loading model" not in r.stdout
