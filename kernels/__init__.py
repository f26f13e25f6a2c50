"""Reference Triton and CUDA kernels (one module each) and the benchmark harness (``bench``, ``guards``,
``devices``). Importing the package imports nothing: the sandbox is given ``bench.py`` alone."""
