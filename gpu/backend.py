"""A GPU backend of refdyn as an adapter: how it moves arrays and which launch sequences it runs.

Every operator with a GPU mirror is written once, in the family's module ``<stem>_ops.py`` of
this folder (``deform_conv_ops``, ``active_conv_ops``, ``roi_ops``, ``ddf_ops``,
``lsdfn_ops``, ``mimic_loss_ops``), as a function whose first parameter is a :class:`Backend`:
it checks the arguments with the NumPy reference's checks, then asks the backend to run the
family's launch sequence.  The public modules :mod:`refdyn.gpu.cupy`, :mod:`refdyn.gpu.host`
and :mod:`refdyn.gpu.numba` each build one :class:`Backend` and bind every operator to it, one
line per operator (:meth:`Backend.bind`), so the three backends cannot drift apart.

What differs between backends is in the adapter:

- where the launch sequences are: the CUDA C backends (CuPy on a GPU, the host build on the
  CPU) share ``<stem>_launch.py``, whose functions take the array module and the launcher
  first; the Numba backend's are in ``<stem>_numba.py`` beside its kernels;
- how an argument reaches the device (:attr:`Backend.to_device`) and how a result comes back
  (:attr:`Backend.deliver`: NumPy in, NumPy out; a device array in, a device array out);
- how the argument checks test finiteness of a device array and read RoI batch indices;
- the array module of the NumPy-style glue some operators put around the kernels (Active
  Convolution assembles its result from deformable convolutions).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Callable


def map_arrays(function: Callable, result):
    """``function`` applied to ``result``, or to every array of a gradient record (a dataclass
    such as DeformConvGrads), keeping the gradients that are None."""
    if dataclasses.is_dataclass(result):
        return type(result)(**{field.name: None if (value := getattr(result, field.name)) is None
                               else function(value) for field in dataclasses.fields(result)})
    return function(result)


@dataclass(frozen=True)
class Backend:
    """One GPU backend.

    module: its public module (``refdyn.gpu.<name>``), which binds the operators
    (:meth:`bind`) and exports them (``__all__ = BACKEND.bound``);
    sequences: the suffix of the modules holding its launch sequences (``"_launch"`` or
    ``"_numba"``), so family ``roi`` runs ``roi_launch.forward`` or ``roi_numba.forward``;
    launch_with: the leading arguments of every sequence call (the array module and the
    launcher for the CUDA C backends, none for Numba);
    to_device: an argument array (or None) as the contiguous device array a sequence takes;
    deliver: ``(result, like)`` -> the result as the kind of array ``like`` is;
    all_finite: the finiteness test the argument checks use on this backend's arrays;
    to_host: an array as a NumPy array, for checks that read values (RoI batch indices);
    glue_xp, to_glue: the array module of the glue around the kernels, and an argument as an
    array of it;
    bound: the names of the operators bound so far, in order.
    """

    module: str
    sequences: str
    launch_with: tuple
    to_device: Callable
    deliver: Callable
    all_finite: Callable
    to_host: Callable
    glue_xp: ModuleType
    to_glue: Callable
    bound: list = dataclasses.field(default_factory=list)

    def sequence(self, stem: str, name: str) -> Callable:
        """The launch sequence ``name`` of family ``stem`` on this backend."""
        module = importlib.import_module(f".{stem}{self.sequences}", __package__)
        return functools.partial(getattr(module, name), *self.launch_with)

    def forward(self, stem: str, name: str, geometry, *arrays, **options):
        """Run sequence ``name`` of family ``stem`` on ``geometry`` (the checked call) and the
        arrays moved to the device; the result comes back as the kind of ``arrays[0]``."""
        result = self.sequence(stem, name)(geometry, *map(self.to_device, arrays), **options)
        return self.deliver(result, arrays[0])

    def backward(self, stem: str, name: str, geometry, grad_output, *arrays, **options):
        """As :meth:`forward` for a backward sequence: ``grad_output`` comes first, and the
        gradients come back as the kind of ``arrays[0]`` (the input)."""
        result = self.sequence(stem, name)(geometry, *map(self.to_device, (grad_output, *arrays)),
                                           **options)
        return self.deliver(result, arrays[0])

    def bind(self, operator: Callable) -> Callable:
        """``operator`` of a ``<stem>_ops`` module bound to this backend, as the function of the
        same name in the backend's public module: same signature without the backend
        parameter, same docstring."""
        @functools.wraps(operator)
        def bound(*args, **kwargs):
            return operator(self, *args, **kwargs)

        signature = inspect.signature(operator)
        bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
        bound.__module__ = self.module
        self.bound.append(operator.__name__)
        return bound
