"""What every other package may import, and which imports nothing of slimp's own.

- `errors.py`: `SlimpError` (a user-facing problem: the CLI prints `error: ...` and exits 1),
  seed checks, interrupt handling.
- `paths.py`: every file written goes through `AtomicOutput` (temporary name, lock, rename),
  JSON reading/writing with one-line errors, output folders, sha256.
- `devices.py`: `--device` names -> torch devices.
"""
