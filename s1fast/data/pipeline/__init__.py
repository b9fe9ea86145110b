"""The distillation data pipeline: ``python -m s1fast.data generate | verify | decontaminate | select | stats``.

One step per module (``generate``, ``teacher_openai``, ``verify``, ``decontaminate``, ``select``, ``stats``);
``rows`` holds what they share: reading the fields of any schema s1fast reads (s1K, s1K-1.1, ShareGPT,
and the pipeline's own rows), the append-only output that lets an interrupted run resume, and the summary
of counts by reason each step prints at its end. How the steps fit together: the README's "Make your own
s1K" section.
"""

STEPS = {
    "generate": "N samples per question from a teacher (s1fast's engine, vLLM, or an OpenAI-compatible endpoint)",
    "verify": "grade samples against the reference answers; rejection sampling",
    "decontaminate": "drop questions overlapping the evaluation sets (8-grams), and duplicates",
    "select": "choose N questions: s1's quality / difficulty / diversity recipe, or length / difficulty / random",
    "stats": "counts, token-length histograms, per-domain and per-source tables, a PNG",
}
