"""Build tiny random-weight Qwen3-TTS models for tests and offline runs.

`python -m tts_runner.tools.tiny_model DIR` writes, under DIR, model folders in the real on-disk
layout and under the real folder names (Qwen3-TTS-12Hz-1.7B-CustomVoice, ...), built from
qwen_tts's own classes and saved with `save_pretrained`, so they load through the real
`Qwen3TTSModel.from_pretrained`. Their audio is noise, but every code path is real: text
tokenizer, batching, speech-tokenizer decode, sample rate and durations.

Each folder carries a marker file (`RANDOM_WEIGHTS`); tts_runner.serving.store logs a warning when it
loads such a model, so nobody mistakes it for a real one.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tts_runner.engines.library import import_qwen_tts
from tts_runner.serving.store import RANDOM_MARKER

import_qwen_tts()

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|tts_pad|>", "<|tts_bos|>", "<|tts_eos|>"]
SPEAKERS = ["vivian", "serena", "uncle_fu", "dylan", "eric", "ryan", "aiden", "ono_anna", "sohee"]
LANGUAGES = [
    "english", "chinese", "japanese", "korean", "german",
    "french", "russian", "portuguese", "spanish", "italian",
]
CODEBOOK = 2048  # speech-tokenizer codebook; talker codec ids >= this are control ids
# Scale of the end-of-speech row of codec_head (see _teach_to_stop); 0 leaves it random.
STOP_BIAS = 0.35
# A cloned voice's hidden states (the speaker embedding, and in-context reference codes) sit further
# from the calibration's mean direction: the Base models need a firmer push to end as soon (measured:
# 0.35 left a saved voice's chunks running to 229 frames past a floor of 60; 0.6 ends them by 94).
STOP_BIAS_BASE = 0.6
# Decoder weight spread: 0.05 gives a peak near 3e-4, 0.1 saturates at +-1 (measured); this sits between.
DECODER_WEIGHT_STD = 0.085


@dataclass(frozen=True)
class TinySizes:
    """Dimensions of a random-weight model. The defaults make a ~30 MB model for CPU tests;
    `real_1_7b()` gives the published 1.7B dimensions (for GPU benchmarks)."""

    talker_hidden: int = 64
    talker_layers: int = 2
    talker_heads: int = 4
    talker_kv_heads: int = 2
    talker_head_dim: int = 16
    talker_intermediate: int = 128
    text_hidden: int = 64
    predictor_hidden: int = 32
    predictor_layers: int = 2  # two or more, so a wrong causal mask in the predictor shows (one layer hides it)
    predictor_heads: int = 2
    predictor_kv_heads: int = 1
    predictor_head_dim: int = 16
    predictor_intermediate: int = 64
    decoder_small: bool = True

    @classmethod
    def real_1_7b(cls) -> TinySizes:
        return cls(
            talker_hidden=2048, talker_layers=28, talker_heads=16, talker_kv_heads=8,
            talker_head_dim=128, talker_intermediate=6144, text_hidden=2048,
            predictor_hidden=1024, predictor_layers=5, predictor_heads=16,
            predictor_kv_heads=8, predictor_head_dim=128, predictor_intermediate=3072,
            decoder_small=False,
        )


def real_depth() -> TinySizes:
    """The tiny widths with the published 1.7B layer counts (talker 28, code predictor 5): a frame
    launches the operators of the real model, at a fraction of its arithmetic (for counting them)."""
    return TinySizes(talker_layers=28, predictor_layers=5)


VARIANTS = {
    # folder name: (tts_model_type, tts_model_size)
    "Qwen3-TTS-12Hz-1.7B-CustomVoice": ("custom_voice", "1b7"),
    "Qwen3-TTS-12Hz-0.6B-CustomVoice": ("custom_voice", "0b6"),
    "Qwen3-TTS-12Hz-1.7B-VoiceDesign": ("voice_design", "1b7"),
    "Qwen3-TTS-12Hz-1.7B-Base": ("base", "1b7"),
    "Qwen3-TTS-12Hz-0.6B-Base": ("base", "0b6"),
}


def _text_tokenizer():
    """A byte-level BPE with no merges (every byte is a token) plus the chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|tts_pad|>",
        unk_token=None,
    )
    return fast


