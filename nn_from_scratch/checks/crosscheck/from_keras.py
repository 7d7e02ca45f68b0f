"""``from_keras``: a ``NeuralNetwork`` from a Keras ``Sequential`` model (the inverse of ``to_keras``).

Channels-last Keras tensors become our channels-first ones; the layer groups ``to_keras`` writes
(ZeroPadding + Conv, Permute + Flatten, ConstantPadding + MaxPooling, ...) are folded back.
``BatchNormalization`` (channel axis last, with its moving statistics) becomes ``BatchNorm``;
``Dropout`` becomes ``Dropout`` (same rate).
"""
import math

import keras
import numpy as np

from ...layers.activations import ReLU, Sigmoid, Softmax, Tanh
from ...layers.conv import Convolution
from ...layers.dense import Linear
from ...layers.dropout import Dropout
from ...layers.losses import MSELoss, SoftMaxLoss
from ...layers.normalization import BatchNorm
from ...layers.pooling import AvgPool, MaxPool
from ...layers.reshape import Reshape, Vectorization
from ...training.network import NeuralNetwork
from ...training.optimizers import Adam, GradientDescent, RMSProp
from .convert import ConstantPadding, WindowCountScale, _conv_kernel_to_ours
from .layout import keras_flatten_permutation, our_axis, to_cf_dims, to_cl_dims

__all__ = ["from_keras"]


class _Unsupported(ValueError):
    pass


def _act_layers(activation, shape, base, state):
    """Our layer(s) for a Keras layer's ``activation=`` argument."""
    nm = getattr(activation, "__name__", str(activation))
    r = len(shape) + 1
    s = (None,) + tuple(shape)
    if nm == "linear":
        return []
    if nm == "relu":
        return [ReLU(s, name=f"{base}_relu")]
    if nm == "sigmoid":
        return [Sigmoid(s, name=f"{base}_sigmoid")]
    if nm == "tanh":
        return [Tanh(s, name=f"{base}_tanh")]
    if nm == "softmax":
        return [Softmax(s, axis=our_axis(-1, r) if state == "cl" else -1, name=f"{base}_softmax")]
    raise _Unsupported(f"activation {nm!r} has no counterpart (supported: relu, sigmoid, tanh, softmax, linear)")


def _pad_pairs(padding, nd):
    if nd == 1:
        p = padding if not isinstance(padding, int) else (padding, padding)
        if len(p) == 2 and all(isinstance(v, (int, np.integer)) for v in p):
            return ((int(p[0]), int(p[1])),)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _keras_loss_to_ours(loss):
    if loss is None:
        return SoftMaxLoss()
    if isinstance(loss, str):
        key = loss.lower()
        if key in ("mse", "mean_squared_error"):
            return MSELoss()
        raise _Unsupported(f"loss {loss!r}: ours takes logits; compile with "
                           "keras.losses.SparseCategoricalCrossentropy(from_logits=True)")
    if isinstance(loss, (keras.losses.SparseCategoricalCrossentropy, keras.losses.CategoricalCrossentropy)):
        if not loss.get_config().get("from_logits", False):
            raise _Unsupported(f"{type(loss).__name__} without from_logits=True: our SoftMaxLoss takes logits")
        return SoftMaxLoss()
    if isinstance(loss, keras.losses.MeanSquaredError):
        return MSELoss()
    raise _Unsupported(f"loss {type(loss).__name__} has no counterpart (supported: (Sparse)CategoricalCrossentropy"
                       "(from_logits=True), MeanSquaredError)")


def _keras_optimizer_to_ours(opt):
    if opt is None:
        return None
    lr = opt.learning_rate
    try:
        lr = np.asarray(lr.numpy() if hasattr(lr, "numpy") else lr)
        lr = float(str(lr.astype(np.float32)[()])) if lr.dtype == np.float32 else float(lr)  # 0.002, not 0.0020000001
    except (TypeError, ValueError):
        raise _Unsupported(f"optimizer {type(opt).__name__}: a learning-rate schedule has no counterpart") from None
    wd = float(opt.weight_decay or 0.0)
    if isinstance(opt, keras.optimizers.SGD):
        return GradientDescent(lr, momentum=float(opt.momentum), nesterov=bool(opt.nesterov), weight_decay=wd)
    if isinstance(opt, keras.optimizers.Adam):
        return Adam(lr, beta_1=float(opt.beta_1), beta_2=float(opt.beta_2), epsilon=float(opt.epsilon),
                    amsgrad=bool(opt.amsgrad), weight_decay=wd)
    if isinstance(opt, keras.optimizers.RMSprop):
        return RMSProp(lr, rho=float(opt.rho), momentum=float(opt.momentum), epsilon=float(opt.epsilon),
                       centered=bool(opt.centered), weight_decay=wd)
    raise _Unsupported(f"optimizer {type(opt).__name__} has no counterpart (supported: SGD, Adam, RMSprop)")


