"""A safe arithmetic evaluator for calculator tools: the expression is parsed with
Python's `ast` and only number literals, + - * / // % ** (unary and binary) and
parentheses are evaluated; names, calls, attributes, subscripts, comparisons and every
other node are refused. Nothing is ever passed to `eval`.

    from rlhf_exact.envs.calculator import evaluate, format_number
    evaluate("3 * (4 + 5) / 2")        # 13.5
    format_number(evaluate("48/2"))    # "24"
    evaluate("__import__('os')")       # CalculatorError: names are not allowed

Bounds (a model can write anything): at most MAX_CHARS characters, at most MAX_NODES
syntax nodes, `**` exponents in [-MAX_EXPONENT, MAX_EXPONENT] and every intermediate
result at most MAX_MAGNITUDE in absolute value, so no expression runs long or builds a
huge integer. Integer arithmetic stays exact (Python ints) until a `/` makes a float;
`2 ** -1` is 0.5. "1,000" is read as 1000 (thousands separators are stripped when every
comma is followed by exactly three digits) and a trailing "=" is ignored, because
models write both.
"""
from __future__ import annotations

import ast
import math
import operator
import re
import warnings

MAX_CHARS = 200  # longer expressions are refused
MAX_NODES = 100  # syntax nodes in the parsed expression
MAX_EXPONENT = 64  # |b| of a ** b
MAX_MAGNITUDE = 1e15  # |value| of every intermediate result

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class CalculatorError(ValueError):
    """The expression is not arithmetic the calculator evaluates (the message says why)."""


def _check(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"a value exceeds {MAX_MAGNITUDE:g} in magnitude")
    return value


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent {right} is outside [-{MAX_EXPONENT}, {MAX_EXPONENT}]")
        if isinstance(node.op, ast.Pow) and left == 0 and right < 0:
            raise CalculatorError("division by zero")
        try:
            return _check(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError(f"a value exceeds {MAX_MAGNITUDE:g} in magnitude") from None
    what = type(node).__name__
    if isinstance(node, ast.Name):
        what = f"name {node.id!r}"
    elif isinstance(node, ast.Constant):
        what = f"constant {node.value!r}"
    raise CalculatorError(f"{what} is not allowed (numbers, + - * / // % ** and parentheses only)")


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; CalculatorError when it is not one (module
    docstring: what is allowed, the bounds)."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be a string, got {type(expression).__name__}")
    text = _THOUSANDS.sub("", expression.strip()).rstrip("=").strip()
    if not text:
        raise CalculatorError("the expression is empty")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_CHARS} characters")
    try:
        with warnings.catch_warnings():  # "1if": the parser warns about what is refused anyway
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not an arithmetic expression ({e.msg})") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"the expression has more than {MAX_NODES} parts")
    return _eval(tree.body)


def format_number(value: int | float) -> str:
    """How a tool shows a result: integers (and integral floats) without a decimal point,
    other floats rounded to 6 decimals with trailing zeros dropped ("13.5", "0.333333")."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return str(value)
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
