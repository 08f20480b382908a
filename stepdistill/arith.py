"""Safe arithmetic for equation labels (SVAMP-style): numbers, + - * / ** and parentheses only.

Model and teacher text is parsed with `ast` and walked by hand; nothing is ever passed to `eval`.
"""

from __future__ import annotations

import ast
import math
import operator

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 64  # keeps "9 ** 9 ** 9" from hanging the process


class ArithmeticError_(ValueError):
    """The text is not a plain arithmetic expression."""


def evaluate_arithmetic(text: str) -> float:
    """Value of an arithmetic expression such as ``( 8.0 - 5.0 ) * 2``; raises ValueError otherwise."""
    source = text.strip()
    if not source:
        raise ArithmeticError_("empty expression")
    if len(source) > 500:
        raise ArithmeticError_("expression longer than 500 characters")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ArithmeticError_(f"not an arithmetic expression: {source!r}") from exc
    value = float(_walk(tree.body, source))
    if not math.isfinite(value):
        raise ArithmeticError_(f"expression has no finite value: {source!r}")
    return value


def _walk(node: ast.AST, source: str) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand, source))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left, source), _walk(node.right, source)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ArithmeticError_(f"exponent too large in {source!r}")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError as exc:
            raise ArithmeticError_(f"division by zero in {source!r}") from exc
    raise ArithmeticError_(f"not an arithmetic expression: {source!r}")


def values_equal(a: str, b: str, tolerance: float = 1e-4) -> bool:
    """True when both expressions evaluate and their values agree; False if either does not evaluate."""
    try:
        return math.isclose(evaluate_arithmetic(a), evaluate_arithmetic(b), rel_tol=tolerance, abs_tol=tolerance)
    except ValueError:
        return False
