"""Reading DataFusion plans: the operators of a physical plan, expressions under aliases."""

from __future__ import annotations

from collections.abc import Iterator

from datafusion import ExecutionPlan
from datafusion.expr import Expr


def operators(plan: ExecutionPlan) -> Iterator[tuple[str, str]]:
    """Each node of `plan`, root first: its operator name (`DataSourceExec`, ...) and its
    one-line display, which carries the operator's settings (`file_type=parquet`)."""
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        text = node.display()
        yield text.split(":")[0].strip(), text
        nodes.extend(node.children())


def unaliased(expr: Expr) -> Expr:
    """`expr` without the alias around it (`a AS x` is `a`)."""
    return expr.to_variant().expr() if expr.variant_name() == "Alias" else expr
