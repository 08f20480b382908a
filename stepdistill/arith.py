"""Safe arithmetic for equation labels (SVAMP-style): numbers, + - * / % // ** and parentheses only.

Model and teacher text is parsed with `ast` and walked by hand; nothing is ever passed to `eval`. The work any
text can cause is bounded: its length, its nesting depth, every intermediate value's magnitude and every power's
result size are capped, so a hostile expression fails with ValueError in well under a millisecond.
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
MAX_LENGTH = 500  # characters
MAX_DEPTH = 64  # nested operations; SVAMP equations have fewer than 10
MAX_MAGNITUDE = 1e15  # |value| of every constant and intermediate result
MAX_EXPONENT = 64


class ArithmeticError_(ValueError):
    """The text is not a plain arithmetic expression, or its value leaves the bounds."""


def evaluate_arithmetic(text: str) -> float:
    """Value of an arithmetic expression such as ``( 8.0 - 5.0 ) * 2``; raises ValueError otherwise."""
    source = text.strip()
    if not source:
        raise ArithmeticError_("empty expression")
    if len(source) > MAX_LENGTH:
        raise ArithmeticError_(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:  # the parser's own nesting limits
        raise ArithmeticError_(f"not an arithmetic expression: {source!r}") from exc
    return _walk(tree.body, source, 0)


def _bounded(value: float, source: str) -> float:
    if isinstance(value, complex) or not abs(value) <= MAX_MAGNITUDE:  # also false for nan; exact for big ints
        raise ArithmeticError_(f"value out of bounds (|x| <= {MAX_MAGNITUDE:g}, real) in {source!r}")
    return float(value)


def _power(base: float, exponent: float, source: str) -> float:
    if abs(exponent) > MAX_EXPONENT:
        raise ArithmeticError_(f"exponent larger than {MAX_EXPONENT} in {source!r}")
    # decide from logarithms before computing, so that no power can overflow or take long
    if base != 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ArithmeticError_(f"power out of bounds in {source!r}")
    return base ** exponent


def _walk(node: ast.AST, source: str, depth: int) -> float:
    if depth > MAX_DEPTH:
        raise ArithmeticError_(f"expression nested deeper than {MAX_DEPTH} in {source!r}")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value, source)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand, source, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _walk(node.left, source, depth + 1), _walk(node.right, source, depth + 1)
        try:
            if isinstance(node.op, ast.Pow):
                return _bounded(_power(left, right, source), source)
            return _bounded(_BINARY[type(node.op)](left, right), source)
        except ZeroDivisionError as exc:
            raise ArithmeticError_(f"division by zero in {source!r}") from exc
        except OverflowError as exc:
            raise ArithmeticError_(f"value out of bounds in {source!r}") from exc
    raise ArithmeticError_(f"not an arithmetic expression: {source!r}")


def values_equal(a: str, b: str, tolerance: float = 1e-4) -> bool:
    """True when both expressions evaluate and their values agree; False if either does not evaluate."""
    try:
        return math.isclose(evaluate_arithmetic(a), evaluate_arithmetic(b), rel_tol=tolerance, abs_tol=tolerance)
    except ValueError:
        return False
