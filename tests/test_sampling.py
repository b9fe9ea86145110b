"""The sampler's penalties and the logprobs it reports, against plain float64 references on hand-built logits."""
from collections import Counter

import pytest
import torch

from s1fast.sampling import LOGPROB_FLOOR, Penalties, pick_tokens, token_logprobs


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
    Penalties(**kw).apply(got, prompt, output)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-5)
    untouched = sorted(set(range(37)) - set(prompt) - set(output))
    assert torch.equal(got[untouched], logits[untouched])


def test_two_rows_of_one_batch_take_their_own_penalties():
    """Greedy picks are the argmax of each row's reference; a sampled row draws what it draws alone."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 23, generator=g) * 3
    top = logits.argmax(-1).tolist()
    # each row's top id was generated before: strong penalties must move the pick off it
    rows = [(Penalties(repetition=3.0, presence=1.0), [1, 2], [top[0]] * 3),
            (Penalties(frequency=2.0), [top[1]], [top[1], top[1], 4])]
    picks = pick_tokens(logits, temperature=0, top_p=1, vocab_limit=23, banned=[None, None],
                        generators=[None, None], penalties=rows)
    want = [max(range(23), key=lambda v: ref_penalized(logits[i].tolist(), r[1], r[2], r[0].presence,
                                                       r[0].frequency, r[0].repetition)[v]) for i, r in enumerate(rows)]
    assert picks == want and want[0] != top[0] and want[1] != top[1]

    def draws(lg, pens, seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return [pick_tokens(lg, temperature=1.0, top_p=0.9, vocab_limit=23, banned=[None] * len(seeds),
                            generators=gens, penalties=pens) for _ in range(40)]
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
        for pens in (None, [(Penalties(), [1, 2, 3], [4, 4, 5])] * 4, [None] * 4):
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
