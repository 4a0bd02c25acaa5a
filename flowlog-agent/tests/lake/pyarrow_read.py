"""A Parquet reader other than the writer's (pyarrow): for each file, the
column names, the rows as space-joined lines (NULL as '-') read by column
name in the order given, and per column chunk the encodings and the data
page kinds (from the page encoding stats). Prints JSON.

usage: pyarrow_read.py <comma-separated column names> <file.parquet>...
"""
import json, sys

import pyarrow.parquet as pq

names = sys.argv[1].split(",")
out = []
for path in sys.argv[2:]:
    f = pq.ParquetFile(path)
    t = f.read(columns=names)
    cols = [t.column(n).to_pylist() for n in names]
    rows = [" ".join("-" if v is None else str(v) for v in r) for r in zip(*cols)]
    md = f.metadata
    chunks = []
    for g in range(md.num_row_groups):
        for i in range(md.num_columns):
            c = md.row_group(g).column(i)
            # The first page header (Thrift compact PageHeader): field 1,
            # i32 `type`, is 0x15 then the zigzag varint of the type:
            # 0x00 DATA_PAGE (v1), 0x06 DATA_PAGE_V2, 0x04 DICTIONARY_PAGE.
            with open(path, "rb") as fh:
                fh.seek(c.data_page_offset)
                head = fh.read(2)
            kind = {b"\x15\x00": "DATA_PAGE", b"\x15\x06": "DATA_PAGE_V2", b"\x15\x04": "DICTIONARY_PAGE"}.get(head, head.hex())
            chunks.append({"column": c.path_in_schema, "encodings": sorted(c.encodings), "dictionary_page": c.has_dictionary_page, "first_page": kind})
    out.append({"schema": f.schema_arrow.names, "rows": rows, "chunks": chunks})
print(json.dumps(out))
