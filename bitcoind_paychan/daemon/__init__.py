"""`paychan daemon`: the long-running process, its control API and its metrics."""
