"""Metrics, figures, Grad-CAM and Markdown: what a person reads about the data and the models."""
