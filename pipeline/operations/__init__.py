"""What an operator does and reads: the facade's commands (submit, restart, halt, ...),
the reads (queries, pages, lineage) and the views every interface shows."""
