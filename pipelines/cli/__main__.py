"""`python -m pipelines.cli …`: the same program as `prefsmith …`.

`ray job submit` and `prefsmith schedule` start it this way.
"""

from pipelines.cli.app import main

main()
