"""``to_keras``/``from_keras``: the same network, with exactly the same weights, in Keras.

Layer mapping (ours -> Keras; Keras runs channels-last, see ``layout``):

==========================  ===================================================================
ours                        Keras
==========================  ===================================================================
Linear (W: (D+1, M))        Dense(M): kernel = W[1:], bias = W[0]
Convolution (W: (F,C,*k))   Conv{1,2,3}D(F, k): kernel = W.transpose(*k axes, C, F), bias = b
  padding "same"            padding="same" (TensorFlow's rule = ``layers/geometry.resolve_padding``)
  padding ints / pairs      ZeroPadding{1,2,3}D(pairs) + padding="valid"
  stride > 1 and dilation   Keras refuses both at once: dilated conv with stride 1, then
                            MaxPooling(pool_size=1, strides=stride) (an exact subsample)
MaxPool / AvgPool           MaxPooling / AveragePooling{1,2,3}D; explicit padding equal to the
                            "same" padding -> padding="same"; other explicit padding: MaxPool
                            -> ConstantPadding(-inf) + "valid"; AvgPool -> ZeroPadding + "valid"
                            + WindowCountScale (divide by the real entries, as ours does)
ReLU, Sigmoid, Tanh         ReLU(), Activation("sigmoid"), Activation("tanh")
Softmax(axis)               Softmax(axis mapped to channels-last)
Vectorization (Flatten)     Permute(to channels-first) + Flatten()   (the flatten-order fix)
Reshape(target)             Permute(channels-first) + Reshape(target) [+ Permute(channels-last)]
LeakyReLU(alpha)            LeakyReLU(negative_slope=alpha)
ELU(alpha)                  ELU(alpha)
GELU(approximate)           Activation(gelu(approximate=...))
Softplus                    Activation("softplus")
GlobalAveragePooling        GlobalAveragePooling{1,2,3}D()
Dropout(rate)               inference: Dropout(rate) (the identity); training: MaskedDropout, our
                            layer's mask (inside ``fixed_randomness``) times 1 / (1 - rate)
BatchNorm                   BatchNormalization(axis=-1, momentum, epsilon), gamma/beta and the
                            moving statistics copied; runs in our layer's mode (``training=``)
SoftMaxLoss                 SparseCategoricalCrossentropy / CategoricalCrossentropy(from_logits=True)
MSELoss                     MeanSquaredError()
BinaryCrossEntropy          BinaryCrossentropy(from_logits=...)
Huber(delta) / MAE          Huber(delta) / MeanAbsoluteError()
GradientDescent/Adam/RMSProp  SGD/Adam/RMSprop with the same hyperparameters (weight decay too)
==========================  ===================================================================

A layer of one's own (any ``Node`` subclass) gives its Keras counterpart with a
method ``to_keras(self)`` returning a Keras layer or a list of them; it is used
before the table above, so a subclass of a built-in layer may override it too.
The conventions it must respect:

* Keras works channels-last: the Keras layers receive ``(N, *S, C)`` where our
  layer receives ``(N, C, *S)``, and must return ``(N, *S', C')`` where ours
  returns ``(N, C', *S')``; vectors ``(N, D)`` are the same on both sides.  The
  harness converts the input, the output and every gradient at the edges, and
  puts ``Permute`` layers around Flatten/Reshape of ours, not of yours.
* Parameters: the Keras layers' trainable variables, in order, hold this layer's
  ``params``, in order.  Each is copied (our current values; also before every
  training comparison) as is when the shapes are equal, transposed for a 2-D
  parameter whose transpose has the Keras shape, or as a convolution kernel
  ``(F, C, *k) <-> (*k, C, F)``; ``keras_param_layout = {"W": "transpose"}`` (or
  ``"same"``, ``"conv"``) on the class says it explicitly (a square matrix is
  otherwise taken as is).  The gradients are compared in our layout, named
  ``dL/d<parameter name>``.
* dtype: build the Keras layers with ``dtype=`` the layer's dtype if it is
  float64 (Keras's default is float32; the comparison's tolerances allow it).

Every Keras tensor of rank >= 3 between two of our layers is channels-last,
so each of our layers corresponds to one *group* of consecutive Keras layers
(``KerasTwin.groups``); ``compare`` uses the groups to map Keras's
intermediate tensors and gradients back to our layers.
"""
import copy
import math
import re

