"""Studies built on the runners: the convergence benchmark (`protocol` holds its statistics, `convergence` runs it)."""
