"""How much memory a model needs, estimated from its sizes before anything is allocated.

A width of 100,000 or 2**62 must end in one line naming the estimate and the machine's memory,
not in a MemoryError traceback half-way through building the model (or a NumPy error about
negative dimensions once a size overflows int64). The estimate is deliberately simple and on the
generous side: every array the training holds, counted once. Pure arithmetic: comparing it with
the machine's memory is :func:`fmnist_mlp.io.memory.check_fits`.
"""

from __future__ import annotations

import math
from typing import Sequence

from fmnist_mlp.nn.model import parameter_shapes
from fmnist_mlp.nn.optim import OPTIMIZERS

# Per unit of a layer, per example of a batch: pre-activation, activation, dropout mask, gradient.
ARRAYS_PER_ACTIVATION = 4


def arrays_per_parameter() -> int:
    """Arrays held per parameter: the value, its gradient, one scratch array, and the state slots
    of the registered optimiser that keeps the most (Adam: two)."""
    return 3 + max(len(cls.slots) for cls in OPTIMIZERS.values())


def checkpoint_arrays_per_parameter() -> int:
    """Arrays per parameter that writing a checkpoint adds while training holds its own: the
    optimiser state's copy (``state_dict``), the serialised checkpoint as it is built (twice
    while its buffer grows or is copied out) and the previous epoch's, kept until the new one
    is whole. A net that "fits" without them died writing its first checkpoint."""
    slots = max(len(cls.slots) for cls in OPTIMIZERS.values())
    return slots + 3 * (1 + slots)


def parameter_count(input_size: int, hidden: Sequence[int], num_classes: int,
                    batchnorm: bool = False) -> int:
    """Entries of every array the model holds (:func:`~fmnist_mlp.nn.model.parameter_shapes`:
    weights, biases; with BN gamma, beta and the two running statistics instead of hidden biases)."""
    shapes = parameter_shapes([input_size, *hidden, num_classes], batchnorm)
    return sum(math.prod(shape) for shape in shapes.values())


def training_bytes(input_size: int, hidden: Sequence[int], num_classes: int, batch_size: int,
                   eval_batch_size: int, itemsize: int, *, data_rows: int,
                   batchnorm: bool = False) -> int:
    """Bytes a training needs at its peak: parameters with gradients and optimiser state, the
    work arrays of a training and an evaluation batch, the data itself (``data_rows`` images,
    held as float rows and once as uint8), and the copies a checkpoint write makes
    (:func:`checkpoint_arrays_per_parameter`). Python ints: never overflows."""
    widths = [int(input_size), *(int(h) for h in hidden), int(num_classes)]
    params = parameter_count(input_size, hidden, num_classes, batchnorm)
    work = (int(batch_size) * ARRAYS_PER_ACTIVATION + int(eval_batch_size) * 2) * sum(widths)
    data = int(data_rows) * input_size * (itemsize + 1)
    per_parameter = arrays_per_parameter() + checkpoint_arrays_per_parameter()
    return (params * per_parameter + work) * itemsize + data
