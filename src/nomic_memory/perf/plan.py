"""Memory planner: predict the peak memory of embedding images from the architecture and token counts.

The shipped Qwen2.5-VL configurations of the four Nomic retrievers are written out here (they
cannot be downloaded offline), so ``nomic-memory plan`` and ``bench --synthetic-weights`` know the
real architecture without the 7-16 GB checkpoint.

The prediction is ``weights + peak activations``, where the activation peak is the largest of three
phases of nomic-memory's lean forward (encode.forward_embeddings):

* **vision tower**, on the patches of the images it runs at once (it runs the batch's images in
  chunks of at most ``VISION`` patches, so this phase stops growing with the batch;
  so does the language model's, below: past a few images only the inputs and outputs grow).
  Per block: the residual stream, the normalised input, ``qkv``, the rotary embedding's float32
  temporaries, the attention output; or the gated MLP's three ``patches x intermediate`` tensors.
  With sdpa/flash attention no ``patches^2`` matrix exists; with eager attention the full-attention
  blocks (``fullatt_block_indexes``) build ``heads x P^2`` scores per image (the windowed blocks
  only ``heads x 64^2`` per 112-pixel window).
* **language model**, which runs the batch's rows in groups of at most ``LM`` tokens
  (``L`` = visual tokens + the document prompt): what stays alive through the decoder (the input
  embeddings, the image features, rotary tables, a ``rows x L x L`` boolean padding mask when
  rows differ in length) plus one decoder layer's working set: attention (q, k, v, rotary
  temporaries, k/v expanded to all heads when a padding mask forbids sdpa's GQA path, the output;
  eager adds ``rows x heads x L x L`` scores) or the MLP (three ``tokens x intermediate`` tensors
  on at most ``MLP`` tokens), whichever is larger.
* **output**: the final norm, the kept rows and the 128-d projection (ColQwen) or the pooled rows.

The same phases model colpali-engine's forward (``forward="colpali"``: all hidden states kept,
the padded float32 batch, no chunking) and, with ``forward="colpali-dense-mask"``, that forward on
transformers <= 4.53, whose vision tower builds a dense ``N x N`` mask over all ``N`` patches of
the batch in every block (sdpa, eager): the term that made the original measurements grow with the
square of the batch (BENCHMARKS.md compares the plan with them).

Weights are ``parameters x bytes`` (minus the text-embedding table in image-only mode, which keeps
only the document prompt's rows). The figures are the tensors' bytes, i.e. what CUDA reports as
*allocated*; the CUDA context (~0.3-0.5 GB) and allocator caching (*reserved*) come on top, and on
CPU the process's RSS adds the Python runtime, libraries and malloc slack (bench measures them).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

from nomic_memory.errors import UsageError
from nomic_memory.model.chunks import CHUNKS, chunk_limits
from nomic_memory.model.qwen import VISION_PATCHING, qwen_vl_config
from nomic_memory.model.variants import VARIANTS

GB = 1024**3
MB = 1024**2


# ---------------------------------------------------------------- the shipped architectures
# config.json of Qwen/Qwen2.5-VL-3B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct (the bases of Nomic's
# adapters), reduced to the fields that shape the model.
_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    **VISION_PATCHING,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}
_TOKENS = {
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "image_token_id": 151655,
    "video_token_id": 151656,
}

# The text models' sizes, one row each, in the order of _TEXT_SIZES; the rest of the text config
# (_TEXT) is the same for both.
_TEXT_SIZES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)
_SHIPPED = {
    "qwen2.5-vl-3b": (151936, 2048, 11008, 36, 16, 2, True),
    "qwen2.5-vl-7b": (152064, 3584, 18944, 28, 28, 4, False),
}
_TEXT = {
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 128000,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}

ARCHITECTURES: dict[str, dict] = {
    name: {
        "text_config": {**dict(zip(_TEXT_SIZES, sizes)), **copy.deepcopy(_TEXT)},
        "vision_config": {**_VISION, "out_hidden_size": sizes[1]},
        **_TOKENS,
    }
    for name, sizes in _SHIPPED.items()
}

VARIANT_ARCHITECTURE = {name: ("qwen2.5-vl-7b" if "7b" in name else "qwen2.5-vl-3b") for name in VARIANTS}

# Non-image tokens of colpali-engine's document prompt with Qwen's tokenizer:
# <|im_start|> user \n <|vision_start|> [image] <|vision_end|> Describe ␣the ␣image . <|im_end|> <|endoftext|>
QWEN_PROMPT_TOKENS = 11

BACKEND_DTYPE_BYTES = {"cuda": 2, "mps": 2, "cpu": 4}

# The forwards the planner models: nomic-memory's; colpali-engine's with the installed
# transformers (the vision tower attends image by image); colpali-engine's with transformers
# <= 4.53, whose vision tower masks one attention over all the batch's patches (sdpa, eager).
FORWARDS = {
    "lean": "nomic-memory's lean forward",
    "colpali": "colpali-engine's forward (all hidden states kept, padded batch)",
    "colpali-dense-mask": "colpali-engine's forward on transformers <= 4.53 (dense N x N vision masks)",
}


# Qwen2-VL's image processor: sides become multiples of 28 (a 2x2 group of 14-pixel patches is one
# visual token), the area is scaled down under max_pixels (= max visual tokens x 784) or up over
# min_pixels (its default 56 x 56).
TOKEN_PIXELS = 28 * 28
MIN_PIXELS = 56 * 56


def resized_size(
    width: int, height: int, max_visual_tokens: int, min_pixels: int = MIN_PIXELS, factor: int = 28
) -> tuple[int, int]:
    """``(width, height)`` an image is resized to by Qwen2-VL's processor under a cap of
    ``max_visual_tokens``: transformers' ``smart_resize`` (tests check it is the same), written out
    so that ``plan`` never imports transformers, hence torch."""
    max_pixels = max_visual_tokens * TOKEN_PIXELS
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


def image_tokens(width: int, height: int, max_visual_tokens: int) -> int:
    """Visual tokens of a ``width x height`` image under a cap of ``max_visual_tokens``."""
    w, h = resized_size(width, height, max_visual_tokens)
    return w * h // TOKEN_PIXELS


def guess_backend() -> tuple[str, str]:
    """``(backend, why)``: what ``embed --backend auto`` would pick on this machine, guessed
    without importing torch (the planner stays instant): CUDA where an NVIDIA driver is
    installed, MPS on Apple silicon, the CPU otherwise."""
    import platform
    import shutil
    from pathlib import Path

    if Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi"):
        return "cuda", "auto: an NVIDIA driver is installed"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "mps", "auto: Apple silicon"
    return "cpu", "auto: no NVIDIA driver, not Apple silicon"


def architecture_config(variant_or_arch: str, *, layers: int | None = None, vision_depth: int | None = None) -> dict:
    """The shipped configuration dict of a variant (``colnomic-3b``) or architecture
    (``qwen2.5-vl-3b``); ``layers`` / ``vision_depth`` scale the depth down (tests, CPU demos),
    keeping every width and the vocabulary."""
    name = VARIANT_ARCHITECTURE.get(variant_or_arch, variant_or_arch)
    if name not in ARCHITECTURES:
        raise UsageError(
            f"unknown variant or architecture {variant_or_arch!r}; choose one of "
            f"{', '.join([*VARIANTS, *ARCHITECTURES])}"
        )
    cfg = copy.deepcopy(ARCHITECTURES[name])
    if layers is not None:
        cfg["text_config"]["num_hidden_layers"] = int(layers)
    if vision_depth is not None:
        v = cfg["vision_config"]
        full = [i for i in v["fullatt_block_indexes"] if i < vision_depth]
        v["depth"] = int(vision_depth)
        # Keep at least one full-attention block (the last), as the real tower ends with one.
        v["fullatt_block_indexes"] = full or [int(vision_depth) - 1]
    return cfg


def qwen_config(arch: dict, *, token_ids: dict | None = None, attn_implementation: str = "sdpa"):
    """A ``Qwen2_5_VLConfig`` from an :data:`ARCHITECTURES` dict (``token_ids`` overrides the special
    token ids, e.g. those of a stand-in tokenizer)."""
    ids = {**{k: v for k, v in arch.items() if k.endswith("_token_id")}, **(token_ids or {})}
    return qwen_vl_config(arch["text_config"], arch["vision_config"], ids, attn_implementation)


# ---------------------------------------------------------------- architecture summary
@dataclass(frozen=True)
class Arch:
    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    v_hidden: int
    v_intermediate: int
    v_depth: int
    v_heads: int
    v_out: int
    patch: int = 14
    merge: int = 2
    temporal_patch: int = 2
    in_channels: int = 3
    window: int = 112
    v_full_blocks: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, d: dict, name: str = "") -> Arch:
        t, v = d["text_config"], d["vision_config"]
        return cls(
            name,
            t["vocab_size"],
            t["hidden_size"],
            t["intermediate_size"],
            t["num_hidden_layers"],
            t["num_attention_heads"],
            t["num_key_value_heads"],
            v["hidden_size"],
            v["intermediate_size"],
            v["depth"],
            v["num_heads"],
            t["hidden_size"],
            v.get("patch_size", 14),
            v.get("spatial_merge_size", 2),
            v.get("temporal_patch_size", 2),
            v.get("in_channels", 3),
            v.get("window_size", 112),
            tuple(v.get("fullatt_block_indexes", ())),
        )

    @classmethod
    def from_config(cls, cfg, name: str = "") -> Arch:
        """From a loaded model's ``Qwen2_5_VLConfig``."""
        t, v = cfg.text_config, cfg.vision_config
        return cls(
            name,
            t.vocab_size,
            t.hidden_size,
            t.intermediate_size,
            t.num_hidden_layers,
            t.num_attention_heads,
            t.num_key_value_heads,
            v.hidden_size,
            v.intermediate_size,
            v.depth,
            v.num_heads,
            t.hidden_size,
            v.patch_size,
            v.spatial_merge_size,
            v.temporal_patch_size,
            getattr(v, "in_channels", 3),
            v.window_size,
            tuple(v.fullatt_block_indexes),
        )

    @classmethod
    def for_variant(cls, variant: str, **scale) -> Arch:
        return cls.from_dict(architecture_config(variant, **scale), VARIANT_ARCHITECTURE.get(variant, variant))

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch * self.patch * self.patch

    @property
    def patches_per_token(self) -> int:
        return self.merge * self.merge

    def param_breakdown(self, kind: str = "colqwen") -> dict[str, int]:
        """Exact parameter counts of ``ColQwen2_5`` / ``BiQwen2_5`` (a ``Qwen2_5_VLModel``: no LM head)."""
        H, I, C, Iv = self.hidden, self.intermediate, self.v_hidden, self.v_intermediate
        attn = H * H + H + 2 * (H * self.kv_dim + self.kv_dim) + H * H  # q,k,v with bias; o without
        layer = attn + 3 * H * I + 2 * H
        v_block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * (C * Iv + Iv) + (Iv * C + C)
        m = C * self.merge**2
        merger = C + (m * m + m) + (m * self.v_out + self.v_out)
        out = {
            "text embedding table": self.vocab * H,
            "language model layers": self.layers * layer + H,  # + final norm
            "vision tower": self.patch_dim * C + self.v_depth * v_block,
            "patch merger": merger,
        }
        if kind == "colqwen":
            out["projection head"] = H * 128 + 128
        return out

    def params(self, kind: str = "colqwen") -> int:
        return sum(self.param_breakdown(kind).values())


