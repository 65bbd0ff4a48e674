"""The rewrite both fusion passes make: a producer and its only consumer become one call."""

from __future__ import annotations

from torch import fx


def fuse_pair(gm: fx.GraphModule, producer: fx.Node, consumer: fx.Node, target: object, args: tuple) -> fx.Node:
    """Replace ``consumer`` (and ``producer``, whose only user it is) by ``target(*args)`` at the consumer's place,
    with the consumer's metadata (its output is what the new node computes)."""
    with gm.graph.inserting_before(consumer):
        call = gm.graph.call_function(target, args)
    call.meta = dict(consumer.meta)
    consumer.replace_all_uses_with(call)
    gm.graph.erase_node(consumer)
    gm.graph.erase_node(producer)
    return call
