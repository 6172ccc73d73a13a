"""Model monitoring: data drift, prediction drift and online accuracy of the served models.

The modules here import neither PySpark nor boto3 at the top: the CDK app imports
:mod:`jobs.monitoring.names` for its alarms without either installed.
"""
