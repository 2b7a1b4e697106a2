"""How work moves: the four stages of a task's chain, the ledger of task states they write,
the task directories, the datastore, and the algorithms run in child processes."""
