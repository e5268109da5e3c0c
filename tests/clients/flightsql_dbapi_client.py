"""Runs inside a separate virtual environment with flightsql-dbapi and SQLAlchemy 1.4.

Prints one JSON object of what it saw; the test in the main environment checks it.
Its protobuf message names would clash with Krishiv's in one process, as they would
for any outside client, hence the separate environment.
"""

from __future__ import annotations

import json
import sys

import sqlalchemy
from flightsql import FlightSQLClient, connect


def main(port: int, user: str, password: str) -> None:
    seen: dict[str, object] = {}
    client = FlightSQLClient(host="127.0.0.1", port=port, user=user, password=password,
                             insecure=True)
    conn = connect(client)
    cursor = conn.cursor()
    cursor.execute("SELECT n_name FROM tpch.nation WHERE n_regionkey = 3 ORDER BY n_name")
    seen["plain"] = [row[0] for row in cursor.fetchall()]
    cursor.execute("SELECT n_name FROM tpch.nation WHERE n_nationkey = ?", [5])
    seen["parameter"] = [row[0] for row in cursor.fetchall()]
    seen["description"] = [d[0] for d in cursor.description]
    cursor.execute("CREATE TABLE public.dbapi_notes (id BIGINT NOT NULL, note VARCHAR)")
    cursor.execute("INSERT INTO public.dbapi_notes VALUES (1, 'one'), (2, 'two')")
    seen["insert_count"] = [row[0] for row in cursor.fetchall()]
    cursor.execute("SELECT note FROM public.dbapi_notes WHERE id = ?", [2])
    seen["written"] = [row[0] for row in cursor.fetchall()]
    seen["update_count"] = client.execute_update("INSERT INTO public.dbapi_notes VALUES (3, 'x')")
    cursor.execute("DROP TABLE public.dbapi_notes")
    cursor.close()
    conn.close()

    engine = sqlalchemy.create_engine(
        f"datafusion://{user}:{password}@127.0.0.1:{port}?insecure=true"
    )
    with engine.connect() as connection:
        result = connection.execute(sqlalchemy.text(
            "SELECT r_name, count(*) AS n FROM tpch.region JOIN tpch.nation "
            "ON r_regionkey = n_regionkey GROUP BY r_name ORDER BY r_name"))
        seen["sqlalchemy"] = [list(row) for row in result]
        region = sqlalchemy.Table("region", sqlalchemy.MetaData(), schema="tpch",
                                  autoload_with=connection)
        seen["reflected_columns"] = [c.name for c in region.columns]
        query = sqlalchemy.select(region.c.r_name).where(region.c.r_regionkey == 2)
        seen["orm_select"] = [row[0] for row in connection.execute(query)]
        connection.execute(sqlalchemy.text("CREATE TABLE public.sa_items AS "
                                           "SELECT r_regionkey AS k FROM tpch.region"))
        seen["sa_created"] = connection.execute(
            sqlalchemy.text("SELECT count(*) FROM public.sa_items")).scalar()
        connection.execute(sqlalchemy.text("DROP TABLE public.sa_items"))
    tsql = sqlalchemy.create_engine(
        f"datafusion://{user}:{password}@127.0.0.1:{port}?insecure=true&dialect=tsql"
    )  # extra URL parameters travel as call headers
    with tsql.connect() as connection:
        seen["tsql_top"] = [row[0] for row in connection.execute(sqlalchemy.text(
            "SELECT TOP 2 n_name FROM tpch.nation ORDER BY n_nationkey"))]
    inspector = sqlalchemy.inspect(engine)
    seen["tables"] = sorted(inspector.get_table_names(schema="tpch"))
    seen["schemas"] = sorted(inspector.get_schema_names())
    print(json.dumps(seen))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