import keras
import numpy as np

from ...layers.activations import ReLU, Sigmoid, Softmax, Tanh
from ...layers.reshape import Reshape, Vectorization
from ...backend import to_numpy
from ...layers.base import Node, ShapeError, format_shape
from ...layers.dropout import Dropout
from ...layers.global_pooling import GlobalAveragePooling
from ...layers.losses import Loss, MSELoss, SoftMaxLoss
from ...layers.more_losses import MAE, BinaryCrossEntropy, Huber
from ...layers.normalization import BatchNorm
from ...layers.rectifiers import ELU, GELU, LeakyReLU, Softplus
from ...training.network import NeuralNetwork
from ...layers.conv import Convolution
from ...layers.dense import Linear
from ...training import schedules as our_schedules
from ...training.optimizers import AdaGrad, Adam, AdamW, GradientDescent, RMSProp
from ...layers.geometry import resolve_padding
from ...layers.pooling import AvgPool, MaxPool
from .layout import keras_axis, to_cf_dims, to_cl_dims

__all__ = ["to_keras", "keras_loss", "keras_optimizer", "build_twin", "KerasTwin", "Group",
           "ParamMap", "ConstantPadding", "WindowCountScale", "unpack"]

SUPPORTED = ("Linear", "Convolution (1-3D)", "MaxPool", "AvgPool", "ReLU", "Sigmoid", "Tanh", "Softmax",
             "Vectorization/Flatten", "Reshape", "LeakyReLU", "ELU", "GELU", "Softplus", "GlobalAveragePooling",
             "Dropout", "BatchNorm")


from .keras_layers import ConstantPadding, MaskedDropout, WindowCountScale, window_counts  # noqa: E402,F401


# ----------------------------------------------------------------------------- structures
class ParamMap:
    """One parameter of ours and the Keras variable holding it.

    ``label``: "W" or "b" (the report's quantity is ``dL/d{label}``); ``ours(arrays)``
    picks the matching part of our parameter dict (for ``Linear``, ``W[1:]`` or
    ``W[0]``); ``keras_var``: the Keras variable (None: Keras has none, the
    reference is zero); ``to_ours``/``to_keras``: layout conversions; ``index_map``/``array``:
    how an index into the picked part is written in our parameter's terms.
    """

    def __init__(self, label, ours, keras_var, to_ours, to_keras, shape, array, index_map=None):
        self.label, self.ours, self.keras_var = label, ours, keras_var
        self.to_ours, self.to_keras = to_ours, to_keras
        self.shape, self.array, self.index_map = tuple(shape), array, index_map

    def keras_value(self, value=None):
        """Keras's value (or ``value``, e.g. a gradient) in our layout; zeros if Keras has no variable."""
        if self.keras_var is None:
            return np.zeros(self.shape, dtype=np.float32)
        v = to_numpy(self.keras_var.numpy() if value is None else value)
        return self.to_ours(v)


class Group:
    """Our layer ``index`` and the consecutive Keras layers that compute the same map."""

    def __init__(self, index, layer, keras_layers, in_shape, out_shape, carrier=None):
        self.index, self.layer, self.keras_layers = index, layer, list(keras_layers)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.carrier = carrier   # the Keras layer holding the weights (Dense/Conv), or None
        self.params = []         # ParamMap list, filled once the Keras layers are built

    def __call__(self, h):
        training = bool(getattr(self.layer, "training", False))    # our layer's mode (Dropout, BatchNorm)
        for kl in self.keras_layers:
            h = kl(h, training=training)
        return h

    @property
    def variables(self):
        return [p.keras_var for p in self.params if p.keras_var is not None]

    @property
    def keras_names(self):
        return " + ".join(kl.name for kl in self.keras_layers)


