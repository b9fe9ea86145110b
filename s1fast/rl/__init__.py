"""Reinforcement learning with verifiable rewards (GRPO) on top of s1fast's model, FSDP2 and generation.

    torchrun --nproc_per_node N -m s1fast.rl [--preset NAME] [--key value ...]

Files: ``loss`` (advantages, clipped policy-gradient loss, KL, normalisations), ``rewards`` (verifiers and
their weighted sum), ``rollout`` (sampling G completions per prompt with the current weights), ``config``
(the dataclass, presets and command line), ``loop`` (the iteration: generate, reward, update, log, save).
The per-token log-probabilities come from ``s1fast_kernels.logprob_op`` (no [tokens, vocab] logits).
"""