# ---------------------------------------------------------------- the plan
@dataclass
class Component:
    name: str
    bytes: int
    detail: str = ""


@dataclass
class MemoryPlan:
    arch: str
    kind: str
    backend: str
    dtype_bytes: int
    batch_size: int
    visual_tokens: int  # per image (the largest, when token counts differ)
    seq_len: int
    image_only: bool
    attn: str
    forward: str
    params: int
    weights_bytes: int
    activation_bytes: int
    peak_bytes: int
    phases: dict[str, int] = field(default_factory=dict)
    weights: list[Component] = field(default_factory=list)
    components: dict[str, list[Component]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get) if self.phases else ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["peak_gb"] = round(self.peak_bytes / GB, 3)
        d["activation_gb"] = round(self.activation_bytes / GB, 3)
        d["weights_gb"] = round(self.weights_bytes / GB, 3)
        d["peak_phase"] = self.peak_phase
        return d

    def lines(self) -> list[str]:
        def fmt(b: int) -> str:
            return f"{b / GB:8.3f} GB ({b / MB:10.1f} MB)"

        dt = {2: "16-bit", 4: "float32"}.get(self.dtype_bytes, f"{self.dtype_bytes}-byte")
        out = [
            f"Memory plan: {self.arch} ({self.kind}), {self.backend} {dt}, batch {self.batch_size} x "
            f"{self.visual_tokens} visual tokens (sequence {self.seq_len}), "
            f"{'image-only' if self.image_only else 'full'} mode, {self.attn} attention, {self.forward} forward",
            *(f"Assumes: {a}" for a in self.assumptions),
            f"Parameters: {self.params:,}",
            f"Weights:                         {fmt(self.weights_bytes)}",
        ]
        for c in self.weights:
            out.append(f"  {c.name:<30} {fmt(c.bytes)}  {c.detail}")
        for phase, comps in self.components.items():
            mark = "  <- peak" if phase == self.peak_phase else ""
            out.append(f"Activations, {phase + ':':<19} {fmt(self.phases[phase])}{mark}")
            for c in comps:
                out.append(f"  {c.name:<30} {fmt(c.bytes)}  {c.detail}")
        out.append(f"Predicted peak (weights + {self.peak_phase}): {fmt(self.peak_bytes)}".replace("  ", " "))
        out.extend(f"Note: {n}" for n in self.notes)
        return out


