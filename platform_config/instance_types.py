"""Instance types each service accepts, so a typo fails at synth instead of at deploy."""

from __future__ import annotations

_MSK_SIZES = {
    "m5": ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge"),
    "m7g": ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge"),
}
MSK_BROKER_TYPES: frozenset[str] = frozenset(
    {"kafka.t3.small"}
    | {f"kafka.{family}.{size}" for family, sizes in _MSK_SIZES.items() for size in sizes}
)
# Burstable brokers support neither storage auto-scaling nor per-broker monitoring.
MSK_BURSTABLE_TYPES: frozenset[str] = frozenset({"kafka.t3.small"})

_EMR_FAMILIES = (
    "m5", "m5a", "m5d", "m6i", "m6g", "m6gd", "m7i", "m7g", "m7gd",
    "r5", "r5a", "r5d", "r6i", "r6g", "r6gd", "r7i", "r7g", "r7gd",
    "c5", "c5a", "c5d", "c6i", "c6g", "c6gd", "c7i", "c7g", "c7gd",
)  # fmt: skip
_EMR_SIZES = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")
EMR_INSTANCE_TYPES: frozenset[str] = frozenset(
    f"{family}.{size}" for family in _EMR_FAMILIES for size in _EMR_SIZES
)


def check_instance_type(value: str, allowed: frozenset[str], service: str) -> str:
    if value not in allowed:
        families = sorted({name.rsplit(".", 1)[0] for name in allowed})
        raise ValueError(
            f"not an instance type {service} supports; families: {', '.join(families)}"
        )
    return value


_ONE_GPU_SIZES = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")
_G_FAMILY_GPUS = {**dict.fromkeys(_ONE_GPU_SIZES, 1), "12xlarge": 4, "24xlarge": 4, "48xlarge": 8}
# GPUs per instance of each GPU family and size, as EC2 (AWS Batch) and SageMaker ("ml."
# prefix) name them; the training service starts one process per GPU.
_GPUS = {
    "g4dn": {**dict.fromkeys(_ONE_GPU_SIZES, 1), "12xlarge": 4},
    "g5": _G_FAMILY_GPUS,
    "g6": _G_FAMILY_GPUS,
    "g6e": _G_FAMILY_GPUS,
    "p3": {"2xlarge": 1, "8xlarge": 4, "16xlarge": 8},
    "p4d": {"24xlarge": 8},
    "p5": {"48xlarge": 8},
}
GPUS_PER_INSTANCE: dict[str, int] = {
    f"{family}.{size}": gpus for family, sizes in _GPUS.items() for size, gpus in sizes.items()
}
# EC2 GPU instance types AWS Batch can run Metaflow @batch(gpu=...) steps on.
BATCH_GPU_INSTANCE_TYPES: frozenset[str] = frozenset(GPUS_PER_INSTANCE)

_RDS_SIZES = ("micro", "small", "medium", "large", "xlarge", "2xlarge", "4xlarge")
RDS_INSTANCE_TYPES: frozenset[str] = frozenset(
    {f"t4g.{size}" for size in _RDS_SIZES[:5]}
    | {f"{family}.{size}" for family in ("m6g", "m7g", "r6g", "r7g") for size in _RDS_SIZES[3:]}
)


# SageMaker training instance types with GPUs (what the training service runs on), and how
# many GPUs each has.
SAGEMAKER_TRAINING_GPUS: dict[str, int] = {
    f"ml.{name}": gpus for name, gpus in GPUS_PER_INSTANCE.items()
}
SAGEMAKER_GPU_TRAINING_TYPES: frozenset[str] = frozenset(SAGEMAKER_TRAINING_GPUS)
# Real SageMaker training types without GPUs, named so a CPU type gets a specific message.
SAGEMAKER_CPU_TRAINING_TYPES: frozenset[str] = frozenset(
    f"ml.{family}.{size}"
    for family in ("m5", "m6i", "m7i", "c5", "c6i", "c7i", "r5")
    for size in ("large", "xlarge", "2xlarge", "4xlarge", "12xlarge", "24xlarge")
)
