"""``NeuralNetwork.summary``: the table of layers, output shapes and parameter counts (as Keras's),
the loss, the optimizer, and which layers the engine runs by a fast path.

A size the network cannot know yet (no ``input_shape``: the spatial sizes after a convolution
whose input size is free) shows as ``?``, the batch entry as ``N``; a layer whose input size is
still to be inferred shows ``? (unbuilt)`` for its parameters, and a last line says how to give
the input shape (``docs/layers.md``, "Shapes inferred")."""
import numpy as np

from ..layers.base import NotBuiltError

__all__ = ["summary_text", "engine_line"]


def _shape_text(shape):
    if shape is None:
        return "?"
    body = ", ".join("?" if s is None else str(s) for s in shape)
    return f"(N, {body})"


def _count(layer):
    try:
        return layer.count_params()
    except NotBuiltError:
        return None


def summary_text(net):
    """The summary of ``net`` as text."""
    rows = [("Layer (type)", "Output shape", "Param #")]
    counts = [_count(layer) for layer in net.layers]
    for layer, shape, n in zip(net.layers, net._shapes, counts):
        rows.append((f"{layer.name} ({type(layer).__name__})", _shape_text(shape),
                     "? (unbuilt)" if n is None else f"{n:,}"))
    w = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
    line = "=" * sum(w)
    out = [f'Model: "{net.name}"', line]
    for j, r in enumerate(rows):
        out.append(r[0].ljust(w[0]) + r[1].ljust(w[1]) + r[2].rjust(w[2]))
        out.append(line if j == 0 else "-" * sum(w))
    if None in counts:
        out.append("Total params: ? (layers marked unbuilt take their input size from the data)")
    else:
        total = sum(counts)
        trainable = sum(n - sum(int(np.prod(b.shape)) for b in layer.buffers.values())
                        for layer, n in zip(net.layers, counts)
                        if layer in net.trainable_layers and getattr(layer, "trainable", True))
        out.append(f"Total params: {total:,}")
        out.append(f"Trainable params: {trainable:,}")
        out.append(f"Non-trainable params: {total - trainable:,}")
    if net.input_shape is None or None in net.input_shape or any(s is None or None in s for s in net._shapes):
        out.append("Shapes marked ? are not known yet: give the shape of one sample, "
                   "NeuralNetwork(layers, input_shape=(1, 28, 28)) (or net.build((1, 28, 28)))")
    out.append(f"Loss: {type(net.loss_fn).__name__}   Optimizer: {net.optimizer!r}")
    out.append(engine_line(net))
    return "\n".join(out)


def engine_line(net):
    """The summary's last line: the engine off, or on and which layers run by which fast path."""
    if not net.engine:
        return "Engine: off (every layer runs its own forward/backward)"
    plan = net.engine_plan() if net.built else []
    if not plan:
        return "Engine: on; every layer runs its own forward/backward"
    runs = "; ".join(f"{' -> '.join(layer.name for layer in net.layers[a:b])} {what}" for a, b, what in plan)
    return f"Engine: on (engine=False runs every layer's own code): {runs}"
