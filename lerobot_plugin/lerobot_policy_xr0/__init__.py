"""XR0 as a LeRobot policy. LeRobot (>= 0.4.3) imports this package at start-up because its distribution's name
starts with `lerobot_policy_`; importing it registers `--policy.type=xr0`."""

from .configuration_xr0 import XR0Config
from .modeling_xr0 import XR0Policy
from .processor_xr0 import make_xr0_pre_post_processors

__all__ = ["XR0Config", "XR0Policy", "make_xr0_pre_post_processors"]
