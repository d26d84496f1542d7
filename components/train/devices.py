"""Where training runs: every visible GPU with mixed precision and XLA, else the CPU.

The devices actually used are logged and returned so that they go into the model's
metadata: a GPU node that silently fell back to CPU shows up in the run summary.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf


@dataclass(frozen=True)
class DevicePlan:
    """What to switch on for a set of visible GPUs."""

    gpus: tuple[str, ...]
    mixed_precision: bool
    xla: bool
    mirrored: bool

    @property
    def policy(self) -> str:
        return "mixed_float16" if self.mixed_precision else "float32"


def plan_devices(gpus: list[str] | tuple[str, ...]) -> DevicePlan:
    """Mixed precision, XLA and MirroredStrategy exactly when at least one GPU is visible."""
    on_gpu = bool(gpus)
    return DevicePlan(gpus=tuple(gpus), mixed_precision=on_gpu, xla=on_gpu, mirrored=on_gpu)


@dataclass
class Devices:
    """A distribution strategy with the settings training uses under it."""

    strategy: tf.distribute.Strategy
    plan: DevicePlan
    names: list[str]

    def describe(self) -> dict:
        """The record kept in the train summary and the model's metadata."""
        return {
            "devices": self.names,
            "gpus": list(self.plan.gpus),
            "replicas": self.strategy.num_replicas_in_sync,
            "strategy": type(self.strategy).__name__,
            "mixed_precision": self.plan.mixed_precision,
            "xla": self.plan.xla,
        }


def setup_devices(strategy: tf.distribute.Strategy | None = None, log=print) -> Devices:
    """Pick the devices, set the global dtype policy, and log what training will use.

    `strategy` overrides the choice (tests pass a MirroredStrategy over the CPU).
    """
    plan = plan_devices([d.name for d in tf.config.list_logical_devices("GPU")])
    keras.mixed_precision.set_global_policy(plan.policy)
    if strategy is None:
        strategy = (
            tf.distribute.MirroredStrategy(list(plan.gpus)) if plan.mirrored else tf.distribute.get_strategy()
        )
    if strategy is tf.distribute.get_strategy():  # the default one runs on the first device
        names = [tf.config.list_logical_devices("CPU")[0].name]
    else:
        names = list(strategy.extended.worker_devices)
    devices = Devices(strategy, plan, names)
    if plan.gpus:
        log(
            f"training on {len(plan.gpus)} GPU(s) {devices.names}: mixed precision, XLA, "
            f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"
        )
    else:
        log(
            f"WARNING: no GPU visible, training on the CPU {devices.names} "
            "(on a GPU node: check the nvidia.com/gpu request and the node's driver)"
        )
    return devices
