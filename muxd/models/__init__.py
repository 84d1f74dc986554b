"""Models: specs read from Hugging Face configs, loading, and the local test and demo models."""