class KerasTwin:
    """A Keras model equivalent to a list of our layers, with the layer groups."""

    def __init__(self, model, groups, input_shape):
        self.model, self.groups, self.input_shape = model, groups, tuple(input_shape)

    def load_weights_from(self, layers):
        """Copy our parameters into the Keras variables (our layers in the same order)."""
        for group, layer in zip(self.groups, layers):
            _set_weights(group, layer)


# ----------------------------------------------------------------------------- ours -> Keras
def _namer():
    used = set()

    def name(base):
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", str(base)) or "layer"
        cand, k = base, 1
        while cand in used:
            k += 1
            cand = f"{base}_{k}"
        used.add(cand)
        return cand
    return name


def _pairs(pads):
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def _zero_padding(nd, pads, name, dtype):
    if nd == 1:
        return keras.layers.ZeroPadding1D(padding=pads[0], name=name, dtype=dtype)
    cls = keras.layers.ZeroPadding2D if nd == 2 else keras.layers.ZeroPadding3D
    return cls(padding=_pairs(pads), name=name, dtype=dtype)


_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_MAXP = {1: keras.layers.MaxPooling1D, 2: keras.layers.MaxPooling2D, 3: keras.layers.MaxPooling3D}
_AVGP = {1: keras.layers.AveragePooling1D, 2: keras.layers.AveragePooling2D, 3: keras.layers.AveragePooling3D}


def _conv_kernel_to_keras(W):
    nd = W.ndim - 2
    return np.transpose(W, tuple(range(2, nd + 2)) + (1, 0))


def _conv_kernel_to_ours(K):
    nd = K.ndim - 2
    return np.ascontiguousarray(np.transpose(K, (nd + 1, nd) + tuple(range(nd))))


def _require_spatial(layer, shape):
    if shape is None or None in shape:
        raise ShapeError(f"{layer._describe()}: the Keras twin needs the full per-sample input shape, got "
                         f"{shape!r}; pass input_shape=(C, *S) to to_keras/compare")


def _keras_regularizer(reg):
    """Keras's counterpart of one of our weight penalties (``regularizers``), or None."""
    if reg is None:
        return None
    return keras.regularizers.L1L2(l1=reg.l1, l2=reg.l2)


def _keras_extras(layer):
    """Constructor arguments of a Keras Dense/Conv carrying our layer's penalties and freezing."""
    return {"kernel_regularizer": _keras_regularizer(getattr(layer, "kernel_regularizer", None)),
            "bias_regularizer": _keras_regularizer(getattr(layer, "bias_regularizer", None)),
            "trainable": bool(getattr(layer, "trainable", True))}


def _convert_linear(layer, shape, dtype, name):
    if len(shape) != 1 or shape[0] != layer.in_features:
        raise ShapeError(f"{layer._describe()} expects input (N, {layer.in_features}), the previous layer "
                         f"gives {format_shape((None,) + tuple(shape))}")
    dense = keras.layers.Dense(layer.out_features, use_bias=layer.use_bias, name=name(layer.name), dtype=dtype,
                               **_keras_extras(layer))
    return [dense], dense


def _convert_conv(layer, shape, dtype, name):
    _require_spatial(layer, shape)
    nd = layer.ndim
    if len(shape) != nd + 1 or shape[0] != layer.in_channels:
        raise ShapeError(f"{layer._describe()} expects input (N, {layer.in_channels}, {', '.join('S' * nd)}), "
                         f"the previous layer gives {format_shape((None,) + tuple(shape))}")
    spatial = tuple(shape[1:])
    pads = resolve_padding(layer.padding, spatial, layer.kernel_size, layer.stride, layer.dilation)
    both = max(layer.stride) > 1 and max(layer.dilation) > 1
    kls = []
    if isinstance(layer.padding, str) and layer.padding.lower() == "same" and not both:
        kpad = "same"
    else:
        kpad = "valid"
        if any(lo or hi for lo, hi in pads):
            kls.append(_zero_padding(nd, pads, name(layer.name + "_pad"), dtype))
    conv = _CONV[nd](layer.out_channels, layer.kernel_size, strides=(1,) * nd if both else layer.stride,
                     padding=kpad, dilation_rate=layer.dilation, use_bias=layer.use_bias,
                     name=name(layer.name), dtype=dtype, **_keras_extras(layer))
    kls.append(conv)
    if both:  # Keras refuses stride > 1 together with dilation > 1: subsample after a stride-1 conv
        kls.append(_MAXP[nd](pool_size=(1,) * nd, strides=layer.stride, padding="valid",
                             name=name(layer.name + "_stride"), dtype=dtype))
    return kls, conv


