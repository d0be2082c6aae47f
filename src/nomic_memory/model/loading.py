"""Loading a retriever (hub id or local directory) onto a backend.

Everything that makes the loaded weights *reproducible* lives here: the RNG is seeded before
loading (Nomic's adapters may leave ``custom_text_proj`` to random init), the projection is
fingerprinted so that queries embedded later can be checked against the store, and the model's
revision is pinned (hub commit, or a digest of a local directory's files).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nomic_memory.errors import ModelLoadError, UsageError  # ModelLoadError: re-exported
from nomic_memory.model.backends import Backend
from nomic_memory.model.colpali import lean_transformers, qwen2_5
from nomic_memory.model.variants import (
    DEFAULT_VARIANT,
    KINDS,
    VARIANTS,
    detect_kind_from_files,
    kind_from_name,
    variant_for_repo,
)

log = logging.getLogger(__name__)

# transformers >= 5.10 dropped the class attribute BiQwen2_5.from_pretrained reads; the explicit
# mapping restores the Qwen2.5-VL checkpoint layout.  (An empty mapping would silently load a
# random language model.)
BIQWEN_KEY_MAPPING = {
    r"^model\.layers": "language_model.layers",
    r"^model\.embed_tokens": "language_model.embed_tokens",
    r"^model\.norm": "language_model.norm",
}
DEFAULT_SEED = 0


@dataclass(frozen=True)
class ProcessorSource:
    """Where a worker process loads the processor from (it never loads the model)."""

    directory: str  # a local directory, or a hub id (then pinned to ``revision``)
    kind: str
    max_visual_tokens: int | None = None
    revision: str | None = None

    def load(self):
        q = qwen2_5()
        cls = q.ColQwen2_5_Processor if self.kind == "colqwen" else q.BiQwen2_5_Processor
        kw: dict = {"max_num_visual_tokens": self.max_visual_tokens} if self.max_visual_tokens else {}
        if self.revision:
            kw["revision"] = self.revision
        return cls.from_pretrained(self.directory, **kw)


@dataclass
class LoadedModel:
    model: nn.Module
    processor: Any  # colpali-engine's ColQwen2_5_Processor / BiQwen2_5_Processor
    kind: str  # colqwen | biqwen
    model_id: str
    revision: str
    fingerprint: str  # digest of custom_text_proj ("" for biqwen), dtype-independent
    backend: Backend
    dim: int
    source: Path  # local directory the weights came from
    image_only: bool = False
    notes: list[str] = field(default_factory=list)
    image_only_saved_bytes: int = 0
    table_name: str = ""  # the store table its embeddings go to (loading.table_name_for)
    seed: int = DEFAULT_SEED
    # CPU runs: the run's ThreadTuner while a run is in progress (encode asks it per call).
    thread_tuner: object | None = None
    # Fingerprints rows made by this model may record (fingerprint_variants): older versions
    # wrote the exact float32 digest.
    fingerprints: frozenset = frozenset()

    def __post_init__(self) -> None:
        if not self.table_name:
            self.table_name = table_name_for(self.model_id, self.kind)


class CompactEmbedding(nn.Module):
    """An embedding table holding only the rows a fixed set of token ids needs.

    Document (image) inputs only ever contain the ~15 tokens of the fixed document prompt plus
    padding, so the 150k-row text vocabulary (0.6-1.1 GB in bf16) is dead weight for them.
    Looking up any other id is a programming error and raises instead of returning garbage.
    """

    def __init__(self, full: nn.Embedding, keep_ids: list[int]):
        super().__init__()
        ids = torch.tensor(sorted(set(int(i) for i in keep_ids)), dtype=torch.long, device=full.weight.device)
        self.num_full_embeddings = full.num_embeddings
        self.weight = nn.Parameter(full.weight.detach()[ids].clone(), requires_grad=False)
        lookup = torch.full((full.num_embeddings,), -1, dtype=torch.long, device=full.weight.device)
        lookup[ids] = torch.arange(len(ids), device=full.weight.device)
        self.register_buffer("lookup", lookup, persistent=False)
        self.kept_ids = ids.tolist()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        idx = self.lookup[input_ids]
        if bool((idx < 0).any()):
            raise UsageError(
                "image-only model received a text token outside the document prompt; "
                "load without --image-only to embed text queries"
            )
        return F.embedding(idx, self.weight)


def _is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def _looks_like_path(name: str) -> bool:
    """True for names that can only be a file-system path, never a hub id."""
    return (
        name.startswith(("/", "~", "./", "../", ".\\", "..\\"))
        or name.count("/") > 1
        or "\\" in name
        or Path(name).expanduser().exists()
        or name in (".", "..")
    )


def local_revision(model_dir: Path) -> str:
    """A cheap digest of a local model directory: configs in full, weights by name, size and
    safetensors header (which lists every tensor's dtype, shape and offsets)."""
    h = hashlib.sha256()
    for p in sorted(model_dir.iterdir()):
        if p.suffix == ".json" and p.name.endswith("config.json"):
            h.update(p.name.encode() + p.read_bytes())
        elif p.suffix == ".safetensors":
            h.update(p.name.encode() + str(p.stat().st_size).encode())
            with open(p, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                h.update(f.read(min(n, 64 * 1024 * 1024)))
    return "local-" + h.hexdigest()[:16]


def resolve_model(
    model_name: str | None, variant: str | None, revision: str | None = None, local_files_only: bool = False
) -> tuple[str, Path, str, str | None]:
    """Return (model_id, local_dir, revision, kind_hint) for a hub id, a variant or a directory."""
    if model_name is None:
        v = VARIANTS[variant or DEFAULT_VARIANT]
        model_name = v.repo_id
    if _is_local(model_name):
        d = Path(model_name).expanduser().resolve()
        return str(d), d, local_revision(d), None
    if _looks_like_path(model_name):  # a hub id is ``name`` or ``namespace/name``
        what = "is a file, not a model directory" if Path(model_name).expanduser().exists() else "does not exist"
        raise ModelLoadError(
            f"model directory '{model_name}' {what}; pass a local model directory "
            "or a Hugging Face hub id (namespace/name)."
        )
    v = variant_for_repo(model_name)
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model_name, revision=revision, local_files_only=local_files_only))
    except Exception as e:  # network, auth, missing repo: one sentence, not a traceback
        # The first whole sentence(s) of the library's message, never cut mid-sentence: the rest
        # is advice for the library's own API (``local_files_only=False``), not for our user.
        import re

        text = str(e).strip().splitlines()[0].strip() if str(e).strip() else type(e).__name__
        sentences = re.split(r"(?<=[.!?])\s+", text)
        reason = sentences[0]
        for more in sentences[1:]:
            if len(reason) + 1 + len(more) > 200:
                break
            reason += " " + more
        raise ModelLoadError(
            f"Could not get model '{model_name}' from the Hugging Face hub ({type(e).__name__}: "
            f"{reason.rstrip('.')}); if this machine is offline, pass a local model directory "
            "instead."
        ) from None
    return model_name, path, path.name, v.kind if v else None


