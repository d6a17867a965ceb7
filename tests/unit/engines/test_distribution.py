"""The fast and graph engines sample the distribution the stock library samples.

For a fixed prompt, a batch of rows is generated with sampling; then, for every code sampled, the
exact distribution it should have come from is rebuilt independently: a teacher-forced forward of
the sampled codes through the library's own modules (talker, code predictor), and Hugging Face's own
logits processors for the call, recorded while the stock engine ran the same call. Each sampled
code must lie inside that distribution's support, and the codes must be consistent with it: the
randomized probability integral transform of each code (F(c-) + U p(c)) is uniform exactly when the
codes are drawn from the distributions, which a Kolmogorov-Smirnov test checks at a fixed seed.
The stock engine goes through the same check, so the harness itself is tested too.
"""

import pytest
import torch
from scipy.stats import kstest
from transformers.cache_utils import DynamicCache

from tests.helpers.config import load_model

ROWS, FRAMES = 32, 20
PROMPT = "The same sentence for every row, so that every row samples from one prompt."

BASE = dict(do_sample=True, subtalker_dosample=True, max_new_tokens=FRAMES + 1)
DEFAULTS = dict(temperature=0.3, top_k=50, top_p=0.85, subtalker_temperature=0.3, subtalker_top_k=50,
                subtalker_top_p=0.85, repetition_penalty=1.0)
SCENARIOS = {
    # the product's defaults (conf/sampling): talker and code predictor alike
    "defaults": dict(DEFAULTS, min_new_tokens=FRAMES + 1),
    # the talker unwarped; the code predictor with settings of its own, so mixing them up shows
    "temperature 1, top-k and top-p off": dict(DEFAULTS, temperature=1.0, top_k=0, top_p=1.0,
                                                subtalker_temperature=0.7, subtalker_top_k=20,
                                                subtalker_top_p=0.9, min_new_tokens=FRAMES + 1),
    "repetition penalty 1.3": dict(DEFAULTS, repetition_penalty=1.3, min_new_tokens=FRAMES + 1),
    # the end code made likely: rows end at different frames, none before the floor
    "floor and end code": dict(DEFAULTS, temperature=0.8, top_p=0.95, min_new_tokens=6),
}
END_BOOST = {"floor and end code": 2.0}


@pytest.fixture(scope="module")
def models(tiny_env):
    return load_model(["runtime.engine=graph", f"runtime.graph.buckets=[{ROWS}]", "runtime.graph.max_len=200",
                       "scheduler.enabled=false"], base=[])


class Recorder:
    """Records what the library passes to talker.generate and gets back, and the logits
    processors Hugging Face builds for the talker's and the code predictor's generate calls."""

    def __init__(self, model, monkeypatch):
        self.talker = talker = model.tts.model.talker
        self.calls: list[tuple[dict, object]] = []
        self.processors: dict[str, object] = {}
        seam = talker.generate

        def generate(*args, **kwargs):
            result = seam(*args, **kwargs)
            self.calls.append((kwargs, result))
            return result

        monkeypatch.setattr(talker, "generate", generate)
        for name, module in (("talker", talker), ("predictor", talker.code_predictor)):
            build = type(module)._get_logits_processor

            def record(this, *args, _name=name, _build=build, **kwargs):
                processors = _build(this, *args, **kwargs)
                self.processors.setdefault(_name, processors)
                return processors

            monkeypatch.setattr(type(module), "_get_logits_processor", record)


def sample(model, engine: str, settings: dict, seed: int):
    """One call of ROWS rows of PROMPT on `engine`; returns (talker.generate kwargs, its result)."""
    tts = model.tts
    with pytest.MonkeyPatch.context() as patch:
        recorder = Recorder(model, patch)
        torch.manual_seed(seed)
        floor = settings.get("min_new_tokens", 2)
        call = {k: v for k, v in {**BASE, **settings}.items() if k != "min_new_tokens"}
        with torch.inference_mode(), model.using(engine=engine, floor=floor):
            tts.model.generate(input_ids=tts._tokenize_texts([tts._build_assistant_text(PROMPT)] * ROWS),
                               instruct_ids=[None] * ROWS, languages=["english"] * ROWS, speakers=["ryan"] * ROWS,
                               non_streaming_mode=True, **call)
            assert model.engine == engine  # no fallback
    (kwargs, result), = recorder.calls
    return kwargs, result, recorder.processors


