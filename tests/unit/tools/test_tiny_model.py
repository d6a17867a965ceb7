"""The random-weight model builder: the real-size dimensions used for GPU benchmarks construct."""

import torch
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

from tts_runner.tools.tiny_model import TinySizes, speech_tokenizer_config


def test_real_size_speech_tokenizer_has_the_published_decoder():
    # Built on the meta device: the dimensions, no memory. The tokenizer config class lacks some of
    # the published checkpoint's decoder fields (codebook_dim), so the builder must give them.
    with torch.device("meta"):
        model = Qwen3TTSTokenizerV2Model(speech_tokenizer_config(TinySizes.real_1_7b()))
    decoder = model.config.decoder_config
    assert (decoder.hidden_size, decoder.codebook_dim, decoder.latent_dim, decoder.decoder_dim) == (512, 512, 1024, 1536)
    assert decoder.num_hidden_layers == 8 and tuple(decoder.upsample_rates) == (8, 5, 4, 3)
    params = sum(p.numel() for p in model.decoder.parameters())
    assert 50e6 < params < 500e6, params
