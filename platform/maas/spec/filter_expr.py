"""The ``filter`` op's language: a restricted expression grammar, parsed once and evaluated column-wise.

A spec is data, so a filter is never handed to ``eval`` (nor to ``DataFrame.eval``, whose ``@`` and attribute
syntax reach any Python object). What a filter may hold:

- column names (``age``; a name with spaces or symbols in backticks: ```annual income```),
- literals: numbers, strings, ``true``/``false``/``True``/``False``, ``null``/``None``,
- comparisons ``== != < <= > >=`` (chains too: ``0 <= x < 10``), ``in`` / ``not in`` a list of literals,
- ``and`` / ``or`` / ``not`` (and their pandas spellings ``&`` ``|`` ``~``), parentheses,
- arithmetic ``+ - * / // % **`` and unary minus (``**`` with a literal exponent of at most 64; no arithmetic
  on strings; integers within 64 bits; at most 64 levels of nesting and 10,000 characters: a filter cannot
  be made to run for hours, fill the memory or overflow the stack),
- null tests: ``x is null``, ``x is not null`` (also ``None``), ``isnull(x)``, ``notnull(x)``, and pandas'
  ``x.isna()`` / ``x.notna()`` (``isnull``/``notnull``) on a column name.

Anything else (attributes, calls, subscripts, ``@`` locals, lambdas, comprehensions) is refused when the spec is
validated, with the position of the offending part. A comparison with a null is false, like SQL's filter.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
from typing import Any

_BACKTICK = re.compile(r"`([^`]+)`")
_NULL_WORDS = {"null": None, "true": True, "false": False}
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
_NULL_TESTS = {"isnull": True, "isna": True, "notnull": False, "notna": False}


class FilterSyntaxError(ValueError):
    """A filter outside the grammar; the message names the offending part and its column."""


def _prepare(text: str) -> tuple[str, dict[str, str]]:
    """Backticked names become plain identifiers (``__c0``...) that map back to the real column names."""
    names: dict[str, str] = {}

    def sub(m: re.Match) -> str:
        alias = f"__c{len(names)}"
        names[alias] = m.group(1)
        return alias

    source = _BACKTICK.sub(sub, text)
    if not any(c in source for c in "&|~"):
        return source, names
    # pandas gives & | ~ the precedence of and / or / not ("a > 1 & b < 2" means both): so do we
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return source, names
    words = {"&": "and", "|": "or", "~": "not"}
    out = [(tokenize.NAME, words[t.string]) if t.type == tokenize.OP and t.string in words else (t.type, t.string)
           for t in toks]
    return tokenize.untokenize(out).strip(), names


def _refuse(node: ast.AST, text: str, what: str) -> FilterSyntaxError:
    col = getattr(node, "col_offset", 0)
    return FilterSyntaxError(f"{what} at column {col + 1} is not allowed in a filter ({text!r}); a filter holds "
                             "column names, literals, comparisons, in-lists, and/or/not, arithmetic and null tests")


def _literal(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float, str))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)) \
            and not isinstance(node.operand.value, bool):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.Name) and node.id in _NULL_WORDS:
        return _NULL_WORDS[node.id]
    raise _refuse(node, text, f"{type(node).__name__} in a list")


def _check(node: ast.AST, text: str, names: dict[str, str]) -> tuple:
    """The expression as a small tuple tree: ("col", name) ("lit", v) ("cmp", op, a, b) ("in", a, values, neg)
    ("and"|"or", [..]) ("not", a) ("arith", op, a, b) ("neg", a) ("null", a, is_null)."""
    if isinstance(node, ast.Expression):
        return _check(node.body, text, names)
    if isinstance(node, ast.Name):
        if node.id in _NULL_WORDS:
            return ("lit", _NULL_WORDS[node.id])
        return ("col", names.get(node.id, node.id))
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise _refuse(node, text, f"an integer of {len(str(value))} digits (past 64 bits)")
        if value is None or isinstance(value, (bool, int, float, str)):
            return ("lit", value)
        raise _refuse(node, text, f"the literal {value!r}")
    if isinstance(node, ast.BoolOp):
        return ("and" if isinstance(node.op, ast.And) else "or", [_check(v, text, names) for v in node.values])
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, (ast.Not, ast.Invert)):
            return ("not", _check(node.operand, text, names))
        if isinstance(node.op, ast.USub):
            return ("neg", _check(node.operand, text, names))
        if isinstance(node.op, ast.UAdd):
            return _check(node.operand, text, names)
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            return ("and" if isinstance(node.op, ast.BitAnd) else "or",
                    [_check(node.left, text, names), _check(node.right, text, names)])
        if type(node.op) in _ARITH:
            for side in (node.left, node.right):  # 'a' * 10**12 would build a terabyte string
                if isinstance(side, ast.Constant) and isinstance(side.value, str):
                    raise _refuse(side, text, "arithmetic on a string")
            if isinstance(node.op, ast.Pow):  # 10**10**7 would run for hours: a small literal exponent only
                exponent = _literal(node.right, text) if isinstance(node.right, (ast.Constant, ast.UnaryOp)) \
                    else None
                if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) \
                        or abs(exponent) > MAX_EXPONENT:
                    raise _refuse(node.right, text, f"an exponent other than a number of at most {MAX_EXPONENT}")
            return ("arith", _ARITH[type(node.op)], _check(node.left, text, names), _check(node.right, text, names))
    if isinstance(node, ast.Compare):
        parts, left = [], node.left
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
                    raise _refuse(right, text, "'in' with something other than a list of literals")
                parts.append(("in", _check(left, text, names), [_literal(e, text) for e in right.elts],
                              isinstance(op, ast.NotIn)))
            elif isinstance(op, (ast.Is, ast.IsNot)):
                if not _is_null(right):
                    raise _refuse(right, text, "'is' with something other than null")
                parts.append(("null", _check(left, text, names), isinstance(op, ast.Is)))
            elif type(op) in _COMPARE:
                parts.append(("cmp", _COMPARE[type(op)], _check(left, text, names), _check(right, text, names)))
            else:
                raise _refuse(node, text, f"the operator {type(op).__name__}")
            left = right
        return parts[0] if len(parts) == 1 else ("and", parts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _NULL_TESTS \
            and len(node.args) == 1 and not node.keywords:
        return ("null", _check(node.args[0], text, names), _NULL_TESTS[node.func.id])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _NULL_TESTS \
            and isinstance(node.func.value, ast.Name) and not node.args and not node.keywords:
        return ("null", _check(node.func.value, text, names), _NULL_TESTS[node.func.attr])  # pandas: x.isna()
    raise _refuse(node, text, {ast.Attribute: "an attribute", ast.Call: "a function call",
                               ast.Subscript: "a subscript", ast.Lambda: "a lambda"}.get(type(node),
                                                                                     type(node).__name__))


def _is_null(node: ast.AST) -> bool:
    """``None`` or ``null``: the only right-hand side of ``is`` / ``is not``."""
    return (isinstance(node, ast.Constant) and node.value is None) or \
        (isinstance(node, ast.Name) and node.id == "null")


@functools.lru_cache(maxsize=256)
def parse_filter(text: str) -> tuple:
    """Parse and check a filter; the checked tree is what ``evaluate_filter`` runs. Cached: a data stage
    applies the same filter to every batch (the tree is never modified).

    Raises:
        FilterSyntaxError: the text is not an expression of the grammar (the message names the part).
    """
    if not isinstance(text, str) or not text.strip():
        raise FilterSyntaxError("a filter is a non-empty expression, e.g. 'age >= 0 and income < 1e7'")
    if "@" in _BACKTICK.sub("", text):
        raise FilterSyntaxError(f"'@' (a reference to a Python variable) is not allowed in a filter ({text!r})")
    if len(text) > MAX_CHARS:
        raise FilterSyntaxError(f"a filter is at most {MAX_CHARS} characters; this one has {len(text)}")
    source, names = _prepare(text.strip())
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise FilterSyntaxError(f"not an expression ({text[:200]!r}): {exc.msg} at column {exc.offset or 0}") \
            from None
    except (RecursionError, MemoryError):  # Python's own parser gives up on deep nesting
        raise FilterSyntaxError(f"a filter nests at most {MAX_DEPTH} levels deep") from None
    if _depth(tree) > MAX_DEPTH:
        raise FilterSyntaxError(f"a filter nests at most {MAX_DEPTH} levels deep ({text[:200]!r})")
    return _check(tree, text, names)


MAX_CHARS, MAX_DEPTH, MAX_INT, MAX_EXPONENT = 10_000, 64, 2 ** 63, 64


def _depth(tree: ast.AST) -> int:
    """How deep the syntax tree nests, found without recursion (a 5,000-deep ``not`` chain must not overflow)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def columns_of(tree: tuple) -> set[str]:
    """The column names a checked filter reads."""
    tag = tree[0]
    if tag == "col":
        return {tree[1]}
    if tag == "lit":
        return set()
    if tag in ("and", "or"):
        return set().union(*(columns_of(t) for t in tree[1]))
    if tag in ("not", "neg"):
        return columns_of(tree[1])
    if tag in ("cmp", "arith"):
        return columns_of(tree[2]) | columns_of(tree[3])
    return columns_of(tree[1])  # in, null


