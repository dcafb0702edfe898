"""Reads an ingero Parquet archive with engines no one here wrote, and
prints what they see as one JSON object, for agent/tests/it/archive.rs to
compare with SQLite.

  parquet_check.py read DIR    pyarrow opens every visible file; DuckDB
                               counts and sums per node and operation
  parquet_check.py spark DIR   a local Spark session runs the README's
                               per-node query and fleet-wide p99
"""

import json
import os
import sys

# The fleet-wide p99 of cuLaunchKernel (source 4, op 1) as an exact rank:
# the value at offset floor(n * 99 / 100) in ascending order, the
# definition `ingero query --merge` uses in the README. Standard SQL that
# DuckDB, Spark and Trino all run.
P99 = """
SELECT duration FROM (
  SELECT duration,
         row_number() OVER (ORDER BY duration) AS r,
         count(*) OVER () AS n
  FROM events WHERE source = 4 AND op = 1
) t WHERE r = floor(n * 99 / 100) + 1
"""

PER_NODE = """
SELECT node, source, count(*) AS cnt, avg(duration)/1000 AS avg_us
FROM events GROUP BY node, source ORDER BY node, source
"""


def visible_parquet(root):
    for base, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.endswith(".parquet") and not f.startswith("."):
                yield os.path.join(base, f)


def read(root):
    import duckdb
    import pyarrow.parquet as pq

    out = {"files": 0, "rows_by_table": {}, "hidden": [], "metadata": []}
    for base, _, files in os.walk(root):
        out["hidden"] += [os.path.join(base, f) for f in files if f.startswith(".")]
    for path in sorted(visible_parquet(root)):
        pf = pq.ParquetFile(path)
        table = pf.read()
        meta = {k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items() if k.startswith(b"ingero.")}
        name = meta.get("ingero.table", "?")
        out["files"] += 1
        out["rows_by_table"][name] = out["rows_by_table"].get(name, 0) + table.num_rows
        assert int(meta["ingero.rows"]) == table.num_rows, path
        out["metadata"].append(meta)
        if name == "events" and "types" not in out:
            schema = table.schema
            ts = pf.schema.column(schema.get_field_index("timestamp"))
            out["types"] = {
                "arrow": {f.name: str(f.type) for f in schema},
                "parquet_timestamp": str(ts.logical_type),
            }
    con = duckdb.connect()
    glob = os.path.join(root, "table=events", "**", "*.parquet")
    out["duckdb_rows"] = 0
    out["duckdb_distinct_ids"] = 0
    if any(visible_parquet(os.path.join(root, "table=events"))):
        con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
        out["duckdb_events"] = con.execute(
            "SELECT node, source, op, count(*), sum(duration), sum(arg0) FROM events "
            "GROUP BY node, source, op ORDER BY node, source, op"
        ).fetchall()
        out["duckdb_distinct_ids"], out["duckdb_rows"] = con.execute(
            "SELECT count(DISTINCT id), count(*) FROM events"
        ).fetchone()
        out["duckdb_types"] = dict(
            con.execute("SELECT column_name, column_type FROM (DESCRIBE events)").fetchall()
        )
        # Timestamps read back as the instants SQLite holds (ns since the epoch, UTC).
        out["duckdb_ts"] = con.execute("SELECT min(epoch_ns(timestamp)), max(epoch_ns(timestamp)) FROM events").fetchone()
        out["duckdb_per_node"] = [list(r) for r in con.execute(PER_NODE).fetchall()]
        p99 = con.execute(P99).fetchone()
        out["duckdb_p99"] = p99[0] if p99 else None
    print(json.dumps(out, default=str))


def spark(root):
    from pyspark.sql import SparkSession

    s = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        # Spark has no nanosecond timestamp type: it reads TIMESTAMP(NANOS)
        # as a long of nanoseconds with this setting (see README, Limits).
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
        .getOrCreate()
    )
    s.sparkContext.setLogLevel("ERROR")
    try:
        s.read.parquet(os.path.join(root, "table=events")).createOrReplaceTempView("events")
        s.read.parquet(os.path.join(root, "table=ops")).createOrReplaceTempView("ops")
        per_node = [[r[0], r[1], r[2], r[3]] for r in s.sql(PER_NODE).collect()]
        p99 = s.sql(P99).collect()
        named = s.sql(
            "SELECT o.name, count(*) FROM events e JOIN ops o "
            "ON o.node = e.node AND o.source_id = e.source AND o.op_id = e.op "
            "WHERE o.name = 'cuLaunchKernel' GROUP BY o.name"
        ).collect()
        print(
            json.dumps(
                {
                    "per_node": per_node,
                    "p99": p99[0][0] if p99 else None,
                    "launches_by_name": named[0][1] if named else 0,
                    "schema": {f.name: f.dataType.simpleString() for f in s.table("events").schema.fields},
                }
            )
        )
    finally:
        s.stop()


if __name__ == "__main__":
    {"read": read, "spark": spark}[sys.argv[1]](sys.argv[2])
