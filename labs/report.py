"""What every lab's report shares: its runs in worker processes of one torch thread each, and GIFs of episodes."""

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_in_workers(run, jobs: list, workers: int) -> list:
    """[run(job) for job in jobs], `workers` at a time in processes of one torch thread each (a report's runs are
    many and small: processes scale on a few cores, threads within one small model do not). `run` and the jobs must
    pickle: a module-level function and plain data."""
    with ProcessPoolExecutor(max_workers=workers, initializer=_one_torch_thread) as pool:
        return list(pool.map(run, jobs))


def save_gif(path: Path, images: list, frame_ms: int) -> None:
    """PIL images -> an endlessly looping GIF of `frame_ms` per frame (palette-optimized: they stay small)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0, optimize=True)
