"""``Convolution`` (``Conv1D``/``Conv2D``/``Conv3D``): N-d convolution as im2col and one matrix product."""
import numpy as np

from .. import validation
from ..backend import get_array_module
from . import initializers
from .base import Neuron, ShapeError, format_shape, sample_shape
from .parameters import _GradNames, _init_spec, _size
from ..engine import kernels
from ..engine.conv import bias_gradient, choose_algorithm
from .geometry import as_tuple, conv_output_shape, padding_to_json, resolve_padding

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

    with ``g = dL/dy`` reshaped to ``(N, F, P)``.  How the patches are copied and
    multiplied (whole patch matrices, or row patches with the first kernel axis as
    column offsets; chunks that fit the CPU cache; dL/dx by col2im or by the
    flipped kernel) is chosen per call in ``conv_compute.py``; all variants are
    the formulas above and the tests hold each of them to TensorFlow.  Cache: the
    chosen algorithm with the padded (flattened) input.

    Constructor: the seed's form ``Convolution((batch, C, H, W), kernel_size=3,
    output_layers=4, use_bias=False)``; or ``in_channels=C`` instead of the input
    shape (spatial size then free), and ``out_channels`` for ``output_layers``.
    ``kernel_size``, ``stride``, ``dilation`` take an int or a per-axis tuple;
    ``padding`` an int, per-axis ints or (lo, hi) pairs, ``"valid"`` or ``"same"``.
    """

    per_sample = True  # samples never meet: batches may be split (parallel.py)

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
            if in_channels is None:
                raise ValueError("Convolution needs an input shape (N, C, *S) or in_channels=")
            if ndim is None:
                ndim = len(kernel_size) if not isinstance(kernel_size, (int, np.integer)) else 2
            nd = int(ndim)
            shp = (int(in_channels),) + (None,) * nd
        if ndim is not None and int(ndim) != nd:
            raise ValueError(f"Convolution: ndim={ndim} but the input shape has {nd} spatial axes")
        super().__init__((None,) + shp, name=name, dtype=dtype)
        self._workspace = {}
        self.ndim = nd
        self.in_channels = int(in_channels)
        self.out_channels = int(output_layers)
        try:
            self.kernel_size = as_tuple(kernel_size, nd, "kernel_size")
            self.stride = as_tuple(stride, nd, "stride")
            self.dilation = as_tuple(dilation, nd, "dilation")
            resolve_padding(padding, (1,) * nd, self.kernel_size, self.stride, self.dilation)  # validate spec
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{self._describe()}: {exc}") from None
        self.padding = padding
        self.use_bias = validation.flag(self._describe(), "use_bias", use_bias)
        if None not in shp:
            self.compute_output_shape(shp)  # raises early if the kernel does not fit
        rng = initializers.default_rng(seed)
        wshape = (self.out_channels, self.in_channels) + self.kernel_size
        W = initializers.get(_init_spec(kernel_initializer, W_init_range))(wshape, rng)
        self._params["W"] = initializers.backend.to_device(np.asarray(W, dtype=self.dtype))
        if self.use_bias:
            b = initializers.get(bias_initializer)((self.out_channels,), rng)
            self._params["b"] = initializers.backend.to_device(np.asarray(b, dtype=self.dtype))
        self._set_regularizers(kernel_regularizer, bias_regularizer)

    def regularized_parts(self):
        """``(regularizer, parameter, index)``: the kernel ``W`` and the bias ``b``."""
        parts = []
        if self.kernel_regularizer is not None:
            parts.append((self.kernel_regularizer, "W", Ellipsis))
        if self.bias_regularizer is not None and self.use_bias:
            parts.append((self.bias_regularizer, "b", Ellipsis))
        return parts

    def get_config(self):
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
        return self._params.get("b")

    @property
    def b_grad(self):
        """dL/db of the last backward pass (``None`` without bias)."""
        return self._grads.get("b")

    _b_pd = b_grad

    # -- computation (the algorithms are in conv_compute.py) --------------------------
    #: bytes of patch copy per chunk of samples: a chunk's patches are built, used and
    #: dropped while they are still in the CPU cache (and memory stays small)
    #: (2 MB: LeNet-5's training step on one core at 128 samples 11.1 -> 10.5 ms against 4 MB, 1 MB
    #: slower again; the seed CNN 6.6 -> 6.2 ms; benchmarks/RESULTS.md, eighth-session entry)
    chunk_bytes = 2 << 20
    #: the same on a GPU, where the point is few, large kernels rather than cache hits
    gpu_chunk_bytes = 256 << 20
    #: "auto", "patches" (whole patch matrices), "rowshift" and "samplelast" (stride 1 only) or
    #: "kernel" (CuPy only: the patch matrix gathered by one kernel; "auto" on CuPy): see conv_compute
    algorithm = "auto"
    #: PatchProduct: from this many filters on, a chunk's patch matrices are laid side by side,
    #: ``(C*K, m*P)``, and one matrix product serves the chunk; with fewer filters one product
    #: per sample is faster (measured: benchmarks/RESULTS.md)
    merge_from_filters = 8
    #: PatchProduct, stride 1: dL/dx by "auto" (the cheaper estimate), "flipped" (convolution of
    #: dL/dy with the flipped kernel) or "col2im" (scatter-add); strided: always col2im
    dx_strategy = "auto"

    #: the same for a block run by pooling phase (``phase_pool.py``): fewer chunks, so its
    #: backward gathers the rows again less often (LeNet-5's training step on one core at 128
    #: samples: 2, 4, 8 and 16 MB within noise of each other; benchmarks/RESULTS.md,
    #: eleventh-session entry)
    phase_chunk_bytes = 8 << 20

    def _chunks(self, n, bytes_per_sample, like, budget=None):
        """(chunk size, [(start, stop), ...]): as few chunks as the byte budget allows (default
        ``chunk_bytes``, ``gpu_chunk_bytes`` on a GPU), equal sizes."""
        if budget is None:
            budget = self.gpu_chunk_bytes if get_array_module(like) is not np else self.chunk_bytes
        step = max(1, min(n, int(budget // max(1, bytes_per_sample))))
        step = -(-n // -(-n // step))              # balance: 50 in steps of 49 -> 2 x 25
        return step, [(a, min(a + step, n)) for a in range(0, n, step)]

    def _buffer(self, name, shape, like):
        """A reused scratch array (patch copies etc.): no allocation, no page faults per step."""
        buf = self._workspace.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or type(buf) is not type(like):
            buf = get_array_module(like).empty(shape, dtype=like.dtype)
            self._workspace[name] = buf
        return buf

    def clear_cache(self):
        super().clear_cache()
        self._workspace = {}

    def _algorithm(self, x):
        """The arrangement computing ``x`` (``conv_compute.choose_algorithm``), chosen again only
        when the input's array type, shape or dtype or the layer's settings change (the
        choice builds index tables: worth keeping at small batches)."""
        key = (type(x), tuple(x.shape), x.dtype, kernels.fused_enabled(x), self.algorithm, self.merge_from_filters,
               repr(self.padding), self.stride, self.dilation, self.kernel_size, self.in_channels, self.out_channels)
        held = self._workspace.get("algorithm")
        if held is None or held[0] != key:
            held = self._workspace["algorithm"] = (key, choose_algorithm(self, x))
        return held[1]

    def _forward(self, x):
        self._cache.update(phase=None, phase_input=None)
        if x.shape[0] == 0:                 # an empty batch: an empty output, zero gradients
            self._cache["algorithm"] = None
            self._cache["x_shape"] = tuple(x.shape)
            return get_array_module(x).empty((0,) + self.compute_output_shape(tuple(x.shape[1:])), dtype=x.dtype)
        algo = self._algorithm(x)
        y = algo.forward(x, self._params["W"], self._params.get("b"))
        self._cache["algorithm"] = algo
        return y

    def adopt_phase_forward(self, x, y_shape, link):
        """``fusion`` ran this layer's forward on ``x`` (checked and cast) together with the ReLU and
        pool after it (``phase_pool.py``), its output of shape ``y_shape`` never formed: the cache
        says so (``link``, shared with the pool) and keeps ``x`` for this layer's own ``backward``."""
        self._cache.update(algorithm=None, phase=link, phase_input=x)
        self._out_shape = tuple(y_shape)

    def adopt_phase_grads(self, dW, db):
        """The parameter gradients ``fusion.backward`` computed for this layer (``phase_pool.py``)."""
        self._grads["W"] = dW
        if self.use_bias:
            self._grads["b"] = db

    def _backward(self, dy, need_input_grad=True):
        dy = dy.astype(self.dtype, copy=False)
        if self._cache.get("phase") is not None and self._cache["algorithm"] is None:
            # the forward ran by pooling phase; called on its own, this layer needs its plain
            # arrangement's cache: that forward again (a student's loop after ``net.forward``)
            x = self._cache["phase_input"]
            algo = self._algorithm(x)
            algo.forward(x, self._params["W"], self._params.get("b"))
            self._cache["algorithm"] = algo
        algo = self._cache["algorithm"]
        if algo is None:                    # the last forward had no samples
            xp = get_array_module(dy)
            self._grads["W"] = xp.zeros_like(self._params["W"])
            if self.use_bias:
                self._grads["b"] = xp.zeros_like(self._params["b"])
            return xp.zeros(self._cache["x_shape"], dtype=dy.dtype) if need_input_grad else None
        dW, dx = algo.backward(dy, self._params["W"], need_input_grad)
        self._grads["W"] = dW
        if self.use_bias:   # the arrangement may have summed dL/db on the way (KernelPatchProduct)
            db = getattr(algo, "db", None)
            self._grads["b"] = db if db is not None else bias_gradient(dy)
        return dx

    def __repr__(self):
        return (f"Convolution({self.in_channels} -> {self.out_channels}, kernel={self.kernel_size}, "
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
