"""``NeuralNetwork.summary``: the table of layers, output shapes and parameter counts (as Keras's),
the loss, the optimizer, and which layers the engine runs by a fast path."""
import numpy as np

from ..layers.base import format_shape

__all__ = ["summary_text", "engine_line"]


def summary_text(net):
    """The summary of ``net`` as text."""
    rows = [("Layer (type)", "Output shape", "Param #")]
    for layer, shape in zip(net.layers, net._shapes):
        shape_txt = "?" if shape is None else format_shape((None,) + tuple(shape))
        rows.append((f"{layer.name} ({type(layer).__name__})", shape_txt, f"{layer.count_params():,}"))
    w = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
    line = "=" * sum(w)
    out = [f'Model: "{net.name}"', line]
    for j, r in enumerate(rows):
        out.append(r[0].ljust(w[0]) + r[1].ljust(w[1]) + r[2].rjust(w[2]))
        out.append(line if j == 0 else "-" * sum(w))
    total = net.count_params()
    trainable = sum(layer.count_params() - sum(int(np.prod(b.shape)) for b in layer.buffers.values())
                    for layer in net.trainable_layers if getattr(layer, "trainable", True))
    out.append(f"Total params: {total:,}")
    out.append(f"Trainable params: {trainable:,}")
    out.append(f"Non-trainable params: {total - trainable:,}")
    out.append(f"Loss: {type(net.loss_fn).__name__}   Optimizer: {net.optimizer!r}")
    out.append(engine_line(net))
    return "\n".join(out)


def engine_line(net):
    """The summary's last line: the engine off, or on and which layers run by which fast path."""
    if not net.engine:
        return "Engine: off (every layer runs its own forward/backward)"
    plan = net.engine_plan()
    if not plan:
        return "Engine: on; every layer runs its own forward/backward"
    runs = "; ".join(f"{' -> '.join(layer.name for layer in net.layers[a:b])} {what}" for a, b, what in plan)
    return f"Engine: on (engine=False runs every layer's own code): {runs}"
