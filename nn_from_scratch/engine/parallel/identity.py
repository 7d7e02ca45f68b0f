"""What a copy of the network's layers (a thread's replica, a forked worker's) must agree on with
the network, and what each message to the copies carries.

* ``network_key``: every layer's and the loss's class and public settings (``config_key``) and the
  trainable parameters' slots; a split is reused only while it is unchanged;
* ``modes``: the layers' training flags; ``random_states``: the stochastic layers' random state
  (a shard draws exactly its samples' part of the batch's random numbers).
"""
import numpy as np

__all__ = ["config_key", "network_key", "param_slots", "buffer_slots", "modes", "set_modes", "random_states",
           "set_random_states"]

PLAIN = (bool, int, float, complex, str, bytes, type(None), np.generic, np.dtype)


def plain(value):
    """A comparable summary of an attribute: plain values as they are, arrays by shape and
    dtype, other objects by their type."""
    if isinstance(value, PLAIN):
        return value
    if type(value) is tuple and all(isinstance(v, PLAIN) for v in value):    # e.g. kernel sizes
        return value
    if isinstance(value, (tuple, list)):
        return tuple(plain(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, plain(v)) for k, v in value.items())
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return ("array", tuple(value.shape), str(value.dtype))
    return type(value).__qualname__


def config_key(node):
    """What a copy of ``node`` made earlier (a replica, or the layers of a forked worker) must
    still agree on with it: the object, its class and its public attributes (sizes, flags,
    names, dtypes), read through ``_plain``.  Private state (parameters, caches, gradients)
    is excluded: parameters reach the copies at every step; so is the ``training`` flag, which
    every message to the copies carries (``_modes``)."""
    return (id(node), type(node), tuple((k, plain(v)) for k, v in vars(node).items()
                                        if k[0] != "_" and k != "training"))


def modes(net):
    """The layers' training flags as a string ("1": training, "0": inference) for the split's copies."""
    return "".join("1" if layer.training else "0" for layer in net.layers)


def set_modes(layers, modes):
    """Give the copies ``layers`` the training flags ``modes`` (``_modes``) of the network's layers."""
    for layer, m in zip(layers, modes):
        layer.training = m == "1"


def random_states(net):
    """``[[layer index, random state]]`` of the network's stochastic layers (``Dropout``).

    A stochastic layer that may be split implements ``random_state()`` and
    ``set_random_state(state, sample_offset)``: given the step's state and the index of its first
    sample in the whole batch, a shard draws exactly its samples' part of the batch's random
    numbers (``dropout.py``), so the shards' draws differ and the result is the unsplit one.
    (Stochastic layers without them keep the network unsplit: ``shard_count``.)"""
    return [[k, layer.random_state()] for k, layer in enumerate(net.layers)
            if getattr(layer, "stochastic", False) and hasattr(layer, "set_random_state")]


def set_random_states(layers, states, offset):
    for k, state in states:
        layers[k].set_random_state(state, offset)


def network_key(net):
    """``config_key`` of every layer and of the loss, with the trainable parameters' slots."""
    return (tuple(config_key(layer) for layer in net.layers), config_key(net.loss_fn),
            tuple((k, n, s, d.str) for k, n, s, d in param_slots(net) + buffer_slots(net)))


def buffer_slots(net):
    """``[(layer index, name, shape, dtype)]`` of every buffer (``BatchNorm``'s moving statistics), in
    a fixed order: the split's copies read them (inference mode) from the network's layers."""
    return [(k, name, tuple(b.shape), b.dtype) for k, layer in enumerate(net.layers)
            for name, b in (getattr(layer, "buffers", None) or {}).items()]


def param_slots(net):
    """``[(layer index, name, shape, dtype)]`` of every trainable parameter, in a fixed order."""
    return [(k, name, tuple(p.shape), p.dtype) for k, layer in enumerate(net.layers) if layer.params
            for name, p in layer.params.items()]
