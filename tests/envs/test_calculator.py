"""The calculator tool's evaluator: hand values, and everything that is not arithmetic refused."""
import pytest

from rlhf_exact.envs.calculator import CalculatorError, evaluate, format_number


@pytest.mark.parametrize("expr, value", [
    ("3 * (4 + 5) / 2", 13.5), ("2**10", 1024), ("7 // 2", 3), ("-3 % 5", 2), ("1,000 + 1", 1001),
    ("48/2=", 24.0), ("  +5 - -2 ", 7), ("2 ** -1", 0.5), ("0.1 * 3", 0.1 * 3), ("(((1)))", 1),
])
def test_values(expr, value):
    got = evaluate(expr)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("expr, why", [
    ("__import__('os').system('true')", "not allowed"), ("x + 1", "name 'x'"), ("abs(-1)", "not allowed"),
    ("(1).real", "not allowed"), ("[1, 2]", "not allowed"), ("True + 1", "constant True"), ("'a' * 3", "constant 'a'"),
    ("lambda: 1", "not allowed"), ("1 < 2", "not allowed"), ("1 / 0", "division by zero"), ("5 % 0", "division"),
    ("0 ** -1", "division by zero"), ("2 ** 100000", "exponent"), ("10 ** 16", "magnitude"), ("1e400", "finite"),
    ("1e15 ** 30", "magnitude"), ("", "empty"), ("=", "empty"), ("1 +", "not an arithmetic expression"),
    ("9" * 201, "longer than"), ("+".join(["1"] * 60), "more than"),
])
def test_refused(expr, why):
    with pytest.raises(CalculatorError, match=why):
        evaluate(expr)


def test_not_a_string():
    with pytest.raises(CalculatorError, match="must be a string"):
        evaluate(12)


@pytest.mark.parametrize("value, text", [(24.0, "24"), (13.5, "13.5"), (1 / 3, "0.333333"), (-7, "-7"),
                                         (-1e-9, "0"), (2.5e-6, "0.000003"), (10 ** 12, "1000000000000")])
def test_format_number(value, text):
    assert format_number(value) == text


def test_no_parser_warnings():
    """Model text like "1if" makes Python's parser warn; the calculator refuses it quietly."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CalculatorError, match="not an arithmetic expression"):
            evaluate("1if 2")
