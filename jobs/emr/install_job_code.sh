#!/bin/bash
# EMR bootstrap action: installs the platform's job code and its Python dependencies on
# every node. Argument: the S3 prefix the code was deployed to (s3://<artifacts>/code/<cluster>/).
set -euo pipefail

code_url="${1:?usage: install_job_code.sh s3://bucket/code/<cluster>/}"
target=/home/hadoop/ml-platform

mkdir -p "$target"
aws s3 cp --recursive --only-show-errors "$code_url" "$target"
# The jobs need Python 3.11, which EMR 7.x ships beside its default 3.9.
sudo python3.11 -m pip install --quiet --requirement "$target/jobs/requirements-emr.txt"
# PyFlink and spark-submit take the package as one archive on their Python path.
(cd "$target" && rm -f jobs.zip && python3.11 -m zipfile -c jobs.zip jobs)

# Flink nodes: the Kafka connector (for Flink 1.20, as in EMR 7.x) and MSK IAM auth, pinned.
if [ -d /usr/lib/flink ]; then
  jars=/home/hadoop/ml-platform/flink-lib
  mkdir -p "$jars"
  curl --fail --silent --show-error --location --output "$jars/flink-sql-connector-kafka.jar" \
    https://repo1.maven.org/maven2/org/apache/flink/flink-sql-connector-kafka/3.3.0-1.20/flink-sql-connector-kafka-3.3.0-1.20.jar
  curl --fail --silent --show-error --location --output "$jars/aws-msk-iam-auth.jar" \
    https://github.com/aws/aws-msk-iam-auth/releases/download/v2.2.0/aws-msk-iam-auth-2.2.0-all.jar
  sudo cp "$jars"/*.jar /usr/lib/flink/lib/
fi