def _convert_pool(layer, shape, dtype, name):
    _require_spatial(layer, shape)
    nd = layer.ndim
    if len(shape) != nd + 1:
        raise ShapeError(f"{layer._describe()} expects {nd} spatial axes, the previous layer gives "
                         f"{format_shape((None,) + tuple(shape))}")
    spatial = tuple(shape[1:])
    ones = (1,) * nd
    pads = resolve_padding(layer.padding, spatial, layer.pool_size, layer.stride, ones)
    same = resolve_padding("same", spatial, layer.pool_size, layer.stride, ones)
    is_max = isinstance(layer, MaxPool)
    kls = []
    rescale = False
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        kpad = "valid"
    elif tuple(pads) == tuple(same):
        kpad = "same"
    else:
        kpad = "valid"
        if is_max:
            kls.append(ConstantPadding(pads, -math.inf, name=name(layer.name + "_pad"), dtype=dtype))
        else:
            kls.append(_zero_padding(nd, pads, name(layer.name + "_pad"), dtype))
            rescale = True
    cls = _MAXP[nd] if is_max else _AVGP[nd]
    kls.append(cls(pool_size=layer.pool_size, strides=layer.stride, padding=kpad, name=name(layer.name),
                   dtype=dtype))
    if rescale:
        counts = window_counts(spatial, layer.pool_size, layer.stride, pads)
        kls.append(WindowCountScale(float(np.prod(layer.pool_size)) / counts, name=name(layer.name + "_count"),
                                    dtype=dtype))
    return kls, None


def _convert_simple(layer, shape, dtype, name):
    r = len(shape) + 1
    n = name(layer.name)
    if isinstance(layer, ReLU):
        return [keras.layers.ReLU(name=n, dtype=dtype)], None
    if isinstance(layer, Sigmoid):
        return [keras.layers.Activation("sigmoid", name=n, dtype=dtype)], None
    if isinstance(layer, Tanh):
        return [keras.layers.Activation("tanh", name=n, dtype=dtype)], None
    if isinstance(layer, Softmax):
        return [keras.layers.Softmax(axis=keras_axis(layer.axis, r), name=n, dtype=dtype)], None
    if isinstance(layer, Vectorization):
        kls = []
        if r >= 3:
            kls.append(keras.layers.Permute(to_cf_dims(r - 1), name=name(layer.name + "_to_cf"), dtype=dtype))
        kls.append(keras.layers.Flatten(name=n, dtype=dtype))
        return kls, None
    if isinstance(layer, Reshape):
        kls = []
        if r >= 3:
            kls.append(keras.layers.Permute(to_cf_dims(r - 1), name=name(layer.name + "_to_cf"), dtype=dtype))
        kls.append(keras.layers.Reshape(layer.target_shape, name=n, dtype=dtype))
        if len(layer.target_shape) >= 2:
            kls.append(keras.layers.Permute(to_cl_dims(len(layer.target_shape)), name=name(layer.name + "_to_cl"),
                                            dtype=dtype))
        return kls, None
    if isinstance(layer, LeakyReLU):
        return [keras.layers.LeakyReLU(negative_slope=layer.alpha, name=n, dtype=dtype)], None
    if isinstance(layer, ELU):
        return [keras.layers.ELU(alpha=layer.alpha, name=n, dtype=dtype)], None
    if isinstance(layer, GELU):
        approximate = layer.approximate
        return [keras.layers.Activation(lambda v: keras.activations.gelu(v, approximate=approximate), name=n,
                                        dtype=dtype)], None
    if isinstance(layer, Softplus):
        return [keras.layers.Activation("softplus", name=n, dtype=dtype)], None
    if isinstance(layer, GlobalAveragePooling):
        if r not in (3, 4, 5):
            raise ShapeError(f"{layer._describe()} needs (N, C, *S) input, the previous layer gives "
                             f"{format_shape((None,) + tuple(shape))}")
        cls = {3: keras.layers.GlobalAveragePooling1D, 4: keras.layers.GlobalAveragePooling2D,
               5: keras.layers.GlobalAveragePooling3D}[r]
        return [cls(name=n, dtype=dtype)], None
    if isinstance(layer, Dropout):
        return [MaskedDropout(layer, name=n, dtype=dtype)], None
    raise NotImplementedError(
        f"to_keras: no Keras counterpart for {layer._describe()}; supported layers (and their subclasses): "
        f"{', '.join(SUPPORTED)}. For a layer of your own, define a method to_keras(self) returning the Keras "
        f"layer (or list of layers) computing the same function, channels-last (see crosscheck/convert.py)"
    )


