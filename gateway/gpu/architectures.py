"""Random-weight Stable Diffusion pipelines built offline from component configs.

Two sizes per family: "tiny" (a few MB, the demo model and the tests; shapes from the diffusers
test suite, see shared/reference/diffusion.md) and full size (the published SD1.5 / SDXL
layouts, 0.86 B / 2.6 B UNet parameters) for benchmarks on a GPU without downloading weights.
Nothing here touches a model hub: the CLIP tokenizer is a character-level BPE built in memory.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

Arch = Literal["tiny-sd15", "tiny-sdxl", "sd15", "sdxl"]
ARCHS: tuple[Arch, ...] = ("tiny-sd15", "tiny-sdxl", "sd15", "sdxl")

_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

# (hidden, intermediate, layers, heads, projection, activation) of each text encoder.
_TINY_TEXT = (32, 37, 2, 4, 32, "quick_gelu")
_CLIP_L = (768, 3072, 12, 12, 768, "quick_gelu")
_OPEN_CLIP_BIG_G = (1280, 5120, 32, 20, 1280, "gelu")


def build_tokenizer() -> Any:
    """A CLIP tokenizer with a byte-level character vocabulary (518 tokens), made without any download.

    Ids stay below 518, so it drives text encoders of any vocabulary size. `model_max_length`
    must be 77: pipelines pad to it, and the tokenizer's own default is effectively unbounded.
    """
    chars = [chr(c) for c in range(256)]
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    # A handful of merges keeps the BPE model non-degenerate; coverage comes from single characters.
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=77,
        bos_token="<|startoftext|>",  # noqa: S106 (a vocabulary entry, not a secret)
        eos_token="<|endoftext|>",  # noqa: S106 (a vocabulary entry, not a secret)
        pad_token="<|endoftext|>",  # noqa: S106 (a vocabulary entry, not a secret)
        unk_token="<|endoftext|>",  # noqa: S106 (a vocabulary entry, not a secret)
    )


def _text_config(shape: tuple[int, int, int, int, int, str], vocab_size: int) -> Any:
    hidden, intermediate, layers, heads, projection, act = shape
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act=act,
        # Must match the tokenizer: the pooled output is read at the eos position.
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _vae(tiny: bool, scaling_factor: float) -> Any:
    # Four blocks give vae_scale_factor 8 like the real models, so pixel sizes mean the same thing.
    channels = (8, 16, 16, 16) if tiny else (128, 256, 512, 512)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels,
        layers_per_block=1 if tiny else 2,
        latent_channels=4,
        norm_num_groups=8 if tiny else 32,
        sample_size=64 if tiny else 512,
        scaling_factor=scaling_factor,
        force_upcast=not tiny,
    )


def _sd15_unet(tiny: bool) -> Any:

    if tiny:
        return UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    )


def _sdxl_unet(tiny: bool) -> Any:

    if tiny:
        # cross_attention_dim = hidden sizes of both encoders; 80 = 6 time ids * 8 + pooled 32.
        return UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,
            cross_attention_dim=64,
            norm_num_groups=8,
        )
    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048,
    )


def build_random_pipeline(arch: Arch, *, seed: int = 0, device: str = "cpu", dtype: torch.dtype | None = None) -> Any:
    """Build a text-to-image pipeline of `arch` with seeded random weights.

    Weights are initialised directly on `device` (full-size models initialise in seconds on a GPU,
    minutes on a CPU) and then cast to `dtype`. The same seed gives the same weights.
    """
    tiny = arch.startswith("tiny")
    xl = arch.endswith("sdxl")
    tokenizer = build_tokenizer()
    vocab = len(tokenizer) if tiny else 49408
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(_text_config(_TINY_TEXT if tiny else _CLIP_L, vocab))
        vae = _vae(tiny, 0.13025 if xl else 0.18215)
        unet = _sdxl_unet(tiny) if xl else _sd15_unet(tiny)
        text_encoder_2 = (
            CLIPTextModelWithProjection(_text_config(_TINY_TEXT if tiny else _OPEN_CLIP_BIG_G, vocab)) if xl else None
        )
    scheduler = EulerDiscreteScheduler(**_SCHEDULER_CONFIG)
    pipe: Any
    if xl:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=build_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            # None would mean "watermark if invisible-watermark is installed", which changes pixels.
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    if dtype is not None and dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe
