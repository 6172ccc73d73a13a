#!/bin/bash
# EMR bootstrap action: installs the platform's job code and its Python dependencies on
# every node. Arguments: the S3 prefix the code was deployed to (s3://<artifacts>/code/<cluster>/),
# the node folder to install it into (NODE_CODE_DIR of jobs/layout.py, which the cluster
# construct passes, so the step arguments and this script name the same folder) and the
# cluster's kind, flink or spark. Bootstrap actions run before EMR installs the applications,
# so the kind comes from the construct rather than from looking for Flink on the node.
#
# It runs as root on every node, so nothing it installs goes unverified: Python packages come
# from hashed lock files (pip's hash-checking mode) and every jar must have the digest pinned
# for it in jobs/emr/jar-checksums.txt. Any mismatch, or a jar without a digest, fails the
# bootstrap before anything reaches Flink's classpath.
set -euo pipefail

usage="usage: install_job_code.sh s3://bucket/code/<cluster>/ /node/code/folder flink|spark"
code_url="${1:?$usage}"
target="${2:?$usage}"
kind="${3:?$usage}"
[[ "$kind" == flink || "$kind" == spark ]] || { echo "$usage" >&2; exit 2; }

fail() {
  echo "install_job_code.sh: $*" >&2
  exit 1
}

# Python 3.11 ships beside EMR 7.x's default 3.9. Every Spark-node package has wheels for
# aarch64 and x86_64, so nothing is built there; several PyFlink dependencies publish only
# source archives (and PyFlink 1.20.0 has no aarch64 wheel), so Flink nodes build those, from
# archives the lock's hashes pin. --no-deps: the lock lists every dependency already.
install_python_packages() {
  local lock="$target/jobs/requirements-emr.lock" binary=(--only-binary=:all:)
  if [ "$kind" = flink ]; then
    lock="$target/jobs/requirements-emr-flink.lock"
    binary=()
  fi
  sudo python3.11 -m pip install --quiet --require-hashes --no-deps "${binary[@]}" \
    --requirement "$lock"
}

# Fails unless DIGEST is a well-formed ALGORITHM digest and URL a source we fetch from.
require_pinned() {
  local algorithm="$1" digest="$2" url="$3" length
  case "$algorithm" in
    sha256) length=64 ;;
    sha512) length=128 ;;
    *) fail "unsupported digest algorithm '$algorithm' for $url (use sha256 or sha512)" ;;
  esac
  [[ "$digest" =~ ^[0-9a-f]{$length}$ ]] ||
    fail "no $algorithm digest configured for $url in jobs/emr/jar-checksums.txt;" \
      "refusing to install an unverified jar"
  [[ "$url" == https://* || "$url" == s3://* ]] || fail "$url is neither https:// nor s3://"
}

download() {
  case "$1" in
    s3://*) aws s3 cp --only-show-errors "$1" "$2" ;;
    *) curl --fail --silent --show-error --location --proto '=https' --output "$2" "$1" ;;
  esac
}

# Flink nodes: the Kafka connector for Flink 1.20 (as in EMR 7.x), its Kafka client and MSK
# IAM auth, each checked against its pinned digest. Every entry is validated before the first
# download, and only verified files stay in the node's jar folder (FLINK_JARS_DIR of
# jobs/layout.py), which the streaming job loads with --jars. The unshaded
# connector is required: the SQL connector relocates the Kafka client classes, and MSK IAM's
# callback handler then fails with a ClassCastException.
install_flink_jars() {
  local jars="$target/flink-lib" algorithm digest url file i
  local -a algorithms=() digests=() urls=()
  while read -r algorithm digest url; do
    [[ -z "$algorithm" || "$algorithm" == "#"* ]] && continue
    require_pinned "$algorithm" "$digest" "$url"
    algorithms+=("$algorithm")
    digests+=("$digest")
    urls+=("$url")
  done <"$target/jobs/emr/jar-checksums.txt"
  # Downloaded aside and moved into place only once every jar is verified, so the folder
  # holds a complete, checked set or nothing.
  local partial="$jars.partial"
  rm -rf "$partial" "$jars"
  mkdir -p "$partial"
  for i in "${!urls[@]}"; do
    file="$partial/$(basename "${urls[$i]}")"
    download "${urls[$i]}" "$file"
    echo "${digests[$i]}  $file" | "${algorithms[$i]}sum" --check --quiet --strict - ||
      { rm -rf "$partial"; fail "${urls[$i]} does not match its pinned ${algorithms[$i]} digest"; }
  done
  mv "$partial" "$jars"
}

mkdir -p "$target"
aws s3 cp --recursive --only-show-errors "$code_url" "$target"
install_python_packages
# PyFlink and spark-submit take the package as one archive on their Python path.
(cd "$target" && rm -f jobs.zip && python3.11 -m zipfile -c jobs.zip jobs)
if [ "$kind" = flink ]; then
  install_flink_jars
fi