def _same(v):
    return v


def _transpose(v):
    return np.ascontiguousarray(np.asarray(v).T)


def _has_own_to_keras(layer):
    return callable(getattr(type(layer), "to_keras", None))


def _convert_custom(layer, shape, dtype, name):
    """The Keras layers the layer's own ``to_keras()`` returns (validated)."""
    try:
        made = layer.to_keras()
    except Exception as exc:
        raise type(exc)(f"{layer._describe()}.to_keras() failed: {exc}") from exc
    kls = list(made) if isinstance(made, (list, tuple)) else [made]
    if not kls or not all(isinstance(kl, keras.layers.Layer) for kl in kls):
        raise TypeError(f"{layer._describe()}.to_keras() must return a Keras layer or a list of Keras layers, "
                        f"received {made!r}")
    return kls, kls


_LAYOUTS = {"same": (_same, _same), "transpose": (_transpose, _transpose),
            "conv": (_conv_kernel_to_ours, _conv_kernel_to_keras)}


def _custom_param_maps(layer, kls):
    """ParamMaps pairing the layer's ``params`` (in order) with the Keras layers' trainable variables."""
    variables = [v for kl in kls for v in kl.trainable_variables]
    names = list(layer.params)
    if len(variables) != len(names):
        raise ValueError(
            f"{layer._describe()}: its parameters {names} must correspond, in order, to the trainable variables "
            f"of the Keras layers its to_keras() returns, which are "
            f"{[f'{v.path} {tuple(v.shape)}' for v in variables]}")
    explicit = dict(getattr(layer, "keras_param_layout", None) or {})
    maps = []
    for pname, var in zip(names, variables):
        ours_shape = tuple(layer.params[pname].shape)
        kshape = tuple(var.shape)
        kind = explicit.get(pname)
        if kind is None:
            if ours_shape == kshape:
                kind = "same"
            elif len(ours_shape) == 2 and ours_shape[::-1] == kshape:
                kind = "transpose"
            elif len(ours_shape) >= 3 and tuple(_conv_kernel_to_keras(np.empty(ours_shape)).shape) == kshape:
                kind = "conv"
            else:
                raise ValueError(
                    f"{layer._describe()}: parameter {pname!r} has shape {ours_shape} but the matching Keras "
                    f"variable {var.path} has shape {kshape}; set keras_param_layout = {{{pname!r}: 'same' | "
                    f"'transpose' | 'conv'}} on the class, or return Keras layers whose variables match")
        if kind not in _LAYOUTS:
            raise ValueError(f"{layer._describe()}: keras_param_layout[{pname!r}] must be one of {sorted(_LAYOUTS)}, "
                             f"received {kind!r}")
        to_ours, to_k = _LAYOUTS[kind]
        if tuple(to_k(np.empty(ours_shape)).shape) != kshape:
            raise ValueError(f"{layer._describe()}: parameter {pname!r} {ours_shape} laid out as {kind!r} gives "
                             f"{tuple(to_k(np.empty(ours_shape)).shape)}, not the Keras variable's {kshape}")
        maps.append(ParamMap(pname, (lambda p, k=pname: p[k]), var, to_ours, to_k, ours_shape, pname))
    return maps


