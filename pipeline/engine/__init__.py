"""How work moves: the one mutator of a task's state, the four stages of a task's chain,
the dispatch of subtasks in messages, the task directories, the datastore, and the
algorithms run in child processes."""