_ELEMENTWISE_KERAS = (keras.layers.ReLU, keras.layers.Activation)


def from_keras(model, name=None):
    """A ``NeuralNetwork`` equal to a Keras ``Sequential`` model (channels-last) with its weights.

    Counterparts: Dense (+activation), Conv1D/2D/3D (stride, dilation, "valid"/"same"/"causal";
    a preceding ZeroPadding is folded into the convolution's padding), Max/AveragePooling 1-3D,
    ReLU, Activation (relu/sigmoid/tanh/softmax/linear), Softmax, BatchNormalization (channel
    axis, with its moving statistics), Dropout (same rate), Flatten (the following
    Dense's rows are permuted from Keras's (h, w, c) order to ours), Reshape, and the layers
    ``to_keras`` inserts (Permute, ConstantPadding, WindowCountScale, the stride subsample).
    The compiled loss/optimizer are converted when they have counterparts.  Anything else
    raises ValueError naming the Keras layer.
    """
    try:
        return _from_keras(model, name)
    except _Unsupported as exc:
        raise ValueError(f"from_keras: {exc}") from None


def _is_subsample(kl):
    return (isinstance(kl, (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D))
            and all(int(p) == 1 for p in kl.pool_size) and kl.padding == "valid")


def _from_keras(model, name):
    klayers = [kl for kl in model.layers if not isinstance(kl, keras.layers.InputLayer)]
    try:
        kin = tuple(model.input_shape[1:])
    except (AttributeError, ValueError):
        raise _Unsupported("the model has no known input shape; build it with keras.Input(shape=...)") from None
    if None in kin:
        raise _Unsupported(f"the model's input shape {kin} has unknown sizes")
    rank = len(kin) + 1
    state = "cl" if rank >= 3 else "flat"
    ours_in = (kin[-1],) + kin[:-1] if rank >= 3 else kin
    shape = ours_in           # our per-sample shape of the current tensor
    kshape = (None,) + kin    # Keras's shape of the current tensor
    out = []
    pend_pad, pend_kind, pend_perm = None, None, None
    i = 0
    while i < len(klayers):
        kl = klayers[i]
        nxt = klayers[i + 1] if i + 1 < len(klayers) else None
        consumed = [kl]
        where = f"Keras layer {kl.name!r} ({type(kl).__name__})"
        new = []
        r = len(kshape)
        s_in = (None,) + tuple(shape)

        def need_cl():
            if state != "cl":
                raise _Unsupported(f"{where} needs channels-last data, but the data here is in channels-first order "
                                   "(after a Permute/Reshape)")
            if getattr(kl, "data_format", "channels_last") != "channels_last":
                raise _Unsupported(f"{where}: only data_format='channels_last' is supported")

        if pend_perm is not None and not isinstance(kl, (keras.layers.Dense, keras.layers.ReLU,
                                                         keras.layers.Activation)):
            raise _Unsupported(f"{where} follows a Flatten of channels-last data; only a Dense (after element-wise "
                               "activations) can absorb Keras's (h, w, c) flatten order")
        if pend_pad is not None and not isinstance(kl, (keras.layers.Conv1D, keras.layers.Conv2D,
                                                        keras.layers.Conv3D, keras.layers.MaxPooling1D,
                                                        keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
                                                        keras.layers.AveragePooling1D,
                                                        keras.layers.AveragePooling2D,
                                                        keras.layers.AveragePooling3D)):
            raise _Unsupported(f"{where} follows a padding layer; padding is only folded into a convolution or "
                               "pooling right after it")

        if isinstance(kl, (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)):
            need_cl()
            if pend_pad is not None:
                raise _Unsupported(f"{where}: two padding layers in a row")
            pend_pad, pend_kind = _pad_pairs(kl.padding, r - 2), "zero"
        elif isinstance(kl, ConstantPadding):
            need_cl()
            if kl.value != -math.inf or pend_pad is not None:
                raise _Unsupported(f"{where}: only -inf padding before a max pooling has a counterpart")
            pend_pad, pend_kind = kl.padding, "neginf"
        elif isinstance(kl, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
            need_cl()
            if getattr(kl, "groups", 1) != 1:
                raise _Unsupported(f"{where}: grouped convolution (groups={kl.groups}) has no counterpart")
            k = tuple(int(v) for v in kl.kernel_size)
            dil = tuple(int(v) for v in kl.dilation_rate)
            stride = tuple(int(v) for v in kl.strides)
            if pend_pad is not None:
                if pend_kind != "zero" or kl.padding != "valid":
                    raise _Unsupported(f"{where}: a padding layer before a padding={kl.padding!r} convolution "
                                       "cannot be folded into one padding")
                padding, pend_pad = pend_pad, None
            elif kl.padding == "causal":
                padding = tuple((d * (kk - 1), 0) for kk, d in zip(k, dil))
            else:
                padding = kl.padding
            if nxt is not None and _is_subsample(nxt) and max(stride) == 1:
                stride = tuple(int(v) for v in nxt.strides)
                consumed.append(nxt)
            conv = Convolution(s_in, kernel_size=k, output_layers=int(kl.filters), use_bias=bool(kl.use_bias),
                               stride=stride, padding=padding, dilation=dil, dtype=kl.dtype, name=kl.name)
            params = {"W": _conv_kernel_to_ours(kl.kernel.numpy())}
            if kl.use_bias:
                params["b"] = kl.bias.numpy()
            conv.set_params(**params)
            new.append(conv)
            new_shape = conv.compute_output_shape(shape)
            new += _act_layers(kl.activation, new_shape, kl.name, "cl")
        elif isinstance(kl, keras.layers.Dense):
            if r != 2:
                raise _Unsupported(f"{where} on rank-{r} input: ours maps vectors (N, D); Flatten first")
            d, m = int(kshape[1]), int(kl.units)
            kernel = kl.kernel.numpy()
            if pend_perm is not None:
                rows = np.empty_like(kernel)
                rows[pend_perm] = kernel
                kernel, pend_perm = rows, None
            bias = kl.bias.numpy() if kl.use_bias else np.zeros(m, dtype=kernel.dtype)
            lin = Linear(d, m, use_bias=bool(kl.use_bias), dtype=kl.dtype, name=kl.name)
            lin.set_params(W=np.concatenate([bias[None, :], kernel], axis=0))
            new.append(lin)
            new += _act_layers(kl.activation, (m,), kl.name, "flat")
        elif isinstance(kl, keras.layers.Flatten):
            if r >= 3 and state == "cl":
                perm = keras_flatten_permutation(shape)
                if not np.array_equal(perm, np.arange(perm.size)):
                    pend_perm = perm
            new.append(Vectorization(s_in, name=kl.name))
        elif isinstance(kl, keras.layers.Permute):
            dims = tuple(int(v) for v in kl.dims)
            if state == "cl" and dims == to_cf_dims(r - 1):
                state = "cf"
            elif state == "cf" and dims == to_cl_dims(r - 1):
                state = "cl"
            else:
                raise _Unsupported(f"{where}: only the channels-first <-> channels-last Permutes that to_keras "
                                   f"inserts have a counterpart, got dims={dims}")
        elif isinstance(kl, keras.layers.Reshape):
            if r >= 3 and state == "cl" and shape[0] != 1:
                raise _Unsupported(f"{where} reshapes channels-last data with {shape[0]} channels; put a "
                                   f"Permute({to_cf_dims(r - 1)}) before it (as to_keras does)")
            target = tuple(int(v) for v in kl.target_shape)
            cl_next = nxt is not None and getattr(nxt, "data_format", None) == "channels_last"
            if len(target) >= 2 and target[-1] == 1 and (cl_next or isinstance(nxt, ConstantPadding)):
                new.append(Reshape(s_in, target_shape=(1,) + target[:-1], name=kl.name))
                state_after = "cl"
            else:
                new.append(Reshape(s_in, target_shape=target, name=kl.name))
                state_after = "cf" if len(target) >= 2 else "flat"
            state = state_after
        elif isinstance(kl, (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
                             keras.layers.AveragePooling1D, keras.layers.AveragePooling2D,
                             keras.layers.AveragePooling3D)):
            need_cl()
            is_max = isinstance(kl, (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D,
                                     keras.layers.MaxPooling3D))
            pool = tuple(int(v) for v in kl.pool_size)
            stride = tuple(int(v) for v in kl.strides)
            padding = kl.padding
            if pend_pad is not None:
                if kl.padding != "valid":
                    raise _Unsupported(f"{where}: a padding layer before padding='same' pooling")
                if is_max and pend_kind != "neginf":
                    raise _Unsupported(f"{where}: zero padding before max pooling differs from our -inf padding")
                if not is_max:
                    if pend_kind != "zero" or not isinstance(nxt, WindowCountScale):
                        raise _Unsupported(f"{where}: zero-padded average pooling divides by the whole window; "
                                           "ours divides by the real entries (to_keras adds a WindowCountScale)")
                    consumed.append(nxt)
                padding, pend_pad = pend_pad, None
            cls = MaxPool if is_max else AvgPool
            new.append(cls(s_in, pool_size=pool, stride=stride, padding=padding, name=kl.name))
        elif isinstance(kl, keras.layers.ReLU):
            cfg = kl.get_config()
            if cfg.get("max_value") is not None or cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
                raise _Unsupported(f"{where}: only the plain ReLU (no max_value/negative_slope/threshold)")
            new.append(ReLU(s_in, name=kl.name))
        elif isinstance(kl, keras.layers.Activation):
            new += _act_layers(kl.activation, shape, kl.name, state)
            if new:
                new[-1].name = kl.name
        elif isinstance(kl, keras.layers.BatchNormalization):
            axis = kl.axis if isinstance(kl.axis, int) else (kl.axis[0] if len(kl.axis) == 1 else None)
            if axis is None or axis not in (-1, r - 1) or (state != "cl" and r > 2):
                raise _Unsupported(f"{where}: only normalisation over the channel (last) axis has a counterpart, "
                                   f"axis={kl.axis}")
            if not (kl.center and kl.scale):
                raise _Unsupported(f"{where}: center=False/scale=False has no counterpart")
            bn = BatchNorm(s_in, momentum=float(kl.momentum), epsilon=float(kl.epsilon), dtype=kl.dtype,
                           name=kl.name)
            bn.set_params(gamma=kl.gamma.numpy(), beta=kl.beta.numpy())
            bn.set_buffers(moving_mean=kl.moving_mean.numpy(), moving_variance=kl.moving_variance.numpy())
            new.append(bn)
        elif isinstance(kl, keras.layers.Dropout):
            if getattr(kl, "noise_shape", None) is not None:
                raise _Unsupported(f"{where}: a noise_shape has no counterpart")
            new.append(Dropout(float(kl.rate), shape=s_in, seed=kl.seed, name=kl.name))
        elif isinstance(kl, keras.layers.Softmax):
            axis = kl.axis if isinstance(kl.axis, int) else None
            if axis is None:
                raise _Unsupported(f"{where}: softmax over several axes")
            new.append(Softmax(s_in, axis=our_axis(axis, r) if state == "cl" else axis, name=kl.name))
        else:
            raise _Unsupported(f"{where} has no counterpart in nn_from_scratch")

        for kk in consumed:
            kshape = tuple(kk.compute_output_shape(kshape))
        for layer in new:
            shape = tuple(layer.compute_output_shape(shape))
        out += new
        if len(kshape) <= 2:
            state = "flat"
        elif state == "flat":
            state = "cf"
        expect = (kshape[-1],) + tuple(kshape[1:-1]) if state == "cl" else tuple(kshape[1:])
        if pend_pad is None and tuple(shape) != tuple(expect):  # pragma: no cover - internal consistency
            raise _Unsupported(f"{where}: shape bookkeeping failed (ours {shape}, keras {kshape})")
        i += len(consumed)
    if pend_perm is not None:
        raise _Unsupported("the model ends with a Flatten of channels-last data (Keras's (h, w, c) order); "
                           "ours has no layer for that order")
    if pend_pad is not None:
        raise _Unsupported("the model ends with a padding layer")
    if not out:
        raise _Unsupported("the model has no layers with a counterpart")
    loss = _keras_loss_to_ours(getattr(model, "loss", None))
    opt = _keras_optimizer_to_ours(getattr(model, "optimizer", None))
    return NeuralNetwork(out, loss_fn=loss, optimizer=opt, input_shape=ours_in, name=name or model.name)
