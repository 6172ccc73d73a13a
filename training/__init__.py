"""Model-training code that the platform runs as SageMaker training jobs."""
