"""The tiny XR0 configurations, each defined once and used by name: the real architecture at small sizes, for the
tests, the embedded demo checkpoint and the closed-loop fixtures (the 4.7B model is never built on these machines).

    tiny_config("metaworld")   # an XR0Config of the Meta-World fixture's sizes
    tiny_model()               # the tests' model ("test"), every parameter random

Every configuration keeps the real vocabulary (151,936 tokens), so the real tokenizer's ids work. A DiT's `head_dim`
and `num_key_value_heads` equal its language model's: DiT queries attend to the language model's cached keys.
torch and transformers load only when a model or a config is built, so the commands that name a configuration print
`--help` at once.
"""

import copy

# The tests' language model: large enough that every part of the computation is visible.
_TEST_TEXT_CONFIG = {
    "vocab_size": 151936,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
}
# The closed-loop fixtures' language model: its attention, narrower (frozen real embeddings are most of the file).
_FIXTURE_TEXT_CONFIG = {
    **_TEST_TEXT_CONFIG,
    "hidden_size": 48,
    "intermediate_size": 192,
    "tie_word_embeddings": True,
}
_FIXTURE_VISION_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 4,
    "out_hidden_size": 48,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 64,
}

# name -> XR0Config keyword arguments. Shipped fixtures were written from these: a test checks their config.json.
TINY_CONFIGURATIONS = {
    # The tests' model: T = 6 keeps the tests fast.
    "test": {
        "vlm_config": {
            "text_config": _TEST_TEXT_CONFIG,
            "vision_config": {
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 64,
                "patch_size": 16,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "deepstack_visual_indexes": [0],
                "num_position_embeddings": 64,
            },
        },
        "dit_config": {"hidden_size": 64, "num_hidden_layers": 2, "head_dim": 16, "num_key_value_heads": 2},
        "action_length": 6,
    },
    # fixtures/tiny-xr0, the demo's checkpoint: as small as the real vocabulary allows (~5 MB in bf16).
    "tiny-xr0": {
        "vlm_config": {
            "text_config": {
                "vocab_size": 151936,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 4,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 8,
                "max_position_embeddings": 4096,
                "rope_theta": 10000.0,
                "rope_scaling": {
                    "rope_type": "default",
                    "mrope_section": [2, 1, 1],
                    "mrope_interleaved": True,
                },
                "tie_word_embeddings": True,
            },
            "vision_config": {
                "depth": 2,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_heads": 2,
                "out_hidden_size": 16,
                "patch_size": 16,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "deepstack_visual_indexes": [0],
                "num_position_embeddings": 64,
            },
            "tie_word_embeddings": True,
        },
        "dit_config": {"hidden_size": 32, "num_hidden_layers": 2, "head_dim": 8, "num_key_value_heads": 1},
        "action_length": 30,
    },
    # fixtures/planar-reach/*: T = 30 (1 s at 30 Hz), the default 32-wide state.
    "planar-reach": {
        "vlm_config": {
            "text_config": _FIXTURE_TEXT_CONFIG,
            "vision_config": {**_FIXTURE_VISION_CONFIG, "depth": 4, "deepstack_visual_indexes": [1]},
            "tie_word_embeddings": True,
        },
        "dit_config": {
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "head_dim": 16,
            "num_key_value_heads": 2,
            "intermediate_size": 256,
        },
        "action_length": 30,
    },
    # fixtures/metaworld/mt10: T = 32 (0.4 s at 80 Hz), Meta-World's 39-D state (32 would drop the goal).
    "metaworld": {
        "vlm_config": {
            "text_config": _FIXTURE_TEXT_CONFIG,
            "vision_config": {**_FIXTURE_VISION_CONFIG, "depth": 2, "deepstack_visual_indexes": [0]},
            "tie_word_embeddings": True,
        },
        "dit_config": {
            "hidden_size": 192,
            "num_hidden_layers": 4,
            "head_dim": 16,
            "num_key_value_heads": 2,
            "intermediate_size": 576,
        },
        "action_length": 32,
        "state_dim": 39,
    },
}
# The tests' sizes under their historical names (tests vary one field of them).
TINY_VLM_CONFIG = TINY_CONFIGURATIONS["test"]["vlm_config"]
TINY_DIT_CONFIG = TINY_CONFIGURATIONS["test"]["dit_config"]


def tiny_configuration(name: str = "test") -> dict:
    """The named configuration's XR0Config keyword arguments, a copy (configs may be edited in place)."""
    if name not in TINY_CONFIGURATIONS:
        raise ValueError(
            f"unknown tiny configuration {name!r}; the configurations are {list(TINY_CONFIGURATIONS)}"
        )
    return copy.deepcopy(TINY_CONFIGURATIONS[name])


def tiny_config(name: str = "test", **overrides):
    """An `XR0Config` of the named configuration, with `overrides` (any XR0Config field) on top."""
    from .configuration_xr0 import XR0Config

    return XR0Config(**{**tiny_configuration(name), **overrides})


def tiny_model(seed: int = 0, dtype=None, configuration: str = "test", **overrides):
    """A tiny `XR0ForActionGeneration` (float32 unless `dtype`) whose every parameter is random (norms and adaLN
    tables included), so that no part of the computation is an identity that a test could not see."""
    import torch

    from .modeling_xr0 import XR0ForActionGeneration

    torch.manual_seed(seed)
    model = XR0ForActionGeneration(tiny_config(configuration, **overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.15 * torch.randn(param.shape, generator=generator))
    return model.to(dtype or torch.float32).eval()
