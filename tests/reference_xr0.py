"""An independent, functional re-statement of the published XR0 inference math (the official forward), written from the
spec and reading weights straight from a state dict. It shares no code with modeling_xr0.py: it runs the stock
Qwen3-VL the way the official code does (full forward with use_cache) and spells out the DiT by hand."""

import inspect
import math

import torch
import torch.nn.functional as F


def _rms(x, weight, eps=1e-6):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _two_layer(x, sd, prefix):
    return F.linear(
        F.gelu(F.linear(x, sd[prefix + "layers.0.weight"]), approximate="tanh"),
        sd[prefix + "layers.2.weight"],
    )


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def reference_actions(
    vlm,
    state_dict,
    config,
    input_ids,
    attention_mask,
    pixel_values,
    image_grid_thw,
    state,
    action_mask,
    noise,
):
    sd = state_dict
    text = config.vlm_config.text_config
    hidden = config.dit_config.hidden_size
    head_dim = config.dit_config.head_dim
    heads = hidden // head_dim
    n_dit = config.dit_config.num_hidden_layers
    T = action_mask.shape[1]  # the robot type's chunk length, as the official forward reads it
    S = state.shape[1]

    # 1. VLM prefill as the official code does it.
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        use_cache=True,
    )
    rope_params = inspect.signature(vlm.model.get_rope_index).parameters
    if "mm_token_type_ids" in rope_params:
        token_types = (input_ids == config.vlm_config.image_token_id).int()
        kwargs["mm_token_type_ids"] = token_types
        positions, _ = vlm.model.get_rope_index(
            input_ids, token_types, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
    else:
        positions, _ = vlm.model.get_rope_index(
            input_ids, image_grid_thw, None, attention_mask=attention_mask
        )
    out = vlm(**kwargs)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    B, L = input_ids.shape

    # 2. DiT positions: each axis continues from its own max prompt position + 1; rotary from the VLM's.
    real = attention_mask.bool()
    start = torch.stack([positions[:, b][:, real[b]].amax(dim=1) for b in range(B)], dim=1) + 1  # (3, B)
    Q = 1 + S + T
    dit_pos = start[:, :, None] + torch.arange(Q)
    cos, sin = vlm.model.language_model.rotary_emb(noise, dit_pos)

    # 3. Mask: prompt padding for the cache part, lower-triangular over the DiT tokens.
    mask = torch.cat(
        [
            real[:, None, None, :].expand(B, 1, Q, L),
            torch.ones(Q, Q, dtype=torch.bool).tril()[None, None].expand(B, 1, Q, Q),
        ],
        dim=-1,
    )

    def velocity(x, t):
        # 6. timestep embedding
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        args = (t * 1000)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
        emb = F.linear(F.silu(F.linear(emb, sd["t_embedder.mlp.0.weight"])), sd["t_embedder.mlp.2.weight"])
        t_mod = F.linear(emb, sd["t_projector.layers.0.weight"], sd["t_projector.layers.0.bias"]).view(
            B, 6, hidden
        )
        # 7. token sequence [sink, state, actions]
        h = torch.cat(
            [
                sd["sink.weight"][None].expand(B, 1, hidden),
                _two_layer(state, sd, "state_projector."),
                _two_layer(x * action_mask, sd, "action_projector."),
            ],
            dim=1,
        )
        for i in range(n_dit):
            p = f"dit.layers.{i}."
            layer_cache = cache.layers[text.num_hidden_layers - n_dit + i]
            reps = heads // layer_cache.keys.shape[1]
            ck = layer_cache.keys.repeat_interleave(reps, dim=1)
            cv = layer_cache.values.repeat_interleave(reps, dim=1)
            mods = sd[p + "adaln_table"][None] + t_mod
            s1, c1, g1, s2, c2, g2 = [mods[:, j : j + 1] for j in range(6)]
            a_in = _rms(h, sd[p + "input_layernorm.weight"]) * (1 + c1) + s1
            qkv = F.linear(a_in, sd[p + "attn.qkv_proj.weight"], sd[p + "attn.qkv_proj.bias"])
            q, k, v = [z.view(B, Q, heads, head_dim) for z in qkv.split(hidden, dim=-1)]
            q = _rope(_rms(q, sd[p + "attn.q_norm.weight"]).transpose(1, 2), cos, sin)
            k = _rope(_rms(k, sd[p + "attn.k_norm.weight"]).transpose(1, 2), cos, sin)
            v = v.transpose(1, 2)
            keys, values = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
            scores = q @ keys.transpose(-1, -2) / math.sqrt(head_dim)
            scores = scores.masked_fill(~mask, float("-inf"))
            attn = (scores.softmax(-1).nan_to_num() @ values).transpose(1, 2).reshape(B, Q, hidden)
            h = h + g1 * F.linear(attn, sd[p + "attn.o_proj.weight"])
            h = _rms(h, sd[p + "middle_layernorm.weight"])
            m_in = _rms(h, sd[p + "post_layernorm.weight"]) * (1 + c2) + s2
            mlp = F.linear(
                F.silu(F.linear(m_in, sd[p + "mlp.gate_proj.weight"]))
                * F.linear(m_in, sd[p + "mlp.up_proj.weight"]),
                sd[p + "mlp.down_proj.weight"],
            )
            h = _rms(h + g2 * mlp, sd[p + "final_layernorm.weight"])
        return _two_layer(h[:, -T:], sd, "action_output_layer.")

    # 8. five Euler steps from t=0 (noise) to t=1 (data)
    x = noise.clone()
    for k in range(5):
        x = x + velocity(x, torch.full((B,), k / 5)) / 5
    return x
