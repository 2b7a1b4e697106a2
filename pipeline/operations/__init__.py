"""What an operator does (submit, restart, halt, read), behind one facade that every
interface calls: ``pipeline.operations.facade``."""
