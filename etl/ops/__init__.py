"""What an operator runs or reads: status, report, health checks, dead-letter replay."""
