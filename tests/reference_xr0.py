"""An independent, functional re-statement of the published XR0 inference math (the official forward) and of the
released post-training loss, written from the spec and reading weights straight from a state dict. It shares no code
with modeling_xr0.py: it runs the stock Qwen3-VL the way the official code does (full forward with use_cache) and
spells out the DiT, its masks and positions, the Euler loop and the loss by hand."""

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


def _prefill(vlm, config, input_ids, attention_mask, pixel_values, image_grid_thw):
    """The official VLM pass: (the cache, (3, B) first DiT position per MRoPE axis, (B, L) bool real tokens)."""
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
    # DiT positions: each axis continues from its own max prompt position + 1.
    real = attention_mask.bool()
    start = (
        torch.stack([positions[:, b][:, real[b]].amax(dim=1) for b in range(input_ids.shape[0])], dim=1) + 1
    )
    return cache, start, real


def _dit_velocity(sd, config, cache, rows, cos, sin, mask, state, x, t, action_mask):
    """One DiT pass over [sink, state, x] for the batch rows `rows` (B', indices into the cache's batch):
    cos/sin (B', Q, D), mask (B', 1, Q, L + Q) bool, state (B', S, ·), x (B', T, A), t (B',)."""
    text = config.vlm_config.text_config
    hidden = config.dit_config.hidden_size
    head_dim = config.dit_config.head_dim
    heads = hidden // head_dim
    n_dit = config.dit_config.num_hidden_layers
    B, T = x.shape[:2]
    Q = 1 + state.shape[1] + T
    # timestep embedding
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = (t * 1000)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    emb = F.linear(F.silu(F.linear(emb, sd["t_embedder.mlp.0.weight"])), sd["t_embedder.mlp.2.weight"])
    t_mod = F.linear(emb, sd["t_projector.layers.0.weight"], sd["t_projector.layers.0.bias"]).view(
        B, 6, hidden
    )
    # token sequence [sink, state, actions]
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
        ck = layer_cache.keys[rows].repeat_interleave(reps, dim=1)
        cv = layer_cache.values[rows].repeat_interleave(reps, dim=1)
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
    """The published inference: plain causal mask over the DiT tokens, no position offset, 5 Euler steps."""
    T = action_mask.shape[1]  # the robot type's chunk length, as the official forward reads it
    S = state.shape[1]
    cache, start, real = _prefill(vlm, config, input_ids, attention_mask, pixel_values, image_grid_thw)
    B, L = input_ids.shape
    Q = 1 + S + T
    cos, sin = vlm.model.language_model.rotary_emb(noise, start[:, :, None] + torch.arange(Q))
    # prompt padding for the cache part, lower-triangular over the DiT tokens
    mask = torch.cat(
        [
            real[:, None, None, :].expand(B, 1, Q, L),
            torch.ones(Q, Q, dtype=torch.bool).tril()[None, None].expand(B, 1, Q, Q),
        ],
        dim=-1,
    )
    rows = torch.arange(B)
    x = noise.clone()
    for k in range(5):  # five Euler steps from t=0 (noise) to t=1 (data)
        t = torch.full((B,), k / 5)
        x = x + _dit_velocity(state_dict, config, cache, rows, cos, sin, mask, state, x, t, action_mask) / 5
    return x


