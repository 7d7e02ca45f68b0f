"""``Convolution`` (``Conv1D``/``Conv2D``/``Conv3D``): N-d convolution as im2col and one matrix product."""
import math

import numpy as np

from .. import validation
from . import initializers
from .base import Neuron, ShapeError, format_shape, sample_shape
from .parameters import _GradNames, _init_spec, _size
from .geometry import as_tuple, col2im, conv_output_shape, im2col, padding_to_json, resolve_padding

__all__ = ["Convolution", "Conv1D", "Conv2D", "Conv3D"]


class Convolution(_GradNames, Neuron):
    """N-d convolution (cross-correlation, as in Keras/PyTorch) for 1-3 spatial dims.

    ``x: (N, C, *S) -> y: (N, F, *O)`` with kernel ``W: (F, C, *k)`` and bias ``b: (F,)``::

        y[n, f, o] = b[f] + sum_{c, i} W[f, c, i] * x_pad[n, c, o*s + i*d]
        O = floor((S + pad_lo + pad_hi - d*(k - 1) - 1) / s) + 1

    (``s`` stride, ``d`` dilation; all per axis).  It is computed as a matrix
    product with the patch matrix ``cols = im2col(x): (N, C*K, P)``::

        y = W.reshape(F, C*K) @ cols                 (N, F, P)
        dL/dW = sum_n g[n] @ cols[n].T               (F, C*K)
        dL/db = sum over n and p of g                (F,)
        dL/dx = col2im(W.reshape(F, C*K).T @ g)      (N, C, *S)

    with ``g = dL/dy`` reshaped to ``(N, F, P)``; ``im2col``/``col2im`` are in ``geometry.py``
    (a strided view of the padded input, one reshape; its adjoint, one slice-add per kernel
    offset), beside their loop references.  Cache: ``cols`` and the input's shape.

    Constructor: the seed's form ``Convolution((batch, C, H, W), kernel_size=3,
    output_layers=4, use_bias=False)``; or ``in_channels=C`` instead of the input
    shape (spatial size then free), and ``out_channels`` for ``output_layers``; or neither
    (``Convolution(kernel_size=3, output_layers=4)``, as Keras's ``Conv2D(4, 3)``): the input
    channels (and, for an int ``kernel_size``, the number of spatial axes) come from the input when
    the network is built, and ``W``/``b`` are drawn then, with the same values for a given ``seed``
    as the explicit form (``docs/layers.md``, "Shapes inferred").
    ``kernel_size``, ``stride``, ``dilation`` take an int or a per-axis tuple;
    ``padding`` an int, per-axis ints or (lo, hi) pairs, ``"valid"`` or ``"same"``.
    """

    per_sample = True   # samples of a batch never meet in this layer (see Node.per_sample)

    def __init__(self, input_shape=None, kernel_size=3, output_layers=None, use_bias=True,
                 stride=1, padding=0, dilation=1, *, in_channels=None, out_channels=None,
                 ndim=None, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 W_init_range=None, seed=None, dtype=np.float32, name=None,
                 kernel_regularizer=None, bias_regularizer=None):
        if output_layers is None:
            output_layers = out_channels
        elif out_channels is not None and out_channels != output_layers:
            raise ValueError(f"Convolution: output_layers={output_layers} and out_channels={out_channels} disagree")
        if output_layers is None:
            raise ValueError(f"Convolution needs output_layers (number of filters) >= 1, received {output_layers!r}")
        validation.count("Convolution", "output_layers (number of filters)", output_layers)
        validation.count("Convolution", "in_channels", in_channels, allow_none=True)
        validation.count("Convolution", "ndim", ndim, allow_none=True)
        if ndim is not None and ndim > 3:
            raise ValueError(f"Convolution: ndim must be 1, 2 or 3 (spatial axes), received {ndim!r}")
        self._ndim_given = ndim is not None
        if input_shape is not None:
            shp = sample_shape(input_shape, "Convolution", "input_shape")
            if len(shp) < 2 or len(shp) > 4:
                raise ShapeError(
                    f"Convolution input shape must be (N, C, L), (N, C, H, W) or (N, C, D, H, W), "
                    f"received {input_shape!r}"
                )
            if in_channels is not None and in_channels != shp[0]:
                raise ValueError(f"Convolution: in_channels={in_channels} but input shape has {shp[0]} channels")
            in_channels = shp[0]
            nd = len(shp) - 1
        else:
            if ndim is None:
                ndim = len(kernel_size) if not isinstance(kernel_size, (int, np.integer)) else 2
            nd = int(ndim)
            shp = None if in_channels is None else (int(in_channels),) + (None,) * nd
        if ndim is not None and int(ndim) != nd:
            raise ValueError(f"Convolution: ndim={ndim} but the input shape has {nd} spatial axes")
        super().__init__(None if shp is None else (None,) + shp, name=name, dtype=dtype)
        self.ndim = nd
        self.in_channels = None if in_channels is None else int(in_channels)
        self.out_channels = int(output_layers)
        self._kernel_arg, self._stride_arg, self._dilation_arg = kernel_size, stride, dilation
        self._set_geometry(nd, padding)
        self.use_bias = validation.flag(self._describe(), "use_bias", use_bias)
        if shp is not None and None not in shp:
            self.compute_output_shape(shp)  # raises early if the kernel does not fit
        self._init = (_init_spec(kernel_initializer, W_init_range), bias_initializer)
        initializers.get(self._init[0])              # an unknown initializer is refused here, built or not
        initializers.get(bias_initializer)
        self._seed = seed
        self._set_regularizers(kernel_regularizer, bias_regularizer)
        if shp is None:
            self.built = False      # Conv2D(4, 3) as Keras: the input channels come from the input (build)
        else:
            self._make_params(initializers.default_rng(seed))

    def _set_geometry(self, nd, padding):
        try:
            self.kernel_size = as_tuple(self._kernel_arg, nd, "kernel_size")
            self.stride = as_tuple(self._stride_arg, nd, "stride")
            self.dilation = as_tuple(self._dilation_arg, nd, "dilation")
            resolve_padding(padding, (1,) * nd, self.kernel_size, self.stride, self.dilation)  # validate spec
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self._describe()}: {exc}") from None
        self.padding = padding

    def _make_params(self, rng):
        """Draw ``W`` then ``b`` from ``rng``: the same draws whether the input channels were given or
        inferred, so one seed gives the same weights in both forms."""
        wshape = (self.out_channels, self.in_channels) + self.kernel_size
        W = initializers.get(self._init[0])(wshape, rng)
        self.add_param("W", np.asarray(W, dtype=self.dtype))
        if self.use_bias:
            b = initializers.get(self._init[1])((self.out_channels,), rng)
            self.add_param("b", np.asarray(b, dtype=self.dtype))

    def _build(self, input_shape):
        nd = len(input_shape) - 1
        if not 1 <= nd <= 3 or input_shape[0] is None or (self._ndim_given and nd != self.ndim):
            want = (f"(N, C, {', '.join('S' * self.ndim)})" if self._ndim_given
                    else "(N, C, L), (N, C, H, W) or (N, C, D, H, W)")
            raise ShapeError(f"{self._describe()} takes input of shape {want} with C known, received samples of "
                             f"shape {format_shape((None,) + tuple(input_shape))}")
        if nd != self.ndim:              # an int kernel_size said nothing of the number of axes: the input does
            self.ndim = nd
            self._set_geometry(nd, self.padding)
        self.in_channels = int(input_shape[0])
        self.input_shape = (self.in_channels,) + (None,) * nd
        if None not in input_shape:
            self.compute_output_shape(tuple(input_shape))  # the kernel must fit
        self._make_params(initializers.default_rng(self._seed))

    def _explicit_example(self):
        return (f"Convolution((N, C, H, W), kernel_size={self.kernel_size[0] if len(set(self.kernel_size)) == 1 else self.kernel_size}, "
                f"output_layers={self.out_channels}) or in_channels=C")

    def regularized_parts(self):
        """``(regularizer, parameter, index)``: the kernel ``W`` and the bias ``b``."""
        parts = []
        if self.kernel_regularizer is not None:
            parts.append((self.kernel_regularizer, "W", Ellipsis))
        if self.bias_regularizer is not None and self.use_bias:
            parts.append((self.bias_regularizer, "b", Ellipsis))
        return parts

    def get_config(self):
        self.require_built("get_config (saving)")
        return {"input_shape": [None] + list(self.input_shape), "kernel_size": list(self.kernel_size),
                "output_layers": self.out_channels, "use_bias": self.use_bias, "stride": list(self.stride),
                "padding": padding_to_json(self.padding), "dilation": list(self.dilation),
                "dtype": self.dtype.name, "name": self.name, **self._regularizer_config()}

    @classmethod
    def param_shapes(cls, config):
        """``{"W": (F, C, *k), "b": (F,)}`` for a ``get_config`` record, without building the layer
        (the model file check, ``serialization.py``)."""
        c = _size(list(config["input_shape"])[1], "input_shape[1] (channels)")
        f = _size(config["output_layers"], "output_layers")
        k = tuple(_size(v, "kernel_size") for v in config["kernel_size"])
        shapes = {"W": (f, c) + k}
        if config.get("use_bias", True):
            shapes["b"] = (f,)
        return shapes

    # -- shapes -------------------------------------------------------------------
    def _pads(self, spatial):
        return resolve_padding(self.padding, spatial, self.kernel_size, self.stride, self.dilation)

    def compute_output_shape(self, input_shape):
        spatial = input_shape[1:]
        if None in spatial:
            return (self.out_channels,) + (None,) * self.ndim
        try:
            out = conv_output_shape(spatial, self.kernel_size, self.stride, self._pads(spatial), self.dilation)
        except ShapeError as exc:
            raise ShapeError(f"{self._describe()}: {exc}") from None
        return (self.out_channels,) + out

    def check_input(self, x):
        if hasattr(x, "ndim") and x.ndim != self.ndim + 2:
            raise ShapeError(
                f"{self._describe()} expects {self.ndim + 2}-d input (N, C, {', '.join('S' * self.ndim)})"
                f" with C = {self.in_channels}, received {format_shape(tuple(x.shape))}"
            )
        if hasattr(x, "shape") and x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{self._describe()} expects {self.in_channels} input channel(s), received "
                f"{x.shape[1]} (input shape {format_shape(tuple(x.shape))})"
            )
        super().check_input(x)
        self.compute_output_shape(tuple(x.shape[1:]))

    @property
    def b(self):
        return self.params.get("b")

    @property
    def b_grad(self):
        """dL/db of the last backward pass (``None`` without bias)."""
        return self._grads.get("b")

    _b_pd = b_grad

    # -- computation: im2col, then one matrix product ------------------------------------
    def _forward(self, x):
        """``x: (N, C, *S) -> y: (N, F, *O)``: the patch matrix ``cols = im2col(x): (N, C*K, P)``, then
        ``y[n] = W.reshape(F, C*K) @ cols[n] (+ b)``.  Cache: ``cols`` and the input's shape."""
        W = self._params["W"]
        F = W.shape[0]
        n = x.shape[0]
        cols = im2col(x, self.kernel_size, self.stride, self.padding, self.dilation)     # (N, C*K, P)
        y = W.reshape(F, -1) @ cols                                                       # (N, F, P)
        if self.use_bias:
            y += self._params["b"].reshape(F, 1)
        self._cache["cols"] = cols
        self._cache["x_shape"] = tuple(x.shape)
        return y.reshape((n, F) + self.compute_output_shape(tuple(x.shape[1:]))[1:])

    def _backward(self, dy, need_input_grad=True):
        """With ``g = dy`` as ``(N, F, P)``::

            dL/dW = sum_n g[n] @ cols[n].T                    (F, C*K) -> (F, C, *k)
            dL/db = sum of g over samples and positions       (F,)
            dL/dx = col2im(W.reshape(F, C*K).T @ g)           (N, C, *S)
        """
        W = self._params["W"]
        F = W.shape[0]
        cols = self._cache["cols"]
        g = dy.astype(self.dtype, copy=False).reshape(dy.shape[0], F, math.prod(dy.shape[2:]))   # (N, F, P)
        self._grads["W"] = (g @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(W.shape)
        if self.use_bias:
            self._grads["b"] = g.sum(axis=(0, 2))
        if not need_input_grad:
            return None
        dcols = W.reshape(F, -1).T @ g                                                    # (N, C*K, P)
        return col2im(dcols, self._cache["x_shape"], self.kernel_size, self.stride, self.padding, self.dilation)

    def __repr__(self):
        return (f"Convolution({'?' if self.in_channels is None else self.in_channels} -> {self.out_channels}, kernel={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
                f"use_bias={self.use_bias}, name={self.name!r})")


def Conv1D(in_channels, out_channels, kernel_size, **kw):
    """1-D convolution ``(N, C, L) -> (N, F, L')``; see ``Convolution``."""
    return Convolution(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, ndim=1, **kw)


def Conv2D(in_channels, out_channels, kernel_size, **kw):
    """2-D convolution ``(N, C, H, W) -> (N, F, H', W')``; see ``Convolution``."""
    return Convolution(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, ndim=2, **kw)


def Conv3D(in_channels, out_channels, kernel_size, **kw):
    """3-D convolution ``(N, C, D, H, W) -> (N, F, D', H', W')``; see ``Convolution``."""
    return Convolution(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, ndim=3, **kw)
