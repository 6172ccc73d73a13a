#!/bin/bash
# EMR bootstrap action: installs the platform's job code and its Python dependencies on
# every node. Arguments: the S3 prefix the code was deployed to (s3://<artifacts>/code/<cluster>/)
# and the node folder to install it into (NODE_CODE_DIR of jobs/layout.py, which the cluster
# construct passes, so the step arguments and this script name the same folder).
set -euo pipefail

usage="usage: install_job_code.sh s3://bucket/code/<cluster>/ /node/code/folder"
code_url="${1:?$usage}"
target="${2:?$usage}"
flink_home="${FLINK_HOME_DIR:-/usr/lib/flink}"

mkdir -p "$target"
aws s3 cp --recursive --only-show-errors "$code_url" "$target"
# The jobs need Python 3.11, which EMR 7.x ships beside its default 3.9. Flink nodes also
# need PyFlink matching EMR 7.x's Flink 1.20.
requirements="$target/jobs/requirements-emr.txt"
[ -d "$flink_home" ] && requirements="$target/jobs/requirements-emr-flink.txt"
sudo python3.11 -m pip install --quiet --requirement "$requirements"
# PyFlink and spark-submit take the package as one archive on their Python path.
(cd "$target" && rm -f jobs.zip && python3.11 -m zipfile -c jobs.zip jobs)

# Flink nodes: the Kafka connector for Flink 1.20 (as in EMR 7.x), its Kafka client and MSK
# IAM auth, pinned. The unshaded connector is required: the SQL connector relocates the
# Kafka client classes, and MSK IAM's callback handler then fails with a ClassCastException.
if [ -d "$flink_home" ]; then
  jars="$target/flink-lib"
  maven=https://repo1.maven.org/maven2
  mkdir -p "$jars"
  fetch() { curl --fail --silent --show-error --location --output "$jars/$(basename "$1")" "$1"; }
  fetch "$maven/org/apache/flink/flink-connector-kafka/3.3.0-1.20/flink-connector-kafka-3.3.0-1.20.jar"
  fetch "$maven/org/apache/kafka/kafka-clients/3.4.0/kafka-clients-3.4.0.jar"
  fetch https://github.com/aws/aws-msk-iam-auth/releases/download/v2.2.0/aws-msk-iam-auth-2.2.0-all.jar
  sudo cp "$jars"/*.jar "$flink_home/lib/"
fi