@dataclass(frozen=True)
class _Batch:
    """What every phase of the plan needs to know about one batch."""

    tokens: tuple[int, ...]  # visual tokens of each image
    prompt: int  # non-image tokens of the document prompt
    b: int  # bytes per element of the model's dtype
    backend: str
    attn: str
    forward: str
    chunks: tuple[int, int, int]  # (vision patches, LM tokens, MLP tokens) per call of the lean forward
    ppt: int  # patches per visual token

    @property
    def B(self) -> int:
        return len(self.tokens)

    @property
    def T_max(self) -> int:
        return max(self.tokens)

    @property
    def T_tot(self) -> int:
        return sum(self.tokens)

    @property
    def L(self) -> int:  # padded row length
        return self.T_max + self.prompt

    @property
    def padded(self) -> bool:
        return any(t != self.T_max for t in self.tokens)

    @property
    def Np(self) -> int:  # patches of the whole batch
        return self.T_tot * self.ppt

    @property
    def lean(self) -> bool:
        return self.forward == "lean"

    @property
    def dense_mask(self) -> bool:
        return self.forward == "colpali-dense-mask"

    @property
    def eager(self) -> bool:
        return self.attn == "eager"

    @property
    def flash(self) -> bool:
        return self.attn.startswith("flash")


F32 = 4


