"""Serving: one OpenAI-compatible Ray Serve application for student, tuned students and teacher."""
