"""Training configuration: presets reproduce recipe.md, flags override, bad configs fail with what to change."""
import pytest

from s1fast.config import PRESETS, ConfigError, TrainConfig, build_parser, parse_config, validate


def test_presets_match_recipe():
    s1 = parse_config(["--preset", "s1"])
    assert (s1.max_tokens, s1.epochs, s1.global_batch, s1.lr, s1.warmup_ratio) == (32768, 5, 16, 1e-5, 0.05)
    assert (s1.beta1, s1.beta2, s1.eps, s1.weight_decay, s1.grad_clip) == (0.9, 0.95, 1e-8, 1e-4, 1.0)
    assert (s1.dtype, s1.master_dtype, s1.weighting, s1.recipe) == ("bf16", "fp32", "sequence", "s1")
    assert s1.warmup_steps(315) == 16  # recipe.md: 16 warmup steps of 315
    s11 = parse_config(["--preset", "s1.1"])
    assert (s11.max_tokens, s11.recipe) == (20000, "s1.1")
    sky = parse_config(["--preset", "sky-t1"])
    assert (sky.max_tokens, sky.global_batch, sky.epochs, sky.warmup_ratio, sky.weight_decay,
            sky.beta2, sky.recipe) == (16384, 96, 3, 0.1, 0.0, 0.999, "sky-t1")
    tiny = parse_config(["--preset", "tiny"])
    assert tiny.model == "tiny-qwen2" and tiny.preset == "tiny"


def test_flags_override_presets_and_help_lists_them(capsys):
    c = parse_config(["--preset", "s1", "--lr", "2e-5", "--max-steps", "3", "--compile", "--cpu-offload", "false"])
    assert (c.lr, c.max_steps, c.compile, c.cpu_offload, c.epochs) == (2e-5, 3, True, False, 5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--data", "--output-dir", "--max-steps", "--save-every", "--resume", "--preset",
                 "--shard-size", "--activation-checkpointing"):
        assert flag in out
    assert "[default: 32768]" in out
    with pytest.raises(SystemExit):
        parse_config(["--packing", "sideways"])
    assert set(PRESETS) == {"s1", "s1.1", "sky-t1", "tiny", "tiny-toy"}


@pytest.mark.parametrize("kw,world,match", [
    (dict(model=""), 1, "no model: pass --model"),
    (dict(model="x", shard_size=3), 4, "--shard-size 3 must divide the world size 4"),
    (dict(model="x", packing="none", global_batch=3), 2, "multiple of the world size"),
    (dict(model="x", epochs=0), 1, "--epochs must be positive"),
    (dict(model="x", max_steps=0), 1, "--max-steps must be a positive number of steps, or -1"),
    (dict(model="x", max_steps=-3), 1, "--max-steps must be a positive number of steps, or -1"),
    (dict(model="x", warmup_ratio=1.5), 1, "--warmup-ratio"),
    (dict(model="x", checkpoint_budget_gb=40.0), 1, "also pass --activation-checkpointing full"),
    (dict(model="x", checkpoint_budget_gb=40.0, activation_checkpointing="selective"), 1,
     "its memory model is that of full checkpointing"),
    (dict(model="x", checkpoint_budget_gb=40.0, activation_checkpointing="full", checkpoint_layers=3), 1,
     "pass one of them"),
    (dict(model="x", checkpoint_budget_gb=-2.0, activation_checkpointing="full"), 1, "or -1 for the GPU's own"),
])
def test_bad_configs_say_what_to_change(kw, world, match):
    with pytest.raises(ConfigError, match=match):
        validate(TrainConfig(**kw), world)
