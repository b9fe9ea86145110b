"""An OpenAI-compatible server for s1fast models with s1's budget forcing as request fields.

``python -m s1fast.serve --model DIR`` (see ``__main__``) serves ``/v1/chat/completions``,
``/v1/completions``, ``/v1/models`` and ``/health`` on FastAPI + uvicorn, loopback by default. Files:
``api`` (the wire format: request checks, the error shape, responses), ``app`` (routes, key, limits,
streaming), ``vllm_engine`` (the vLLM scheduler); the native scheduler is ``s1fast.batching``.
Usage, request fields and the error table: README.md ("Serving").
"""
