"""Inference latency per stage, eager against the optimized sampler in one run: the command to run on a GPU.

    xr0-benchmark --model published --device cuda --dtype bfloat16 --attn_implementation sdpa \\
        --compile --cuda_graphs                                     (one JSON line on stdout)

`--model` is a checkpoint directory, or a real-size model with random weights built here (nothing downloaded):
`published` = the whole 4.7B model of the repository's `config.json` (processor, VLM prefill, DiT), and
`published-dit` = the published DiT (16 layers x 1024) over a synthetic real-size KV cache of `--prompt_length`
tokens (the VLM is reduced to one small layer per DiT layer and not timed), for machines without the memory for the
VLM. Stages, each p50/p90/max in milliseconds over `--runs` after `--warmup`:
  processor   images + instruction + state -> model inputs (one observation of `--views` 224x224 views);
  prefill     the VLM over the prompt and the KV cache of the DiT's layers (`encode_observation`);
  dit_step    one DiT evaluation of the velocity (`velocity`);
  chunk       the whole action chunk: `--num_steps` Euler steps (`sample_actions`).
With `--compile` and/or `--cuda_graphs`, `dit_step` and `chunk` are timed again after `optimize_sampler` (the
step compiled alone with `--compile`), with the eager/optimized ratio and the largest |difference| between the
two chunks from the same noise. `first_call_seconds` is the optimized path's first call (compilation, capture).
"""

import copy
import json
import statistics
import sys
import time

from xr0_common.cli import ArgumentParser

MODELS = ("published", "published-dit")
DTYPES = ("float32", "bfloat16", "float16")


def dit_only_config(config_file, action_length: int):
    """The checkpoint's config with a VLM of one small text layer per DiT layer (its KV heads and head_dim
    kept) and a one-block vision tower: the DiT and the cache geometry are the checkpoint's."""
    from ..configuration_xr0 import XR0Config

    values = json.loads(config_file.read_text())
    vlm = copy.deepcopy(values["vlm_config"])
    text = vlm["text_config"]
    heads = text["num_key_value_heads"]
    text.update(
        num_hidden_layers=values["dit_config"]["num_hidden_layers"],
        hidden_size=64,
        intermediate_size=64,
        num_attention_heads=heads,
        vocab_size=256,
    )
    text.pop("layer_types", None)
    vision = vlm["vision_config"]
    vision.update(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64)
    vision["deepstack_visual_indexes"] = []
    values.update(vlm_config=vlm, action_length=action_length)
    for key in ("architectures", "auto_map", "model_type", "dtype", "transformers_version"):
        values.pop(key, None)
    return XR0Config(**values)


