"""What every command shares: user errors, options and configs, files, workers."""
