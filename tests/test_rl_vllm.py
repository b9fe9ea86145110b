"""RL's vLLM generator (``--generator vllm``) against a stand-in with vLLM's behaviour (tests/fake_vllm.py): the
policy's weights reach the engine's model, its prefix cache is dropped after each load, and a temperature vLLM
refuses is refused before any setup."""
import os
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from fake_vllm import FakeLLM, SamplingParams
from test_generate_forcing import tok  # noqa: F401 - fixture


class EngineModel(torch.nn.Module):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def load_weights(self, weights):
        self.calls.append(("load", [name for name, _ in weights]))


def fake_vllm_module(calls) -> ModuleType:
    """``vllm`` with an LLM whose model is reachable only when its engine runs in this process, as vLLM's V1
    ``LLMEngine.model_executor`` exists only with VLLM_ENABLE_V1_MULTIPROCESSING=0."""
    class LLM(FakeLLM):
        def __init__(self, model, **kw):
            super().__init__(lambda ids, sp: 1)
            calls.append(("init", model, os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")))
            if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
                runner = SimpleNamespace(model=EngineModel(calls))
                self.llm_engine.model_executor = SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))

        def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
            calls.append(("reset",))
            return True

    m = ModuleType("vllm")
    m.LLM, m.SamplingParams = LLM, SamplingParams
    return m


def test_rl_vllm_generator_reaches_the_engines_model_and_drops_stale_prefix_cache(tok, monkeypatch):
    """vLLM's V1 engine runs in a child process by default: the weights could not be loaded (an error at the
    first refresh, after the setup); and after a load the prefix cache kept KV blocks (the shared system
    prompt) computed by the old weights, reused by every later rollout."""
    from s1fast.rl.config import RLConfig
    from s1fast.rl.rollout import VLLMRollout
    calls = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module(calls))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    r = VLLMRollout(tok, RLConfig(generator="vllm"), SimpleNamespace(type="cuda"), "model-dir")
    assert calls == [("init", "model-dir", "0")]
    r.device = torch.device("cpu")
    r.refresh(None, {"model.embed_tokens.weight": torch.zeros(2, 2)}, torch.float32)
    assert [c[0] for c in calls] == ["init", "load", "reset"]


def test_rl_config_refuses_a_temperature_vllm_refuses():
    from s1fast.config import ConfigError
    from s1fast.rl.config import RLConfig, validate
    with pytest.raises(ConfigError, match="--generator vllm: --temperature 2.5 with vLLM"):
        validate(RLConfig(generator="vllm", temperature=2.5, model="m"), 1)