def talker_config(sizes: TinySizes, text_vocab_size: int, tts_type: str) -> dict:
    control = iter(range(CODEBOOK, CODEBOOK + 1024))
    ids = {name: next(control) for name in (
        "codec_pad_id", "codec_bos_id", "codec_eos_token_id", "codec_think_id",
        "codec_nothink_id", "codec_think_bos_id", "codec_think_eos_id",
    )}
    languages = {lang: next(control) for lang in LANGUAGES}
    speakers = {spk: next(control) for spk in SPEAKERS} if tts_type == "custom_voice" else {}
    half = sizes.talker_head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    return dict(
        vocab_size=CODEBOOK + 1024,
        **_decoder(sizes, "talker"),
        text_hidden_size=sizes.text_hidden,
        text_vocab_size=text_vocab_size,
        rope_scaling={"rope_type": "default", "mrope_section": section, "interleaved": True},
        spk_id=speakers,
        spk_is_dialect={spk: False for spk in speakers},
        codec_language_id=languages,
        code_predictor_config=dict(vocab_size=CODEBOOK, **_decoder(sizes, "predictor")),
        **ids,
    )


def _decoder(sizes: TinySizes, part: str) -> dict:
    """The decoder dimensions of the talker or the code predictor (`part`), as their configs name them."""
    def size(name: str) -> int:
        return getattr(sizes, f"{part}_{name}")

    return dict(hidden_size=size("hidden"), intermediate_size=size("intermediate"), num_hidden_layers=size("layers"),
                num_attention_heads=size("heads"), num_key_value_heads=size("kv_heads"), head_dim=size("head_dim"),
                num_code_groups=16)


def speech_tokenizer_config(sizes: TinySizes):
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (
        Qwen3TTSTokenizerV2Config,
    )

    encoder = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, intermediate_size=64, codebook_dim=32, num_filters=8,
        upsample_groups=32, num_quantizers=16, num_semantic_quantizers=1, codebook_size=CODEBOOK,
        vector_quantization_hidden_dimension=32,  # the codebook width: the encoder (voice cloning) quantizes into it
        sliding_window=16,
    )
    decoder = dict(codebook_size=CODEBOOK, num_quantizers=16)
    if sizes.decoder_small:
        decoder.update(
            hidden_size=32, latent_dim=32, codebook_dim=32, num_attention_heads=2,
            num_key_value_heads=2, intermediate_size=64, num_hidden_layers=1, decoder_dim=64,
        )
    else:  # the published Qwen3-TTS-Tokenizer-12Hz decoder (its config.json; the class defaults differ)
        decoder.update(
            hidden_size=512, head_dim=64, latent_dim=1024, codebook_dim=512, num_attention_heads=16,
            num_key_value_heads=16, intermediate_size=1024, num_hidden_layers=8, decoder_dim=1536,
            sliding_window=72,
        )
    return Qwen3TTSTokenizerV2Config(encoder_config=encoder, decoder_config=decoder)


def _audible(speech_tokenizer: torch.nn.Module, generator: torch.Generator) -> None:
    """Give the decoder weights that make sound. With the library's initialisation every
    codebook's `embedding_sum` is zero and every code decodes to exact silence."""
    with torch.no_grad():
        for name, p in speech_tokenizer.decoder.named_parameters():
            if name.endswith("embedding_sum"):
                p.copy_(torch.randn(p.shape, generator=generator))
            elif "scale" in name and p.dim() == 1:
                p.fill_(1.0)
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * DECODER_WEIGHT_STD)


