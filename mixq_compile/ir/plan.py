"""The result of site finding, as plain data: which values get quantizers and which ops they serve."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..quant.spec import QuantSpec


@dataclass(frozen=True)
class Site:
    """One quantization point: the output of graph node ``node`` gets a quantizer.

    ``shape`` is the example shape with dynamic dims written as symbols (e.g. ``("s0", 128)``).
    """

    name: str
    kind: str
    node: str
    shape: tuple[int | str, ...]
    spec: QuantSpec
    candidates: tuple[int, ...]
    in_message_passing: bool = False

    @property
    def module_key(self) -> str:
        return self.name.replace(".", "__")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "node": self.node,
            "shape": list(self.shape),
            "spec": self.spec.to_dict(),
            "candidates": list(self.candidates),
            "in_message_passing": self.in_message_passing,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Site:
        return cls(
            name=data["name"],
            kind=data["kind"],
            node=data["node"],
            shape=tuple(data["shape"]),
            spec=QuantSpec.from_dict(data["spec"]),
            candidates=tuple(data["candidates"]),
            in_message_passing=bool(data.get("in_message_passing", False)),
        )


@dataclass(frozen=True)
class OpRecord:
    """A quantizable op and the sites that serve it.

    Attributes:
        node: graph node name of the op.
        target: the ATen op, e.g. ``aten.linear.default``.
        category: "dense", "message_passing" or "pooling".
        reduce: the reduction of an aggregation ("sum", "mean", "amax", ...), else ``None``.
        owned: sites created for this op (its operands and output), in operand order then output — what the
            paper's BitOPs convention averages over.
        operand_grids: per quantized operand, the site whose grid that operand lies on (``None``: float).
        edge_weight: the edge-weight site of a weighted message, if any.
        output: the site on the op's output, if any.
    """

    node: str
    target: str
    category: str
    reduce: str | None
    owned: tuple[str, ...]
    operand_grids: tuple[str | None, ...]
    edge_weight: str | None = None
    output: str | None = None


@dataclass(frozen=True)
class SitePlan:
    sites: tuple[Site, ...]
    ops: tuple[OpRecord, ...]
    float_ops: tuple[str, ...] = field(default=())

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no quantization site named {name!r}; sites: {[s.name for s in self.sites]}")

    def to_dict(self) -> dict:
        return {
            "sites": [s.to_dict() for s in self.sites],
            "ops": [vars(op) | {"owned": list(op.owned), "operand_grids": list(op.operand_grids)} for op in self.ops],
            "float_ops": list(self.float_ops),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SitePlan:
        ops = tuple(
            OpRecord(**(op | {"owned": tuple(op["owned"]), "operand_grids": tuple(op["operand_grids"])}))
            for op in data["ops"]
        )
        return cls(tuple(Site.from_dict(s) for s in data["sites"]), ops, tuple(data.get("float_ops", ())))
