"""The benchmark's baseline: the smallest real CDK app, one bucket in one stack."""

from aws_cdk import App, Stack
from aws_cdk import aws_s3 as s3

app = App()
s3.Bucket(Stack(app, "Hello"), "Bucket")
app.synth()
