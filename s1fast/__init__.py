"""s1fast: fast, exact distillation training of reasoning models.

Floors, from the bottom: ``s1fast.data`` (reasoning traces -> token ids and loss masks),
``s1fast.packing`` (balanced packing plans, native collate), ``s1fast.model`` (lean Qwen2/Llama
decoder), ``s1fast.train`` (the FSDP2 loop), ``s1fast.generate`` / ``s1fast.eval`` (budget forcing).
"""
__version__ = "0.1.0"