def reference_loss(
    vlm,
    state_dict,
    config,
    batch,
    actions,
    action_mask,
    noise,
    timestep,
    prefix_lengths,
    hidden_actions,
    repeats=1,
    window=4,
    offset=10,
    frequency_weight=1.0,
    reweight_range=(0.5, 5.0),
    num_steps=5,
):
    """The released post-training loss (XR0 class of the post-training release, read from the spec), row by row.

    Rows are the repeated batch: sample i's `repeats` copies are rows i·R .. i·R + R - 1, each with its own
    noise (B·R, T, A), flow time (B·R,), prefix length p (B·R,) and hidden prefix tokens (B·R, T) bool. As
    released, for a row with p committed actions:
      - the DiT input is [actions[:p], x_t[p:]], x_t = (1 - t)·noise + t·actions; mask: causal over [sink, state,
        actions] with the Λ band (action i sees actions i - w .. i), the hidden prefix columns removed for the
        noisy rows; positions continue the prompt's, +offset on the noisy action tokens; output zeroed at the
        prefix; the prediction and the target (actions - noise) are taken at steps >= p;
      - with p > 0, the weight is |generated - actions| at steps >= p, where `generated` is the 5-step Euler
        generation from [actions[:p], noise[p:]] through the SAME mask and positions; normalized by its mean over
        the masked entries of the rows with a prefix, clamped; weight 1 for rows without a prefix;
      - loss = 0.5 · mean over masked entries of (v - target)² · weight + c · frequency term, the frequency term
        being Σ_rows mean-weight(row) · Σ |rfft(v[p:]) - rfft(target[p:])| over active dims, divided by
        Σ_rows (active dims) · ((T - p) // 2 + 1): the release's mean over batch × frequencies × dims when every
        row shares p and every dim is active.
    Returns a dict of float64 scalars: loss, flow_loss, frequency_loss; and the per-row weights.
    """
    sd = state_dict
    B, T, A = actions.shape
    R = repeats
    S = batch["state"].shape[1]
    cache, start, real = _prefill(
        vlm,
        config,
        batch["input_ids"],
        batch["attention_mask"],
        batch["pixel_values"],
        batch["image_grid_thw"],
    )
    L = real.shape[1]
    Q = 1 + S + T
    first_action = 1 + S
    rows_v, rows_w, rows_mask, rows_p = [], [], [], []
    for r in range(B * R):
        i = r // R  # the sample of this row
        p = int(prefix_lengths[r])
        # positions: continue the prompt; the noisy action tokens shifted by the offset
        pos = start[:, i : i + 1, None] + torch.arange(Q)  # (3, 1, Q)
        pos[:, :, first_action + p :] += offset
        cos, sin = vlm.model.language_model.rotary_emb(noise, pos)
        # mask over the DiT tokens: causal, Λ band among actions, hidden prefix columns for noisy queries
        own = torch.ones(Q, Q).tril()
        band = torch.ones(T, T).tril() * torch.ones(T, T).triu(diagonal=-window)
        own[first_action:, first_action:] = band
        for j in range(T):
            if hidden_actions[r, j]:
                own[first_action + p :, first_action + j] = 0
        mask = torch.cat([real[i][None, :].expand(Q, L), own.bool()], dim=-1)[None, None]
        rows = torch.tensor([i])
        state = batch["state"][i : i + 1]
        a, n, m = actions[i : i + 1], noise[r : r + 1], action_mask[i : i + 1]
        t = timestep[r : r + 1]

        def v(x, t_row, rows=rows, cos=cos, sin=sin, mask=mask, state=state, m=m, p=p):
            out = _dit_velocity(sd, config, cache, rows, cos, sin, mask, state, x, t_row, m)
            out[:, :p] = 0.0
            return out

        x_t = (1 - t[:, None, None]) * n + t[:, None, None] * a
        velocity = v(torch.cat([a[:, :p], x_t[:, p:]], dim=1), t)
        if p > 0:
            with torch.no_grad():
                z = torch.cat([a[:, :p], n[:, p:]], dim=1)
                for k in range(num_steps):
                    z = z + v(z, torch.full((1,), k / num_steps)) / num_steps
            raw_weight = (z - a)[:, p:].abs()
        else:
            raw_weight = None
        rows_v.append((velocity - (a - n))[:, p:].double())
        rows_w.append(raw_weight)
        rows_mask.append(m[:, p:].bool())
        rows_p.append(p)
    # weights: normalized by the mean over the masked entries of the rows with a prefix, clamped
    prefixed = [(w, msk) for w, msk in zip(rows_w, rows_mask, strict=True) if w is not None]
    if prefixed:
        total = sum(float(w[msk].double().sum()) for w, msk in prefixed)
        count = sum(int(msk.sum()) for _, msk in prefixed)
        mean_error = total / max(count, 1)
    weights = []
    for w, msk in zip(rows_w, rows_mask, strict=True):
        if w is None:
            weights.append(torch.ones_like(msk, dtype=torch.float64))
        else:
            weights.append((w.double() / max(mean_error, 1e-8)).clamp(*reweight_range))
    squared = sum(
        float(((e**2) * w)[msk].sum()) for e, w, msk in zip(rows_v, weights, rows_mask, strict=True)
    )
    entries = sum(int(msk.sum()) for msk in rows_mask)
    flow_loss = squared / max(entries, 1)
    spectral, bins = 0.0, 0
    for e, w, msk, p in zip(rows_v, weights, rows_mask, rows_p, strict=True):
        if p >= T:
            continue
        active = msk.any(dim=1)[0]  # (A,) the row's active dims
        if not active.any():
            continue
        mean_weight = float(w[msk].mean())
        spectrum = torch.fft.rfft(e[0][:, active], dim=0).abs()  # ((T - p) // 2 + 1, active dims)
        spectral += mean_weight * float(spectrum.sum())
        bins += int(active.sum()) * ((T - p) // 2 + 1)
    frequency = spectral / max(bins, 1)
    return {
        "loss": 0.5 * flow_loss + frequency_weight * frequency,
        "flow_loss": flow_loss,
        "frequency_loss": frequency,
        "weights": weights,
    }
