"""A tiny XR0 with the real architecture and random weights: for the demo and the tests (the 4.7B model is
never built on these machines)."""

import torch

from .configuration_xr0 import XR0Config
from .modeling_xr0 import XR0ForActionGeneration

TINY_VLM_CONFIG = {
    "text_config": {
        "vocab_size": 151936,  # the real vocabulary, so real token ids work
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    },
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
}
TINY_DIT_CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "head_dim": 16, "num_key_value_heads": 2}


def tiny_config(**overrides) -> XR0Config:
    kwargs = {"vlm_config": TINY_VLM_CONFIG, "dit_config": TINY_DIT_CONFIG, "action_length": 6}
    kwargs.update(overrides)
    return XR0Config(**kwargs)


def tiny_model(seed: int = 0, dtype=torch.float32, **overrides) -> XR0ForActionGeneration:
    """A tiny model whose every parameter is random (norms and adaLN tables included), so that no part of the
    computation is an identity that a test could not see."""
    torch.manual_seed(seed)
    model = XR0ForActionGeneration(tiny_config(**overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.15 * torch.randn(param.shape, generator=generator))
    return model.to(dtype).eval()
