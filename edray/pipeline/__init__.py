"""The whole method as one resumable run: world, student, index, rounds, evaluation, report."""
