"""The attention backend is an explicit process setting (attention.set_backend, the trainer's --attention),
not an environment variable written at run time."""
import pytest

from s1fast import attention as attn


def test_set_backend_is_explicit_and_validated():
    auto = attn.select_backend("cpu")
    try:
        attn.set_backend("sdpa_mask")
        assert attn.select_backend("cpu") == "sdpa_mask"
        with attn.use_backend("sdpa_doc"):  # a with-block still overrides inside it
            assert attn.select_backend("cpu") == "sdpa_doc"
        assert attn.select_backend("cpu") == "sdpa_mask"
        with pytest.raises(ValueError, match="unknown attention backend 'bogus'"):
            attn.set_backend("bogus")
    finally:
        attn.set_backend(None)
    assert attn.select_backend("cpu") == auto


def test_trainer_sets_the_backend_without_touching_the_environment():
    import inspect

    from s1fast import train
    src = inspect.getsource(train)
    assert "S1FAST_ATTENTION" not in src and "attention.set_backend(" in src
