"""textfile-probe: TLS certificate probes written for node_exporter's textfile collector."""

__version__ = "0.1.0"