def _param_maps(layer, carrier):
    if isinstance(layer, Linear):
        d, m = layer.in_features, layer.out_features
        return [
            ParamMap("W", lambda p: p["W"][1:], carrier.kernel, _same, _same, (d, m), "W",
                     lambda i: (i[0] + 1, i[1])),
            ParamMap("b", lambda p: p["W"][0], carrier.bias if layer.use_bias else None, _same, _same, (m,), "W",
                     lambda i: (0, i[0])),
        ]
    if isinstance(layer, BatchNorm):
        c = layer.channels
        return [ParamMap("gamma", lambda p: p["gamma"], carrier.gamma, _same, _same, (c,), "gamma"),
                ParamMap("beta", lambda p: p["beta"], carrier.beta, _same, _same, (c,), "beta")]
    if isinstance(layer, Convolution):
        out = [ParamMap("W", lambda p: p["W"], carrier.kernel, _conv_kernel_to_ours, _conv_kernel_to_keras,
                        (layer.out_channels, layer.in_channels) + layer.kernel_size, "W")]
        if layer.use_bias:
            out.append(ParamMap("b", lambda p: p["b"], carrier.bias, _same, _same, (layer.out_channels,), "b"))
        return out
    return []


def _set_weights(group, layer):
    for pm in group.params:
        if pm.keras_var is None:
            continue
        value = pm.to_keras(to_numpy(pm.ours(layer.params)))
        pm.keras_var.assign(np.asarray(value, dtype=pm.keras_var.dtype))
    if isinstance(layer, BatchNorm) and group.carrier is not None:     # the non-trainable state too
        for name in ("moving_mean", "moving_variance"):
            var = getattr(group.carrier, name)
            var.assign(np.asarray(to_numpy(layer.buffers[name]), dtype=var.dtype))


def _layer_dtype(layer, default):
    return np.dtype(getattr(layer, "dtype", default)).name if getattr(layer, "trainable", False) else default


def build_twin(layers, input_shape, dtype=None):
    """``KerasTwin``: a built ``keras.Sequential`` with our weights, and the layer groups.

    ``input_shape``: our per-sample input shape ``(C, *S)`` or ``(D,)``.
    """
    layers = list(layers)
    if dtype is None:
        ts = [lay for lay in layers if getattr(lay, "trainable", False)]
        dtype = np.dtype(ts[0].dtype).name if ts else "float32"
    shape = tuple(input_shape)
    name = _namer()
    groups = []
    all_kls = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Node) or isinstance(layer, Loss):
            raise TypeError(f"to_keras: item {i} ({type(layer).__name__}) is not a layer")
        if layer.input_shape is not None:
            exp = layer.input_shape
            if len(exp) != len(shape) or any(e is not None and e != s for e, s in zip(exp, shape)):
                raise ShapeError(f"{layer._describe()} expects samples of shape {format_shape(exp)} but receives "
                                 f"{format_shape(shape)}")
        ldt = _layer_dtype(layer, dtype)
        if _has_own_to_keras(layer):            # the layer's own conversion comes first (docs/CROSSCHECK.md)
            kls, carrier = _convert_custom(layer, shape, ldt, name)
        elif isinstance(layer, Linear):
            kls, carrier = _convert_linear(layer, shape, ldt, name)
        elif isinstance(layer, Convolution):
            kls, carrier = _convert_conv(layer, shape, ldt, name)
        elif isinstance(layer, (MaxPool, AvgPool)):
            kls, carrier = _convert_pool(layer, shape, ldt, name)
        elif isinstance(layer, BatchNorm):
            carrier = keras.layers.BatchNormalization(axis=-1, momentum=layer.momentum, epsilon=layer.epsilon,
                                                      name=name(layer.name), dtype=ldt)
            kls = [carrier]
        else:
            kls, carrier = _convert_simple(layer, shape, ldt, name)
        out_shape = tuple(layer.compute_output_shape(shape))
        groups.append(Group(i, layer, kls, shape, out_shape, carrier))
        all_kls.extend(kls)
        shape = out_shape
    k_in = tuple(input_shape[1:]) + (input_shape[0],) if len(input_shape) >= 2 else tuple(input_shape)
    model = keras.Sequential([keras.Input(shape=k_in, dtype=dtype)] + all_kls, name=name("nn_from_scratch_twin"))
    for g in groups:
        if _has_own_to_keras(g.layer):
            g.params = _custom_param_maps(g.layer, g.carrier)
            g.carrier = None
        elif g.carrier is not None:
            g.params = _param_maps(g.layer, g.carrier)
        _set_weights(g, g.layer)
    return KerasTwin(model, groups, input_shape)


