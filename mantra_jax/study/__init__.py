"""Studies: resumable orchestrations of training runs, probes and evaluations (RESULTS.md)."""