def synthetic_observation(model, prompt_length: int, batch_size: int = 1, seed: int = 0):
    """An observation whose cache has the VLM's geometry (B, h, L, D) per DiT layer with random values, in the
    model's dtype; [sink, state] come from the model."""
    import torch

    from ..modeling_xr0 import XR0Observation

    config = model.config
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, config.num_dit_attention_heads, prompt_length, config.dit_config.head_dim)
    dtype = model.dtype

    def random(shape):
        return torch.randn(shape, generator=generator).to(device=model.device, dtype=dtype)

    layers = config.dit_config.num_hidden_layers
    keys = tuple(random(shape) for _ in range(layers))
    values = tuple(random(shape) for _ in range(layers))
    state = random((batch_size, config.state_length, config.state_dim))
    with torch.no_grad():
        sink = model.sink.weight[None].expand(batch_size, -1, -1)
        context = torch.cat([sink, model.state_projector(state)], dim=1)
    return XR0Observation(
        cache_keys=keys,
        cache_values=values,
        cache_mask=torch.ones(batch_size, prompt_length, dtype=torch.bool, device=model.device),
        next_position=torch.full((3, batch_size), prompt_length, device=model.device),
        context_tokens=context,
    )


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_arguments(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help=f"checkpoint directory, or one of {', '.join(MODELS)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--attn_implementation", default="sdpa", help="eager, sdpa, flash_attention_2, ...")
    parser.add_argument("--compile", action="store_true", help="time the compiled sampler too")
    parser.add_argument(
        "--compile_mode", default=None, help="torch.compile mode (default, max-autotune, ...)"
    )
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend")
    parser.add_argument(
        "--cuda_graphs", action="store_true", help="time the CUDA-graph sampler too (CUDA only)"
    )
    parser.add_argument("--views", type=int, default=2, help="camera views per observation (full models)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--action_length", type=int, default=32, help="T, action tokens per chunk")
    parser.add_argument("--prompt_length", type=int, default=190, help="prompt tokens (published-dit)")
    parser.add_argument("--num_steps", type=int, default=None, help="Euler steps (default: the config's)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("views", "batch_size", "action_length", "prompt_length", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or (args.num_steps is not None and args.num_steps < 1):
        parser.error("--warmup must be >= 0 and --num_steps >= 1")
    if args.cuda_graphs and not args.device.startswith("cuda"):
        parser.error(f"--cuda_graphs needs a CUDA device, got --device {args.device}")
    return args


def build(args):
    """(model, processor or None): the checkpoint, or a real-size model with random weights."""
    import torch

    from .. import REPO_ROOT
    from ..configuration_xr0 import XR0Config
    from ..modeling_xr0 import XR0ForActionGeneration
    from ..processing_xr0 import XR0Processor

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    if args.model == "published-dit":
        config = dit_only_config(REPO_ROOT / "config.json", args.action_length)
        config._attn_implementation = args.attn_implementation
        return XR0ForActionGeneration(config).to(device=args.device, dtype=dtype).eval(), None
    if args.model == "published":
        config = XR0Config.from_pretrained(REPO_ROOT)
        with torch.device(args.device):  # random weights, initialised where they will run
            model = XR0ForActionGeneration._from_config(
                config, dtype=dtype, attn_implementation=args.attn_implementation
            )
        return model.eval(), XR0Processor.from_pretrained(REPO_ROOT)
    model = XR0ForActionGeneration.from_pretrained(
        args.model, dtype=dtype, attn_implementation=args.attn_implementation
    )
    return model.to(args.device).eval(), XR0Processor.from_pretrained(args.model)


def model_inputs(args, model, processor) -> dict:
    """One batch of observations of `--views` random 224x224 views, through the processor, for a robot type
    registered here with those views and T = `--action_length`."""
    import numpy as np

    config = model.config
    processor.register_robot_type(
        "benchmark",
        views=[[f"view_{i}", f"View-{i}"] for i in range(args.views)],
        action_mean=np.zeros((args.action_length, config.action_dim)),
        action_std=np.ones((args.action_length, config.action_dim)),
    )
    rng = np.random.default_rng(args.seed)
    images = [
        {f"view_{i}": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(args.views)}
        for _ in range(args.batch_size)
    ]
    return dict(
        images=images,
        instruction=["Put the red block on the green plate and close the drawer."] * args.batch_size,
        state=rng.normal(size=(args.batch_size, 8)).astype(np.float32),
        robot_type="benchmark",
    )


def timed(function, runs: int, warmup: int, device):
    """(last result, [milliseconds of each run]) after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    milliseconds = []
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        result = function()
        synchronize(device)
        milliseconds.append(1e3 * (time.perf_counter() - start))
    return result, milliseconds


def summary(milliseconds: list) -> dict:
    ordered = sorted(milliseconds)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p90": round(p90, 3), "max": round(ordered[-1], 3)}


def run(args) -> dict:
    import torch

    model, processor = build(args)
    device = model.device
    num_steps = args.num_steps or model.config.num_inference_steps
    stages = {}
    with torch.inference_mode():
        if processor is None:
            observation = synthetic_observation(model, args.prompt_length, args.batch_size, args.seed)
            prompt_length = args.prompt_length
        else:
            raw = model_inputs(args, model, processor)
            inputs, stages["processor"] = timed(lambda: processor(**raw), args.runs, args.warmup, device)
            inputs = inputs.to(device)
            encode = dict(inputs)
            for key in ("action_mask", "labels"):
                encode.pop(key, None)
            observation, stages["prefill"] = timed(
                lambda: model.encode_observation(**encode), args.runs, args.warmup, device
            )
            prompt_length = int(inputs["input_ids"].shape[1])

        generator = torch.Generator().manual_seed(args.seed)
        shape = (args.batch_size, args.action_length, model.config.action_dim)
        action_mask = torch.ones(shape, device=device)
        noise = torch.randn(shape, generator=generator).to(device)
        timestep = torch.full((args.batch_size,), 0.4, device=device)
        layout = model.chunk_layout(observation, args.action_length)

        def step(velocity=model.velocity):
            return velocity(noise, timestep, observation, action_mask, layout)

        def chunk():
            return model.sample_actions(observation, action_mask, noise=noise, num_steps=num_steps)

        _, stages["dit_step"] = timed(step, args.runs, args.warmup, device)
        eager_actions, stages["chunk"] = timed(chunk, args.runs, args.warmup, device)

        result = {}
        if args.compile or args.cuda_graphs:
            compile_options = dict(mode=args.compile_mode, backend=args.compile_backend)
            model.optimize_sampler(compile=args.compile, cuda_graphs=args.cuda_graphs, **compile_options)
            synchronize(device)
            start = time.perf_counter()
            chunk()
            synchronize(device)
            result["first_call_seconds"] = round(time.perf_counter() - start, 2)
            optimized_actions, stages["optimized_chunk"] = timed(chunk, args.runs, args.warmup, device)
            if args.compile:
                velocity = torch.compile(model.velocity, fullgraph=True, **compile_options)
                _, stages["optimized_dit_step"] = timed(
                    lambda: step(velocity), args.runs, max(1, args.warmup), device
                )
            result["max_abs_action_difference"] = float((optimized_actions - eager_actions).abs().max())
    stages = {name: summary(values) for name, values in stages.items()}
    if "optimized_chunk" in stages:  # eager p50 / optimized p50, both measured above
        result["speedup"] = {
            stage: round(stages[stage]["p50"] / stages[f"optimized_{stage}"]["p50"], 3)
            for stage in ("dit_step", "chunk")
            if f"optimized_{stage}" in stages
        }
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "attn_implementation": args.attn_implementation,
        "compile": args.compile,
        "compile_mode": args.compile_mode,
        "cuda_graphs": args.cuda_graphs,
        "batch_size": args.batch_size,
        "views": args.views if processor is not None else None,
        "prompt_length": prompt_length,
        "action_length": args.action_length,
        "num_steps": num_steps,
        "runs": args.runs,
        "stages_ms": stages,
        **result,
        "peak_memory_mib": round(peak, 1) if peak is not None else None,
    }


def main(argv=None) -> int:
    args = parse_arguments(argv)
    print(json.dumps(run(args)))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