def _proj_digest(proj: nn.Module, round_to: torch.dtype | None) -> str:
    h = hashlib.sha256()
    for t in (proj.weight, proj.bias):
        if t is not None:
            t = t.detach()
            if round_to is not None:
                t = t.to(round_to)
            h.update(t.to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def projection_fingerprint(model: nn.Module) -> str:
    """Identity of the query-side projection (``custom_text_proj``), the same whatever dtype the
    model computes in: the weights are hashed rounded to bfloat16.  A checkpoint loaded in
    float32 and in bfloat16 (and a projection randomly initialised from the same seed in either)
    gives the same fingerprint, so a store filled on a GPU in bf16 and topped up on a CPU in fp32
    is one model's table, not two.  ("" for BiQwen, which has no such projection.)"""
    proj = getattr(model, "custom_text_proj", None)
    if proj is None:
        return ""
    return _proj_digest(proj, torch.bfloat16)


def fingerprint_variants(model: nn.Module) -> frozenset[str]:
    """Every fingerprint a table made with this model's projection may record: the current one
    (:func:`projection_fingerprint`), and what earlier versions wrote (the exact float32 values,
    or the values rounded to float16).  Search checks a table against this set; a run treats rows
    recording any of them as made by this model."""
    proj = getattr(model, "custom_text_proj", None)
    if proj is None:
        return frozenset({""})
    return frozenset({_proj_digest(proj, torch.bfloat16), _proj_digest(proj, None), _proj_digest(proj, torch.float16)})


#: Weight files that are Python pickles: loading one runs arbitrary code from the file.
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weight_format(path: Path) -> None:
    """Refuse a model directory whose weights are only pickles (``pytorch_model.bin``, ...),
    before anything is loaded: unpickling a file can run any code it contains."""
    if not path.is_dir():
        return
    names = [p.name for p in path.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_WEIGHT_SUFFIXES))
    if pickles:
        raise ModelLoadError(
            f"only safetensors weights are loaded (found {', '.join(pickles[:3])} in {path}, "
            "which are Python pickles that can run code when loaded); convert the "
            "checkpoint to safetensors first"
        )