def _weights(arch: Arch, kind: str, b: int, image_only: bool, kept: int) -> list[Component]:
    """The parameters in the model's dtype; image-only mode keeps only the prompt's embedding rows."""
    weights: list[Component] = []
    for name, n in arch.param_breakdown(kind).items():
        if name == "text embedding table" and image_only:
            weights.append(
                Component(
                    name,
                    kept * arch.hidden * b + arch.vocab * 8,
                    f"image-only: {kept} of {arch.vocab:,} rows kept (+ int64 lookup)",
                )
            )
        else:
            weights.append(Component(name, n * b, f"{n:,} params"))
    return weights


def _inputs(arch: Arch, s: _Batch) -> tuple[int, int, str]:
    """``(bytes during the vision tower, bytes still alive in the language model, detail)``."""
    pix = s.Np * arch.patch_dim * s.b  # the concatenated patches the vision tower reads
    # On the CPU the decoded items (float32 processor output) are memory too; they stay referenced
    # by the caller for the whole batch.
    host = s.Np * arch.patch_dim * F32 if s.backend == "cpu" else 0
    if s.lean:
        # The lean forward frees the device patches once the vision tower is done.
        return pix + host, host, "concatenated patches" + (" + decoded items (host)" if host else "")
    # colpali-engine: the processor's padded (B, P_max, C) float32 batch, its float32
    # concatenation and the model-dtype copy the vision tower reads, all referenced until the
    # forward returns (the caller's batch, colpali-engine's kwargs, get_image_features).
    padded_pix = s.B * s.T_max * s.ppt * arch.patch_dim * F32
    cat = s.Np * arch.patch_dim * F32
    return (
        pix + cat + padded_pix + host,
        pix + cat + padded_pix + host,
        "float32 padded batch + concatenation + model-dtype copy" + (" + decoded items (host)" if host else ""),
    )


