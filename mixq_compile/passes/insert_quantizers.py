"""Pass: put a MixQ mixed quantizer on every site of the plan.

Pre-condition: ``gm.meta["mixq_plan"]`` from :func:`find_sites`.
Post-condition: for every site, a ``call_module`` node ``mixq.<site>`` (a :class:`MixedQuantizer`) follows the
site's node and every former user of that node reads the quantized value. Candidates of a site share the one
underlying tensor (a weight is stored once).
"""

from __future__ import annotations

from torch import fx, nn

from ..ir.meta import PLAN_KEY, QUANTIZER_ROOT
from ..ir.plan import SitePlan
from ..quant.mixed import MixedQuantizer


def site_nodes(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {node.name: node for node in gm.graph.nodes}


def insert_quantizers(gm: fx.GraphModule) -> fx.GraphModule:
    """Insert one :class:`MixedQuantizer` per site (see module docstring)."""
    plan: SitePlan = gm.meta[PLAN_KEY]
    if not hasattr(gm, QUANTIZER_ROOT):
        gm.add_module(QUANTIZER_ROOT, nn.ModuleDict())
    quantizers: nn.ModuleDict = getattr(gm, QUANTIZER_ROOT)
    nodes = site_nodes(gm)
    first_compute = next(n for n in gm.graph.nodes if n.op not in ("placeholder", "get_attr"))
    for site in plan.sites:
        node = nodes[site.node]
        quantizers[site.module_key] = MixedQuantizer(site.spec, site.candidates)
        # Parameters are read at the top of the graph: quantize them once all inputs are declared.
        where = gm.graph.inserting_before(first_compute) if node.op == "get_attr" else gm.graph.inserting_after(node)
        with where:
            qnode = gm.graph.call_module(f"{QUANTIZER_ROOT}.{site.module_key}", (node,))
        qnode.meta = {k: v for k, v in node.meta.items() if k in ("val", "tensor_meta", "nn_module_stack")}
        qnode.meta["mixq_site"] = site.name
        node.replace_all_uses_with(qnode, delete_user_cb=lambda user, q=qnode: user is not q)
    gm.graph.lint()
    gm.recompile()
    return gm
