"""The `fast` engine: a lean decode loop in place of qwen-tts's `talker.generate`.

qwen-tts generates each frame through Hugging Face `generate()` twice over: once per frame for the
talker and, inside every talker step, a whole second `generate()` for the code predictor's 15
sub-steps; most of a step is that machinery, not arithmetic. This loop runs the same modules and
weights without it:

- the talker: one prefill of the left-padded prompt, then one forward per frame with a growing
  key/value cache (the library's own attention);
- the code predictor and every choice of a code: the decode core (`core.Predictor`, `sampling`);
- the host checks "all finished?" only every `sync_every` frames, and then drops the rows that have
  ended from the batch and its cache, so a batch stops paying for chunks that are done while its
  longest one finishes.

It returns what qwen-tts reads from `talker.generate`, so prompt construction and the speech
tokenizer's decode stay the library's. With greedy decoding in float32 the codes equal the stock
path's exactly (tests/test_decode_exact.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tts_runner.engines.core import Predictor, TalkerResult, frame_embedding, prefill
from tts_runner.engines.sampling import RowSettings, candidates, next_code


def _full_batch(hidden: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor, batch: int, eos: int) -> tuple:
    """One step's output in the shape qwen-tts expects: every original row, ended rows holding
    end-of-speech codes (qwen-tts cuts each item at its first one)."""
    if rows.numel() == batch:
        return (hidden,), codes
    full_codes = codes.new_full((batch, codes.shape[1]), eos).index_copy(0, rows, codes)
    full_hidden = hidden.new_zeros((batch, *hidden.shape[1:])).index_copy(0, rows, hidden)
    return (full_hidden,), full_codes


def generate(talker: torch.nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
             trailing_text_hidden: torch.Tensor, tts_pad_embed: torch.Tensor, max_new_tokens: int,
             eos_token_id: int | None = None, suppress_tokens: list[int] | None = None, sync_every: int = 1,
             progress: Callable[[int, int], None] | None = None, **settings) -> TalkerResult:
    """Drop-in for `talker.generate(...)` as qwen-tts calls it; `settings` are the sampling
    arguments of sampling.SETTINGS (scalars, or one per row; others are ignored). `progress` hears
    (frames stepped, rows still going) at every host check."""
    device = inputs_embeds.device
    batch = inputs_embeds.shape[0]
    eos = talker.config.codec_eos_token_id if eos_token_id is None else eos_token_id
    rows = torch.arange(batch, device=device)  # the original rows still being generated
    row_settings = RowSettings.from_call({**settings, "max_new_tokens": max_new_tokens}, rows)
    # this loop is not captured, so it may read on the host how many best codes a draw needs
    talker_k, predictor_k = candidates(settings), candidates(settings, "subtalker_top_k", "subtalker_dosample")
    predictor = Predictor(talker.code_predictor, batch, inputs_embeds)
    codec_embedding = talker.get_input_embeddings()
    blocked = torch.zeros(talker.config.vocab_size, dtype=torch.bool, device=device)
    if suppress_tokens:
        blocked[torch.tensor(suppress_tokens, device=device)] = True

    start = prefill(talker, inputs_embeds, attention_mask)
    cache, hidden, mask, deltas = start.cache, start.hidden, start.mask, start.deltas
    steps: list = [((hidden,), None)]
    token = torch.full((batch,), eos, dtype=torch.long, device=device)
    seen = torch.zeros(batch, talker.config.vocab_size, dtype=torch.bool, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    length = mask.shape[1]

    for step in range(max_new_tokens):
        if step > 0:
            # the previous frame's first code -> its other 15 codes -> the talker's next input
            first = token[:, None]
            rest = predictor(hidden, codec_embedding(first), row_settings, step - 1, predictor_k)
            text = trailing_text_hidden[:, step - 1:step] if step - 1 < trailing_text_hidden.shape[1] else tts_pad_embed
            frame = frame_embedding(codec_embedding, predictor.embeddings, first, rest) + text
            mask = torch.cat((mask, mask.new_ones(mask.shape[0], 1)), dim=1)
            position = (deltas + length).view(1, -1, 1).expand(3, -1, 1)
            out = talker.model(inputs_embeds=frame, attention_mask=mask, position_ids=position,
                               past_key_values=cache, use_cache=True)
            hidden = out.last_hidden_state
            length += 1
            steps.append(_full_batch(hidden, torch.cat((first, rest), dim=1), rows, batch, eos))

        token = next_code(talker.codec_head(hidden[:, -1]), row_settings, step, seen, unfinished, blocked, eos,
                          talker_k)
        seen.scatter_(1, token[:, None], True)
        unfinished = unfinished & (token != eos)
        if (step + 1) % sync_every == 0:
            alive = unfinished.nonzero().squeeze(1)
            if progress:
                progress(step + 1, alive.numel())
            if alive.numel() == 0:
                break
            if alive.numel() < unfinished.numel():
                # Drop ended rows: the rest of the call no longer pays for them (the long tail).
                cache.batch_select_indices(alive)
                rows, mask, deltas, hidden, unfinished, token, seen = (
                    t.index_select(0, alive) for t in (rows, mask, deltas, hidden, unfinished, token, seen))
                row_settings = row_settings.select(alive)
                trailing_text_hidden = trailing_text_hidden.index_select(0, alive)
                if tts_pad_embed.shape[0] > 1:
                    tts_pad_embed = tts_pad_embed.index_select(0, alive)
    return TalkerResult(hidden_states=steps)
