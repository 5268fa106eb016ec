//! OpenSearch adapter of the search port.
