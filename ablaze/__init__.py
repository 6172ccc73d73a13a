"""ABlaze, the platform's A/B experimentation service: experiments, allocation and results."""
