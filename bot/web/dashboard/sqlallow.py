"""What the SQL console may run: allow-lists, not deny-lists.

A statement is accepted only when every node of its parsed tree (sqlglot) is one of the
kinds listed here: query structure, operators, literals, casts to plain types, and calls
of pure functions (aggregates, window functions, date/time, string, math, JSON readers).
Everything else — server functions (`pg_*`, `lo_*`, `current_setting`, `load_extension`,
…), schema-qualified calls, parameters, `INTO`, locking clauses, row constructors read
through `(t).col` — is not on a list, so it is refused without having to be named.

Function calls that sqlglot knows are matched by class (`exp.Count`, …); the others are
`exp.Anonymous` and matched by lower-case name, per dialect.
"""

from __future__ import annotations

from sqlglot import exp

DType = exp.DataType.Type

# Secret columns: readable by the application, never from the console (nor by the
# console's PostgreSQL role, which gets no grant on them: see console_role.py).
SECRET_COLUMNS: frozenset[tuple[str, str]] = frozenset(
    {("admin_accounts", "password_hash"), ("conversations", "interaction_token")}
)
# Whole tables that are secret: any table named like a session store (none today; a
# future `web_sessions` table is covered without touching this list).
SECRET_TABLE_WORD = "session"

# Query structure, operators and literals (no function behind them that reads anything).
ALLOWED_NODES: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.Select,
        exp.Union,
        exp.Intersect,
        exp.Except,
        exp.Subquery,
        exp.With,
        exp.CTE,
        exp.From,
        exp.Join,
        exp.Where,
        exp.Group,
        exp.Having,
        exp.Order,
        exp.Ordered,
        exp.Limit,
        exp.LimitOptions,
        exp.Offset,
        exp.Fetch,
        exp.Distinct,
        exp.Alias,
        exp.TableAlias,
        exp.Table,
        exp.Column,
        exp.Identifier,
        exp.Star,
        exp.Literal,
        exp.ByteString,
        exp.Null,
        exp.Boolean,
        exp.Paren,
        exp.Tuple,
        exp.Window,
        exp.WindowSpec,
        exp.Filter,
        exp.WithinGroup,
        exp.Var,
        exp.Interval,
        exp.DataType,
        exp.DataTypeParam,
        exp.Kwarg,
        exp.Neg,
        exp.Not,
        exp.EQ,
        exp.NEQ,
        exp.GT,
        exp.GTE,
        exp.LT,
        exp.LTE,
        exp.NullSafeEQ,
        exp.NullSafeNEQ,
        exp.Is,
        exp.In,
        exp.Between,
        exp.Like,
        exp.ILike,
        exp.Glob,
        exp.Escape,
        exp.Add,
        exp.Sub,
        exp.Mul,
        exp.Div,
        exp.IntDiv,
        exp.Mod,
        exp.DPipe,
        exp.BitwiseAnd,
        exp.BitwiseOr,
        exp.BitwiseXor,
        exp.BitwiseNot,
        exp.BitwiseLeftShift,
        exp.BitwiseRightShift,
        exp.Any,
        exp.All,
        exp.Bracket,
        exp.JSONPath,
        exp.JSONPathKey,
        exp.JSONPathRoot,
        exp.JSONPathSubscript,
    }
)

