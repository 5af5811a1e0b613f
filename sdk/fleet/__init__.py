"""The fleet from the host: what every device reports, and (later) what each should run."""
