"""Build a tiny Stable-Diffusion-shaped pipeline with random weights, entirely offline.

The folder it writes is a normal `save_pretrained` layout (unet/, vae/, text_encoder/,
tokenizer/, scheduler/, model_index.json), so code loads it through exactly the same
`from_pretrained` path as a real model. The tokenizer is a real CLIP BPE tokenizer: the
256 byte-level symbols, the same with `</w>`, a few merges that make whole words single
tokens, and the two special tokens. Images are 64x64 (latents 4x32x32).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS = ("a", "photo", "of", "sks", "zwx", "dog", "cat", "person", "the", "on", "moon")
RESOLUTION = 64

UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
VAE = dict(  # two blocks: vae_scale_factor 2, so a 64x64 image is a 4x32x32 latent
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    sample_size=RESOLUTION,
)
TEXT = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
    hidden_act="quick_gelu",
)
SCHEDULER = dict(  # SD 1.5's PNDM settings
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def write_clip_vocab(folder: Path, words: tuple[str, ...] = WORDS) -> None:
    """vocab.json + merges.txt for a byte-level CLIP BPE that knows `words` whole."""
    from tokenizers import pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for ch in alphabet:
            vocab[ch + suffix] = len(vocab)
    merges: list[str] = []
    for word in words:  # left-to-right merges: s k -> sk ; sk s</w> -> sks</w>
        symbols = [*word[:-1], word[-1] + "</w>"]
        current = symbols[0]
        for nxt in symbols[1:]:
            merge = f"{current} {nxt}"
            if merge not in merges:
                merges.append(merge)
            current += nxt
            vocab.setdefault(current, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_tiny_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny pipeline to `out_dir` (replacing it) and return the folder."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    tok_src = out_dir.with_name(out_dir.name + ".tok")
    write_clip_vocab(tok_src)
    tokenizer = CLIPTokenizer(
        vocab=str(tok_src / "vocab.json"),
        merges=str(tok_src / "merges.txt"),
        model_max_length=77,
    )
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        **TEXT,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**VAE),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**UNET),
        scheduler=PNDMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tok_src / name, out_dir / "tokenizer" / name)
    shutil.rmtree(tok_src, ignore_errors=True)
    return out_dir