def build_variant(out_dir: Path, folder: str, sizes: TinySizes = TinySizes(), seed: int = 0,
                  stop_bias: float | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write one random-weight model folder and return its path. `dtype` is the talker's weights'
    (bfloat16 halves the real size's 6.4 GB and its build time; the speech tokenizer stays float32)."""
    from qwen_tts.core.models import (
        Qwen3TTSConfig,
        Qwen3TTSForConditionalGeneration,
        Qwen3TTSProcessor,
    )
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (
        Qwen3TTSTokenizerV2Model,
    )
    from transformers import EncodecFeatureExtractor

    tts_type, tts_size = VARIANTS[folder]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    target = out_dir / folder
    target.mkdir(parents=True, exist_ok=True)

    tokenizer = _text_tokenizer()
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen3TTSConfig(
        talker_config=talker_config(sizes, len(tokenizer) + 8, tts_type),
        # a Base model adds the speaker encoder's embedding to the talker's input: the same width
        speaker_encoder_config=dict(enc_dim=sizes.talker_hidden if tts_type == "base" else 32,
                                    enc_channels=[16, 16, 16, 16, 48]),
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size=tts_size,
        tts_model_type=tts_type,
        im_start_token_id=special["<|im_start|>"],
        im_end_token_id=special["<|im_end|>"],
        tts_pad_token_id=special["<|tts_pad|>"],
        tts_bos_token_id=special["<|tts_bos|>"],
        tts_eos_token_id=special["<|tts_eos|>"],
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = Qwen3TTSForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(target, max_shard_size="64GB")  # one model.safetensors, real sizes too
    del model
    _drop_rejected_speaker_encoder_keys(target / "config.json")
    Qwen3TTSProcessor(tokenizer=tokenizer).save_pretrained(target)
    (target / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 0.9,
        "repetition_penalty": 1.05, "subtalker_dosample": True, "subtalker_top_k": 50,
        "subtalker_top_p": 1.0, "subtalker_temperature": 0.9, "max_new_tokens": 2048,
    }, indent=2))

    speech = Qwen3TTSTokenizerV2Model(speech_tokenizer_config(sizes))
    _audible(speech, generator)
    speech_dir = target / "speech_tokenizer"
    speech.save_pretrained(speech_dir)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000).save_pretrained(speech_dir)

    if stop_bias is None:
        stop_bias = STOP_BIAS_BASE if tts_type == "base" else STOP_BIAS
    if stop_bias > 0:
        _teach_to_stop(target, stop_bias)
    elif stop_bias < 0:
        _never_stop(target, 1 + 10 * -stop_bias)
    (target / RANDOM_MARKER).write_text(
        "Random weights built by tts_runner.tools.tiny_model: the audio is noise. For tests only.\n"
    )
    return target


def _never_stop(target: Path, scale: float) -> None:
    """Make a talker whose end-of-speech never wins under top-k sampling (a negative stop bias): the
    end code's row of codec_head becomes zero, so its logit is always 0, and the codebook's rows are
    scaled by `scale`, so the 50 best codes' logits sit far above 0 whatever the hidden state (for
    the runaway guard's tests: every chunk runs to its frame budget)."""
    from safetensors.torch import load_file, save_file

    config = json.loads((target / "config.json").read_text())["talker_config"]
    weights_path = target / "model.safetensors"
    weights = load_file(weights_path)
    head = weights["talker.codec_head.weight"]
    head[:CODEBOOK] *= scale
    head[config["codec_eos_token_id"]] = 0.0
    save_file(weights, weights_path, metadata={"format": "pt"})


