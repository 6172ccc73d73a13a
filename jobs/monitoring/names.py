"""The names the model monitor publishes under, for the alarms and dashboards that read them.

Every figure is published twice: with the dimensions ``Model`` and ``ModelVersion`` (the
version's own series) and with ``Model`` alone (the model's series, which follows its versions
across deployments). The per-input figures carry ``Feature`` in both. In the model's series
the counts (``Predictions``, ``BaselineMissing``) add up over its versions, and every other
figure is that of the version with the most predictions behind it. ``MalformedRecords`` has
only the model's series, since a line that cannot be read names no trustworthy version.
"""

NAMESPACE = "MLPlatform/ModelMonitoring"

MODEL_DIMENSION = "Model"
MODEL_VERSION_DIMENSION = "ModelVersion"
FEATURE_DIMENSION = "Feature"

# Population stability index of one monitored input, training baseline vs recent serving.
FEATURE_DRIFT = "FeatureDrift"
# Share of recent serving records whose input is null (PSI compares only the values).
FEATURE_MISSING_SHARE = "FeatureMissingShare"
# Population stability index of the top score of model-ranked answers.
PREDICTION_DRIFT = "PredictionDrift"
# Share of model-ranked answers followed by a play of one of their top K titles.
HIT_RATE_AT_K = "HitRateAtK"
# Prediction records of the window, model-ranked or not.
PREDICTIONS = "Predictions"
# Versions whose model artifact holds no readable baseline, so their drift is not measured.
BASELINE_MISSING = "BaselineMissing"
# Lines of the prediction log that are not valid records; they are skipped.
MALFORMED_RECORDS = "MalformedRecords"

# CloudWatch units: counts are Count, ratios and indices have none.
UNITS = {
    FEATURE_DRIFT: "None",
    FEATURE_MISSING_SHARE: "None",
    PREDICTION_DRIFT: "None",
    HIT_RATE_AT_K: "None",
    PREDICTIONS: "Count",
    BASELINE_MISSING: "Count",
    MALFORMED_RECORDS: "Count",
}
