"""The recommender's serving app: FastAPI under uvicorn, one model name per service."""
