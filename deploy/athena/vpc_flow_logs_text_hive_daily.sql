-- Athena table over flowlog-agent's (or AWS's) flow logs in S3: output s3://BUCKET/PREFIX?hive
-- (gzip text with a header line, columns read by position,
-- Hive-compatible key layout, daily partitions, partition projection: no MSCK REPAIR / ADD PARTITION).
-- Columns as in AWS's documented DDL (docs.aws.amazon.com/athena/latest/ug/vpc-flow-logs*.html), version 2 to 5 fields.
-- Replace BUCKET, PREFIX (drop "PREFIX/" when the output has no prefix), ACCOUNT_ID, REGION.
-- Text columns are positional: the log format must be these fields in this order
-- (the default format is the first 14; a shorter format leaves the rest NULL).
CREATE EXTERNAL TABLE IF NOT EXISTS `vpc_flow_logs_text_hive_daily` (
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
PARTITIONED BY (`aws-account-id` string, `aws-service` string, `aws-region` string, `year` string, `month` string, `day` string)
ROW FORMAT DELIMITED FIELDS TERMINATED BY ' '
LOCATION 's3://BUCKET/PREFIX/AWSLogs/'
TBLPROPERTIES (
  "skip.header.line.count"="1",
  "projection.enabled"="true",
  "projection.aws-account-id.type"="enum",
  "projection.aws-account-id.values"="ACCOUNT_ID",
  "projection.aws-service.type"="enum",
  "projection.aws-service.values"="vpcflowlogs",
  "projection.aws-region.type"="enum",
  "projection.aws-region.values"="REGION",
  "projection.year.type"="integer",
  "projection.year.range"="2020,2100",
  "projection.month.type"="integer",
  "projection.month.range"="1,12",
  "projection.month.digits"="2",
  "projection.day.type"="integer",
  "projection.day.range"="1,31",
  "projection.day.digits"="2",
  "storage.location.template"="s3://BUCKET/PREFIX/AWSLogs/aws-account-id=${aws-account-id}/aws-service=${aws-service}/aws-region=${aws-region}/year=${year}/month=${month}/day=${day}"
);
