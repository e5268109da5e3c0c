"""Runs CREATE/DROP TABLE, CTAS, INSERT and CREATE/DROP SCHEMA against the catalog.

Each write is one catalog commit (an Iceberg snapshot): the rows are computed first and
a failure before the commit leaves every table as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import sqlglot
from datafusion import SessionContext, SQLOptions
from datafusion.plan import LogicalPlan
from sqlglot import exp
from sqlglot.errors import SqlglotError

from catalog import AlreadyExists, Catalog, NamespaceNotFound, TableIdent, TableNotFound
from engine.arrow_types import plain_schema
from engine.errors import InvalidQuery, NotSupported, ObjectNotFound
from engine.statements import WriteKind, WriteStatement
from engine.translate import classify_datafusion_error

COUNT_SCHEMA = pa.schema([pa.field("count", pa.int64(), nullable=False)])

_DML_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(True).with_allow_statements(False)
_DDL_ONLY = SQLOptions().with_allow_ddl(True).with_allow_dml(False).with_allow_statements(False)
_SCRATCH = "krishiv_scratch_table"


def count_rows(n: int) -> pa.Table:
    return pa.table({"count": pa.array([n], pa.int64())}, schema=COUNT_SCHEMA)


class Writer:
    """Executes one session's write statements.

    `collect(ctx, query, values)` is supplied by the session: it runs a query (SQL text
    or a DataFusion plan) under the server's limits and returns its rows.
    """

    def __init__(
        self,
        catalog_name: str,
        default_schema: str,
        catalog: Catalog,
        new_context: Callable[[str], SessionContext],
        collect: Callable[[SessionContext, str | LogicalPlan, dict[str, object] | None],
                          pa.Table],
    ) -> None:
        self._catalog_name = catalog_name
        self._default_schema = default_schema
        self._catalog = catalog
        self._new_context = new_context
        self._collect = collect

    # -- names ------------------------------------------------------------------------
    def table_ident(self, parts: tuple[str, ...]) -> TableIdent:
        if len(parts) == 1:
            return TableIdent(self._default_schema, parts[0])
        if len(parts) == 2:
            return TableIdent(parts[0], parts[1])
        if len(parts) == 3 and parts[0] == self._catalog_name:
            return TableIdent(parts[1], parts[2])
        raise ObjectNotFound(f"no catalog or table named {'.'.join(parts)}")

    def namespace(self, parts: tuple[str, ...]) -> str:
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2 and parts[0] == self._catalog_name:
            return parts[1]
        raise ObjectNotFound(f"no catalog or schema named {'.'.join(parts)}")

    # -- statements -------------------------------------------------------------------
    def run(self, statement: WriteStatement, sql: str,
            bindings: list[dict[str, object] | None]) -> int:
        """Execute `statement` once per parameter binding as ONE commit; rows written."""
        kind = statement.kind
        if kind is WriteKind.INSERT:
            return self._insert(sql, bindings)
        if len(bindings) > 1:
            raise InvalidQuery(f"{kind.value} takes at most one row of parameters")
        if kind is WriteKind.CREATE_TABLE_AS:
            return self._create_table_as(statement, bindings[0])
        if kind is WriteKind.CREATE_TABLE:
            self._create_table(statement)
        elif kind is WriteKind.DROP_TABLE:
            self._drop_table(statement)
        elif kind is WriteKind.CREATE_SCHEMA:
            self._create_schema(statement)
        elif kind is WriteKind.DROP_SCHEMA:
            self._drop_schema(statement)
        return 0

    def _create_table(self, statement: WriteStatement) -> None:
        ident = self.table_ident(statement.name)
        if self._exists(ident, statement):
            return
        schema = self._schema_of_columns(statement.body)
        key = primary_key_columns(statement.body)
        self._catalog.create_table(ident, schema)
        if key:
            try:
                self._catalog.set_primary_key(ident, key)
            except BaseException:
                self._catalog.drop_table(ident)
                raise

    def _schema_of_columns(self, columns: str) -> pa.Schema:
        """Arrow schema of a column list, typed by DataFusion in a scratch context.

        DataFusion only ever sees DDL rebuilt from sqlglot's parse (quoted names, types,
        NOT NULL): nothing of the client's text that sqlglot did not understand.
        """
        scratch = SessionContext()
        ddl = f"CREATE TABLE {_SCRATCH} ({', '.join(column_definitions(columns))})"
        try:
            scratch.sql(ddl, options=_DDL_ONLY)
        except Exception as exc:
            raise InvalidQuery(f"bad column definitions: {_first_line(exc)}") from None
        return plain_schema(scratch.table(_SCRATCH).schema())

    def _create_table_as(self, statement: WriteStatement, values: dict[str, object] | None
                         ) -> int:
        ident = self.table_ident(statement.name)
        if self._exists(ident, statement):
            return 0
        ctx = self._new_context(self._default_schema)
        rows = self._collect(ctx, statement.body, values)
        self._catalog.create_table_with(ident, rows)
        return rows.num_rows

    def _insert(self, sql: str, bindings: list[dict[str, object] | None]) -> int:
        """Rows of every binding computed first, then appended in one commit."""
        target: TableIdent | None = None
        parts = []
        for values in bindings:
            ident, rows = self._rows_to_insert(sql, values)
            target = target or ident
            parts.append(rows)
        assert target is not None
        if len(parts) > 1:
            # Literal rows differ in nullability only; the catalog fits types on append.
            loose = pa.schema([f.with_nullable(True) for f in parts[0].schema])
            rows = pa.concat_tables([part.cast(loose) for part in parts])
        else:
            rows = parts[0]
        self._catalog.append(target, rows)
        return rows.num_rows

    def _rows_to_insert(self, sql: str, values: dict[str, object] | None
                        ) -> tuple[TableIdent, pa.Table]:
        ctx = self._new_context(self._default_schema)
        try:
            frame = ctx.sql(sql, options=_DML_ONLY, param_values=values or None)
        except Exception as exc:
            raise classify_datafusion_error(exc) from None
        node = frame.logical_plan().to_variant()
        if type(node).__name__ != "DmlStatement" or "Append" not in str(node.op()):
            raise NotSupported("only INSERT INTO ... VALUES/SELECT is supported")
        ident = self.table_ident(tuple(str(node.table_name()).split(".")))
        raw_input = node.input()
        source = LogicalPlan(raw_input[0] if isinstance(raw_input, list) else raw_input)
        return ident, self._collect(ctx, source, None)

    def _drop_table(self, statement: WriteStatement) -> None:
        ident = self.table_ident(statement.name)
        try:
            self._catalog.drop_table(ident)
        except (TableNotFound, NamespaceNotFound):
            if not statement.if_exists:
                raise

    def _create_schema(self, statement: WriteStatement) -> None:
        try:
            self._catalog.create_namespace(self.namespace(statement.name))
        except AlreadyExists:
            if not statement.if_exists:
                raise

    def _drop_schema(self, statement: WriteStatement) -> None:
        namespace = self.namespace(statement.name)
        try:
            if statement.cascade:
                for name in self._catalog.list_tables(namespace):
                    self._catalog.drop_table(TableIdent(namespace, name))
            self._catalog.drop_namespace(namespace)
        except NamespaceNotFound:
            if not statement.if_exists:
                raise

    def _exists(self, ident: TableIdent, statement: WriteStatement) -> bool:
        if not self._catalog.table_exists(ident):
            return False
        if statement.if_exists:
            return True
        raise AlreadyExists(f"table {ident} already exists")


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _parse_columns(columns: str) -> exp.Expression:
    try:
        tree = sqlglot.parse_one(f"CREATE TABLE t {columns}", read="postgres")
    except SqlglotError as exc:
        raise InvalidQuery(f"bad column definitions: {_first_line(exc)}") from None
    if not isinstance(tree, exp.Create) or not isinstance(tree.this, exp.Schema) or (
        tree.expression is not None
    ):
        raise InvalidQuery("expected a column list: (name TYPE [NOT NULL], ...)")
    return tree.this


_ALLOWED_CONSTRAINTS = (exp.NotNullColumnConstraint, exp.PrimaryKeyColumnConstraint)


def column_definitions(columns: str) -> list[str]:
    """`"name" TYPE [NOT NULL]` for each column of a CREATE TABLE column list.

    Key columns are NOT NULL, as PRIMARY KEY implies.
    """
    key = set(primary_key_columns(columns))
    definitions = []
    for item in _parse_columns(columns).expressions:
        if isinstance(item, exp.PrimaryKey):
            continue
        if not isinstance(item, exp.ColumnDef) or item.args.get("kind") is None:
            raise InvalidQuery(f"unsupported in a column list: {_first_line(item.sql())}")
        not_null = False
        for constraint in item.args.get("constraints") or []:
            kind = constraint.args.get("kind")
            if not isinstance(kind, _ALLOWED_CONSTRAINTS):
                raise InvalidQuery(
                    f"unsupported column constraint: {_first_line(constraint.sql())}")
            not_null |= isinstance(kind, exp.PrimaryKeyColumnConstraint) or not kind.args.get(
                "allow_null")
        name = _column_name(item.this)
        not_null |= name in key
        name = name.replace('"', '""')
        kind_sql = item.args["kind"].sql(dialect="postgres")
        definitions.append(f'"{name}" {kind_sql}{" NOT NULL" if not_null else ""}')
    if not definitions:
        raise InvalidQuery("a table needs at least one column")
    return definitions


def primary_key_columns(columns: str) -> list[str]:
    """Columns named by PRIMARY KEY in a CREATE TABLE column list, in key order."""
    tree = _parse_columns(columns)
    names: list[str] = []
    for key in tree.find_all(exp.PrimaryKey):
        names += [_column_name(e) for e in key.expressions]
    for constraint in tree.find_all(exp.PrimaryKeyColumnConstraint):
        column = constraint.find_ancestor(exp.ColumnDef)
        if column is not None:
            names.append(_column_name(column.this))
    return names


def _column_name(node: exp.Expression) -> str:
    identifier = node if isinstance(node, exp.Identifier) else node.find(exp.Identifier)
    if identifier is None:
        return node.name
    return identifier.this if identifier.quoted else identifier.this.lower()
