"""What guided inpainting costs: one chunk sampled plainly, with a trained prefix, and guided (identity Jacobian,
vector-Jacobian product), on the tiny checkpoint's architecture and on the published DiT's (numbers, not a test):

    python -m xr0.deploy.benchmark_guidance [--repeats 20] [--prompt_length 160] [--device cpu]

Only the DiT's part of inference is timed (`sample_actions`: 5 Euler steps), from one observation: a prompt cache
of `--prompt_length` tokens with the VLM's real KV geometry (the last `dit_config.num_hidden_layers` layers, KV heads
and head_dim of the config), filled with random values. The VLM prefill before it is the same for every mode. The
published DiT (16 layers, hidden 1024, head_dim 128, T = 30) is built from the repository's `config.json` with
random weights; the VLM's layers are not built (they do not enter the timed part).
"""

import statistics
import time

from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT
from ..sampling_xr0 import PrefixGuidance
from .benchmark_latency import dit_only_config, synchronize, synthetic_observation

MODES = ("plain", "trained prefix", "guided, identity", "guided, vjp")


def time_modes(model, prompt_length: int, repeats: int) -> dict:
    """{mode: median seconds per chunk} of an `XR0ForActionGeneration`; the modes run interleaved so that drifts of
    the machine hit all alike."""
    import torch

    config = model.config
    observation = synthetic_observation(model, prompt_length)
    mask = torch.zeros(1, config.action_length, config.action_dim, device=model.device)
    mask[..., :7] = 1
    overlap = config.action_length // 2
    prefix = torch.randn(1, overlap, config.action_dim, device=model.device)
    delay = max(1, overlap // 3)
    calls = {
        "plain": dict(),
        "trained prefix": dict(action_prefix=prefix[:, :delay]),
        "guided, identity": dict(
            action_prefix=prefix, prefix_mode="guided", guidance=PrefixGuidance(delay, jacobian="identity")
        ),
        "guided, vjp": dict(action_prefix=prefix, prefix_mode="guided", guidance=PrefixGuidance(delay)),
    }
    seconds = {mode: [] for mode in MODES}
    for repeat in range(repeats + 1):
        for mode in MODES:
            noise = torch.randn(mask.shape, generator=torch.Generator().manual_seed(repeat)).to(model.device)
            synchronize(model.device)
            start = time.perf_counter()
            with torch.inference_mode():
                model.sample_actions(observation, mask, noise=noise, **calls[mode])
            synchronize(model.device)
            if repeat:  # the first round warms up
                seconds[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(values) for mode, values in seconds.items()}


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--prompt_length", type=int, default=160, help="prompt tokens in the VLM cache")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.prompt_length < 1:
        parser.error("--repeats and --prompt_length must be >= 1")
    import torch  # after parsing, so that --help prints at once

    from ..modeling_xr0 import XR0ForActionGeneration

    models = {
        "tiny checkpoint's architecture (fixtures/tiny-xr0)": dit_only_config(
            REPO_ROOT / "fixtures" / "tiny-xr0" / "config.json", action_length=10
        ),
        "published DiT (config.json)": dit_only_config(REPO_ROOT / "config.json", action_length=30),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"prompt {args.prompt_length} tokens, median of {args.repeats}"
    )
    for name, config in models.items():
        torch.manual_seed(0)
        model = XR0ForActionGeneration(config).eval().to(args.device)
        times = time_modes(model, args.prompt_length, args.repeats)
        dit = config.dit_config
        print(
            f"{name}: DiT {dit.num_hidden_layers} layers x {dit.hidden_size}, T = {config.action_length}, "
            f"{config.num_inference_steps} Euler steps"
        )
        for mode, value in times.items():
            print(f"  {mode:18s} {1e3 * value:9.2f} ms   x{value / times['plain']:.2f} of plain")


if __name__ == "__main__":
    main()
