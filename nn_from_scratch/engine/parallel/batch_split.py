"""``BatchSplit``: the one object a network holds for splitting its batches.

``step(net, xb, yb, whole)`` runs a training step split over the workers when ``shard_count``
allows it, and otherwise, or when the split fails, as one batch (``whole(xb, yb)``, the network's
own step); ``forward(net, xb, whole)`` does the same for an inference batch, over the workers a
training split left; ``rest()`` lets the workers drop their caches between ``fit`` calls;
``close()`` ends them.  The facade owns the two rules that make a failed split harmless: the
batch runs again as one (its error then names the whole batch), and the stochastic layers get
back the random state they had, so that the batch draws what the split would have drawn (the
``BatchNorm`` layers their moving statistics, so that the batch updates them once).
"""
import warnings

from . import allowed, forked, identity, policy, rebuild, server, threads, workers

__all__ = ["BatchSplit", "make_step"]


def make_step(net, shards, xb=None, yb=None, recipes=None):
    """A split step of the kind ``policy.split_with()`` names (``xb``, ``yb``: a batch like those it
    will run, which sizes the process workers' shared inboxes).  ``None`` when, checked again while
    no other thread can enter a network's method, splitting is no longer allowed.

    Processes are forked from this one only while it runs no other thread (``allowed.alone``: a
    fork cannot then copy a lock another thread holds); otherwise the clean fork server starts
    them from the network's recipe (``server.py``, ``rebuild.py``), and a network that cannot be
    rebuilt there (a layer class of the user's) splits over threads when its shards are at least
    ``policy.MIN_SHARD`` samples, else runs whole.  ``recipes``: a cache ``{network_key: recipe}``."""
    workers.reap()
    if policy.split_with() != "processes":
        return threads.ShardedStep(net, shards) if allowed.split_allowed() else None
    with allowed.ACTIVE_LOCK:           # threads entering a network's method wait for the forks
        if not allowed.split_allowed():
            return None
        if allowed.alone():
            return forked.ForkedStep(net, shards, xb, yb)
    key = identity.network_key(net)
    recipes = {} if recipes is None else recipes
    if key not in recipes:
        recipes.clear()
        recipes[key] = rebuild.recipe(net)
    if recipes[key] is not None and server.usable():
        try:
            return forked.ForkedStep(net, shards, xb, yb, recipe=recipes[key])
        except Exception:
            recipes[key] = None         # not again for this network: threads or whole from now on
            raise
    if xb is not None and len(xb) // shards >= policy.MIN_SHARD:
        return threads.ShardedStep(net, shards)
    return None


class BatchSplit:
    """A network's split of its batches over worker processes or threads (see the module docstring).

    ``current``: the split in use (``forked.ForkedStep`` or ``threads.ShardedStep``), or None.
    """

    def __init__(self):
        self.current = None
        self._inference_split = None
        self._recipes = {}              # network_key -> rebuild.recipe (None: cannot be rebuilt)

    def step(self, net, xb, yb, whole, recheck=True):
        """``(loss, output)`` of a training batch, every neuron's ``grads`` set: split when
        ``policy.shard_count`` says so, else (or when the split fails, with a ``RuntimeWarning``)
        ``whole(xb, yb)``.  ``recheck=False``: nothing that could change a layer ran since the last
        split step (``fit`` within an epoch), so the split's ``matches`` check is skipped."""
        shards = policy.shard_count(net, xb.shape[0])
        failed = None
        if shards > 1:
            randoms = [(layer, layer.random_state()) for layer in net.layers if hasattr(layer, "random_state")]
            buffers = [(layer, dict(layer.buffers)) for layer in net.layers if getattr(layer, "buffers", None)]
            try:
                split = self.current
                if split is None or split.shards != shards or (recheck and not split.matches(net, shards)):
                    self.close()
                    self.current = make_step(net, shards, xb, yb, self._recipes)    # None: not now
                if self.current is not None:
                    return self.current.run(net, xb, yb)
            except Exception as exc:            # once more as one batch: its error names the whole batch
                failed = exc
                for layer, state in randoms:    # the same random draws as the split would have used
                    layer.set_random_state(state)
                for layer, held in buffers:     # moving statistics as before the split (updated once)
                    layer.buffers.update(held)
                kind = getattr(self.current, "kind", "workers")
                self.close()                    # a fresh split next time (a worker may have died)
        result = whole(xb, yb)
        if failed is not None:
            warnings.warn(f"{net.name}: the step split over {shards} {kind} failed ({failed!r}); "
                          "it ran as one batch instead", RuntimeWarning, stacklevel=4)
        return result

    def begin_inference(self, net):
        """Before a run of inference batches (``predict``, ``evaluate``): use the workers a training
        split left only while they still fit ``net``.  No workers are started for inference."""
        split = self.current
        self._inference_split = split if split is not None and split.matches(net, split.shards) else None

    def forward(self, net, xb, whole):
        """The output of an inference batch: split over the workers ``begin_inference`` kept when
        the batch splits into as many shards, else (or when that fails, with a warning) ``whole(xb)``."""
        split = self._inference_split
        if split is not None and policy.shard_count(net, xb.shape[0]) == split.shards:
            try:
                return split.forward(net, xb)
            except Exception as exc:    # once more as one batch: its error names the whole batch
                warnings.warn(f"{net.name}: the forward pass split over {split.shards} {split.kind} "
                              f"failed ({exc!r}); it ran as one batch instead", RuntimeWarning, stacklevel=5)
                self.close()
        return whole(xb)

    def end_inference(self):
        """After a run of inference batches: the workers used drop their caches."""
        split, self._inference_split = self._inference_split, None
        if split is not None:
            split.rest()

    def rest(self):
        """Between ``fit`` calls: the workers (kept for the next one) drop their caches."""
        if self.current is not None:
            self.current.rest()

    def close(self):
        """End the workers (processes or threads) and let their copies of the layers go."""
        self._inference_split = None
        if self.current is not None:
            self.current.close()
            self.current = None

    def __deepcopy__(self, memo):           # a copy of a network starts workers of its own
        return BatchSplit()