def unpack(network_or_layers, input_shape=None):
    """``(layers, loss or None, optimizer or None, per-sample input shape)`` from what the user passed."""
    net = network_or_layers
    loss = opt = None
    if isinstance(net, NeuralNetwork):
        layers, loss, opt = list(net.layers), net.loss_fn, net.optimizer
        shape = input_shape if input_shape is not None else net.input_shape
    else:
        if isinstance(net, Node):
            layers = [net]
        else:
            try:
                layers = list(net)
            except TypeError:
                raise TypeError(f"expected a NeuralNetwork, a layer or a list of layers, received "
                                f"{type(net).__name__}") from None
        bad = [i for i, layer in enumerate(layers) if not isinstance(layer, Node)]
        if bad or isinstance(net, (str, bytes)):
            i = bad[0] if bad else 0
            raise TypeError(f"expected a NeuralNetwork, a layer or a list of layers, received {type(net).__name__}"
                            + (f" whose element {i} is {type(layers[i]).__name__}" if layers and bad else ""))
        if layers and isinstance(layers[-1], Loss):
            loss = layers.pop()
        if not layers:
            raise ValueError("no layers given")
        shape = input_shape if input_shape is not None else layers[0].input_shape
    if shape is not None:
        shape = tuple(shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        if None in shape:
            shape = None
    return layers, loss, opt, shape


def to_keras(network_or_layers, input_shape=None, compile=True, sparse_labels=True):
    """An equivalent ``keras.Sequential`` carrying exactly our weights.

    ``network_or_layers``: a ``NeuralNetwork``, a list of layers or one layer.
    ``input_shape``: our per-sample input shape ``(C, *S)``; needed when the first
    layer does not know it.  The Keras model takes channels-last input
    (``to_keras_layout(x)``) and gives channels-last output for rank >= 3.
    For a ``NeuralNetwork`` the model is compiled (``compile=True``) with the
    equivalent optimizer and loss (``SparseCategoricalCrossentropy`` for
    integer labels, or ``CategoricalCrossentropy`` with ``sparse_labels=False``).
    """
    layers, loss, opt, shape = unpack(network_or_layers, input_shape)
    if shape is None:
        raise ShapeError("to_keras needs the per-sample input shape: pass input_shape=(C, *S) or (D,)")
    twin = build_twin(layers, shape)
    if compile and isinstance(network_or_layers, NeuralNetwork):
        twin.model.compile(optimizer=keras_optimizer(opt), loss=keras_loss(loss, sparse=sparse_labels))
    return twin.model


def keras_loss(loss_fn, sparse=True, dtype=None):
    """The Keras loss equal to ours: ``SoftMaxLoss`` -> (Sparse)CategoricalCrossentropy(from_logits=True)
    (``sparse``: integer labels), ``MSELoss`` -> MeanSquaredError (all means over the batch).
    ``dtype``: the loss's compute dtype (Keras's default is float32 even for float64 inputs)."""
    kw = {} if dtype is None else {"dtype": np.dtype(dtype).name}
    if isinstance(loss_fn, SoftMaxLoss):
        if sparse:
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True, **kw)
        return keras.losses.CategoricalCrossentropy(from_logits=True, **kw)
    if isinstance(loss_fn, MSELoss):
        return keras.losses.MeanSquaredError(**kw)
    if isinstance(loss_fn, BinaryCrossEntropy):
        return keras.losses.BinaryCrossentropy(from_logits=loss_fn.from_logits, **kw)
    if isinstance(loss_fn, Huber):
        return keras.losses.Huber(delta=loss_fn.delta, **kw)
    if isinstance(loss_fn, MAE):
        return keras.losses.MeanAbsoluteError(**kw)
    raise NotImplementedError(f"keras_loss: no Keras counterpart for {type(loss_fn).__name__}; "
                              "supported: SoftMaxLoss, MSELoss, BinaryCrossEntropy, Huber, MAE")


