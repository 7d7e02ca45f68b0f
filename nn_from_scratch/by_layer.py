"""State kept per layer, by the layer's identity: for the optimizers and for the engine."""
import weakref

__all__ = ["StateByLayer"]


class StateByLayer:
    """``layer -> {...}``: a state dictionary per layer, by the layer's identity (an optimizer's
    moments, K-FAC's factors, the engine's scratch buffers).

    Not a ``WeakKeyDictionary``: that hashes and compares the layers themselves, and a
    layer's ``==`` is its own business (a ``@dataclass`` layer is unhashable, and two
    equal ones are still two layers with two sets of momenta).  An entry goes when its
    layer is garbage-collected; a layer that cannot be weakly referenced (``__slots__``
    without ``__weakref__``) keeps its entry as long as the owner (e.g. until ``Optimizer.reset``).
    """

    def __init__(self):
        self._entries = {}                              # id(layer) -> (reference, state)

    def of(self, layer):
        """The state dictionary of ``layer`` (created empty the first time)."""
        entry = self._entries.get(id(layer))
        if entry is not None and entry[0]() is layer:
            return entry[1]
        key, entries = id(layer), self._entries
        try:
            def forget(ref):                            # only its own entry: the id may be reused
                if entries.get(key, (None,))[0] is ref:
                    del entries[key]
            ref = weakref.ref(layer, forget)
        except TypeError:
            ref = lambda: layer                         # noqa: E731 - kept alive with the owner
        entries[key] = (ref, {})
        return entries[key][1]

    def __len__(self):
        return len(self._entries)

    def peek(self, layer):
        """The state dictionary of ``layer`` if it has one, else an empty dict (nothing created)."""
        entry = self._entries.get(id(layer))
        return entry[1] if entry is not None and entry[0]() is layer else {}
