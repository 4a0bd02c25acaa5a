-- Athena table over flowlog-agent's (or AWS's) flow logs in S3: output s3://BUCKET/PREFIX
-- (gzip text with a header line, columns read by position,
-- plain key layout, daily partitions, partition projection: no MSCK REPAIR / ADD PARTITION).
-- Columns as in AWS's documented DDL (docs.aws.amazon.com/athena/latest/ug/vpc-flow-logs*.html), version 2 to 5 fields.
-- Replace BUCKET, PREFIX (drop "PREFIX/" when the output has no prefix), ACCOUNT_ID, REGION.
-- Text columns are positional: the log format must be these fields in this order
-- (the default format is the first 14; a shorter format leaves the rest NULL).
CREATE EXTERNAL TABLE IF NOT EXISTS `vpc_flow_logs_text_plain_daily` (
  version int,
  account_id string,
  interface_id string,
  srcaddr string,
  dstaddr string,
  srcport int,
  dstport int,
  protocol bigint,
  packets bigint,
  bytes bigint,
  start bigint,
  `end` bigint,
  action string,
  log_status string,
  vpc_id string,
  subnet_id string,
  instance_id string,
  tcp_flags int,
  type string,
  pkt_srcaddr string,
  pkt_dstaddr string,
  region string,
  az_id string,
  sublocation_type string,
  sublocation_id string,
  pkt_src_aws_service string,
  pkt_dst_aws_service string,
  flow_direction string,
  traffic_path int
)
PARTITIONED BY (`date` date)
ROW FORMAT DELIMITED FIELDS TERMINATED BY ' '
LOCATION 's3://BUCKET/PREFIX/AWSLogs/ACCOUNT_ID/vpcflowlogs/REGION/'
TBLPROPERTIES (
  "skip.header.line.count"="1",
  "projection.enabled"="true",
  "projection.date.type"="date",
  "projection.date.format"="yyyy/MM/dd",
  "projection.date.range"="2020/01/01,NOW",
  "projection.date.interval"="1",
  "projection.date.interval.unit"="DAYS",
  "storage.location.template"="s3://BUCKET/PREFIX/AWSLogs/ACCOUNT_ID/vpcflowlogs/REGION/${date}"
);
