"""Push a converted variant directory to the Hugging Face Hub (safetensors only).

    python -m xr0.scripts.publish --folder out/libero --repo_id me/xr0-libero [--private] [--revision main] [--dry_run]

`--dry_run` prints what would be uploaded and calls nothing. Without it, a token is needed (`huggingface-cli
login` or HF_TOKEN).
"""

import sys
from pathlib import Path

from xr0_common.cli import ArgumentParser

REQUIRED_FILES = ("config.json",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
TRAINER_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--repo_id", required=True)
    parser.add_argument(
        "--revision", default=None, help="branch to push to (default: the repo's default branch)"
    )
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--commit_message", default="Upload XR0 checkpoint converted with xr0-convert")
    parser.add_argument("--dry_run", action="store_true")
    args = parser.parse_args(argv)

    # A fine-tuning output also holds the Trainer's checkpoint-N folders (optimizer state, RNG: pickles): the
    # published model is the final one at the top.
    files = sorted(
        p
        for p in args.folder.rglob("*")
        if p.is_file()
        and not any(
            part == ".cache" or part.startswith("checkpoint-") for part in p.relative_to(args.folder).parts
        )
        and p.name not in TRAINER_FILES
    )
    missing = [name for name in REQUIRED_FILES if not (args.folder / name).is_file()]
    if missing:
        sys.exit(f"publish: {args.folder} lacks {missing}: convert a checkpoint first (xr0-convert)")
    pickled = [str(p.relative_to(args.folder)) for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickled:
        sys.exit(
            f"publish: refusing to upload pickle files {pickled}: this repository ships safetensors only"
        )

    total = sum(p.stat().st_size for p in files)
    print(
        f"{'dry run: would upload' if args.dry_run else 'uploading'} {len(files)} files ({total / 1e6:.1f} MB) "
        f"from {args.folder} to {args.repo_id}"
        + (f"@{args.revision}" if args.revision else "")
        + (" (private)" if args.private else "")
    )
    for path in files:
        print(f"  {path.relative_to(args.folder)}  {path.stat().st_size / 1e6:.2f} MB")
    if args.dry_run:
        return

    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        folder_path=str(args.folder),
        repo_id=args.repo_id,
        revision=args.revision,
        commit_message=args.commit_message,
        ignore_patterns=[".cache/*", "checkpoint-*", *TRAINER_FILES],
    )
    print(f"pushed: {commit}")


if __name__ == "__main__":
    main()
