"""SageMaker script-mode training job of the title recommender (BPR matrix factorization)."""
