"""The benchmarks (bench/README.md). Each module runs as a script (`python bench/<name>.py`, which puts the repository
root on sys.path) and imports as `bench.<name>` from tests and from the other benchmarks."""
