"""XR0's LeRobot pre- and post-processors, and the robot-type statistics they normalize actions with.

Pre-processor: rename -> batch dim -> device -> normalize (`action` by mean/std; images and state pass as they
are: the XR0 processor inside the policy turns them into prompt tokens, image patches and the model's state).
Post-processor: unnormalize `action` -> CPU. Both are LeRobot's stock steps, so `policy_preprocessor.json` and
`policy_postprocessor.json` save and reload the statistics with the policy and lerobot-train's overrides for a
new dataset apply as they do for every LeRobot policy.

The statistics are one robot type's: a LeRobot dataset's `action` mean/std when fine-tuning (what `xr0-finetune`
registers too), else the checkpoint's registered robot type's.
"""

from typing import Any

import numpy as np
import torch
from lerobot.processor import (
    AddBatchDimensionProcessorStep,
    DeviceProcessorStep,
    NormalizerProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    RenameObservationsProcessorStep,
    UnnormalizerProcessorStep,
)
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
from lerobot.utils.constants import (
    ACTION,
    OBS_STATE,
    POLICY_POSTPROCESSOR_DEFAULT_NAME,
    POLICY_PREPROCESSOR_DEFAULT_NAME,
)

from xr0.configuration_xr0 import XR0Config as XR0ModelConfig
from xr0.training.finetune import load_processor

from .configuration_xr0 import XR0Config


def load_xr0_processor(checkpoint: str):
    """The XR0 processor of a checkpoint directory (this repository's layout, converted or published)."""
    return load_processor(checkpoint, XR0ModelConfig.from_pretrained(checkpoint))


def robot_statistics(config: XR0Config, dataset_stats: dict | None, processor=None) -> dict:
    """{"action": {"mean", "std"}, "observation.state": {"mean", "std"}} as (D,) float32 tensors, D the features'
    widths: the dataset's when given, else the checkpoint's robot type's (its statistics must not vary over the
    chunk: LeRobot normalizes one action at a time). The state's are present only when given by the dataset."""
    action_dim = config.action_feature.shape[0]
    if dataset_stats is not None:
        stats = {}
        for key in (ACTION, OBS_STATE):
            if key not in dataset_stats or not {"mean", "std"} <= set(dataset_stats[key]):
                if key == OBS_STATE:
                    continue
                raise ValueError(
                    f"dataset_stats[{key!r}] needs `mean` and `std` (the dataset's meta/stats.json)."
                )
            stats[key] = {
                name: torch.as_tensor(np.asarray(dataset_stats[key][name], np.float32).reshape(-1))
                for name in ("mean", "std")
            }
        width = stats[ACTION]["mean"].shape[0]
        if width != action_dim:
            raise ValueError(f"dataset_stats['action'] is {width} wide, the action feature {action_dim}.")
        return stats
    if config.checkpoint is None:
        raise ValueError(
            "XR0 normalizes actions with statistics: pass dataset_stats or set policy.checkpoint."
        )
    processor = processor or load_xr0_processor(config.checkpoint)
    if config.robot_type not in processor.robot_types:
        raise ValueError(
            f"policy.robot_type {config.robot_type!r} is not registered in {config.checkpoint} (known: "
            f"{sorted(processor.robot_types)}): fine-tune it on a dataset, which gives its statistics."
        )
    spec = processor.robot_spec(config.robot_type)
    mean, std = spec.action_statistics(processor.chunk_length(config.robot_type))  # (T, A) each
    if not (np.allclose(mean, mean[0]) and np.allclose(std, std[0])):
        raise ValueError(
            f"robot type {config.robot_type!r} has action statistics that vary over the chunk; LeRobot unnormalizes "
            "one action at a time, which needs one mean/std per dim."
        )
    return {
        ACTION: {
            "mean": torch.from_numpy(mean[0, :action_dim].copy()),
            "std": torch.from_numpy(std[0, :action_dim].copy()),
        }
    }


def make_xr0_pre_post_processors(
    config: XR0Config, dataset_stats: dict[str, dict[str, Any]] | None = None
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    stats = robot_statistics(config, dataset_stats)
    features = {**config.input_features, **config.output_features}
    input_steps = [
        RenameObservationsProcessorStep(rename_map={}),
        AddBatchDimensionProcessorStep(),
        DeviceProcessorStep(device=config.device),
        NormalizerProcessorStep(features=features, norm_map=config.normalization_mapping, stats=stats),
    ]
    output_steps = [
        UnnormalizerProcessorStep(
            features=config.output_features, norm_map=config.normalization_mapping, stats=stats
        ),
        DeviceProcessorStep(device="cpu"),
    ]
    return (
        PolicyProcessorPipeline[dict[str, Any], dict[str, Any]](
            steps=input_steps, name=POLICY_PREPROCESSOR_DEFAULT_NAME
        ),
        PolicyProcessorPipeline[PolicyAction, PolicyAction](
            steps=output_steps,
            name=POLICY_POSTPROCESSOR_DEFAULT_NAME,
            to_transition=policy_action_to_transition,
            to_output=transition_to_policy_action,
        ),
    )
