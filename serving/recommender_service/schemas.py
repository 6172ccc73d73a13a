"""The request and response bodies of the HTTP API, as published in /openapi.json."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from serving.recommender_service.service import Fallback


class RecommendationRequest(BaseModel):
    """Rank titles for a member. Unknown fields and values of the wrong JSON type are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    member_id: str = Field(min_length=1, max_length=128, description="the member to rank for")
    k: int = Field(default=10, ge=1, le=100, description="how many titles to return")


class RecommendedTitle(BaseModel):
    title_id: str
    score: float = Field(description="model score, or training positives for popularity")


class RecommendationResponse(BaseModel):
    member_id: str
    model_name: str
    model_version: str = Field(description="the version that ranked the titles")
    items: list[RecommendedTitle] = Field(description="best first, titles seen recently left out")
    fallback: Fallback | None = Field(
        description=(
            "null when the model ranked with the member's history; popularity: the model does "
            "not know the member; store_timeout / store_unavailable: history could not be read "
            "in time or at all, so seen titles are not left out"
        )
    )
    experiment: str | None = Field(description="the experiment the member is in, if any")
    cell: str | None = Field(description="the member's cell in that experiment")


class ModelInfo(BaseModel):
    name: str
    version: str
    training_date: str | None = Field(description="MODEL_TRAINING_DATE, as given")
    package_arn: str | None = Field(description="the model package of the version, if given")
    metrics: dict[str, float] = Field(
        description="MODEL_METRICS, or the artifact's metrics.json when that is unset"
    )
    candidate_version: str | None = Field(description="the candidate model version, if any")
    candidate_loaded: bool
    shadow_fraction: float = Field(description="share of members the candidate also scores")


class Health(BaseModel):
    status: str
    reason: str | None = None
