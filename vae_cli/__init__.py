"""The `vae` command: train, export, serve, evaluate, report and score. It sits above both training and
service and imports each subcommand's modules only when that subcommand runs."""
