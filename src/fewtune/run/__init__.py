"""``fewtune run``: the plan, the pipeline, the task's job, its session, the evaluation of methods."""
