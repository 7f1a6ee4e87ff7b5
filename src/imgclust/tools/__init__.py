"""The commands around runs that are not pipeline stages: scan-k, compare, register, predict,
reproduce (one module each, named like the command)."""