def _vision_patches_at_once(s: _Batch) -> int:
    """Patches the vision tower holds at once: the lean forward runs whole images in chunks of at
    most ``chunks[0]`` patches, in batch order (as encode._image_features); colpali-engine all."""
    if not (s.lean and s.chunks[0]):
        return s.Np
    cur = Nv = 0
    for t in s.tokens:
        p = t * s.ppt
        if cur and cur + p > s.chunks[0]:
            Nv, cur = max(Nv, cur), 0
        cur += p
    return max(Nv, cur)


def _vision_phase(arch: Arch, s: _Batch, inputs: tuple[int, int, str]) -> tuple[int, list[Component]]:
    """Peak bytes of the vision tower (a block's working set or the patch merger) and its parts."""
    b, C, H, ppt = s.b, arch.v_hidden, arch.hidden, s.ppt
    inputs_bytes, _, inputs_detail = inputs
    Nv = _vision_patches_at_once(s)
    P_img = s.T_max * ppt
    hd_v = C // arch.v_heads
    v_stream = 2 * Nv * C * b  # residual stream + the block's output
    v_pos = 2 * Nv * hd_v * F32 * 2  # rotary cos/sin, and their window-permuted copies
    # norm, qkv, float32 rotary temporaries, windows gathered by length (q, k, v), outputs
    v_attn = Nv * C * b + 3 * Nv * C * b + 4 * Nv * C * F32 + (3 * Nv * C * b if s.lean else 0) + 2 * Nv * C * b
    v_scores = 0
    if s.eager:
        win = (arch.window // arch.patch) ** 2
        v_scores = max(
            arch.v_heads * P_img * P_img * (F32 + b) if arch.v_full_blocks else 0, arch.v_heads * win * win * (F32 + b)
        )
    if s.dense_mask and not s.flash:
        # transformers <= 4.53 (sdpa and eager): every vision block builds a (1, 1, N, N) additive
        # mask over all N patches of the batch, so this phase grows with the batch's square.  Two
        # are alive at the peak: the previous block's while the next is built, and the mask and
        # sdpa's aligned copy of it (a 32-page batch asked for a 47 GiB copy in the original run).
        v_attn += 2 * s.Np * s.Np * b
        if s.eager:  # and eager's scores cover the whole batch too
            v_scores = arch.v_heads * s.Np * s.Np * (F32 + b)
    v_mlp = Nv * C * b + 3 * Nv * arch.v_intermediate * b
    v_block = max(v_attn + v_scores, v_mlp)
    merged = Nv // ppt
    v_merger = Nv * C * F32 + 2 * merged * C * ppt * b + merged * H * b
    features = s.Np // ppt * H * b
    if v_attn + v_scores >= v_mlp:
        block_detail = (
            "attention: norm, qkv, float32 rotary, output"
            + (f", 2 dense {s.Np:,}^2 masks {2 * s.Np * s.Np * b / MB:.0f} MB" if s.dense_mask and not s.flash else "")
            + (f", eager scores {v_scores / MB:.0f} MB" if s.eager else "")
        )
    else:
        block_detail = f"MLP: 3 x {Nv:,} x {arch.v_intermediate}"
    vision = [
        Component("inputs", inputs_bytes, inputs_detail),
        Component("residual stream", v_stream, f"{Nv:,} patches x {C} (x2)"),
        Component("rotary tables", v_pos, "float32 cos/sin"),
        Component("block working set", v_block, block_detail),
        Component("features so far", features, f"{s.T_tot:,} tokens x {H} (earlier chunks)"),
    ]
    merger_peak = inputs_bytes + Nv * C * b + v_merger + features
    if s.lean and s.chunks[0] and Nv < s.Np:
        vision[1].detail += f"; chunked: {Nv:,} of {s.Np:,} patches at a time"
    return max(sum(c.bytes for c in vision), merger_peak), vision


def _language_phase(arch: Arch, s: _Batch, inputs: tuple[int, int, str]) -> tuple[int, list[Component], int]:
    """Peak bytes of the language model (what stays alive + one decoder layer's working set), its
    parts, and the rows it runs at once."""
    b, H, L, B = s.b, arch.hidden, s.L, s.B
    _, lm_inputs, inputs_detail = inputs
    hd = arch.head_dim
    if s.lean:
        # Rows run in groups of at most chunks[1] tokens, each trimmed to its longest row
        # (encode._backbone_groups); the MLP runs on at most chunks[2] tokens at a time.
        Bg = max(1, min(B, s.chunks[1] // L))
        Tg = sum(sorted(s.tokens)[-Bg:])
        mlp_rows = min(Bg * L, s.chunks[2])
    else:
        Bg, Tg, mlp_rows = B, s.T_tot, B * L
    BL = Bg * L
    group = f"{Bg} x {L}" + (f" (groups of {Bg} of the {B} rows)" if Bg < B else "")
    keep = [Component("input embeddings", BL * H * b, f"{group} x {H}")]
    if s.lean:
        keep.append(Component("image features", (s.T_tot + Tg) * H * b, "all images' + this group's concatenation"))
    else:
        keep.append(Component("image features", 2 * s.T_tot * H * b, "merger output + its concatenation"))
        keep.append(Component("vision last hidden state", s.Np * arch.v_hidden * b, "kept by the stock forward"))
        keep.append(
            Component(
                "all hidden states",
                arch.layers * BL * H * b,
                f"{arch.layers + 1} layers x {B} x {L} x {H} (output_hidden_states=True)",
            )
        )
    keep.append(Component("rotary tables", 2 * BL * hd * b + 3 * BL * 8, "cos/sin + 3-D position ids"))
    masked = (s.padded and not s.flash) or s.eager  # flash-attention unpads instead of masking
    if masked:
        keep.append(Component("attention mask", Bg * L * L * (b if s.eager else 1), f"{Bg} x {L} x {L}"))
    # normed input, q, k, v, rotary temporaries (2), attention output, o_proj; sdpa runs GQA
    # natively only without a mask, otherwise k/v are expanded to all heads
    l_attn = BL * H * b * 5 + 2 * BL * arch.kv_dim * b + (2 * BL * H * b if masked else 0)
    l_scores = Bg * arch.heads * L * L * (F32 + b) if s.eager else 0
    l_mlp = BL * H * b * 2 + 3 * mlp_rows * arch.intermediate * b  # normed input + output, gate/up/product
    if l_attn + l_scores >= l_mlp:
        layer_detail = (
            "attention: norm, q/k/v, rotary"
            + (", k/v expanded to all heads" if masked else "")
            + (f", eager scores {l_scores / MB:.0f} MB" if s.eager else "")
        )
    else:
        layer_detail = f"MLP: 3 x {mlp_rows:,} x {arch.intermediate}"
    lm = [
        *([Component("inputs", lm_inputs, "decoded items (host)" if s.lean else inputs_detail)] if lm_inputs else []),
        *keep,
        Component("residual stream", 2 * BL * H * b, f"{group} x {H} (x2)"),
        Component("layer working set", max(l_attn + l_scores, l_mlp), layer_detail),
    ]
    return sum(c.bytes for c in lm), lm, Bg


def _output_phase(arch: Arch, s: _Batch, kind: str, lm: list[Component], Bg: int) -> tuple[int, list[Component]]:
    """Peak bytes after the last layer: the kept state, the final hidden state and the embeddings."""
    b, H = s.b, arch.hidden
    BL = Bg * s.L
    kept_state = sum(c.bytes for c in lm[:-2])  # all but the residual stream and a layer's working set
    out = [Component("inputs + kept state", kept_state, ""), Component("final hidden", BL * H * b, "")]
    if kind == "colqwen":
        proj_rows = sum(sorted(t + s.prompt for t in s.tokens)[-Bg:]) if s.lean else s.B * s.L
        out.append(
            Component(
                "projected rows",
                proj_rows * (H + 3 * 128) * b,
                "kept rows, 128-d projection, normalised" if s.lean else "padded rectangle",
            )
        )
    else:
        out.append(Component("pooled", 2 * Bg * H * b, ""))
    return sum(c.bytes for c in out), out


def plan_memory(
    arch: Arch,
    *,
    batch_size: int,
    visual_tokens: int = 768,
    kind: str = "colqwen",
    backend: str = "cuda",
    dtype_bytes: int | None = None,
    image_only: bool = False,
    attn: str = "sdpa",
    prompt_tokens: int = QWEN_PROMPT_TOKENS,
    kept_rows: int | None = None,
    token_counts: list[int] | None = None,
    forward: str = "lean",
    chunks: tuple[int, int, int] | None = None,
    image_note: str = "",
) -> MemoryPlan:
    """Predict peak memory (bytes of tensors) for one batch; see the module docstring.

    ``token_counts`` gives each image's visual tokens (default: ``batch_size`` images of
    ``visual_tokens``); ``attn`` is ``sdpa``, ``flash_attention_2`` or ``eager``; ``forward`` is
    ``lean`` (nomic-memory) or ``colpali`` (colpali-engine's forward, which keeps every layer's
    hidden states, the vision tower's last hidden state and projects the padded rectangle) or
    ``colpali-dense-mask`` (the same on transformers <= 4.53: dense vision masks over the whole
    batch).  ``image_note`` says where the token counts come from (printed with the assumptions)."""
    if batch_size < 1:
        raise UsageError("batch_size must be >= 1")
    if forward not in FORWARDS:
        raise UsageError(f"forward must be one of {', '.join(FORWARDS)}")
    b = dtype_bytes or BACKEND_DTYPE_BYTES.get(backend, 2)
    tokens = tuple(token_counts) if token_counts else (int(visual_tokens),) * batch_size
    s = _Batch(
        tokens, prompt_tokens, b, backend, attn, forward, chunks or chunk_limits(backend), arch.patches_per_token
    )
    kept = kept_rows if kept_rows is not None else prompt_tokens + 1  # distinct prompt ids + padding
    weights = _weights(arch, kind, b, image_only, kept)
    weights_bytes = sum(c.bytes for c in weights)
    inputs = _inputs(arch, s)
    vision_bytes, vision = _vision_phase(arch, s, inputs)
    lm_bytes, lm, Bg = _language_phase(arch, s, inputs)
    out_bytes, out = _output_phase(arch, s, kind, lm, Bg)
    comps = {"vision tower": vision, "language model": lm, "output": out}
    phases = {"vision tower": vision_bytes, "language model": lm_bytes, "output": out_bytes}
    act = max(phases.values())
    counts = (
        f"{s.T_max} visual tokens per image"
        if not s.padded
        else f"{s.B} images of {min(tokens)}-{s.T_max} visual tokens, padded to {s.T_max}"
    )
    assumptions = [
        counts + (f" ({image_note})" if image_note else "") + f", + {prompt_tokens} prompt tokens",
        f"{attn} attention, {FORWARDS[forward]}",
        f"{b}-byte weights and activations; the tensors' bytes"
        + (" (what torch.cuda.max_memory_allocated reports)" if backend == "cuda" else ""),
    ]
    notes = []
    if backend == "cuda":
        notes.append("CUDA context (~0.3-0.5 GB) and allocator caching (reserved > allocated) come on top")
    if backend == "cpu":
        notes.append("CPU RSS adds the runtime, libraries, decode buffers and malloc slack; bench measures it")
    return MemoryPlan(
        arch.name,
        kind,
        backend,
        b,
        s.B,
        s.T_max,
        s.L,
        image_only,
        attn,
        forward,
        arch.params(kind),
        weights_bytes,
        act,
        weights_bytes + act,
        phases,
        weights,
        comps,
        notes,
        assumptions,
    )


def forward_flops(arch: Arch, visual_tokens: int = 768, prompt_tokens: int = QWEN_PROMPT_TOKENS) -> float:
    """Useful floating-point operations of one image's forward (multiply-add = 2 FLOPs): the
    vision tower (patch embedding, blocks with windowed / full attention, merger) and the
    language model (projections, MLP, causal attention), without padding."""
    ppt = arch.patches_per_token
    P = visual_tokens * ppt
    C, Iv, H, I = arch.v_hidden, arch.v_intermediate, arch.hidden, arch.intermediate
    win = min(P, (arch.window // arch.patch) ** 2)
    full = len(arch.v_full_blocks)
    vision = 2 * P * arch.patch_dim * C
    vision += arch.v_depth * 2 * P * (4 * C * C + 3 * C * Iv)
    vision += (arch.v_depth - full) * 4 * P * win * C + full * 4 * P * P * C
    vision += 2 * visual_tokens * ((C * ppt) ** 2 + C * ppt * H)
    L = visual_tokens + prompt_tokens
    text = arch.layers * (2 * L * (2 * H * H + 2 * H * arch.kv_dim + 3 * H * I) + 4 * (L * (L + 1) // 2) * H)
    return float(vision + text)


def plan_for_variant(
    variant: str,
    *,
    batch_size: int,
    visual_tokens: int = 768,
    backend: str = "cuda",
    image_only: bool = False,
    attn: str | None = None,
    dtype_bytes: int | None = None,
    forward: str = "lean",
    **scale,
) -> MemoryPlan:
    v = VARIANTS.get(variant)
    kind = v.kind if v else "colqwen"
    attn = attn or "sdpa"
    return plan_memory(
        Arch.for_variant(variant, **scale),
        batch_size=batch_size,
        visual_tokens=visual_tokens,
        kind=kind,
        backend=backend,
        dtype_bytes=dtype_bytes,
        image_only=image_only,
        attn=attn,
        forward=forward,
    )


def plan_for_model(
    lm,
    *,
    batch_size: int,
    visual_tokens: int | None = None,
    token_counts: list[int] | None = None,
    forward: str = "lean",
) -> MemoryPlan:
    """Plan for a loaded model (``loading.LoadedModel``): its own config, tokenizer and backend."""
    # late: torch (a second); planning from a config needs none
    from nomic_memory.model.loading import document_prompt_ids

    proc = lm.processor
    prompt = len(proc.tokenizer(proc.visual_prompt_prefix, add_special_tokens=True)["input_ids"]) - 1
    kept = len(set(document_prompt_ids(proc)))
    vt = visual_tokens or proc.image_processor.size["longest_edge"] // (28 * 28)
    cfg = lm.model.config
    return plan_memory(
        Arch.from_config(cfg, lm.model_id),
        batch_size=batch_size,
        visual_tokens=vt,
        kind=lm.kind,
        backend=lm.backend.name,
        dtype_bytes=lm.backend.dtype.itemsize,
        image_only=lm.image_only,
        attn=getattr(cfg, "_attn_implementation", None) or lm.backend.attn_implementation,
        prompt_tokens=prompt,
        kept_rows=kept,
        token_counts=token_counts,
        forward=forward,
    )


__all__ = [
    "ARCHITECTURES",
    "VARIANT_ARCHITECTURE",
    "Arch",
    "MemoryPlan",
    "Component",
    "architecture_config",
    "qwen_config",
    "plan_memory",
    "FORWARDS",
    "image_tokens",
    "resized_size",
    "guess_backend",
    "plan_for_variant",
    "plan_for_model",
    "CHUNKS",
    "chunk_limits",
    "forward_flops",
]