def document_prompt_ids(processor) -> list[int]:
    tok = processor.tokenizer
    ids = tok(processor.visual_prompt_prefix, add_special_tokens=True)["input_ids"]
    return list(ids) + [tok.pad_token_id, processor.image_token_id]


def table_name_for(model_id: str, kind: str, natural_kind: str | None = None) -> str:
    """The store table of a model: its name plus a digest of its id (and of the kind, when the
    kind was forced to other than what the model's files say: those embeddings are another
    model's and must not share its table)."""
    base = model_id.rstrip("/").rsplit("/", 1)[-1]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
    key = model_id if natural_kind in (None, kind) else f"{model_id}#{kind}"
    return f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are and what they are, known without loading any weight."""

    model_id: str  # hub id, or the absolute local directory
    source: Path  # local directory holding the files
    revision: str  # hub commit, or a digest of a local directory's files
    kind: str  # colqwen | biqwen
    natural_kind: str | None  # the kind its files declare (None: undeclared)

    @property
    def table_name(self) -> str:
        return table_name_for(self.model_id, self.kind, self.natural_kind)

    @property
    def local(self) -> bool:
        return Path(self.model_id) == self.source


@dataclass(frozen=True)
class ModelSpec:
    """What to load, and how: a variant name, hub id or local directory, plus the options that
    change the weights (kind, revision, seed) or what is kept of them (image-only, token cap).

    A spec is cheap: :meth:`resolve` finds the files (downloading them from the hub if needed)
    without loading a weight, :meth:`load_processor` loads only the processor, :meth:`load`
    the model.  A run plans with the processor and loads the model only when there is work."""

    name: str | None = None  # hub id or local directory (None: ``variant``)
    variant: str | None = None
    kind: str | None = None
    revision: str | None = None
    seed: int = DEFAULT_SEED
    image_only: bool = False
    max_visual_tokens: int | None = None
    local_files_only: bool = False

    @classmethod
    def of(cls, model: str | None = None, **kw) -> ModelSpec:
        """``model`` is a variant name, a hub id or a local directory (None: the default variant)."""
        if model is None or model in VARIANTS:
            return cls(None, model or DEFAULT_VARIANT, **kw)
        return cls(model, None, **kw)

    def resolve(self) -> ResolvedModel:
        if self.variant is not None and self.variant not in VARIANTS:
            raise ModelLoadError(f"unknown model variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.kind is not None and self.kind not in KINDS:
            raise ModelLoadError(f"unknown model kind {self.kind!r}; choose colqwen or biqwen")
        model_id, path, rev, kind_hint = resolve_model(self.name, self.variant, self.revision, self.local_files_only)
        natural = kind_hint
        if natural is None:
            try:
                natural = detect_kind_from_files(path)
            except ValueError:
                natural = kind_from_name(model_id)
        kind = self.kind or natural
        if kind is None:  # undetectable and not given: the detection's own message says what to do
            detect_kind_from_files(path)
        return ResolvedModel(model_id, path, rev, kind, natural)

    def load_processor(self, resolved: ResolvedModel | None = None):
        r = resolved or self.resolve()
        try:
            return ProcessorSource(str(r.source), r.kind, self.max_visual_tokens).load()
        except OSError as e:
            raise ModelLoadError(
                f"Could not load the processor of '{r.model_id}' from {r.source}: {str(e).splitlines()[0]}"
            ) from None

    def load(self, backend: Backend, resolved: ResolvedModel | None = None) -> LoadedModel:
        resolved = resolved or self.resolve()
        with lean_transformers():  # the model's code and weights, without transformers' table of every model
            return _load(self, resolved, backend)


def load_model(
    model_name: str | None = None,
    variant: str | None = None,
    *,
    backend: Backend,
    kind: str | None = None,
    image_only: bool = False,
    seed: int = DEFAULT_SEED,
    revision: str | None = None,
    local_files_only: bool = False,
    max_visual_tokens: int | None = None,
) -> LoadedModel:
    """Load a ColQwen2.5/BiQwen2.5 retriever and its processor onto ``backend``."""
    spec = ModelSpec(
        model_name,
        (variant or DEFAULT_VARIANT) if model_name is None else None,
        kind,
        revision,
        seed,
        image_only,
        max_visual_tokens,
        local_files_only,
    )
    return spec.load(backend)


# Long: the loading steps in order (kind, dtype, attention, weights, projection seed and fingerprint, image-only).
def _load(spec: ModelSpec, resolved: ResolvedModel, backend: Backend) -> LoadedModel:
    check_weight_format(resolved.source)
    q = qwen2_5()  # imported only now: it takes seconds, and a bad model name should fail at once
    kind, path, model_id, seed = resolved.kind, resolved.source, resolved.model_id, spec.seed
    model_cls, proc_cls = (
        (q.ColQwen2_5, q.ColQwen2_5_Processor) if kind == "colqwen" else (q.BiQwen2_5, q.BiQwen2_5_Processor)
    )
    kwargs: dict = dict(dtype=backend.dtype, attn_implementation=backend.attn_implementation, output_loading_info=True)
    if kind == "biqwen":
        kwargs["key_mapping"] = dict(BIQWEN_KEY_MAPPING)
    notes: list[str] = []
    torch.manual_seed(seed)
    try:
        # transformers draws a "Loading weights" progress bar on stderr: noise in a library call
        # (and once per Ray actor); our callers report loading themselves.
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, info = model_cls.from_pretrained(str(path), **kwargs)
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        proc_kwargs = {}
        if spec.max_visual_tokens:
            proc_kwargs["max_num_visual_tokens"] = spec.max_visual_tokens
        processor = proc_cls.from_pretrained(str(path), **proc_kwargs)
    except ModelLoadError:
        raise
    except OSError as e:
        raise ModelLoadError(
            f"Could not load model '{model_id}' from {path}: {str(e).splitlines()[0]}; "
            "if this machine is offline, pass a local model directory instead."
        ) from None
    missing = [k for k in (info.get("missing_keys") or []) if "custom_text_proj" in k]
    if missing:
        notes.append(f"custom_text_proj was not in the checkpoint: initialised from seed {seed}")
    other_missing = [k for k in (info.get("missing_keys") or []) if "custom_text_proj" not in k]
    if other_missing:
        raise ModelLoadError(
            f"model '{model_id}' loaded with {len(other_missing)} missing weights "
            f"(e.g. {other_missing[0]}): it would embed with random weights"
        )
    if kind == "colqwen" and _adapter_lacks_proj_base(path):
        notes.append(f"custom_text_proj has no base weights in the adapter: initialised from seed {seed}")
    merged = merge_lora(model)
    if merged:
        notes.append(f"merged {merged} LoRA adapter layers into the base weights")
    model = model.to(backend.device).eval()
    model.requires_grad_(False)
    fingerprint = projection_fingerprint(model)
    dim = 128 if kind == "colqwen" else model.config.text_config.hidden_size
    lm = LoadedModel(
        model=model,
        processor=processor,
        kind=kind,
        model_id=model_id,
        revision=resolved.revision,
        fingerprint=fingerprint,
        backend=backend,
        dim=dim,
        source=path,
        notes=notes,
        table_name=resolved.table_name,
        seed=seed,
        fingerprints=fingerprint_variants(model),
    )
    if spec.image_only:
        make_image_only(lm)
    return lm


def _adapter_lacks_proj_base(path: Path) -> bool:
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        keys = [k for k in f.keys() if "custom_text_proj" in k]
    return not any(k.endswith("custom_text_proj.weight") or "modules_to_save" in k for k in keys)


def merge_lora(model: nn.Module) -> int:
    """Fold LoRA factors into the base weights (inference only): the forward then costs what the
    plain model costs instead of two extra matmuls per adapted layer."""
    if "peft" not in sys.modules:
        return 0  # no LoRA layer exists before peft is imported (loading an adapter imports it): skip its import
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0
    n = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer) and not module.merged:
                module.merge()
                n += 1
    return n


def make_image_only(lm: LoadedModel) -> int:
    """Swap the text-embedding table for the rows the document prompt uses; return bytes freed."""
    lang = lm.model.language_model
    full = lang.embed_tokens
    if isinstance(full, CompactEmbedding):
        return 0
    compact = CompactEmbedding(full, document_prompt_ids(lm.processor))
    saved = full.weight.numel() * full.weight.element_size() - compact.weight.numel() * compact.weight.element_size()
    lang.embed_tokens = compact
    del full
    if lm.backend.name == "cuda":
        torch.cuda.empty_cache()
    lm.image_only = True
    lm.image_only_saved_bytes = saved
    lm.notes.append(
        f"image-only: kept {len(compact.kept_ids)} of {compact.num_full_embeddings} "
        f"text-embedding rows, saved {saved / 2**20:.2f} MB"
    )
    return saved


__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "ModelSpec",
    "ResolvedModel",
    "load_model",
    "make_image_only",
    "CompactEmbedding",
    "projection_fingerprint",
    "fingerprint_variants",
    "check_weight_format",
    "BIQWEN_KEY_MAPPING",
    "resolve_model",
    "table_name_for",
]
