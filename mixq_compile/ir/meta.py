"""Names the passes, lowering and backends agree on: keys of ``GraphModule.meta`` / ``Node.meta`` and submodule roots.

One home for each, so that a pass and the backend that reads what it wrote cannot drift apart.
"""

#: ``GraphModule.meta``: the :class:`~mixq_compile.ir.plan.SitePlan` of a quantized graph (written by ``find_sites``)
PLAN_KEY = "mixq_plan"
#: ``Node.meta``: the site name of a quantizer node (written by ``insert_quantizers``)
SITE_KEY = "mixq_site"
#: submodule under which ``insert_quantizers`` puts the quantizers (``mixq.<site>``)
QUANTIZER_ROOT = "mixq"
#: ``GraphModule.meta`` of an integer program: ops that read quantized values but run in float
FLOAT_OPS_KEY = "mixq_float_ops"
#: ``Node.meta`` of every ``linear_int``: the weight site it multiplies
WEIGHT_SITE_KEY = "mixq_weight_site"
#: ``GraphModule.meta`` of an integer program: site name -> {"bits": ...} of every lowered quantizer
SITES_KEY = "mixq_sites"
