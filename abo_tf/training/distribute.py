"""tf.distribute strategies by name, and who is the chief of a multi-worker run."""

import json
import os

import tensorflow as tf

from abo_tf.common.errors import UserInputError, first_line

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def _local_devices():
    """GPUs if any, else every logical CPU (tests split the CPU into several)."""
    gpus = tf.config.list_logical_devices("GPU")
    return [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]


def _tpu_strategy(tpu_address):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise UserInputError(
            f"no TPU found at --tpu {tpu_address!r} ({first_line(error)}): run on a TPU VM or give its address"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(name, tpu_address=None):
    """Returns the `tf.distribute.Strategy` called `name` (one of `STRATEGIES`).

    Args:
      name: "default" (no distribution), "one_device" (first GPU, else CPU),
        "mirrored" (all local GPUs, or all logical CPUs), "multi_worker_mirrored"
        (workers from TF_CONFIG), "tpu".
      tpu_address: TPU name or grpc address for "tpu"; empty on a TPU VM.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(_local_devices()[0])
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(_local_devices())
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu_address)
    raise UserInputError(f"--strategy {name!r} is not one of {STRATEGIES}")


def _chief_task(task_type, task_id):
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def is_chief(strategy):
    """True on the one worker that writes checkpoints, logs and the export."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return _chief_task(resolver.task_type, resolver.task_id)


def is_chief_process():
    """`is_chief` before any strategy exists, from TF_CONFIG (a process without TF_CONFIG is the chief)."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return _chief_task(task.get("type"), task.get("index", 0))


def worker_id(strategy):
    """A name for this worker's private folders ("chief" on the chief)."""
    if is_chief(strategy):
        return "chief"
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}_{resolver.task_id}"