# Pure functions sqlglot knows by class, the same on both databases.
ALLOWED_FUNCTIONS: frozenset[type[exp.Func]] = frozenset(
    {
        # logic and structure
        exp.And,
        exp.Or,
        exp.Case,
        exp.If,
        exp.Coalesce,
        exp.Nullif,
        exp.Greatest,
        exp.Least,
        exp.Cast,
        exp.TryCast,
        exp.Exists,
        exp.Array,
        # aggregates
        exp.Count,
        exp.Sum,
        exp.Avg,
        exp.Min,
        exp.Max,
        exp.GroupConcat,
        exp.ArrayAgg,
        exp.JSONArrayAgg,
        exp.Stddev,
        exp.StddevPop,
        exp.StddevSamp,
        exp.Variance,
        exp.VariancePop,
        exp.LogicalAnd,
        exp.LogicalOr,
        exp.PercentileCont,
        exp.PercentileDisc,
        exp.Mode,
        # window functions
        exp.RowNumber,
        exp.Rank,
        exp.DenseRank,
        exp.PercentRank,
        exp.CumeDist,
        exp.Ntile,
        exp.Lag,
        exp.Lead,
        exp.FirstValue,
        exp.LastValue,
        exp.NthValue,
        # math
        exp.Abs,
        exp.Round,
        exp.Ceil,
        exp.Floor,
        exp.Sqrt,
        exp.Ln,
        exp.Log,
        exp.Exp,
        exp.Pow,
        exp.Sign,
        exp.Trunc,
        exp.Pi,
        exp.Rand,
        # strings (no repeat/lpad/printf: nothing here makes a value much bigger than its input)
        exp.Length,
        exp.Lower,
        exp.Upper,
        exp.Trim,
        exp.Substring,
        exp.Concat,
        exp.ConcatWs,
        exp.Replace,
        exp.StrPosition,
        exp.Left,
        exp.Right,
        exp.Initcap,
        exp.SplitPart,
        exp.Reverse,
        exp.RegexpLike,
        exp.RegexpReplace,
        exp.Hex,
        exp.Unicode,
        exp.Chr,
        exp.Typeof,
        # date and time
        exp.CurrentDate,
        exp.CurrentTime,
        exp.CurrentTimestamp,
        exp.Date,
        exp.Time,
        exp.Datetime,
        exp.DateTrunc,
        exp.TimestampTrunc,
        exp.DateBin,
        exp.Extract,
        exp.TimeToStr,
        exp.ToChar,
        exp.StrToDate,
        exp.StrToTime,
        exp.TsOrDsToTimestamp,
        exp.TsOrDsToDate,
        exp.UnixToTime,
        exp.MakeInterval,
        # JSON readers
        exp.JSONExtract,
        exp.JSONExtractScalar,
        exp.JSONBExtract,
        exp.JSONBExtractScalar,
        exp.JSONBContainsTopKey,
        exp.ArrayContainsAll,
        exp.JSONType,
        # set-returning (in SELECT or FROM): rows from values, not from storage
        exp.ExplodingGenerateSeries,
        exp.GenerateSeries,
        exp.Unnest,
        exp.Explode,
    }
)

# PostgreSQL's JSON functions that return rows (usable in FROM and in SELECT).
_JSON_ROWS = {
    "json_object_keys",
    "jsonb_object_keys",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
}

# Functions sqlglot does not know (exp.Anonymous), by lower-case name.
_COMMON_NAMED = {"json_array_length", "jsonb_array_length", "every"}
ALLOWED_NAMED: dict[str, frozenset[str]] = {
    "sqlite": frozenset(
        _COMMON_NAMED
        | {
            "julianday",
            "unixepoch",
            "strftime",
            "date",
            "time",
            "datetime",
            "total",
            "json_type",
            "json_valid",
            "json_group_array",
            "json_group_object",
            "json_extract",
            "json_array",
            "json_object",
            "json_each",
            "json_tree",
            "ifnull",
            "iif",
            "instr",
            "typeof",
            "char",
        }
    ),
    "postgres": frozenset(
        _COMMON_NAMED
        | {
            "age",
            "date_part",
            "to_timestamp",
            "to_date",
            "to_number",
            "make_date",
            "justify_interval",
            "justify_days",
            "justify_hours",
            "isfinite",
            "char_length",
            "character_length",
            "octet_length",
            "btrim",
            "json_agg",
            "jsonb_agg",
            "json_typeof",
            "jsonb_typeof",
            "json_extract_path",
            "jsonb_extract_path",
            "json_extract_path_text",
            "jsonb_extract_path_text",
            "array_length",
            "cardinality",
            "array_to_string",
            "string_to_array",
            "width_bucket",
        }
        | _JSON_ROWS
    ),
}

# Functions that may stand in FROM (they make rows from their arguments).
TABLE_FUNCTIONS = frozenset({"generate_series", "unnest", "json_tree"} | _JSON_ROWS)

# Types a value may be cast to (no regclass & co., whose input functions look up catalogues).
ALLOWED_CASTS = frozenset(
    {
        DType.INT,
        DType.BIGINT,
        DType.SMALLINT,
        DType.TINYINT,
        DType.DECIMAL,
        DType.DOUBLE,
        DType.FLOAT,
        DType.TEXT,
        DType.VARCHAR,
        DType.CHAR,
        DType.BOOLEAN,
        DType.DATE,
        DType.TIME,
        DType.TIMESTAMP,
        DType.TIMESTAMPTZ,
        DType.INTERVAL,
        DType.JSON,
        DType.JSONB,
        DType.UUID,
    }
)


def function_name(node: exp.Func) -> str:
    """The name an admin would recognise: what they typed, or sqlglot's SQL name."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower().removeprefix("exploding_")


def is_allowed_function(node: exp.Func, dialect: str) -> bool:
    if isinstance(node, exp.Anonymous):
        return type(node) is exp.Anonymous and function_name(node) in ALLOWED_NAMED[dialect]
    return type(node) in ALLOWED_FUNCTIONS


def is_secret_table(name: str) -> bool:
    return SECRET_TABLE_WORD in name.lower()


def secret_holding(table: str) -> bool:
    return any(name == table for name, _ in SECRET_COLUMNS)
