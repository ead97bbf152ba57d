"""Synthesis as a service on Ray: engine actors shared by every role that names their model, tools on CPU
workers, K episodes in flight, every round stored as it finishes, resumable at any point.

`service.synthesize` is what `prefsmith synthesize` (and `python -m pipelines.cli synthesize` under `ray job
submit`) runs. `run` keeps a run's life in the database; `engines`, `ray_tools` and `ray_calls` are what runs
on Ray; `playing` is what the two ways of playing share, `local` (threads of the driver) and `workers`
(episode-worker actors) the two ways. docs/architecture.md draws how they fit.
"""
