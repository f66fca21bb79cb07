"""Launchers: job plans, submitit submission, job records and status. They run `met2net train`; they
know nothing of the model."""
