#!/bin/bash
# EMR bootstrap action: installs the platform's job code and its Python dependencies on
# every node. Argument: the S3 prefix the code was deployed to (s3://<artifacts>/code/<cluster>/).
set -euo pipefail

code_url="${1:?usage: install_job_code.sh s3://bucket/code/<cluster>/}"
target=/home/hadoop/ml-platform

mkdir -p "$target"
aws s3 cp --recursive --only-show-errors "$code_url" "$target"
sudo python3 -m pip install --quiet --requirement "$target/jobs/requirements-emr.txt"
# PyFlink and spark-submit take the package as one archive on their Python path.
(cd "$target" && rm -f jobs.zip && python3 -m zipfile -c jobs.zip jobs)