def reference(model, kwargs: dict, result, processors: dict) -> tuple[list, list]:
    """(probabilities, sampled code) pairs, talker codes and code predictor codes apart, from a
    teacher-forced forward of the sampled codes through the library's modules."""
    talker = model.tts.model.talker
    predictor = talker.code_predictor
    codes = torch.stack([c for _, c in result.hidden_states if c is not None], dim=1)  # [B, frames, 16]
    eos = talker.config.codec_eos_token_id
    # rows that ended carry the end code everywhere: never looked at, but they must still embed
    fed = torch.cat((codes[..., :1], codes[..., 1:].clamp(max=predictor.config.vocab_size - 1)), dim=-1)
    mask = kwargs["attention_mask"].long()
    trailing, pad = kwargs["trailing_text_hidden"], kwargs["tts_pad_embed"]
    # the talker's own prefill (Qwen3TTSTalkerForConditionalGeneration.forward): rope index from the mask
    positions, deltas = talker.get_rope_index(mask)
    deltas = deltas - (1 - mask).sum(dim=-1, keepdim=True)
    cache = DynamicCache()
    hidden = talker.model(inputs_embeds=kwargs["inputs_embeds"], attention_mask=mask, position_ids=positions,
                          past_key_values=cache, use_cache=True).last_hidden_state[:, -1:]
    ended = torch.zeros(codes.shape[0], dtype=torch.bool)
    talker_pairs, predictor_pairs = [], []
    for t in range(codes.shape[1]):
        live = ~ended  # rows still sampling at frame t (later codes of ended rows are forced)
        scores = talker.codec_head(hidden[:, -1]).float()
        probs = processors["talker"](codes[:, :t, 0], scores).softmax(dim=-1)
        talker_pairs.append((probs[live], codes[live, t, 0]))
        # the code predictor's 15 codes of frame t, teacher-forced in one causal pass
        sub = predictor.model.get_input_embeddings()
        inputs = [hidden, talker.get_input_embeddings()(fed[:, t, :1])] + [sub[g - 1](fed[:, t, g:g + 1])
                                                                          for g in range(1, 15)]
        states = predictor.model(inputs_embeds=predictor.small_to_mtp_projection(torch.cat(inputs, dim=1)),
                                 use_cache=False).last_hidden_state
        going = live & (codes[:, t, 0] != eos)  # an end frame's other codes are never used
        for g in range(1, 16):
            scores = predictor.lm_head[g - 1](states[:, g]).float()
            probs = processors["predictor"](codes[:, t, 1:g], scores).softmax(dim=-1)
            predictor_pairs.append((probs[going], codes[going, t, g]))
        ended |= codes[:, t, 0] == eos
        # frame t into the talker, as its forward does: the 16 codes' embeddings summed, plus the text
        frame = talker.get_input_embeddings()(fed[:, t, :1]) + sum(sub[g - 1](fed[:, t, g:g + 1])
                                                                  for g in range(1, 16))
        frame = frame + (trailing[:, t:t + 1] if t < trailing.shape[1] else pad)
        position = (deltas + mask.shape[1]).view(1, -1, 1).expand(3, -1, 1)
        mask = torch.cat((mask, mask.new_ones(mask.shape[0], 1)), dim=1)
        hidden = talker.model(inputs_embeds=frame, attention_mask=mask, position_ids=position,
                              past_key_values=cache, use_cache=True).last_hidden_state
    return talker_pairs, predictor_pairs


def check(pairs: list, seed: int) -> tuple[int, float]:
    """Every code inside its distribution's support; returns (codes, KS p-value of the randomized PIT)."""
    probs = torch.cat([p for p, _ in pairs])
    drawn = torch.cat([c for _, c in pairs])
    chosen = probs.gather(1, drawn[:, None]).squeeze(1)
    outside = (chosen <= 0).nonzero().view(-1)
    assert outside.numel() == 0, f"{outside.numel()} of {drawn.numel()} codes had probability 0"
    below = probs.cumsum(dim=-1).gather(1, drawn[:, None]).squeeze(1) - chosen
    u = below + torch.rand(drawn.shape, generator=torch.Generator().manual_seed(seed), dtype=probs.dtype) * chosen
    return drawn.numel(), kstest(u.clamp(0, 1).numpy(), "uniform").pvalue


@pytest.fixture
def end_boost(models, request):
    """A fixed bonus on the end code's logit (the reference sees it too)."""
    boost = END_BOOST.get(request.node.callspec.params["scenario"], 0.0)
    eos = models.tts.model.talker.config.codec_eos_token_id

    def add(module, args, output):
        output[..., eos] += boost
        return output

    handle = models.tts.model.talker.codec_head.register_forward_hook(add) if boost else None
    yield
    if handle:
        handle.remove()


@pytest.mark.parametrize("engine", ["stock", "fast", "graph"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sampled_codes_follow_the_library_distribution(models, end_boost, engine, scenario):
    settings = SCENARIOS[scenario]
    seed = 1234
    kwargs, result, processors = sample(models, engine, settings, seed)
    if engine != "stock":  # the processors HF builds for this call: record them from the stock engine
        processors = sample(models, "stock", settings, seed)[2]
    with torch.inference_mode():
        talker_pairs, predictor_pairs = reference(models, kwargs, result, processors)
    talker_n, talker_p = check(talker_pairs, seed)
    predictor_n, predictor_p = check(predictor_pairs, seed + 1)
    assert talker_n >= ROWS * 6 and predictor_n >= ROWS * 5 * 15
    assert talker_p > 1e-3 and predictor_p > 1e-3, (talker_n, talker_p, predictor_n, predictor_p)
    if scenario == "floor and end code":
        ends = [int((c[:, 0] == models.tts.model.talker.config.codec_eos_token_id).nonzero()[0])
                for c in torch.stack([c for _, c in result.hidden_states if c is not None], dim=1)
                if (c[:, 0] == models.tts.model.talker.config.codec_eos_token_id).any()]
        assert len(ends) >= ROWS // 2 and min(ends) >= 6 and len(set(ends)) > 2  # ended apart, after the floor
