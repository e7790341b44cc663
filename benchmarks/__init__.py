"""What `make bench` and the GPU benchmark run (run_all, render, bench_graph_passes, kernel_compile, gpu) and their
shared provenance helpers. Run from the repository root: `python -m benchmarks.run_all`. Nothing in the product
(asvp, exporter, graph_passes, runtime) imports this package."""
