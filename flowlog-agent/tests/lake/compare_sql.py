"""Runs `flowlog-agent compare --emit-sql athena`'s query in DuckDB over two
tables of deploy/athena/ DDLs on moto; prints the result rows as CSV
(header = the query's columns).

usage: compare_sql.py <query.sql> <endpoint> <account> <region>
       <native ddl> <native bucket> <native prefix> <agent ddl> <agent bucket> <agent prefix>
"""
import sys

from ddl_read import connect, create_view

query, endpoint, account, region, nddl, nbucket, nprefix, addl, abucket, aprefix = sys.argv[1:11]
con = connect(endpoint)
create_view(con, "native_flow_logs", nddl, nbucket, nprefix, account, region)
create_view(con, "agent_flow_logs", addl, abucket, aprefix, account, region)
cur = con.execute(open(query).read())
print(",".join(d[0] for d in cur.description))
for row in cur.fetchall():
    print(",".join(str(v) for v in row))