def keras_schedule(lr):
    """Keras's counterpart of our learning rate: the number itself, or the same-named schedule."""
    if isinstance(lr, (int, float)):
        return float(lr)
    ks = keras.optimizers.schedules
    if isinstance(lr, our_schedules.ExponentialDecay):      # StepDecay too (staircase)
        return ks.ExponentialDecay(lr.initial_learning_rate, lr.decay_steps, lr.decay_rate, staircase=lr.staircase)
    if isinstance(lr, our_schedules.PiecewiseConstantDecay):
        return ks.PiecewiseConstantDecay(lr.boundaries, lr.values)
    if isinstance(lr, our_schedules.CosineDecay):
        return ks.CosineDecay(lr.initial_learning_rate, lr.decay_steps, alpha=lr.alpha,
                              warmup_target=lr.warmup_target, warmup_steps=lr.warmup_steps)
    raise NotImplementedError(f"keras_optimizer: no Keras counterpart for the learning-rate schedule {lr!r}; "
                              "supported: ExponentialDecay, StepDecay, PiecewiseConstantDecay, CosineDecay")


def keras_optimizer(opt):
    """A fresh Keras optimizer with our optimizer's hyperparameters (its state is not copied)."""
    wd = getattr(opt, "weight_decay", 0.0) or None
    common = {"learning_rate": keras_schedule(opt.lr), "clipnorm": getattr(opt, "clipnorm", None),
              "clipvalue": getattr(opt, "clipvalue", None), "global_clipnorm": getattr(opt, "global_clipnorm", None)}
    if isinstance(opt, GradientDescent):
        return keras.optimizers.SGD(momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=wd, **common)
    if isinstance(opt, AdamW):
        return keras.optimizers.AdamW(beta_1=opt.beta_1, beta_2=opt.beta_2, epsilon=opt.epsilon,
                                      amsgrad=opt.amsgrad, weight_decay=opt.weight_decay, **common)
    if isinstance(opt, Adam):
        return keras.optimizers.Adam(beta_1=opt.beta_1, beta_2=opt.beta_2, epsilon=opt.epsilon,
                                     amsgrad=opt.amsgrad, weight_decay=wd, **common)
    if isinstance(opt, RMSProp):
        return keras.optimizers.RMSprop(rho=opt.rho, momentum=opt.momentum, epsilon=opt.epsilon,
                                        centered=opt.centered, weight_decay=wd, **common)
    if isinstance(opt, AdaGrad):
        return keras.optimizers.Adagrad(initial_accumulator_value=opt.initial_accumulator_value,
                                        epsilon=opt.epsilon, weight_decay=wd, **common)
    raise NotImplementedError(f"keras_optimizer: no Keras counterpart for {type(opt).__name__}; "
                              "supported: GradientDescent (SGD), Adam, AdamW, RMSProp, AdaGrad")


def copy_layers(layers):
    """Independent copies of our layers (parameters included), for work that must not touch the user's."""
    return [copy.deepcopy(layer) for layer in layers]

