"""Where the platform's data lives and where its code sits on the EMR nodes.

The one definition that the jobs (which write and read these places) and the infrastructure
(which grants access to them and passes them as step arguments) both import, so the two
cannot drift apart. The jobs ship to EMR inside ``jobs.zip``, which is why this module lives
in the ``jobs`` package; it imports nothing, so the CDK app can import it too.

Prefixes are keys relative to their bucket. Folder prefixes end with ``/``; the two
partition roots of the streaming job (``RAW_EVENTS_PREFIX``, ``DEAD_LETTER_PREFIX``) do not,
because the job appends ``/<column>=<value>/`` to them.
"""

# The folder on every EMR node that the bootstrap action installs the code into, and the
# archive of the `jobs` package it builds there for --py-files and -pyfs.
NODE_CODE_DIR = "/home/hadoop/ml-platform"
JOBS_ARCHIVE = f"{NODE_CODE_DIR}/jobs.zip"
# Where the bootstrap leaves the verified connector jars on Flink nodes (jobs/emr/
# jar-checksums.txt lists them); the streaming job loads them with --jars.
FLINK_JARS_DIR = f"{NODE_CODE_DIR}/flink-lib"

# Raw zone: the streaming job writes only under STREAMING_PREFIX (its IAM grant).
STREAMING_PREFIX = "streaming/"
RAW_EVENTS_PREFIX = f"{STREAMING_PREFIX}member_interactions"
DEAD_LETTER_PREFIX = f"{STREAMING_PREFIX}_dead_letter/member_interactions"
# Raw zone: the serving tasks' prediction log, which the model monitor reads.
PREDICTIONS_PREFIX = "predictions/"

# Curated zone: the ETL's tables (named in the catalog databases), its rejected rows and the
# counts of each run.
CURATED_TABLE = "member_interactions"
FEATURES_TABLE = "member_features"
CURATED_PREFIX = f"{CURATED_TABLE}/"
FEATURES_PREFIX = f"features/{FEATURES_TABLE}/"
QUARANTINE_PREFIX = f"quarantine/{CURATED_TABLE}/"
RUNS_PREFIX = f"_runs/{CURATED_TABLE}/"

# Artifacts bucket: Flink's checkpoints, one folder per cluster below this prefix.
CHECKPOINT_PREFIX = "flink/checkpoints/"
