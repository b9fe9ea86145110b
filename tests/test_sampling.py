"""The sampler's penalties and the logprobs it reports, against plain float64 references on hand-built logits;
the incremental penalty counts against the from-lists definition they replaced, bit for bit."""
from collections import Counter

import pytest
import torch

from s1fast.sampling import LOGPROB_FLOOR, Penalties, PenaltyState, pick_tokens, token_logprobs


def old_penalize(p: Penalties, logits: torch.Tensor, prompt_ids, output_ids) -> None:
    """The penalties as s1fast applied them before ``PenaltyState``: counts rebuilt from the whole output's
    ids at every step. Kept here only as the reference the incremental state must equal bit for bit."""
    vocab = logits.shape[-1]
    out = torch.tensor(list(output_ids), dtype=torch.long, device=logits.device)
    counts = torch.bincount(out[out < vocab], minlength=vocab).to(logits.dtype)
    if p.repetition != 1.0:
        seen = counts > 0
        prompt = torch.tensor(list(prompt_ids), dtype=torch.long, device=logits.device)
        seen[prompt[prompt < vocab]] = True
        scaled = torch.where(logits > 0, logits / p.repetition, logits * p.repetition)
        logits.copy_(torch.where(seen, scaled, logits))
    if p.frequency:
        logits -= p.frequency * counts
    if p.presence:
        logits -= p.presence * (counts > 0).to(logits.dtype)


def old_pick_tokens(logits, *, penalties=None, **kw) -> list[int]:
    """``pick_tokens`` with each row penalised by ``old_penalize`` from its (state, ids) pair's lists (the
    penalties commute with the masks pick_tokens applies first: -inf stays -inf)."""
    logits = logits.float().clone()
    for i, row in enumerate(penalties or ()):
        if row is not None and row[0].penalties.active:
            old_penalize(row[0].penalties, logits[i], row[1][:row[0].prompt_len], row[1][row[0].prompt_len:])
    return pick_tokens(logits, **kw)


def ref_penalized(logits, prompt, output, presence=0.0, frequency=0.0, repetition=1.0) -> list[float]:
    """vLLM's definitions, one id at a time in float64: repetition over prompt and output (divide a positive
    logit, multiply a negative one), frequency (per occurrence) and presence (once) over the output only."""
    out = [float(x) for x in logits]
    counts = Counter(output)
    for v in set(prompt) | set(output):
        out[v] = out[v] / repetition if out[v] > 0 else out[v] * repetition
    for v, c in counts.items():
        out[v] -= frequency * c + presence
    return out


CASES = [dict(presence=0.7), dict(frequency=-1.3), dict(repetition=1.8), dict(repetition=0.6),
         dict(presence=-2.0, frequency=2.0, repetition=1.25)]


@pytest.mark.parametrize("kw", CASES)
def test_penalties_match_the_float64_reference(kw):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(37, generator=g) * 4          # positive and negative logits
    prompt, output = [0, 5, 5, 36, 11], [5, 7, 7, 7, 2, 11, 30]
    want = torch.tensor(ref_penalized(logits.tolist(), prompt, output, **kw), dtype=torch.float64)
    got = logits.clone()
    PenaltyState(Penalties(**kw), len(prompt)).apply(got, prompt + output)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-5)
    untouched = sorted(set(range(37)) - set(prompt) - set(output))
    assert torch.equal(got[untouched], logits[untouched])



@pytest.mark.parametrize("kw", CASES)
def test_incremental_counts_equal_the_from_lists_definition_bit_for_bit(kw):
    """A row's state, fed its ids as a forcer grows them (one picked id, or several forced at once, ids past
    the logits' width among them), penalises exactly as counting the whole output again would, every step;
    an ids list shorter than what was counted (a new sequence) starts the counts over."""
    g = torch.Generator().manual_seed(11)
    vocab, prompt = 41, [3, 3, 40, 7, 45]          # 45: no logit (the tokenizer's ids past the model's vocab)
    state, ids = PenaltyState(Penalties(**kw), len(prompt)), list(prompt)
    steps = [[7], [12, 12, 50], [3], [], [40], [9, 9, 9, 9], [12]] * 3
    for n, new in enumerate(steps):
        ids += new
        logits = torch.randn(vocab, generator=g) * 3
        want, got = logits.clone(), logits.clone()
        old_penalize(state.penalties, want, ids[:len(prompt)], ids[len(prompt):])
        state.apply(got, ids)
        assert torch.equal(got, want), n
    assert state.counts[12].item() == 9 and state.counted == len(ids)
    ids = prompt + [1, 2]                           # shorter: another sequence, counted from its prompt
    logits = torch.randn(vocab, generator=g)
    want, got = logits.clone(), logits.clone()
    old_penalize(state.penalties, want, prompt, [1, 2])
    state.apply(got, ids)
    assert torch.equal(got, want) and state.counts.sum().item() == 2


