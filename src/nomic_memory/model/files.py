"""What a model's files say about the embeddings it makes, without loading it.

Embeddings made elsewhere (``nomic-memory import``) are stamped with the model that made them:
its id, revision, kind, vector width and, for ColNomic, the fingerprint of its query projection
(``custom_text_proj``, see :func:`nomic_memory.model.loading.projection_fingerprint`).  All of it is read
from the model's files here: configs, and the one projection tensor of a full checkpoint.  Nothing
is downloaded: a hub model comes from this machine's Hugging Face cache, or, when it is not
there, from the variant table plus a revision given by the user or asked of the hub (metadata
only).  The fingerprint is ``None`` when only loading the model could tell it: a PEFT adapter, or a
checkpoint without the projection (both initialise it from the RNG at load time).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch

from nomic_memory.errors import ModelLoadError
from nomic_memory.model.loading import ModelSpec, ResolvedModel, _looks_like_path, _proj_digest, table_name_for
from nomic_memory.model.variants import VARIANTS, variant_for_repo

COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelFacts:
    """A model as far as its files tell, without loading a weight."""

    model_id: str
    revision: str
    kind: str  # colqwen | biqwen
    dim: int
    table_name: str
    seed: int
    fingerprint: str | None  # "" for BiQwen; None: only loading the model can tell
    fingerprints: frozenset[str] = frozenset()  # every form earlier versions recorded (see loading)
    note: str = ""  # why the fingerprint is unknown


def model_facts(spec: ModelSpec) -> ModelFacts:
    """Resolve ``spec`` (a variant, hub id or local directory) from local files only."""
    local = replace(spec, local_files_only=True)
    try:
        r = local.resolve()
    except ModelLoadError:
        if spec.name is not None and _looks_like_path(spec.name):
            raise
        return _hub_facts(spec)
    if spec.revision is not None and r.local:
        raise ModelLoadError(
            f"--revision {spec.revision} names a hub revision, but {r.model_id} is a local "
            "directory (it has no revisions)"
        )
    dim = 128 if r.kind == "colqwen" else _biqwen_dim(r)
    if r.kind != "colqwen":
        return ModelFacts(r.model_id, r.revision, r.kind, dim, r.table_name, spec.seed, "", frozenset({""}))
    found = projection_from_files(r.source)
    if isinstance(found, str):
        return ModelFacts(r.model_id, r.revision, r.kind, dim, r.table_name, spec.seed, None, note=found)
    return ModelFacts(r.model_id, r.revision, r.kind, dim, r.table_name, spec.seed, found[0], found[1])


def _hub_facts(spec: ModelSpec) -> ModelFacts:
    """A hub model that is not in the local cache: the variant table gives kind and width, the
    revision is ``spec.revision`` (a commit) or the hub's answer for it."""
    repo = spec.name or VARIANTS[spec.variant].repo_id
    v = variant_for_repo(repo)
    if v is None:
        raise ModelLoadError(
            f"cannot tell the kind and vector width of '{repo}': it is neither a local model "
            "directory, nor in this machine's Hugging Face cache, nor one of Nomic's four models"
        )
    revision = spec.revision if spec.revision and COMMIT.fullmatch(spec.revision) else _hub_commit(repo, spec.revision)
    fp = "" if v.kind == "biqwen" else None
    note = "" if fp == "" else f"{repo} is not on this machine: its projection can only be read from its files"
    return ModelFacts(
        repo,
        revision,
        v.kind,
        v.dim,
        table_name_for(repo, v.kind, v.kind),
        spec.seed,
        fp,
        frozenset({""}) if fp == "" else frozenset(),
        note,
    )


def _hub_commit(repo: str, revision: str | None) -> str:
    """The commit ``revision`` (default: the main branch) of ``repo`` names, asked of the hub
    (repository metadata only, no file is downloaded)."""
    why = "the hub cannot be reached (offline)"
    if not _offline():
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(repo, revision=revision, timeout=10).sha
            if sha:
                return sha
        except Exception as e:  # noqa: BLE001 - network, auth, missing repo: said below
            why = f"the hub did not answer ({type(e).__name__})"
    raise ModelLoadError(
        f"cannot tell which revision of {repo} made the embeddings: it is not in this machine's "
        f"Hugging Face cache and {why}; pass --revision COMMIT, the 40-hex hub commit they were "
        "made with"
    )


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _biqwen_dim(r: ResolvedModel) -> int:
    """A BiQwen model's vector width: its language model's hidden size (config.json, or the
    base model an adapter names)."""
    v = variant_for_repo(r.model_id)
    if v is not None:
        return v.dim
    cfg = r.source / "config.json"
    if cfg.is_file():
        c = json.loads(cfg.read_text())
        dim = (c.get("text_config") or {}).get("hidden_size") or c.get("hidden_size")
        if dim:
            return int(dim)
    adapter = r.source / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path") or ""
        for v in VARIANTS.values():
            if v.base_model.lower() == base.lower() and v.kind == "biqwen":
                return v.dim
        if Path(base).is_dir():
            return _biqwen_dim(replace(r, model_id=base, source=Path(base)))
    raise ModelLoadError(
        f"cannot tell the vector width of {r.model_id} from its files (no hidden_size in its "
        "config.json, and no known base model)"
    )


def projection_from_files(source: Path) -> tuple[str, frozenset[str]] | str:
    """``(fingerprint, every recorded form)`` of the ColQwen projection stored in a full
    checkpoint's safetensors files, computed as :func:`~nomic_memory.model.loading.projection_fingerprint`
    computes it on the loaded model; or the reason it cannot be known without loading."""
    if (source / "adapter_config.json").is_file():
        return (
            f"{source} is a PEFT adapter: its projection is made when the model loads "
            "(from its base weights, the adapter and the seed)"
        )
    files = sorted(source.glob("*.safetensors"))
    if not files:
        return f"{source} has no safetensors weights"
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                name = k.rsplit(".", 1)[-1]
                if k.endswith(("custom_text_proj.weight", "custom_text_proj.bias")) and "lora" not in k:
                    tensors[name] = st.get_tensor(k)
    if "weight" not in tensors:
        return f"{source} does not hold custom_text_proj: it is initialised from the seed when the model loads"
    proj = SimpleNamespace(weight=tensors["weight"], bias=tensors.get("bias"))
    fp = _proj_digest(proj, torch.bfloat16)
    return fp, frozenset({fp, _proj_digest(proj, None), _proj_digest(proj, torch.float16)})


__all__ = ["ModelFacts", "model_facts", "projection_from_files"]
