"""The `segunify` command line: a thin layer over segunify_core."""