def evaluate_filter(tree: tuple, df):
    """The boolean keep-mask (numpy) of a checked filter over a pandas DataFrame. Nulls compare false."""
    import numpy as np

    def truth(v):
        if hasattr(v, "to_numpy"):
            return v.astype("boolean").fillna(False).to_numpy(bool) if v.dtype != bool else v.to_numpy(bool)
        arr = np.asarray(v)
        return np.broadcast_to(arr.astype(bool), (len(df),)) if arr.ndim == 0 else arr.astype(bool)

    def value(t):
        tag = t[0]
        if tag == "col":
            if t[1] not in df.columns:
                raise KeyError(t[1])
            return df[t[1]]
        if tag == "lit":
            return t[1]
        if tag == "neg":
            return -value(t[1])
        if tag == "arith":
            a, b = value(t[2]), value(t[3])
            return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                    "//": lambda: a // b, "%": lambda: a % b, "**": lambda: a ** b}[t[1]]()
        return mask(t)

    def mask(t) -> np.ndarray:
        tag = t[0]
        if tag == "and":
            return np.logical_and.reduce([mask(x) for x in t[1]])
        if tag == "or":
            return np.logical_or.reduce([mask(x) for x in t[1]])
        if tag == "not":
            return ~mask(t[1])
        if tag == "null":
            v = value(t[1])
            nulls = v.isna().to_numpy(bool) if hasattr(v, "isna") else np.full(len(df), v is None)
            return nulls if t[2] else ~nulls
        if tag == "in":
            v = value(t[1])
            found = v.isin(t[2]).to_numpy(bool) if hasattr(v, "isin") else np.full(len(df), v in t[2])
            return ~found & _not_null(v) if t[3] else found
        if tag == "cmp":
            a, b = value(t[2]), value(t[3])
            if a is None or b is None:
                return np.zeros(len(df), bool)
            out = {"==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b, "<=": lambda: a <= b,
                   ">": lambda: a > b, ">=": lambda: a >= b}[t[1]]()
            return truth(out) & _not_null(a) & _not_null(b)
        return truth(value(t))

    def _not_null(v) -> np.ndarray:
        return v.notna().to_numpy(bool) if hasattr(v, "notna") else np.ones(len(df), bool)

    return mask(tree)
