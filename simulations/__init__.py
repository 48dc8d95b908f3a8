"""The composition root: streams, benchmarks and simulations that wire cloud and device together."""
