"""Command fan-out: targets, delivery, results, cancellation and deadlines."""
