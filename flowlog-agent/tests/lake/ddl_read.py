"""Reads flowlog-agent's S3 objects from a moto server with DuckDB, the way
an Athena table of deploy/athena/ would: the DDL's column list and types,
its storage.location.template as the key layout, text by position (header
line skipped, TRY_CAST like Hive's LazySimpleSerDe: '-' in a number is
NULL), Parquet by column name. Prints JSON: files, rows (each row as a
space-joined line, NULL as '-'), sums.

usage: ddl_read.py <ddl.sql> <endpoint host:port> <bucket> <prefix> <account> <region>
"""
import glob, json, os, re, sys

import duckdb
import duckdb_extension_httpfs

SQL_TYPE = {"int": "INTEGER", "bigint": "BIGINT", "string": "VARCHAR"}


def connect(endpoint):
    """DuckDB with httpfs from its PyPI package (DuckDB's extension
    repository is not reachable here), S3 at moto."""
    ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions", "*", "httpfs.duckdb_extension"))[0]
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{ext}'")
    con.execute(f"CREATE SECRET (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', ENDPOINT '{endpoint}', USE_SSL false, URL_STYLE 'path')")
    return con


def create_view(con, view, ddl_path, bucket, prefix, account, region):
    """The DDL's table as a DuckDB view (plus a `filename` column); returns
    (columns, glob of the objects)."""
    ddl = open(ddl_path).read()
    ddl = ddl.replace("BUCKET", bucket).replace("PREFIX/", prefix + "/" if prefix else "").replace("ACCOUNT_ID", account).replace("REGION", region)
    body = re.search(r"CREATE EXTERNAL TABLE[^(]*\((.*?)\n\)\nPARTITIONED BY", ddl, re.S).group(1)
    cols = [tuple(c.strip().replace("`", "").split()) for c in body.split(",")]
    parquet = "ParquetHiveSerDe" in ddl
    props = dict(re.findall(r'"([^"]+)"="([^"]*)"', ddl))

    def pattern(m):
        # A partition's values: the enum's, or any (date: yyyy/MM/dd is three folders).
        name = m.group(1)
        if props.get(f"projection.{name}.type") == "enum":
            return props[f"projection.{name}.values"]
        if props.get(f"projection.{name}.type") == "date":
            return "/".join("*" for _ in props[f"projection.{name}.format"].split("/"))
        return "*"

    files = re.sub(r"\$\{([^}]+)\}", pattern, props["storage.location.template"]) + "/*" + (".log.parquet" if parquet else ".log.gz")
    if parquet:
        # By name; a column the files lack is NULL (as in Athena).
        src = f"read_parquet('{files}', filename=true, union_by_name=true)"
        have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        select = ", ".join(f'CAST({chr(34) + n + chr(34) if n in have else "NULL"} AS {SQL_TYPE[t]}) AS "{n}"' for n, t in cols)
    else:
        skip = int(props.get("skip.header.line.count", "0"))
        spec = "{" + ", ".join(f"'{n}': 'VARCHAR'" for n, _ in cols) + "}"
        select = ", ".join(f'"{n}"' if t == "string" else f'TRY_CAST("{n}" AS {SQL_TYPE[t]}) AS "{n}"' for n, t in cols)
        src = f"read_csv('{files}', delim=' ', header=false, skip={skip}, columns={spec}, auto_detect=false, quote='', escape='', null_padding=true, filename=true)"
    con.execute(f"CREATE VIEW {view} AS SELECT {select}, filename FROM {src}")
    return cols, files


def main():
    ddl_path, endpoint, bucket, prefix, account, region = sys.argv[1:7]
    con = connect(endpoint)
    cols, files = create_view(con, "t", ddl_path, bucket, prefix, account, region)
    out = {
        "glob": files,
        "files": con.execute("SELECT count(DISTINCT filename) FROM t").fetchone()[0],
        "rows": [r[0] for r in con.execute("SELECT concat_ws(' ', " + ", ".join(f"coalesce(CAST(\"{n}\" AS VARCHAR), '-')" for n, _ in cols) + ") FROM t").fetchall()],
        "packets": con.execute("SELECT sum(packets) FROM t").fetchone()[0],
        "bytes": con.execute("SELECT sum(bytes) FROM t").fetchone()[0],
        "per_interface": {i: [p, b] for i, p, b in con.execute("SELECT interface_id, sum(packets), sum(bytes) FROM t GROUP BY 1").fetchall()},
        "columns": [n for n, _ in cols],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
