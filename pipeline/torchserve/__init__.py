"""Everything that knows TorchServe 0.12: handlers, config files, the process, its logs, its error wording."""