def _teach_to_stop(target: Path, beta: float) -> None:
    """Make the random talker end speech at varied, speech-like lengths.

    Random weights almost never emit the end-of-speech code, so every chunk would run to
    max_new_tokens. The talker's last hidden states share a stable mean direction d; setting the
    end code's row of codec_head to beta * d gives it a logit that, under the default sampling
    (temperature 0.3, top_k 50, top_p 0.85), ends chunks soon after the end-of-speech floor
    (measured with beta 0.35 over 64 chunks: floor 60 -> median 66 frames, 90 % by 87, all by 104;
    floor 2 -> median 4, all by 14), well inside the runaway guard's budgets, so a demo job on these
    models does not trip the guard (beta 0.2 left 42 % of chunks 38 frames past a floor of 60).
    """
    from qwen_tts import Qwen3TTSModel
    from safetensors.torch import load_file, save_file

    tts = Qwen3TTSModel.from_pretrained(str(target), device_map="cpu", dtype=torch.float32)
    talker = tts.model.talker
    states: list[torch.Tensor] = []
    hook = talker.codec_head.register_forward_hook(lambda m, args, out: states.append(args[0][:, -1].detach()))
    speakers = list(tts.get_supported_speakers() or [])[:2] or None
    texts = ["Calibration text number one.", "A second calibration sentence!"]
    with torch.inference_mode():
        if tts.model.tts_model_type == "base":  # both ways of cloning: the speaker embedding, and in context
            reference = (np.sin(np.arange(48000) / 7.0) * 0.3).astype(np.float32)  # 2 s at 24 kHz
            tts.generate_voice_clone(texts, language="english", ref_audio=(reference, 24000),
                                     x_vector_only_mode=True, max_new_tokens=40, do_sample=False)
            tts.generate_voice_clone(texts, language="english", ref_audio=(reference, 24000),
                                     ref_text="A reference recording.", max_new_tokens=40, do_sample=False)
        elif speakers:
            tts.generate_custom_voice(texts, speaker=speakers * (2 // len(speakers)), language="english",
                                      max_new_tokens=40, do_sample=False)
        else:
            tts.generate_voice_design(texts, instruct="A calm voice.", language="english", max_new_tokens=40,
                                      do_sample=False)
    hook.remove()
    eos = talker.config.codec_eos_token_id
    del tts, talker  # the real sizes hold several GB; free them before the weights are read again
    direction = torch.cat(states).mean(0)
    direction = direction / direction.norm()
    weights_path = target / "model.safetensors"
    weights = load_file(weights_path)
    weights["talker.codec_head.weight"][eos] = beta * direction
    save_file(weights, weights_path, metadata={"format": "pt"})


def _drop_rejected_speaker_encoder_keys(config_path: Path) -> None:
    """save_pretrained writes keys into speaker_encoder_config that its own __init__ rejects."""
    keep = {
        "mel_dim", "enc_dim", "enc_channels", "enc_kernel_sizes", "enc_dilations",
        "enc_attention_channels", "enc_res2net_scale", "enc_se_channels", "sample_rate",
    }
    data = json.loads(config_path.read_text())
    data["speaker_encoder_config"] = {
        k: v for k, v in data.get("speaker_encoder_config", {}).items() if k in keep
    }
    config_path.write_text(json.dumps(data, indent=2))


def build_all(out_dir: Path, folders: list[str] | None = None, sizes: TinySizes = TinySizes(),
              stop_bias: float | None = None, dtype: torch.dtype = torch.float32) -> list[Path]:
    return [build_variant(out_dir, f, sizes, stop_bias=stop_bias, dtype=dtype) for f in (folders or list(VARIANTS))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="model directory to write (use as QWEN_TTS_MODEL_DIR)")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS),
                        help="folder to build (repeatable; default: all)")
    parser.add_argument("--real-size", action="store_true",
                        help="use the published 1.7B dimensions (several GB; for GPU benchmarks)")
    parser.add_argument("--stop-bias", type=float, default=None,
                        help=f"end-of-speech bias: > 0 ends chunks soon after the floor (default {STOP_BIAS}, "
                             f"{STOP_BIAS_BASE} for the Base models); 0 leaves the end code's random weights (it "
                             "rarely wins); < 0 makes it never win under top-k sampling")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the talker's weights (bfloat16 halves a real-size model and its build time)")
    args = parser.parse_args(argv)
    sizes = TinySizes.real_1_7b() if args.real_size else TinySizes()
    for path in build_all(args.out_dir, args.variant, sizes, args.stop_bias, getattr(torch, args.dtype)):
        print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
