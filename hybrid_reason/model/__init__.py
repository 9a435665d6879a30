"""The model: TRM recursive core, losses, and the Hugging Face config/model pair."""
