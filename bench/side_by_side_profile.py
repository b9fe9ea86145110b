"""Where the CPU side by side spends its time: one rank's forward + backward, split into backbone and loss head.

    OMP_NUM_THREADS=1 python -m bench.side_by_side_profile --tokens 1024 --repeat 3

One process, one thread (what each of the 2 ranks of bench/side_by_side.py gets), the same saved tiny init and
real tokens from the bundled sample. Median seconds of forward + backward (no optimizer, no communication) of:
- ``hf backbone``: transformers' Qwen2 (SDPA) up to the final norm, ``.sum().backward()``;
- ``hf + TRL fused head``: what SFTTrainer runs (``add_fused_lm_head`` with the log_probs, entropy and is_top1
  outputs it asks for; loss = -sum(log_probs) / n);
- ``hf + TRL fused head, log_probs only``: the same without the two metric outputs;
- ``hf padding-free 2 x L``: two documents in one row with restarting position_ids, TRL's fused head;
- ``s1fast backbone`` and ``s1fast + fused CE``: s1fast.model with the trainer's fused linear cross-entropy.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as python bench/X.py: import as python -m bench.X
    import _path  # noqa: F401  (bench/_path.py)

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

from bench._args import positive_int
from bench.env import environment, markdown_header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _s1fast_cases(mdir: str, pair: list, n: int, repeat: int) -> dict[str, float]:
    """s1fast's backbone, its loss head on one sequence and on the packed pair: median seconds."""
    from s1fast import model as modeling
    from s1fast.packing import collate
    from s1fast.train import loss_head
    L = len(pair[0][0])
    res = {}
    ours = modeling.from_pretrained(mdir)
    b = collate([pair[0]], [1.0 / n])

    def s1_backbone():
        ours(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen).sum().backward()

    def s1_full():
        head = loss_head(b.targets, b.loss_weight)
        ours(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen, head=head).backward()
    res["s1fast backbone"] = timed(s1_backbone, repeat)
    res["s1fast + fused CE"] = timed(s1_full, repeat)
    b2 = collate(pair, [1.0 / n, 1.0 / n])

    def s1_pair():
        head = loss_head(b2.targets, b2.loss_weight)
        ours(b2.input_ids, b2.position_ids, b2.cu_seqlens, b2.max_seqlen, head=head).backward()
    res[f"s1fast packed 2 x {L} + fused CE"] = timed(s1_pair, repeat)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.side_by_side_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=positive_int, default=1024, help="tokens of each sequence (default: 1024)")
    ap.add_argument("--repeat", type=positive_int, default=3, help="timed runs per case (median; default: 3)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from s1fast import model as modeling
    from s1fast.data import DEFAULT_TOKENIZER, prepare

    torch.set_num_threads(1)
    L = args.tokens
    tmp = tempfile.mkdtemp(prefix="sbs_profile_")
    atexit.register(shutil.rmtree, tmp, True)
    ds = prepare(None, "s1", None, L, os.path.join(tmp, "tokens"), "truncate", progress=False, log=lambda *_: None)
    docs = [i for i in range(len(ds)) if len(ds[i][0]) == L][:2]
    if len(docs) < 2:
        print(f"error: --tokens {L}: fewer than 2 rows of the bundled sample reach {L} tokens; use a smaller --tokens "
              "(1024 is the recorded one)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    mdir = os.path.join(tmp, "model")
    modeling.build_model("tiny-qwen2").save_pretrained(mdir, DEFAULT_TOKENIZER)

    hf = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
    hf.config.use_cache = False
    ids, labels = (torch.as_tensor(a, dtype=torch.long)[None] for a in ds[docs[0]])
    n = int((labels[0, 1:] != -100).sum())
    res = {}

    def backbone():
        hf.model(input_ids=ids, use_cache=False).last_hidden_state.sum().backward()
    res["hf backbone"] = timed(backbone, args.repeat)

    def trl_head(inputs, lab):
        def run():
            out = hf(**inputs, labels=lab, fused_lm_head=True, use_cache=False)
            (-out.log_probs.sum() / n).backward()
        return run
    add_fused_lm_head(hf, outputs=("log_probs", "entropy", "is_top1"))
    res["hf + TRL fused head"] = timed(trl_head({"input_ids": ids}, labels), args.repeat)
    hf.forward = type(hf).forward.__get__(hf)  # undo the patch, then add the head with log_probs only
    add_fused_lm_head(hf, outputs=("log_probs",))
    res["hf + TRL fused head, log_probs only"] = timed(trl_head({"input_ids": ids}, labels), args.repeat)
    hf.forward = type(hf).forward.__get__(hf)
    add_fused_lm_head(hf, outputs=("log_probs", "entropy", "is_top1"))
    pair = [ds[i] for i in docs]
    pf_ids = torch.as_tensor(list(pair[0][0]) + list(pair[1][0]), dtype=torch.long)[None]
    pf_lab = torch.as_tensor(list(pair[0][1]) + list(pair[1][1]), dtype=torch.long)[None]
    pf_lab[0, L] = -100
    pos = torch.cat([torch.arange(L), torch.arange(L)])[None]
    res[f"hf padding-free 2 x {L} + TRL fused head"] = timed(trl_head({"input_ids": pf_ids, "position_ids": pos},
                                                                        pf_lab), args.repeat)
    res[f"hf 2 x {L} as two rows (2 x the one-row figure, not timed)"] = 2 * res["hf + TRL fused head"]

    res.update(_s1fast_cases(mdir, [ds[i] for i in docs], n, args.repeat))
    env = environment()
    print(markdown_header(env))
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v:7.3f} s")
    if args.json:
        json.dump({"environment": env, "tokens": L, "repeat": args.repeat, "median_s": res}, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