def test_two_rows_of_one_batch_take_their_own_penalties():
    """Greedy picks are the argmax of each row's reference; a sampled row draws what it draws alone."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 23, generator=g) * 3
    top = logits.argmax(-1).tolist()
    # each row's top id was generated before: strong penalties must move the pick off it
    rows = [(Penalties(repetition=3.0, presence=1.0), [1, 2], [top[0]] * 3),
            (Penalties(frequency=2.0), [top[1]], [top[1], top[1], 4])]
    picks = pick_tokens(logits, temperature=0, top_p=1, vocab_limit=23, banned=[None, None],
                        generators=[None, None], penalties=[(PenaltyState(p, len(a)), a + b) for p, a, b in rows])
    want = [max(range(23), key=lambda v: ref_penalized(logits[i].tolist(), r[1], r[2], r[0].presence,
                                                       r[0].frequency, r[0].repetition)[v]) for i, r in enumerate(rows)]
    assert picks == want and want[0] != top[0] and want[1] != top[1]

    def draws(lg, pens, seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        states = [r and (PenaltyState(r[0], len(r[1])), r[1] + r[2]) for r in pens]
        return [pick_tokens(lg, temperature=1.0, top_p=0.9, vocab_limit=23, banned=[None] * len(seeds),
                            generators=gens, penalties=states) for _ in range(40)]
    both = draws(logits, rows, [7, 8])
    assert [d[1] for d in both] == [d[0] for d in draws(logits[1:], rows[1:], [8])]
    assert [d[0] for d in both] != [d[0] for d in draws(logits[:1], [None], [7])]   # row 0's penalty matters


def test_default_penalties_change_nothing():
    """Defaults (or None) give bit-identical draws to no penalties at all: a request that asks for none is
    served as before."""
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(4, 50, generator=g)
    for temp, top_p in [(0.0, 1.0), (0.8, 0.95), (1.5, 1.0)]:
        runs = []
        for pens in (None, [(PenaltyState(Penalties(), 3), [1, 2, 3, 4, 4, 5])] * 4, [None] * 4):
            gens = [torch.Generator().manual_seed(s) for s in range(4)]
            runs.append([pick_tokens(logits, temperature=temp, top_p=top_p, vocab_limit=48, banned=[None, {3}, None,
                                     None], generators=gens, penalties=pens) for _ in range(20)])
        assert runs[0] == runs[1] == runs[2]
    assert not Penalties().active and Penalties(repetition=1.0000001).active


def test_logprobs_are_the_raw_log_softmax_with_its_top_k():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 40, generator=g) * 5
    logits[2, 7] = -1e6                                      # underflows: reported at the floor, as vLLM does
    want = torch.log_softmax(logits.double()[:, :31], dim=-1)   # ids >= vocab_limit are no token
    got = token_logprobs(logits, [4, 30, 7], [3, 0, 5], vocab_limit=31)
    for i, (tok, lp, top) in enumerate(got):
        assert tok == [4, 30, 7][i]
        assert lp == pytest.approx(max(want[i, tok].item(), LOGPROB_FLOOR), abs=1e-9)
        order = want[i].argsort(descending=True)[:[3, 0, 5][i]].tolist()
        assert [t for t, _ in top] == order and all(t < 31 for t, _ in top)
        assert [v for _, v in top] == pytest.approx(want[i, order].tolist(), abs=1e-9)
    assert got[2][1] == LOGPROB_FLOOR
