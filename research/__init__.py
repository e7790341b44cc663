"""One-off experiments behind the project's claims (see research/README.md). Run from the repository root:
`python -m research.<script> --help`. Nothing in the product (asvp, exporter, graph_passes, runtime) imports this
package."""
